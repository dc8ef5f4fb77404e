"""The Jittor backend's model plumbing: device, building and loading a Net, its layout (NHWC on oneDNN) and
recompute defaults. Imported by backend.py (the Backend interface) and train.py (the Trainer), so that neither
imports the other (torch/core.py has the same names)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from film.backends.jittor.configured import jt
from film.backends.jittor.kernels import onednn
from film.backends.jittor.model import Net
from film.common.recompute import check_mode
from film.common.spec import OFFICIAL, FilmConfig, param_schema
from film.errors import FilmError


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


def build_model(cfg: FilmConfig = OFFICIAL, state_dict: dict | None = None, device: str = "auto") -> Net:
    resolve_device(device)
    model = Net(cfg)
    if state_dict is not None:
        load_state_dict(model, state_dict)
    model.eval()
    return model


def load_state_dict(model: Net, state_dict: dict) -> None:
    """Strict load (``Net.load_state_dict``: every schema tensor, nothing else, every shape, float32)."""
    model.load_state_dict(state_dict)


def state_dict_numpy(model: Net) -> OrderedDict[str, np.ndarray]:
    own = model.state_dict()
    return OrderedDict((k, own[k].numpy().copy()) for k in param_schema(model.cfg))


def _onednn_status() -> str:
    from film.backends.jittor.runtime import onednn_status

    return onednn_status()


def set_fast(model: Net, fast: bool | None = True) -> Net:
    """Jittor's fast layout: NHWC feature maps on oneDNN (model.py ``Net.uses_nhwc``), for inference and
    training. None: the default (on when oneDNN runs the convolutions); False: NCHW."""
    if fast and onednn() is None:
        raise FilmError("the fast (NHWC) Jittor layout needs oneDNN, which Jittor is not using here: "
                        + _onednn_status())
    model._layout = None if fast is None else ("nhwc" if fast else "nchw")
    return model


# film train --recompute auto, per device: measured on CPU at batch 2, 288x384 (docs/training.md; peak RSS
# from benchmarks/results/2026-12-01_cpu_train_memory.json): none 12.2 GB, blocks 6.5 GB, all 7.7 GB ("all"
# holds more than "blocks" in Jittor, unlike torch; the cause is not pinned down yet), at about the same step
# time; CUDA not measured yet (no GPU session), the same until then.
RECOMPUTE_BY_DEFAULT = {"cpu": "blocks", "cuda": "blocks"}


def resolve_recompute(mode: str, device: str) -> str:
    """film train --recompute auto -> the measured default of the device (``RECOMPUTE_BY_DEFAULT``)."""
    return RECOMPUTE_BY_DEFAULT.get(device, "blocks") if mode == "auto" else check_mode(mode)


def is_fast(model: Net) -> bool:
    return bool(model.uses_nhwc())


def fast_default(device: str) -> bool:
    """The NHWC inference layout is the default wherever oneDNN runs Jittor's convolutions."""
    return onednn() is not None
