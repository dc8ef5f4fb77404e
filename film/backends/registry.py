"""The one place that maps a backend name to its implementation, importing the framework lazily."""

from __future__ import annotations

import importlib

from film.errors import FilmError

BACKENDS = ("torch", "jittor")
_INSTALL_HINT = {
    "torch": "pip install 'film-fusion[torch]'  (CPU-only machines: pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)",
    "jittor": "pip install 'film-fusion[jittor]'  (Jittor needs numpy<2 and a C++ compiler; first import compiles for ~5 min)",
}


def check_name(name: str) -> str:
    if name not in BACKENDS:
        raise FilmError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return name


def get_backend(name: str, device: str = "auto"):
    """Import and return ``film.backends.<name>.backend`` (build_model, load_state_dict, state_dict_numpy,
    forward_numpy, resolve_device, set_deterministic, describe; torch also set_fast/is_fast/input_format)."""
    check_name(name)
    framework = "torch" if name == "torch" else "jittor"
    try:
        importlib.import_module(framework) if name == "torch" else None
    except ImportError:
        raise FilmError(
            f"the {name} backend needs {framework}, which is not installed: {_INSTALL_HINT[name]}"
        ) from None
    if name == "jittor":
        from film.backends.jittor import runtime

        runtime.import_jittor(device)
    return importlib.import_module(f"film.backends.{name}.backend")
