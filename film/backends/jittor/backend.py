"""The Jittor backend: the :class:`film.backends.base.Backend` interface (same functions as torch/backend.py;
tests/test_backend_interface.py checks it)."""

from __future__ import annotations

import numpy as np

from film.backends.jittor.configured import jt
from film.backends.jittor.core import (  # noqa: F401 - part of the Backend interface
    RECOMPUTE_BY_DEFAULT,
    build_model,
    fast_default,
    is_fast,
    load_state_dict,
    resolve_device,
    resolve_recompute,
    set_fast,
    state_dict_numpy,
)
from film.backends.jittor.model import Net
from film.common.checkpoint import load_weights
from film.common.memory import resident_memory
from film.common.spec import OFFICIAL, FilmConfig
from film.errors import FilmError

NAME = "jittor"

# Jittor's allocator keeps the blocks a forward frees and reuses them; they are kept after a forward for the
# next one of the same input shape (given back with jt.gc() before a forward of another shape, by
# release_memory, and when the last Fuser goes away). Giving them back after every forward made each library
# fuse fault its maps in again: 3.3-3.7 s against 2.9 s at 286x517 (docs/benchmarks.md).
_kept_for: tuple | None = None


def set_deterministic() -> None:
    """Jittor has no TF32 switch; its float32 kernels are already full precision."""


def load_model(checkpoint, cfg: FilmConfig | None = None, device: str = "auto"):
    """(model, Checkpoint) from any checkpoint film reads (film.common.checkpoint.load_weights)."""
    ck = load_weights(checkpoint, cfg)
    return build_model(ck.cfg, ck.state_dict, device), ck


def forward_numpy(
    model: Net, a: np.ndarray, b: np.ndarray, text: np.ndarray, taps: dict | None = None
) -> np.ndarray:
    """(B,1,H,W), (B,1,H,W), (B,L,D) float32 numpy -> (B,1,H,W) float32 numpy; ``taps`` filled with numpy."""
    global _kept_for
    shape = np.shape(a)  # the feature maps' sizes follow the images (the text's length barely matters)
    if _kept_for is not None and _kept_for != shape:
        jt.gc()  # the blocks of the last shape go back before this shape's are allocated
    _kept_for = shape
    raw: dict | None = {} if taps is not None else None
    with jt.no_grad():
        out = model(
            jt.array(np.ascontiguousarray(a, dtype=np.float32)),
            jt.array(np.ascontiguousarray(b, dtype=np.float32)),
            jt.array(np.ascontiguousarray(text, dtype=np.float32)),
            taps=raw,
        )
        result = out.numpy()
        if taps is not None:
            taps.update({k: v.numpy() for k, v in raw.items()})
    return result


def set_precision(model, precision: str = "float32"):
    """The Jittor backend runs float32 only (film.common.precision refuses the others in one line)."""
    from film.common.precision import check_precision

    check_precision(precision, "cpu", "jittor", reduced=False)
    return model


def release_memory() -> int:
    """Give the blocks Jittor's allocator keeps for the next forward back to the system (``jt.gc()``); returns
    the drop in resident memory (bytes)."""
    global _kept_for
    before = resident_memory()
    jt.gc()
    _kept_for = None
    after = resident_memory()
    return max(0, before - after) if before is not None and after is not None else 0


def describe() -> str:
    from film.backends.jittor.runtime import onednn_status

    where = " (CUDA)" if jt.flags.use_cuda else f" (CPU, convolutions and matmuls: {onednn_status()})"
    return f"jittor {jt.__version__}{where}"


# Peak CPU memory of one forward pass, as shipped (film bench --memory: the line fit over 256x256 ... 768x768,
# benchmarks/results/*_cpu_memory.json, plus a few percent; docs/memory.md). Used by film.api.check_memory.
INFERENCE_FIXED_BYTES = 400 * 2**20  # the 288x384 token grid and the weights, whatever the input size
INFERENCE_BYTES_PER_PIXEL = 6_000


def inference_memory() -> tuple[int, int]:
    return INFERENCE_FIXED_BYTES, INFERENCE_BYTES_PER_PIXEL


