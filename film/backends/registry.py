"""The one place that maps a backend name to its implementation, importing the framework lazily."""

from __future__ import annotations

import importlib
import os

from film.backends.base import Backend
from film.errors import FilmError

FRAMEWORKS = ("torch", "jittor")  # the two implementations of the network: inference and training
BACKENDS = FRAMEWORKS + ("onnx",)  # + an exported model run by onnxruntime (inference only: film export)
_INSTALL_HINT = {
    "torch": "pip install 'film-fusion[torch]'  (CPU-only machines: pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)",
    "jittor": "pip install 'film-fusion[jittor]'  (Jittor needs numpy<2 and a C++ compiler; first import compiles for ~5 min)",
    "onnx": "pip install 'film-fusion[onnx]'  (onnxruntime)",
}
_MODULE = {"torch": "torch", "jittor": "jittor", "onnx": "onnxruntime"}


def default_backend(checkpoint) -> str:
    """The backend for a checkpoint when none is named: an .onnx file made by film export runs with onnxruntime,
    anything else (a weights file, a state dict, "demo", "random", None) with torch."""
    path = checkpoint if isinstance(checkpoint, (str, os.PathLike)) else ""
    return "onnx" if os.fspath(path).endswith(".onnx") else "torch"


def check_name(name: str, choices: tuple[str, ...] = BACKENDS) -> str:
    if name not in choices:
        raise FilmError(f"unknown backend {name!r}: choose one of {', '.join(choices)}")
    return name


def get_backend(name: str, device: str = "auto") -> Backend:
    """Import and return ``film.backends.<name>.backend``, the :class:`film.backends.base.Backend` of that name
    (its framework imported on first use; a missing one is a one-line install hint)."""
    check_name(name)
    if name == "jittor":  # configured and checked (numpy<2, CPU/oneDNN flags, first compile) before its import
        from film.backends.jittor import runtime

        runtime.import_jittor(device)
    else:
        try:
            importlib.import_module(_MODULE[name])
        except ImportError:
            raise FilmError(
                f"the {name} backend needs {_MODULE[name]}, which is not installed: {_INSTALL_HINT[name]}"
            ) from None
    return importlib.import_module(f"film.backends.{name}.backend")
