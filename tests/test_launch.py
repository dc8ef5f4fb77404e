"""Processes (issue 20): Jittor's signal handlers undone, a failing or killed rank ends the whole job quickly and
names itself, and the launcher workers run from a folder that holds a clone named film/."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from conftest import run_group

from film.common.init import random_state_dict
from film.common.spec import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_jittor_leaves_sigint_and_sigchld_to_python(jb):
    """After the Jittor backend loads, Ctrl-C is Python's KeyboardInterrupt again (film: "interrupted", exit 130)
    and a child process dying of a signal does not end this process (Jittor quick-exits on both)."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    p.kill()
    assert p.wait() == -signal.SIGKILL  # and we are still here
    code = ("from film.backends.registry import get_backend; get_backend('jittor', 'cpu'); "
            "import os, signal, time; os.kill(os.getpid(), signal.SIGINT); time.sleep(10)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "KeyboardInterrupt" in r.stderr and "quick exit" not in r.stderr, r.stderr[-2000:]


def _h5(path, n=8):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for g in ("imageA", "imageB", "text"):
            f.create_group(g)
        for i in range(n):
            f["imageA"].create_dataset(f"s{i}", data=rng.random((1, 20, 24), dtype=np.float32))
            f["imageB"].create_dataset(f"s{i}", data=rng.random((1, 20, 24), dtype=np.float32))
            f["text"].create_dataset(f"s{i}", data=rng.standard_normal((1, 7, TINY.text_dim)).astype(np.float32))


def _fault_site(tmp_path, action: str) -> str:
    """A sitecustomize that makes rank 1 fail at its second batch: ``raise`` (an error) or ``kill`` (SIGKILL, as
    the out-of-memory killer does). Test-only: the product code has no fault hooks."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(f'''
import os
if os.environ.get("RANK", os.environ.get("OMPI_COMM_WORLD_RANK")) == "1":
    import film.common.training as T
    _real, _calls = T.load_batch, [0]
    def load_batch(*a, **k):
        _calls[0] += 1
        if _calls[0] == 2:
            if {action!r} == "kill":
                import signal
                os.kill(os.getpid(), signal.SIGKILL)
            raise T.FilmError("injected failure on rank 1")
        return _real(*a, **k)
    T.load_batch = load_batch
''')
    return str(site)


def _launcher_skip(backend: str):
    import shutil

    if backend == "jittor" and (shutil.which("mpirun") is None or shutil.which("mpicc") is None):
        if os.environ.get("CI"):
            pytest.fail("OpenMPI missing in CI: .ci/run installs it")
        pytest.skip("OpenMPI not installed (apt-get install openmpi-bin libopenmpi-dev)")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "jittor"])
@pytest.mark.parametrize("action", ["raise", "kill"])
def test_failing_rank_ends_the_job(request, tmp_path, backend, action):
    """`film train --nproc 2`: when rank 1 fails (an error, or SIGKILL as from the out-of-memory killer) the whole
    job ends within 60 s of it, exits non-zero, and the output names rank 1 (torchrun or mpirun report which
    rank died and of what; film prints the failing rank's one-line error)."""
    request.getfixturevalue("tb" if backend == "torch" else "jb")
    _launcher_skip(backend)
    from safetensors.numpy import save_file

    h5 = tmp_path / "d.h5"
    _h5(h5)
    init = tmp_path / "init.safetensors"
    save_file(dict(random_state_dict(TINY, seed=1)), str(init))
    env = {"PYTHONPATH": os.pathsep.join([_fault_site(tmp_path, action), ROOT]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "film", "train", "--backend", backend, "--nproc", "2", "--config", "tiny",
           "--h5", str(h5), "--batch-size", "2", "--epochs", "3", "--device", "cpu", "--init", str(init),
           "--out", str(tmp_path / "exp")]
    t0 = time.time()
    r = run_group(cmd, 600, env, cwd=tmp_path)
    took = time.time() - t0
    text = r.stdout + r.stderr
    assert r.returncode != 0, text[-3000:]
    if action == "raise":
        assert "rank 1: error: injected failure on rank 1" in text, text[-3000:]
    else:
        assert "rank 1" in text.lower() or "rank: 1" in text.lower(), text[-3000:]
        assert "signal 9" in text or "SIGKILL" in text or "Killed" in text, text[-3000:]
    assert "job failed" in text, text[-3000:]
    # the failure comes at rank 1's second batch, after start-up and compiling (tens of seconds at most)
    assert took < 300, f"the job took {took:.0f}s to end"
    runs = os.listdir(tmp_path / "exp") if (tmp_path / "exp").exists() else []
    assert len(runs) <= 1


def test_nproc_from_a_folder_holding_a_film_clone(tb, tmp_path, monkeypatch):
    """A folder named film/ next to where film train --nproc runs would shadow the package in the workers
    (python -m film puts the current folder first on sys.path): the workers leave it out (PYTHONSAFEPATH)."""
    from film.train import launch

    (tmp_path / "film").mkdir()
    (tmp_path / "film" / "README.md").write_text("a clone of the repository")
    monkeypatch.chdir(tmp_path)
    seen = {}

    real_popen = subprocess.Popen

    def fake_popen(cmd, env=None, stderr=None):  # the launcher runs the package as the workers would
        seen["env"] = env
        return real_popen([sys.executable, "-m", "film", "--version"], env=env, cwd=tmp_path, stderr=stderr,
                          stdout=subprocess.DEVNULL)

    monkeypatch.setattr(subprocess, "Popen", fake_popen)
    assert launch("torch", "cpu", 2, ["train", "--h5", "x.h5"]) == 0, seen.get("err")
    assert seen["env"]["PYTHONSAFEPATH"] == "1"
