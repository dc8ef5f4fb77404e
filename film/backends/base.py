"""The one interface both backends implement: ``film/backends/<name>/backend.py`` (module-level functions).

Callers get a backend from :func:`film.backends.registry.get_backend` and use only these names; nothing
outside ``film/backends/`` branches on a backend's name. tests/test_backend_interface.py checks that both
modules define every member with the same parameters. Anchors: einops' ``_backends.py`` (one abstract
backend, one implementation per framework) and Keras 3's ``keras/src/backend/<name>/``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Protocol

import numpy as np

from film.common.spec import FilmConfig


class Trainer(Protocol):
    """One backend's side of ``film train`` (``film/backends/<name>/train.py``); the loop is common/training.py."""

    ext: str  # checkpoint extension: .pth (official training dict) or .pkl (jt.save layout)
    model_cfg: FilmConfig
    rank: int
    world: int  # processes (torchrun / mpirun); rank 0 alone writes

    impl: Any  # the Backend module this trainer belongs to
    device_type: str  # "cpu" or "cuda"
    model: Any  # the network being trained (after build)
    forward: Any  # what step() calls for the forward pass: the model, its DDP wrapper, or film bench's baseline

    def setup(self, cfg, init: str | None = None) -> None: ...  # model + optimizer from init, or drawn from cfg.seed

    # micro-batch, recompute and heap policy of a step for this machine (film.common.training.plan_step)
    def plan(self, cfg, batch: int, h: int, w: int) -> Any: ...

    def build(self, cfg, init_sd: dict | None = None) -> None: ...  # init_sd: a numpy state dict, or random

    def set_lr(self, lr: float) -> None: ...

    def step(self, a: np.ndarray, b: np.ndarray, t: np.ndarray, cfg) -> tuple[float, dict, np.ndarray]: ...

    def gradients(self, a: np.ndarray, b: np.ndarray, t: np.ndarray, cfg) -> tuple[float, dict]: ...

    def params_numpy(self) -> dict: ...

    # a resumable checkpoint: after ``step`` steps in all; ``batch``: batches done of the 0-based ``epoch`` (a
    # mid-epoch checkpoint), None at the end of that epoch (the official ckpt_<epoch> layout)
    def save(self, path: str, epoch: int, step: int, batch: int | None = None) -> None: ...

    # {"epoch", "step", "batch"} of the checkpoint (batch None: at the end of that epoch); cfg: the step options
    def load_resume(self, path: str, cfg) -> dict: ...

    def share(self, obj: str) -> str: ...  # rank 0's string on every rank

    def barrier(self) -> None: ...

    def scalar_writer(self, run_dir: str) -> Any: ...  # TensorBoard-like writer or None

    def close(self) -> None: ...  # end the process group, if any


class Backend(Protocol):
    """What ``get_backend(name)`` returns (the backend module)."""

    NAME: str

    def resolve_device(self, device: str = "auto") -> Any: ...

    def set_deterministic(self) -> None: ...

    def build_model(self, cfg: FilmConfig, state_dict: dict | None = None, device: str = "auto") -> Any: ...

    # (model, film.common.checkpoint.Checkpoint) for load_fuser: a checkpoint path, name ("demo", "random"), state
    # dict or None; the onnx backend loads an exported model instead of weights
    def load_model(self, checkpoint: Any, cfg: FilmConfig | None = None, device: str = "auto") -> tuple[Any, Any]: ...

    def load_state_dict(self, model: Any, state_dict: dict) -> None: ...

    def state_dict_numpy(self, model: Any) -> OrderedDict[str, np.ndarray]: ...

    def forward_numpy(self, model: Any, a: np.ndarray, b: np.ndarray, text: np.ndarray,
                      taps: dict | None = None) -> np.ndarray: ...

    # The backend's fast inference layout: torch channels_last, Jittor NHWC feature maps on oneDNN.
    # None: the device's default; False: the official NCHW order.
    def set_fast(self, model: Any, fast: bool | None = True) -> Any: ...

    def is_fast(self, model: Any) -> bool: ...

    def set_precision(self, model: Any, precision: str = "float32") -> Any: ...  # film.common.precision

    def release_memory(self) -> int: ...  # give memory kept for the next forward back to the system (bytes)

    def describe(self) -> str: ...

    def versions(self) -> dict: ...  # framework versions and kernel path, for results files

    def fast_default(self, device: str) -> bool: ...  # whether set_fast(model, None) picks the fast layout

    # film bench's baseline: a model-like callable running the official network's sequence of operations
    # (same parameters), or None where the backend has none (only torch restates the official code)
    def reference_model(self, model: Any) -> Any: ...

    # film parity's rounding-free reference: a float64 copy of ``model`` in the official order that this
    # backend's forward_numpy runs, or None where the backend cannot compute in float64 (Jittor's kernels)
    def float64_reference(self, model: Any) -> Any: ...

    def gpu_memory_mb(self, reset: bool = False) -> float | None: ...  # peak device memory (None on CPU)

    def make_trainer(self, device: str, model_cfg: FilmConfig) -> Trainer: ...

    # film train --recompute auto -> none|blocks|all for a device type ("cpu", "cuda"); else checks the mode
    def resolve_recompute(self, mode: str, device: str) -> str: ...

    # (fixed bytes, bytes per pixel) of a CPU training step's peak resident memory, measured per recompute
    # mode and heap policy: peak = fixed + samples per forward x per pixel x max(H x W, 288 x 384)
    def train_memory(self, recompute: str, heap_reuse: bool) -> tuple[int, int]: ...

    # (fixed bytes, bytes per pixel) of a CPU forward's peak, as shipped: film.api.check_memory
    def inference_memory(self) -> tuple[int, int]: ...

    def check_launcher(self) -> None: ...  # refuse a multi-process launcher meant for the other backend

    # film train --nproc N: torchrun (max_restarts: its elastic agent) or mpirun (export: variables for every rank)
    def launch_command(self, nproc: int, argv: list[str], *, max_restarts: int = 0,
                       export: tuple[str, ...] = ()) -> list[str]: ...

    # film train --nproc N, before the N processes start: whatever they would otherwise race to do (Jittor:
    # compile every operator of a training step once)
    def prepare_launch(self, device: str, model_cfg: FilmConfig, cfg) -> None: ...


MEMBERS = [n for n in Backend.__dict__ if not n.startswith("_")] + ["NAME"]
TRAINER_MEMBERS = [n for n in Trainer.__dict__ if not n.startswith("_")] + [
    "ext", "model_cfg", "rank", "world", "impl", "device_type", "model", "forward"]