# Peak resident memory of a CPU training step (film.common.training.plan_step): fixed + samples per forward x
# per pixel x max(H x W, 288 x 384), per (recompute mode, heap reuse). The line through batch 1 and 2 at 288x384
# measured (then by film bench --train-memory, now scripts/calibrate_train_memory.py; benchmarks/results/2026-12-01_cpu_train_memory.json, AMD EPYC, 2 cores),
# per pixel +5 % (+12 % with the heap reuse on: glibc's heap can grow over more steps), fixed +5 %, at least
# 256 MiB (the heap-on lines extrapolate below zero). tests/test_training_plan.py holds these to the results file.
TRAIN_MEMORY: dict[tuple[str, bool], tuple[int, int]] = {
    ("none", True): (266 * 2**20, 63300),
    ("none", False): (308 * 2**20, 59200),
    ("blocks", True): (621 * 2**20, 31700),
    ("blocks", False): (685 * 2**20, 29100),
    ("all", True): (502 * 2**20, 38200),
    ("all", False): (565 * 2**20, 35500),
}


def train_memory(recompute: str, heap_reuse: bool) -> tuple[int, int]:
    from film.common.training import measured_train_memory

    return measured_train_memory(TRAIN_MEMORY, NAME, recompute, heap_reuse)


def make_trainer(device: str, model_cfg: FilmConfig = OFFICIAL):
    import sys

    from film.backends.jittor.train import Trainer

    trainer = Trainer(device, model_cfg)
    trainer.impl = sys.modules[__name__]  # this Backend (the trainer's memory plan reads its constants)
    return trainer


def check_launcher() -> None:
    """Jittor trains under mpirun; torchrun's ranks would not share Jittor's gradients."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise FilmError(
            "torchrun starts the torch backend only; Jittor's multi-process training runs under mpirun "
            "(mpirun -np N film train --backend jittor ..., or film train --nproc N; docs/training.md)"
        )


def prepare_launch(device: str, model_cfg: FilmConfig, cfg) -> None:
    """Compile every operator of a training step once, in one process, before the ranks start (they then
    only load finished libraries; train.precompile_training)."""
    from film.backends.jittor.train import precompile_training

    precompile_training(model_cfg, cfg, resolve_device(device))


def launch_command(nproc: int, argv: list[str], *, max_restarts: int = 0, export: tuple[str, ...] = ()) -> list[str]:
    """film train --nproc N: the same command under OpenMPI's mpirun (root: --allow-run-as-root; more
    ranks than cores: --oversubscribe), with the environment variables ``export`` passed to every rank. mpirun
    has no elastic restarts: a failed rank ends the job (resume it with film train --resume)."""
    import os
    import shutil
    import sys

    from film.common.launch import MPI_INSTALL_HINT, mpicc

    if max_restarts:
        raise FilmError("--max-restarts is torchrun's (torch backend): under mpirun a failed rank ends the whole job; "
                        "continue it with film train --resume RUN --nproc N")
    mpirun = shutil.which("mpirun")
    if mpirun is None or mpicc() is None:
        missing = "mpirun" if mpirun is None else "mpicc"
        raise FilmError(
            f"--nproc {nproc} with the jittor backend runs under MPI, but {missing} is not on PATH: {MPI_INSTALL_HINT}"
        )
    cmd = [mpirun, "-np", str(nproc), "-x", "FILM_JITTOR_PRECOMPILED=1", *(f for name in export for f in ("-x", name))]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-run-as-root")  # OpenMPI refuses root without it
    if nproc > (os.cpu_count() or 1):
        cmd.append("--oversubscribe")
    return cmd + [sys.executable, "-m", "film", *argv]


def versions() -> dict:
    from film.backends.jittor.runtime import onednn_status

    return {"jittor": jt.__version__, "jittor_kernels": onednn_status()}


def reference_model(model: Net):
    """Jittor has no restatement of the official code (the official network is torch)."""
    return None


def float64_reference(model: Net) -> None:
    """None: Jittor's compiled kernels (oneDNN, the NHWC loops) are float32 only; film parity uses torch's."""
    return None


def gpu_memory_mb(reset: bool = False) -> float | None:
    return None  # Jittor's CUDA memory is not measured (no GPU session yet)
