"""The PyTorch backend: the :class:`film.backends.base.Backend` interface (jittor/backend.py has the same
functions; tests/test_backend_interface.py checks it), plus torch's ``fast_default`` / ``input_format``."""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict

import numpy as np
import torch

from film.backends.torch.model import Net
from film.common.checkpoint import canonical_state_dict
from film.common.heap import reuse_freed_memory
from film.common.spec import OFFICIAL, FilmConfig, param_schema
from film.errors import FilmError

NAME = "torch"


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FilmError(f"device {device!r} requested but torch sees no CUDA GPU")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise FilmError(f"unknown device {device!r} ({e})") from None


def set_deterministic() -> None:
    """Full float32 matmuls: TF32 changes results at the 1e-3 level, so parity runs turn it off."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def build_model(cfg: FilmConfig = OFFICIAL, state_dict: dict | None = None, device: str = "auto") -> Net:
    """A ``Net`` in eval mode on ``device``; ``state_dict`` (numpy, canonical names) is loaded strictly."""
    model = Net(cfg)
    if state_dict is not None:
        load_state_dict(model, state_dict)
    return model.to(resolve_device(device)).eval()


# Whether load_fuser / film fuse use channels_last by default, per device type. CPU: measured 1.5-1.8x the
# official-style forward at 288x384-480x640, 4-8e-6 from its output (benchmarks/results, tests/test_golden.py).
# CUDA: not measured yet (no GPU session so far) -- `film bench --device cuda` times both layouts; flip it
# here when channels_last wins there too.
FAST_BY_DEFAULT = {"cpu": True, "cuda": False}


def fast_default(device: str | torch.device) -> bool:
    return FAST_BY_DEFAULT.get(torch.device(device if device != "auto" else resolve_device()).type, False)


def set_fast(model: Net, fast: bool | None = True) -> Net:
    """``fast``: True, False, or None for the device's default (``FAST_BY_DEFAULT``). Speed mode: channels_last (NHWC) convolutions, which oneDNN runs much faster than NCHW for the
    depthwise and 1x1 convs that dominate FILM. The reductions over H*W in the attention are made on
    contiguous copies and LayerNorm is the fused kernel on an NHWC view (``ops.py``), so outputs stay
    4-8e-6 from the official-style float32 forward (same order as its own float32 error), not bit-for-bit."""
    if fast is None:
        fast = fast_default(next(model.parameters()).device)
    model.to(memory_format=torch.channels_last if fast else torch.contiguous_format)
    model._film_fast = fast
    return model


def is_fast(model: Net) -> bool:
    return bool(getattr(model, "_film_fast", False))


def input_format(model: Net) -> torch.memory_format:
    """The layout the model's image inputs should have (channels_last in fast mode)."""
    return torch.channels_last if is_fast(model) else torch.contiguous_format


def load_state_dict(model: Net, state_dict: dict) -> None:
    """Strict load (common canonical_state_dict: ``module.`` stripped, validated, float32)."""
    arrays = canonical_state_dict(
        state_dict, model.cfg, to_numpy=lambda v: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    )
    model.load_state_dict(OrderedDict((k, torch.from_numpy(v)) for k, v in arrays.items()), strict=True)


def state_dict_numpy(model: Net) -> OrderedDict[str, np.ndarray]:
    sd = model.state_dict()
    return OrderedDict((k, sd[k].detach().cpu().numpy().copy()) for k in param_schema(model.cfg))


def forward_numpy(
    model: Net, a: np.ndarray, b: np.ndarray, text: np.ndarray, taps: dict | None = None
) -> np.ndarray:
    """(B,1,H,W), (B,1,H,W), (B,L,D) float32 numpy -> (B,1,H,W) float32 numpy; ``taps`` filled with numpy."""
    p = next(model.parameters())
    dt = np.float64 if p.dtype == torch.float64 else np.float32  # a .double() model is the float64 reference
    raw: dict | None = {} if taps is not None else None
    fmt = input_format(model)
    # film.common.heap: the official-style baseline (film bench) runs with glibc's defaults, as the official code
    keep = reuse_freed_memory() if p.device.type == "cpu" and isinstance(model, Net) else contextlib.nullcontext()
    with keep, torch.inference_mode():
        out = model(
            torch.from_numpy(np.ascontiguousarray(a, dtype=dt)).to(p.device).contiguous(memory_format=fmt),
            torch.from_numpy(np.ascontiguousarray(b, dtype=dt)).to(p.device).contiguous(memory_format=fmt),
            torch.from_numpy(np.ascontiguousarray(text, dtype=dt)).to(p.device),
            taps=raw,
        )
    if taps is not None:
        taps.update({k: np.ascontiguousarray(v.cpu().numpy()) for k, v in raw.items()})
    return np.ascontiguousarray(out.cpu().numpy())


def describe() -> str:
    cuda = f", CUDA {torch.version.cuda}" if torch.cuda.is_available() else ""
    return f"torch {torch.__version__}{cuda}"


def make_trainer(device: str, model_cfg: FilmConfig = OFFICIAL):
    from film.backends.torch.train import Trainer

    return Trainer(device, model_cfg)


def check_launcher() -> None:
    """torch trains under torchrun; under OpenMPI's mpirun every rank would train alone on the whole batch
    and write into one run folder."""
    from film.backends.jittor.runtime import mpi_world_size  # framework-free

    if mpi_world_size() > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        raise FilmError(
            f"started by mpirun ({mpi_world_size()} processes): mpirun runs the jittor backend; for torch use "
            "torchrun --nproc_per_node N -m film train ..., or film train --nproc N"
        )


def launch_command(nproc: int, argv: list[str]) -> list[str]:
    """film train --nproc N: the same command under torchrun (DistributedDataParallel)."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "film", *argv]


def versions() -> dict:
    return {"torch": torch.__version__, "cuda": torch.version.cuda}


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


def gpu_memory_mb(reset: bool = False) -> float | None:
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return torch.cuda.max_memory_allocated() / 2**20
