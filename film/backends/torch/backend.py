"""The PyTorch backend: the :class:`film.backends.base.Backend` interface (jittor/backend.py has the same
functions; tests/test_backend_interface.py checks it), plus torch's ``fast_default`` / ``input_format``."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch

from film.backends.torch import workspace
from film.backends.torch.core import (  # noqa: F401 - part of the Backend interface
    FAST_BY_DEFAULT,
    RECOMPUTE_BY_DEFAULT,
    build_model,
    fast_default,
    input_format,
    is_fast,
    load_state_dict,
    precision_of,
    resolve_device,
    resolve_recompute,
    set_fast,
    set_precision,
    state_dict_numpy,
)
from film.backends.torch.model import Net
from film.common.checkpoint import load_weights
from film.common.spec import OFFICIAL, FilmConfig
from film.errors import FilmError

NAME = "torch"


def set_deterministic() -> None:
    """Full float32 matmuls: TF32 changes results at the 1e-3 level, so parity runs turn it off."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


# Peak CPU memory of one forward pass, as shipped (film bench --memory: the line fit over 256x256 ... 768x768,
# benchmarks/results/*_cpu_memory.json, plus a few percent; docs/memory.md). Used by film.api.check_memory.
INFERENCE_FIXED_BYTES = 400 * 2**20  # the 288x384 token grid and the weights, whatever the input size
INFERENCE_BYTES_PER_PIXEL = 8_700


def inference_memory() -> tuple[int, int]:
    return INFERENCE_FIXED_BYTES, INFERENCE_BYTES_PER_PIXEL


# Peak resident memory of a CPU training step (film.common.training.plan_step): fixed + samples per forward x
# per pixel x max(H x W, 288 x 384), per (recompute mode, heap reuse). The line through batch 1 and 2 at 288x384
# measured (then by film bench --train-memory, now scripts/calibrate_train_memory.py; benchmarks/results/2026-12-01_cpu_train_memory.json, AMD EPYC, 2 cores),
# per pixel +5 % (+12 % with the heap reuse on: glibc's heap can grow over more steps), fixed +5 %, at least
# 256 MiB (the heap-on lines extrapolate below zero). tests/test_training_plan.py holds these to the results file.
TRAIN_MEMORY: dict[tuple[str, bool], tuple[int, int]] = {
    ("none", True): (256 * 2**20, 81200),
    ("none", False): (798 * 2**20, 62300),
    ("blocks", True): (256 * 2**20, 42200),
    ("blocks", False): (341 * 2**20, 28500),
    ("all", True): (463 * 2**20, 28600),
    ("all", False): (605 * 2**20, 19800),
}


def train_memory(recompute: str, heap_reuse: bool) -> tuple[int, int]:
    from film.common.training import measured_train_memory

    return measured_train_memory(TRAIN_MEMORY, NAME, recompute, heap_reuse)


def load_model(checkpoint, cfg: FilmConfig | None = None, device: str = "auto"):
    """(model, Checkpoint) from any checkpoint film reads (film.common.checkpoint.load_weights)."""
    ck = load_weights(checkpoint, cfg)
    model = build_model(ck.cfg, ck.state_dict, device)
    if next(model.parameters()).device.type == "cpu":
        workspace.status()  # build / load the CPU workspace now (~3 s once per machine), not in the first fuse
    return model, ck


def forward_numpy(
    model: Net, a: np.ndarray, b: np.ndarray, text: np.ndarray, taps: dict | None = None
) -> np.ndarray:
    """(B,1,H,W), (B,1,H,W), (B,L,D) float32 numpy -> (B,1,H,W) float32 numpy; ``taps`` filled with numpy."""
    p = next(model.parameters())
    dt = np.float64 if p.dtype == torch.float64 else np.float32  # a .double() model is the float64 reference
    raw: dict | None = {} if taps is not None else None
    fmt = input_format(model)
    # on CPU the feature maps are reused from the workspace instead of being faulted in again (workspace.py)
    reuse = workspace.scope() if p.device.type == "cpu" else contextlib.nullcontext()
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision_of(model))
    autocast = torch.autocast(p.device.type, dtype=low) if low is not None else contextlib.nullcontext()
    with reuse, torch.inference_mode(), autocast:
        out = model(
            torch.from_numpy(np.ascontiguousarray(a, dtype=dt)).to(p.device).contiguous(memory_format=fmt),
            torch.from_numpy(np.ascontiguousarray(b, dtype=dt)).to(p.device).contiguous(memory_format=fmt),
            torch.from_numpy(np.ascontiguousarray(text, dtype=dt)).to(p.device),
            taps=raw,
        )
    real = torch.float64 if dt == np.float64 else torch.float32  # bf16 / fp16 results come back as float32
    if taps is not None:
        taps.update({k: np.ascontiguousarray(v.to(real).cpu().numpy()) for k, v in raw.items()})
    return np.ascontiguousarray(out.to(real).cpu().numpy())


def release_memory() -> int:
    """Give the workspace's kept feature maps back to the system (bytes); the next forward maps them anew."""
    return workspace.release()


def describe() -> str:
    cuda = f", CUDA {torch.version.cuda}" if torch.cuda.is_available() else ""
    return f"torch {torch.__version__}{cuda}, CPU workspace {workspace.status()}"


def make_trainer(device: str, model_cfg: FilmConfig = OFFICIAL):
    import sys

    from film.backends.torch.train import Trainer

    trainer = Trainer(device, model_cfg)
    trainer.impl = sys.modules[__name__]  # this Backend (the trainer's memory plan reads its constants)
    return trainer


def check_launcher() -> None:
    """torch trains under torchrun; under OpenMPI's mpirun every rank would train alone on the whole batch
    and write into one run folder."""
    from film.common.launch import mpi_world_size

    if mpi_world_size() > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        raise FilmError(
            f"started by mpirun ({mpi_world_size()} processes): mpirun runs the jittor backend; for torch use "
            "torchrun --nproc_per_node N -m film train ..., or film train --nproc N"
        )


def launch_command(nproc: int, argv: list[str], *, max_restarts: int = 0, export: tuple[str, ...] = ()) -> list[str]:
    """film train --nproc N: the same command under torchrun (DistributedDataParallel); ``max_restarts``: how
    often its elastic agent restarts the whole group after a worker failed (the workers resume from the newest
    checkpoint). The workers inherit the launcher's environment (``export`` is for mpirun)."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            f"--max-restarts={max_restarts}", "-m", "film", *argv]


def prepare_launch(device: str, model_cfg: FilmConfig, cfg) -> None:
    """Nothing to prepare: torch compiles nothing at run time."""


def versions() -> dict:
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "cpu_workspace": workspace.status()}


class _OfficialStyle(torch.nn.Module):
    """``net`` run through film/backends/torch/reference.py's official-style forward (film bench's baseline)."""

    def __init__(self, net: Net):
        super().__init__()
        self.net = net
        self.cfg = net.cfg

    def forward(self, a, b, text, taps=None):
        from film.backends.torch.reference import official_forward

        return official_forward(self.net, a, b, text)


def reference_model(model: Net):
    return _OfficialStyle(model)


def float64_reference(model: Net) -> Net:
    import copy

    return set_fast(copy.deepcopy(model), False).double()


def gpu_memory_mb(reset: bool = False) -> float | None:
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return torch.cuda.max_memory_allocated() / 2**20
