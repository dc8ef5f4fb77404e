"""Jittor 1.3 under numpy 2 returns garbage without an error (issue 27): the Jittor backend refuses numpy>=2 in
one line before Jittor is imported; every extra stays on numpy<2 (requirements/lock.txt, checked here; CI
installs .[all] for real and asserts the same)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tomllib

from film.errors import FilmError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCK = os.path.join(ROOT, "requirements", "lock.txt")


def test_check_fires_on_numpy_2(monkeypatch):
    from film.backends.jittor import runtime

    monkeypatch.setattr(np, "__version__", "2.4.6")
    with pytest.raises(FilmError) as e:
        runtime.check_numpy()
    msg = str(e.value)
    assert "\n" not in msg and "numpy 2.4.6" in msg and "numpy<2" in msg and 'pip install "numpy>=1.23,<2"' in msg
    # also through the registry, even after Jittor was imported earlier in this process
    from film.backends.registry import get_backend

    with pytest.raises(FilmError, match="numpy<2"):
        get_backend("jittor", "cpu")


@pytest.mark.parametrize("version", ["1.26.4", "1.23.0", "1.26.0rc1"])
def test_check_passes_numpy_1(monkeypatch, version):
    from film.backends.jittor import runtime

    monkeypatch.setattr(np, "__version__", version)
    runtime.check_numpy()


def _fake_numpy2_env(tmp_path) -> dict:
    """A sitecustomize that makes the imported numpy report 2.1.0, as after `pip install numpy==2.1.0`."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import numpy\nnumpy.__version__ = '2.1.0'\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), ROOT, env.get("PYTHONPATH", "")])
    return env


def test_cli_and_api_refuse_under_numpy_2(tmp_path):
    from film.common.images import samples_root

    env = _fake_numpy2_env(tmp_path)
    out = tmp_path / "out"
    cmds = {
        "fuse": [sys.executable, "-m", "film", "fuse", "--backend", "jittor", "--checkpoint", "random",
                 "--random-text", "--pairs", samples_root(), "-o", str(out)],
        "parity": [sys.executable, "-m", "film", "parity", "random", "--limit", "1"],
        "api": [sys.executable, "-c", "import film; film.load_fuser(None, backend='jittor')"],
    }
    for name, cmd in cmds.items():
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        if name == "api":
            assert r.returncode != 0 and "FilmError" in r.stderr and "numpy<2" in r.stderr, r.stderr
            continue
        assert r.returncode == 2, (name, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "numpy 2.1.0" in lines[0] and "pip install" in lines[0], r.stderr
    assert not out.exists()  # nothing written


def _lock() -> dict[str, str]:
    pins = {}
    with open(LOCK) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                name, version = line.split("==")
                pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_lock_keeps_every_extra_on_numpy_1():
    """requirements/lock.txt is what `pip install -e ".[all]"` resolved to (torch aside, installed on its own);
    it must pin numpy<2 and cover and satisfy every requirement of every extra in pyproject.toml."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    pins = _lock()
    assert Version(pins["numpy"]) < Version("2"), pins["numpy"]
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = list(project["dependencies"])
    for items in project["optional-dependencies"].values():
        reqs += [r for r in items if not r.startswith("film-fusion")]
    for text in reqs:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name == "torch":  # installed on its own (CPU or CUDA build): README, Install
            continue
        assert name in pins, f"{req} (pyproject.toml) is missing from requirements/lock.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} does not satisfy {req}"
