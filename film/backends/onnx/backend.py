"""The onnx backend: the :class:`film.backends.base.Backend` interface for a model exported by ``film export``,
run by onnxruntime. Inference only: every training or weight member refuses in one line (the weights live in
the graph; train with the torch or Jittor backend and export again)."""

from __future__ import annotations

import json
import os
from collections import OrderedDict

import numpy as np

from film.common.checkpoint import Checkpoint
from film.common.spec import OFFICIAL, FilmConfig
from film.errors import FilmError

NAME = "onnx"
_INFERENCE_ONLY = ("the onnx backend runs a model exported by film export (inference only): train, convert and "
                   "compare weights with --backend torch or jittor")


class OnnxModel:
    """An onnxruntime session of an exported FILM and the FilmConfig from its metadata."""

    def __init__(self, path: str, device: str):
        import onnxruntime as ort

        if not os.path.isfile(path):
            raise FilmError(f"{path}: no such file")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only: onnxruntime's warnings are not the user's concern
        try:
            self.session = ort.InferenceSession(path, opts, providers=providers)
        except Exception as e:  # a corrupt or foreign file: onnxruntime's message, one line
            first = str(e).strip().splitlines()[0][:240] if str(e).strip() else type(e).__name__
            raise FilmError(f"{path}: not a model onnxruntime can run ({first})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        names = [i.name for i in self.session.get_inputs()]
        if names != ["imageA", "imageB", "text"] or "film_config" not in meta:
            raise FilmError(f"{path}: not a FILM model exported by film export (inputs {names})")
        self.cfg = FilmConfig.from_dict(json.loads(meta["film_config"]))
        self.meta, self.path, self.device = dict(meta), path, device


def resolve_device(device: str = "auto") -> str:
    import onnxruntime as ort

    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "auto":
        return "cuda" if cuda else "cpu"
    if device.startswith("cuda"):
        if not cuda:
            raise FilmError(f"device {device!r} requested but this onnxruntime has no CUDA provider "
                            "(pip install onnxruntime-gpu)")
        return "cuda"
    if device != "cpu":
        raise FilmError(f"unknown device {device!r} for the onnx backend (cpu or cuda)")
    return "cpu"


def set_deterministic() -> None:
    """onnxruntime's CPU kernels are float32 throughout."""


def build_model(cfg: FilmConfig = OFFICIAL, state_dict: dict | None = None, device: str = "auto"):
    raise FilmError(_INFERENCE_ONLY)


def load_model(checkpoint, cfg: FilmConfig | None = None, device: str = "auto"):
    """(OnnxModel, Checkpoint) of an .onnx file made by film export; its configuration comes from the model."""
    if not isinstance(checkpoint, (str, os.PathLike)) or not os.fspath(checkpoint).endswith(".onnx"):
        raise FilmError(f"the onnx backend runs .onnx models made by film export, not {checkpoint!r}: "
                        "film export CHECKPOINT -o film.onnx")
    model = OnnxModel(os.fspath(checkpoint), resolve_device(device))
    if cfg is not None and cfg != model.cfg:
        raise FilmError(f"{checkpoint}: exported with another network configuration than the one asked for")
    return model, Checkpoint(OrderedDict(), {"onnx_metadata": model.meta}, "onnx", model.cfg)


def load_state_dict(model, state_dict: dict) -> None:
    raise FilmError(_INFERENCE_ONLY)


def state_dict_numpy(model) -> OrderedDict[str, np.ndarray]:
    raise FilmError(_INFERENCE_ONLY)


def forward_numpy(model: OnnxModel, a: np.ndarray, b: np.ndarray, text: np.ndarray, taps: dict | None = None):
    """(B,1,H,W), (B,1,H,W), (B,L,D) float32 numpy -> (B,1,H,W) float32 numpy."""
    if taps is not None:
        raise FilmError("the onnx backend has no intermediate outputs (taps): compare with --backend torch/jittor")
    feeds = {"imageA": np.ascontiguousarray(a, np.float32), "imageB": np.ascontiguousarray(b, np.float32),
             "text": np.ascontiguousarray(text, np.float32)}
    try:
        return model.session.run(["fused"], feeds)[0]
    except Exception as e:
        first = str(e).strip().splitlines()[0][:240] if str(e).strip() else type(e).__name__
        raise FilmError(f"{model.path}: onnxruntime could not run this input ({first})") from None


def set_fast(model, fast: bool | None = True):
    """No layouts to choose: onnxruntime picks its own kernels."""
    return model


def is_fast(model) -> bool:
    return False


def fast_default(device: str) -> bool:
    return False


def set_precision(model, precision: str = "float32"):
    """onnxruntime runs the exported float32 graph (film.common.precision refuses the others in one line)."""
    from film.common.precision import check_precision

    check_precision(precision, "cpu", "onnx", reduced=False)
    return model


def release_memory() -> int:
    """onnxruntime's arena lives with its session: nothing to give back between runs."""
    return 0


def describe() -> str:
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())})"


def versions() -> dict:
    import onnxruntime as ort

    return {"onnxruntime": ort.__version__}


# The same order of memory as the torch backend in the official NCHW order (film bench --memory measures the
# backends; onnxruntime's arena holds its largest maps the same way): the pre-allocation check is an estimate.
INFERENCE_FIXED_BYTES = 400 * 2**20
INFERENCE_BYTES_PER_PIXEL = 8_700


def inference_memory() -> tuple[int, int]:
    return INFERENCE_FIXED_BYTES, INFERENCE_BYTES_PER_PIXEL


def train_memory(recompute: str, heap_reuse: bool) -> tuple[int, int]:
    raise FilmError(_INFERENCE_ONLY)


def resolve_recompute(mode: str, device: str) -> str:
    raise FilmError(_INFERENCE_ONLY)


def reference_model(model):
    return None


def float64_reference(model) -> None:
    return None


def gpu_memory_mb(reset: bool = False) -> float | None:
    return None


def make_trainer(device: str, model_cfg: FilmConfig = OFFICIAL):
    raise FilmError(_INFERENCE_ONLY)


def check_launcher() -> None:
    raise FilmError(_INFERENCE_ONLY)


def launch_command(nproc: int, argv: list[str], *, max_restarts: int = 0, export: tuple[str, ...] = ()) -> list[str]:
    raise FilmError(_INFERENCE_ONLY)


def prepare_launch(device: str, model_cfg: FilmConfig, cfg) -> None:
    raise FilmError(_INFERENCE_ONLY)
