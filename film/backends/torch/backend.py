"""PyTorch backend entry points used by film.api / cli / tests (mirrored by jittor/backend.py)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from film.backends.torch.model import Net
from film.common.checkpoint import validate
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


def set_fast(model: Net) -> Net:
    """Opt-in speed mode: channels_last (NHWC) convolutions, which oneDNN/cuDNN run much faster for the
    depthwise and 1x1 convs that dominate FILM (measured 1.7x on CPU at 288x384). Other kernels mean
    other rounding: outputs stay within 1e-4 of the official float32 network (tests/test_golden.py),
    not bit-for-bit, so it is off by default."""
    model.to(memory_format=torch.channels_last)
    model._film_fast = True
    return model


def load_state_dict(model: Net, state_dict: dict) -> None:
    validate(state_dict, model.cfg, "state dict")
    tensors = OrderedDict(
        (k, torch.from_numpy(np.ascontiguousarray(state_dict[k], dtype=np.float32)))
        for k in param_schema(model.cfg)
    )
    model.load_state_dict(tensors, strict=True)


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
    fmt = torch.channels_last if getattr(model, "_film_fast", False) else torch.contiguous_format
    with torch.inference_mode():
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
