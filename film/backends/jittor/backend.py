"""Jittor backend entry points used by film.api / cli / tests (mirrors torch/backend.py)."""

from __future__ import annotations

from collections import OrderedDict

import jittor as jt
import numpy as np

from film.backends.jittor.model import Net
from film.common.checkpoint import validate
from film.common.spec import OFFICIAL, FilmConfig, param_schema
from film.errors import FilmError

NAME = "jittor"


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        device = "cuda" if jt.has_cuda else "cpu"
    if device.startswith("cuda"):
        if not jt.has_cuda:
            raise FilmError(f"device {device!r} requested but Jittor was built without CUDA")
        jt.flags.use_cuda = 1
        return "cuda"
    if device != "cpu":
        raise FilmError(f"unknown device {device!r} for the jittor backend (cpu or cuda)")
    jt.flags.use_cuda = 0
    return "cpu"


def set_deterministic() -> None:
    """Jittor has no TF32 switch; its float32 kernels are already full precision."""


def build_model(cfg: FilmConfig = OFFICIAL, state_dict: dict | None = None, device: str = "auto") -> Net:
    resolve_device(device)
    model = Net(cfg)
    if state_dict is not None:
        load_state_dict(model, state_dict)
    model.eval()
    return model


def load_state_dict(model: Net, state_dict: dict) -> None:
    """Strict load: raises FilmError listing missing / unexpected / mis-shaped tensors."""
    if not isinstance(state_dict, dict):
        raise FilmError(f"expected a dict of tensors, got {type(state_dict).__name__}")
    arrays = {k: v.numpy() if isinstance(v, jt.Var) else np.asarray(v) for k, v in state_dict.items()}
    arrays = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in arrays.items()}
    validate(arrays, model.cfg, "state dict")
    own = model.state_dict()
    schema = param_schema(model.cfg)
    if set(own) != set(schema):  # a bug in model.py, not in the user's file
        raise RuntimeError(
            f"jittor Net parameters differ from the schema: {sorted(set(own) ^ set(schema))[:10]}"
        )
    for k in schema:
        own[k].assign(jt.array(np.ascontiguousarray(arrays[k], dtype=np.float32)))
    jt.sync_all()


def state_dict_numpy(model: Net) -> OrderedDict[str, np.ndarray]:
    own = model.state_dict()
    return OrderedDict((k, own[k].numpy().copy()) for k in param_schema(model.cfg))


def forward_numpy(
    model: Net, a: np.ndarray, b: np.ndarray, text: np.ndarray, taps: dict | None = None
) -> np.ndarray:
    """(B,1,H,W), (B,1,H,W), (B,L,D) float32 numpy -> (B,1,H,W) float32 numpy; ``taps`` filled with numpy."""
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
    jt.gc()
    return result


def describe() -> str:
    from film.backends.jittor.runtime import onednn_status

    where = " (CUDA)" if jt.flags.use_cuda else f" (CPU, convolutions and matmuls: {onednn_status()})"
    return f"jittor {jt.__version__}{where}"
