"""The Jittor backend: the :class:`film.backends.base.Backend` interface (same functions as torch/backend.py;
tests/test_backend_interface.py checks it)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from film.backends.jittor._jt import jt
from film.backends.jittor.model import Net
from film.common.checkpoint import canonical_state_dict
from film.common.heap import reuse_freed_memory
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
    """Strict load (common canonical_state_dict: ``module.`` stripped, validated, float32); Jittor's own
    load_state_dict only logs problems."""
    arrays = canonical_state_dict(
        state_dict, model.cfg, to_numpy=lambda v: v.numpy() if isinstance(v, jt.Var) else np.asarray(v)
    )
    own = model.state_dict()
    schema = param_schema(model.cfg)
    if set(own) != set(schema):  # a bug in model.py, not in the user's file
        raise RuntimeError(
            f"jittor Net parameters differ from the schema: {sorted(set(own) ^ set(schema))[:10]}"
        )
    for k in schema:
        own[k].assign(jt.array(arrays[k]))
    jt.sync_all()


def state_dict_numpy(model: Net) -> OrderedDict[str, np.ndarray]:
    own = model.state_dict()
    return OrderedDict((k, own[k].numpy().copy()) for k in param_schema(model.cfg))


def forward_numpy(
    model: Net, a: np.ndarray, b: np.ndarray, text: np.ndarray, taps: dict | None = None
) -> np.ndarray:
    """(B,1,H,W), (B,1,H,W), (B,L,D) float32 numpy -> (B,1,H,W) float32 numpy; ``taps`` filled with numpy."""
    raw: dict | None = {} if taps is not None else None
    with reuse_freed_memory(), jt.no_grad():  # film.common.heap: host allocations of the forward
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


def set_fast(model: Net, fast: bool | None = True) -> Net:
    """Jittor's fast inference layout: NHWC feature maps on oneDNN (model.py ``Net.uses_nhwc``). None: the
    default (on when oneDNN runs the convolutions); False: NCHW. Training is NCHW either way."""
    if fast and _onednn_ops() is None:
        raise FilmError("the fast (NHWC) Jittor layout needs oneDNN, which Jittor is not using here: "
                        + _onednn_status())
    model._layout = None if fast is None else ("nhwc" if fast else "nchw")
    return model


def is_fast(model: Net) -> bool:
    return bool(model.uses_nhwc())


def _onednn_ops():
    from film.backends.jittor.ops import onednn

    return onednn()


def _onednn_status() -> str:
    from film.backends.jittor.runtime import onednn_status

    return onednn_status()


def make_trainer(device: str, model_cfg: FilmConfig = OFFICIAL):
    from film.backends.jittor.train import Trainer

    return Trainer(device, model_cfg)


def check_launcher() -> None:
    """Jittor trains under mpirun; torchrun's ranks would not share Jittor's gradients."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise FilmError(
            "torchrun starts the torch backend only; Jittor's multi-process training runs under mpirun "
            "(mpirun -np N film train --backend jittor ..., or film train --nproc N; docs/training.md)"
        )


def launch_command(nproc: int, argv: list[str]) -> list[str]:
    """film train --nproc N: the same command under OpenMPI's mpirun (root: --allow-run-as-root; more
    ranks than cores: --oversubscribe)."""
    import os
    import shutil
    import sys

    from film.backends.jittor.runtime import MPI_INSTALL_HINT, mpicc

    mpirun = shutil.which("mpirun")
    if mpirun is None or mpicc() is None:
        missing = "mpirun" if mpirun is None else "mpicc"
        raise FilmError(
            f"--nproc {nproc} with the jittor backend runs under MPI, but {missing} is not on PATH: {MPI_INSTALL_HINT}"
        )
    cmd = [mpirun, "-np", str(nproc)]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-run-as-root")  # OpenMPI refuses root without it
    if nproc > (os.cpu_count() or 1):
        cmd.append("--oversubscribe")
    return cmd + [sys.executable, "-m", "film", *argv]


def versions() -> dict:
    return {"jittor": jt.__version__, "jittor_kernels": _onednn_status()}


def fast_default(device: str) -> bool:
    """The NHWC inference layout is the default wherever oneDNN runs Jittor's convolutions."""
    return _onednn_ops() is not None


def reference_model(model: Net):
    """Jittor has no restatement of the official code (the official network is torch)."""
    return None


def gpu_memory_mb(reset: bool = False) -> float | None:
    return None  # Jittor's CUDA memory is not measured (no GPU session yet)
