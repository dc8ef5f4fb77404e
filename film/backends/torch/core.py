"""The PyTorch backend's model plumbing: device, building and loading a Net, its layout (channels_last) and
recompute defaults. Imported by backend.py (the Backend interface) and train.py (the Trainer), so that neither
imports the other (jittor/core.py has the same names)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from film.backends.torch.model import Net
from film.common.checkpoint import canonical_state_dict
from film.common.recompute import check_mode
from film.common.spec import OFFICIAL, FilmConfig, param_schema
from film.errors import FilmError


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FilmError(f"device {device!r} requested but torch sees no CUDA GPU")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise FilmError(f"unknown device {device!r} ({e})") from None


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


# film train --recompute auto, per device type. CPU: measured at batch 2, 288x384 (docs/training.md): none
# 11.8 s / 18.9 GB, blocks 11.9 s / 8.8 GB, all 12.5 s / 6.3 GB peak RSS; all halves the official code's peak
# with room to spare for a fraction of the time. CUDA: not measured yet (no GPU session); the same until then.
RECOMPUTE_BY_DEFAULT = {"cpu": "all", "cuda": "all"}


def resolve_recompute(mode: str, device: str) -> str:
    """film train --recompute auto -> the measured default of the device type (``RECOMPUTE_BY_DEFAULT``)."""
    return RECOMPUTE_BY_DEFAULT.get(device, "all") if mode == "auto" else check_mode(mode)


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


def set_precision(model: Net, precision: str = "float32") -> Net:
    """Inference precision (film.common.precision): float32 (default), or bf16 / fp16 through torch autocast
    where the device runs them natively; refused in one line elsewhere."""
    from film.common.precision import check_precision

    model._film_precision = check_precision(precision, next(model.parameters()).device.type, "torch")
    return model


def precision_of(model) -> str:
    return getattr(model, "_film_precision", "float32")


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
