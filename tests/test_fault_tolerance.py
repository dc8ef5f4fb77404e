"""Training that survives faults (issue 38): mid-epoch checkpoints, a run killed at any moment and resumed to the
weights of the uninterrupted run, torchrun's elastic restarts, mpirun ending a job whose rank died, several
launchers as several machines, and a full disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import run_group
from test_parity_train import _tiny_h5

from film.common.atomic import TEMP_PREFIX
from film.common.init import random_state_dict
from film.common.spec import TINY
from film.common.training import RunConfig, StepConfig, train

STEP = StepConfig(batch_size=2, lr=1e-3, step_size=2, gamma=0.5)
EXT = {"torch": ".pth", "jittor": ".pkl"}


def _weights(path: str) -> dict:
    from film.common.checkpoint import read_raw, unwrap

    return unwrap(read_raw(path))[0]


def _records(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "losses.jsonl")) as f:
        return [json.loads(line) for line in f]


def _init(tmp_path, seed: int = 4) -> str:
    from safetensors.numpy import save_file

    path = str(tmp_path / "init.safetensors")
    save_file(dict(random_state_dict(TINY, seed=seed)), path)
    return path


def _same(a: dict, b: dict, exact: bool, atol: float = 1e-6) -> None:
    assert set(a) == set(b)
    for k in a:
        if exact:
            assert a[k].tobytes() == b[k].tobytes(), k
        else:
            assert float(np.abs(a[k] - b[k]).max()) <= atol, k


def test_step_checkpoints_keep_the_newest_two_and_give_way_to_the_epoch_checkpoint(tb, tmp_path):
    """--save-every 1 over an epoch of 4 steps: after each mid-epoch save only the newest two step_<step> files are
    there (the older one removed after the new one is complete); the epoch's ckpt_1 supersedes them."""
    from film.train import make_trainer

    h5 = tmp_path / "d.h5"
    _tiny_h5(h5, n=8)
    trainer = make_trainer("torch", "cpu", TINY)
    real_save, seen = trainer.save, []

    def save(path, epoch, step, batch=None):  # what the folder holds before each save: the last one's outcome
        seen.append((os.path.basename(path), batch, sorted(os.listdir(os.path.dirname(path)))))
        real_save(path, epoch, step, batch)

    trainer.save = save
    run = train(RunConfig(h5=str(h5), step=STEP, out=str(tmp_path / "exp"), epochs=1, device="cpu", save_every=1,
                          init=_init(tmp_path)), trainer)
    assert seen == [
        ("step_1.pth", 1, []),
        ("step_2.pth", 2, ["step_1.pth"]),
        ("step_3.pth", 3, ["step_1.pth", "step_2.pth"]),
        ("ckpt_1.pth", None, ["step_2.pth", "step_3.pth"]),  # the epoch's last step: the epoch's checkpoint
    ]
    assert os.listdir(os.path.join(run, "model")) == ["ckpt_1.pth"]


class _Killed(BaseException):
    """Stands in for a kill in the in-process test (not an Exception: nothing catches it on the way)."""


