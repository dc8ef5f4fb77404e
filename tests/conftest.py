"""Shared fixtures. FILM_TEST_BACKENDS=torch,jittor (default) picks which backends the tests use."""

from __future__ import annotations

import os

import numpy as np
import pytest

from film.common.images import samples_root

WANT = [b.strip() for b in os.environ.get("FILM_TEST_BACKENDS", "torch,jittor").split(",") if b.strip()]


def _backend(name: str):
    if name not in WANT:
        pytest.skip(f"{name} backend not selected (FILM_TEST_BACKENDS)")
    from film.backends.registry import get_backend

    return get_backend(name, "cpu")


@pytest.fixture(scope="session")
def tb():
    return _backend("torch")


@pytest.fixture(scope="session")
def jb():
    return _backend("jittor")


@pytest.fixture(scope="session")
def samples() -> str:
    return samples_root()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def run_group(cmd, timeout: float, env: dict | None = None, cwd=None):
    """Run a launcher (torchrun, mpirun) and its workers in their own session and process group, so that a signal
    the launcher sends to its group never reaches pytest, and a timeout ends every process of the job (not just
    the launcher) and fails the test. Returns a CompletedProcess (text stdout/stderr)."""
    import signal
    import subprocess

    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                         env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"{' '.join(map(str, cmd[:6]))} ... did not finish within {timeout:.0f}s:\n{(out + err)[-3000:]}")
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def load_script(name: str):
    """A build script of scripts/ (not part of the package) as a module."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "scripts", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"film_scripts_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(capsys, *argv) -> tuple[int, str]:
    """``film`` in-process: (exit code, stdout + stderr); never a traceback."""
    from film.cli import main

    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text
    return code, text