@pytest.mark.parametrize("backend,exact", [("torch", True), ("jittor", False)])
def test_resume_from_a_mid_epoch_checkpoint_equals_the_uninterrupted_run(request, tmp_path, backend, exact):
    """A run stopped in the middle of its second epoch (after its step 6 of 4 per epoch, the last checkpoint at
    step 5: --save-every 5), resumed with --resume, ends with the uninterrupted run's weights (torch bit for
    bit) and a loss record of one line per step."""
    request.getfixturevalue("tb" if backend == "torch" else "jb")
    from film.train import make_trainer

    h5 = tmp_path / "d.h5"
    _tiny_h5(h5, n=8)
    init = _init(tmp_path)

    def cfg(out, **kw):
        return RunConfig(h5=str(h5), step=STEP, backend=backend, out=str(tmp_path / out), epochs=3, device="cpu",
                         save_every=5, **kw)

    full = train(cfg("full", init=init), make_trainer(backend, "cpu", TINY))
    trainer = make_trainer(backend, "cpu", TINY)
    real_step, steps = trainer.step, []

    def step(*a):
        if len(steps) == 7:  # killed after 7 steps: two past the checkpoint at step 5
            raise _Killed
        steps.append(1)
        return real_step(*a)

    trainer.step = step
    with pytest.raises(_Killed):
        train(cfg("part", init=init), trainer)
    (part,) = [os.path.join(tmp_path, "part", d) for d in os.listdir(tmp_path / "part")]
    assert sorted(os.listdir(os.path.join(part, "model"))) == ["ckpt_1" + EXT[backend], "step_5" + EXT[backend]]
    assert [r["step"] for r in _records(part)] == list(range(7))  # logged past the checkpoint, as a kill leaves it
    train(cfg("part", resume=part), make_trainer(backend, "cpu", TINY))
    assert [r["step"] for r in _records(part)] == list(range(12))
    np.testing.assert_allclose([r["loss"] for r in _records(part)], [r["loss"] for r in _records(full)],
                               rtol=0 if exact else 1e-5)
    ext = EXT[backend]
    _same(_weights(os.path.join(full, "model", f"ckpt_3{ext}")), _weights(os.path.join(part, "model", f"ckpt_3{ext}")),
          exact)
    assert sorted(os.listdir(os.path.join(part, "model"))) == [f"ckpt_{e}{ext}" for e in (1, 2, 3)]


def test_a_failed_step_checkpoint_keeps_the_last_good_one(tb, tmp_path, monkeypatch):
    """A full disk while writing a mid-epoch checkpoint: one message naming the file; the previous step checkpoint
    stays whole and loadable, no temporary file is left, and --resume continues from it."""
    import torch

    from film.errors import FilmError
    from film.train import make_trainer

    h5 = tmp_path / "d.h5"
    _tiny_h5(h5, n=8)
    real_save = torch.save
    calls = []

    def full_disk(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    cfg = RunConfig(h5=str(h5), step=STEP, out=str(tmp_path / "exp"), epochs=1, device="cpu", save_every=1,
                    init=_init(tmp_path))
    with pytest.raises(FilmError, match="step_2.pth: could not write .No space left on device"):
        train(cfg, make_trainer("torch", "cpu", TINY))
    monkeypatch.setattr(torch, "save", real_save)
    (run,) = [os.path.join(tmp_path, "exp", d) for d in os.listdir(tmp_path / "exp")]
    assert os.listdir(os.path.join(run, "model")) == ["step_1.pth"]
    assert len(_weights(os.path.join(run, "model", "step_1.pth"))) == len(random_state_dict(TINY))
    train(RunConfig(h5=str(h5), step=STEP, out=str(tmp_path / "exp"), epochs=1, device="cpu", resume=run),
          make_trainer("torch", "cpu", TINY))
    assert [r["step"] for r in _records(run)] == [0, 1, 2, 3]


def test_an_unwritable_run_folder_stops_with_one_line(capsys, tb, tmp_path):
    """--out under a file: one line, exit 2, nothing written (checked before the first step)."""
    from conftest import run_cli

    h5 = tmp_path / "d.h5"
    _tiny_h5(h5, n=8)
    (tmp_path / "file").write_text("not a folder")
    code, text = run_cli(capsys, "train", "--h5", h5, "--config", "tiny", "--device", "cpu", "--out",
                         tmp_path / "file" / "exp")
    assert code == 2 and len([ln for ln in text.splitlines() if "error" in ln]) == 1, text


# --------------------------------------------------------------------------- real processes, real kills


def _film(*args) -> list[str]:
    return [sys.executable, "-m", "film", *map(str, args)]


def _wait_for_steps(out: str, lines: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    """Wait until the run under ``out`` has logged ``lines`` steps (its losses.jsonl), failing the test when the job
    ends first or the time runs out."""
    import glob

    t0 = time.time()
    while time.time() - t0 < timeout:
        for path in glob.glob(os.path.join(out, "*", "losses.jsonl")):
            with open(path) as f:
                if sum(1 for _ in f) >= lines:
                    return
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before it logged {lines} steps")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"no {lines} logged steps within {timeout:.0f}s")


def _kill_when(proc: subprocess.Popen, out: str, lines: int) -> None:
    """SIGKILL the whole process group of ``proc`` once its run under ``out`` has logged ``lines`` steps."""
    _wait_for_steps(out, lines, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("backend,exact", [("torch", True), ("jittor", False)])
def test_sigkill_then_resume_equals_the_uninterrupted_run(request, tmp_path, backend, exact):
    """`film train` killed with SIGKILL in its second epoch (whatever it was doing: a step, the loss record, a
    checkpoint write), then `film train --resume RUN`: the same weights as the uninterrupted run (torch bit for
    bit, Jittor within 1e-6) and a loss record with exactly one line per step."""
    request.getfixturevalue("tb" if backend == "torch" else "jb")
    h5 = tmp_path / "d.h5"
    _tiny_h5(h5, n=8)
    common = ["train", "--backend", backend, "--h5", h5, "--config", "tiny", "--device", "cpu", "--epochs", "3",
              "--batch-size", "2", "--lr", "1e-3", "--save-every", "2", "--init", _init(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = run_group(_film(*common, "--out", tmp_path / "full"), 600, env)
    assert p.returncode == 0, p.stderr[-3000:]
    (full,) = [os.path.join(tmp_path, "full", d) for d in os.listdir(tmp_path / "full")]
    for kill_after in (5, 9):  # mid-epoch 2 (one past its step-4 checkpoint), and in epoch 3
        out = tmp_path / f"killed_{kill_after}"
        proc = subprocess.Popen(_film(*common, "--out", out), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        _kill_when(proc, str(out), kill_after)
        (run,) = [os.path.join(out, d) for d in os.listdir(out)]
        p = run_group(_film("train", "--resume", run, "--config", "tiny", "--device", "cpu"), 600, env)
        assert p.returncode == 0, p.stderr[-3000:]
        assert "resuming" in p.stderr
        assert [r["step"] for r in _records(run)] == list(range(12))
        ext = EXT[backend]
        _same(_weights(os.path.join(full, "model", f"ckpt_3{ext}")),
              _weights(os.path.join(run, "model", f"ckpt_3{ext}")), exact)
        assert not [f for f in os.listdir(os.path.join(run, "model")) if f.startswith(TEMP_PREFIX)]


def _worker_pids(out_dir: str, rank: int) -> list[int]:
    """The film train processes with this RANK / OMPI_COMM_WORLD_RANK whose command line names ``out_dir``."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
        except OSError:
            continue
        if out_dir.encode() in cmd and b"film" in cmd and (
                env.get(b"RANK") == str(rank).encode() or env.get(b"OMPI_COMM_WORLD_RANK") == str(rank).encode()):
            pids.append(int(pid))
    return pids


def _kill_rank_when(out: str, rank: int, lines: int, proc: subprocess.Popen) -> None:
    """SIGKILL the worker of ``rank`` (only it) once the job's run under ``out`` has logged ``lines`` steps."""
    _wait_for_steps(out, lines, proc)
    pids = _worker_pids(out, rank)
    assert pids, f"no rank {rank} worker found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def _like_one_process(run: str, single: str, ext: str, lr: float, steps: int) -> None:
    """A data-parallel run against the same training in one process: the first step's loss to float rounding (the
    same weights and batch; the gradient is then an average of two half-batch means), and every weight within
    Adam's sign-noise envelope (a rounding-level gradient of either sign moves an element by up to lr per step:
    measured on this tiny network at lr 1e-3, 12 steps: up to 7.5e-3 apart)."""
    assert _records(run)[0]["loss"] == pytest.approx(_records(single)[0]["loss"], rel=1e-5)
    a = _weights(os.path.join(run, "model", f"ckpt_{steps // 4}{ext}"))
    b = _weights(os.path.join(single, "model", f"ckpt_{steps // 4}{ext}"))
    for k in a:
        assert float(np.abs(a[k] - b[k]).max()) <= 2 * lr * steps, k


@pytest.mark.slow
def test_elastic_restart_after_a_killed_worker(tb, tmp_path):
    """`film train --nproc 2 --max-restarts 1` with rank 1 killed by SIGKILL in the second epoch: torchrun restarts
    the group, the workers resume the same run folder from its newest checkpoint on their own, and the job ends
    with exit 0, one loss line per step, and the weights of the same training in one process. Without restarts
    left, the job ends with one line naming the failed rank."""
    h5 = tmp_path / "d.h5"
    _tiny_h5(h5, n=8)
    common = ["train", "--backend", "torch", "--h5", h5, "--config", "tiny", "--device", "cpu", "--epochs", "3",
              "--batch-size", "2", "--lr", "1e-3", "--save-every", "2", "--init", _init(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = run_group(_film(*common, "--out", tmp_path / "single"), 600, env)
    assert p.returncode == 0, p.stderr[-3000:]
    (single,) = [os.path.join(tmp_path, "single", d) for d in os.listdir(tmp_path / "single")]
    p = run_group(_film(*common, "--nproc", "2", "--out", tmp_path / "ddp"), 600, env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Grad strides do not match bucket view strides" not in p.stderr
    (ddp,) = [os.path.join(tmp_path, "ddp", d) for d in os.listdir(tmp_path / "ddp")]
    out = str(tmp_path / "elastic")
    proc = subprocess.Popen(_film(*common, "--nproc", "2", "--max-restarts", "1", "--out", out), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _kill_rank_when(out, 1, 5, proc)
    try:
        stdout, stderr = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the restarted job did not finish")
    assert proc.returncode == 0, stderr[-3000:]
    (run,) = [os.path.join(out, d) for d in os.listdir(out)]
    assert [r["step"] for r in _records(run)] == list(range(12))
    # the uninterrupted 2-process run's weights (measured: identical), and one process's up to DDP's rounding
    _same(_weights(os.path.join(run, "model", "ckpt_3.pth")), _weights(os.path.join(ddp, "model", "ckpt_3.pth")),
          exact=False, atol=1e-6)
    _like_one_process(run, single, ".pth", 1e-3, 12)
    # no restarts left: one line naming the rank that failed
    out = str(tmp_path / "no_restarts")
    proc = subprocess.Popen(_film(*common, "--nproc", "2", "--out", out), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    _kill_rank_when(out, 1, 3, proc)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode != 0
    last = [ln for ln in stderr.splitlines() if ln.startswith("film train: the 2-process job failed")]
    assert len(last) == 1 and "rank 1 failed" in last[0] and "--resume" in last[0], stderr[-3000:]


@pytest.mark.slow
def test_two_torchrun_nodes_on_one_machine(tb, tmp_path):
    """Two torchrun launchers as two machines (--nnodes 2, c10d rendezvous on localhost, one process each) train
    to the weights of one process (up to DDP's rounding and Adam's sign noise)."""
    import socket

    h5 = tmp_path / "d.h5"
    _tiny_h5(h5, n=8)
    common = ["train", "--backend", "torch", "--h5", h5, "--config", "tiny", "--device", "cpu", "--epochs", "2",
              "--batch-size", "2", "--lr", "1e-3", "--init", _init(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = run_group(_film(*common, "--out", tmp_path / "single"), 600, env)
    assert p.returncode == 0, p.stderr[-3000:]
    (single,) = [os.path.join(tmp_path, "single", d) for d in os.listdir(tmp_path / "single")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(r),
                               "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                               f"127.0.0.1:{port}", "--rdzv-id", "film-test", "-m", "film", *map(str, common),
                               "--out", str(tmp_path / "nodes")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True) for r in (0, 1)]
    for node in nodes:
        try:
            _, err = node.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for n in nodes:
                os.killpg(n.pid, signal.SIGKILL)
            pytest.fail("the two-node job did not finish")
        assert node.returncode == 0, err[-3000:]
        assert "Grad strides do not match bucket view strides" not in err
    (run,) = [os.path.join(tmp_path, "nodes", d) for d in os.listdir(tmp_path / "nodes")]
    assert json.load(open(os.path.join(run, "param.json")))["world_size"] == 2
    assert [r["step"] for r in _records(run)] == list(range(8))
    _like_one_process(run, single, ".pth", 1e-3, 8)


def _mpi_or_skip():
    from test_parity_train import _mpi_skip_reason

    reason = _mpi_skip_reason()
    if reason:
        pytest.skip(reason)


@pytest.mark.slow
def test_mpirun_killed_rank_ends_the_job_and_resume_continues_it(jb, tmp_path):
    """Jittor under mpirun (film train --nproc 2): a rank killed with SIGKILL ends the whole job within 60 s with one
    line naming it; `film train --resume RUN --nproc 2` continues it to the weights of the uninterrupted 2-process
    run. And mpirun with a hostfile naming localhost for two slots (how several machines are given) trains as
    film train --nproc 2 does."""
    _mpi_or_skip()
    h5 = tmp_path / "d.h5"
    _tiny_h5(h5, n=8)
    common = ["train", "--backend", "jittor", "--h5", h5, "--config", "tiny", "--device", "cpu", "--epochs", "3",
              "--batch-size", "2", "--lr", "1e-3", "--save-every", "2", "--init", _init(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = run_group(_film(*common, "--nproc", "2", "--out", tmp_path / "full"), 900, env)
    assert p.returncode == 0, p.stderr[-3000:]
    (full,) = [os.path.join(tmp_path, "full", d) for d in os.listdir(tmp_path / "full")]
    out = str(tmp_path / "killed")
    proc = subprocess.Popen(_film(*common, "--nproc", "2", "--out", out), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    _kill_rank_when(out, 1, 5, proc)
    t0 = time.time()
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the job went on for more than 60 s after one of its ranks was killed")
    assert proc.returncode != 0 and time.time() - t0 <= 60
    last = [ln for ln in stderr.splitlines() if ln.startswith("film train: the 2-process job failed")]
    assert len(last) == 1 and "rank 1 failed" in last[0], stderr[-3000:]
    (run,) = [os.path.join(out, d) for d in os.listdir(out)]
    p = run_group(_film("train", "--resume", run, "--nproc", "2", "--config", "tiny", "--device", "cpu"), 900, env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert [r["step"] for r in _records(run)] == list(range(12))
    _same(_weights(os.path.join(full, "model", "ckpt_3.pkl")), _weights(os.path.join(run, "model", "ckpt_3.pkl")),
          exact=False)
    # a hostfile naming localhost for two slots: mpirun as on several machines
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost slots=2\n")
    from film.backends.registry import get_backend

    mpi = get_backend("jittor", "cpu").launch_command(2, [])[:-3] + ["--hostfile", str(hostfile)]
    p = run_group(mpi + _film(*common, "--out", tmp_path / "hosts_run"), 900, env)
    assert p.returncode == 0, p.stderr[-3000:]
    (hosts_run,) = [os.path.join(tmp_path, "hosts_run", d) for d in os.listdir(tmp_path / "hosts_run")]
    _same(_weights(os.path.join(full, "model", "ckpt_3.pkl")), _weights(os.path.join(hosts_run, "model", "ckpt_3.pkl")),
          exact=False)
