"""Python API: ``film.load_fuser(checkpoint, backend, device).fuse(a, b, text)``."""

from __future__ import annotations

import contextlib
import os
import weakref
from dataclasses import dataclass

import numpy as np

from film.backends.registry import check_name, default_backend, get_backend
from film.common.checkpoint import Checkpoint, for_task
from film.common.memory import available_memory
from film.common.spec import FilmConfig
from film.common.textfeat import check_text_values, text_shape_problem
from film.errors import FilmError


def check_memory(impl, batch: int, h: int, w: int, device: str) -> None:
    """Refuse, before allocating anything, a CPU forward of ``batch`` x ``h`` x ``w`` that would not fit in
    MemAvailable: ``impl`` (the backend) owns its measured constants (``inference_memory``, docs/memory.md).
    Memory the backend keeps for its next forward (the torch workspace) is given back first when short."""
    if str(device).startswith("cuda") or os.environ.get("FILM_SKIP_MEMORY_CHECK") == "1":
        return
    fixed, per_pixel = impl.inference_memory()
    need = fixed + per_pixel * batch * h * w
    avail = available_memory()
    if avail is not None and need > avail and impl.release_memory() > 0:
        avail = available_memory()
    if avail is not None and need > avail:
        raise FilmError(
            f"fusing {batch}x{h}x{w} with the {impl.NAME} backend needs about {need / 2**30:.1f} GiB of memory, "
            f"but only {avail / 2**30:.1f} GiB is available: use a smaller image, a smaller batch, or a GPU "
            "(set FILM_SKIP_MEMORY_CHECK=1 to try anyway)"
        )


def as_image_batch(x: np.ndarray, name: str) -> np.ndarray:
    """One source image or a batch of them -> float32 (N, 1, H, W) in [0, 1], or a FilmError saying why not.

    Accepted: HxW, NxHxW or Nx1xHxW; float in [0, 1] (taken as is), or uint8 (divided by 255: the
    official ``image_read_cv2(...) / 255.0``). Refused: colour arrays (HxWx3, HxWx4, Nx3xHxW; FILM fuses
    single-channel images: pass the grey or Y channel), floats outside [0, 1] (e.g. 0..255: divide by 255
    yourself, the network was trained on [0, 1]), other integer types (uint16: their scale is unknown),
    NaN/inf, empty arrays.
    """
    x = np.asarray(x)
    colour = (x.ndim == 3 and x.shape[-1] in (3, 4) and min(x.shape[:2]) > 4) or (
        x.ndim == 4 and (x.shape[1] in (3, 4) or (x.shape[1] != 1 and x.shape[-1] in (3, 4)))
    )
    if colour:
        raise FilmError(
            f"{name}: shape {x.shape} looks like a colour image; FILM fuses single-channel images: pass the "
            "grey (or YCrCb Y) channel, e.g. film.read_gray01(path)"
        )
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[:, None]
    elif x.ndim != 4 or x.shape[1] != 1:
        raise FilmError(f"{name}: expected HxW, NxHxW or Nx1xHxW, got shape {x.shape}")
    if x.size == 0:
        raise FilmError(f"{name}: empty image {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise FilmError(f"{name}: expected a float array in [0, 1] or uint8, got {x.dtype}")
    if np.issubdtype(x.dtype, np.integer):
        raise FilmError(
            f"{name}: {x.dtype} images are not accepted (their scale is unknown): pass uint8, or float32 in [0, 1]"
        )
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise FilmError(f"{name}: contains NaN or inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        hint = " (looks like 0..255: divide by 255)" if hi > 1.5 else ""
        raise FilmError(f"{name}: values must lie in [0, 1], found {lo:.4g}..{hi:.4g}{hint}")
    return x


def check_text(text: np.ndarray, text_dim: int, batch: int, name: str = "text") -> np.ndarray:
    """Text features (L, D), (1, L, D) or (N, L, D) -> float32 (N, L, D)."""
    t = np.asarray(text)
    if t.ndim == 2:
        t = t[None]
    if t.ndim == 4 and t.shape[1] == 1:  # (N, 1, L, D) as the official H5 loader yields
        t = t[:, 0]
    problem = text_shape_problem(t.shape[1:], text_dim) if t.ndim == 3 else text_shape_problem(t.shape, text_dim)
    if problem:
        raise FilmError(f"{name}: {problem}")
    t = check_text_values(t, name)
    if t.shape[0] == 1 and batch > 1:
        t = np.repeat(t, batch, axis=0)
    if t.shape[0] != batch:
        raise FilmError(f"{name}: {t.shape[0]} text feature sets for {batch} image pairs")
    return t


_live_fusers: set[int] = set()


def _fuser_gone(key: int, backend: str, device: str) -> None:
    _live_fusers.discard(key)
    if not _live_fusers:
        with contextlib.suppress(Exception):  # at interpreter exit the backend may be half torn down
            get_backend(backend, device).release_memory()


@dataclass
class Fuser:
    """A loaded FILM network in one backend."""

    backend: str
    model: object
    cfg: FilmConfig
    device: str
    checkpoint: Checkpoint | None = None

    @property
    def impl(self):
        """The backend module (:class:`film.backends.base.Backend`)."""
        return get_backend(self.backend, self.device)

    def __post_init__(self):
        # the memory a backend keeps between forwards (torch's CPU workspace, Jittor's allocator) goes back with
        # the last Fuser
        _live_fusers.add(id(self))
        weakref.finalize(self, _fuser_gone, id(self), self.backend, self.device)

    def release_memory(self) -> int:
        """Give back to the system the memory kept for the next forward (on CPU, torch's workspace and Jittor's
        allocator keep the feature maps of the last image size: the next ``fuse`` reuses them instead of
        faulting them in again); returns the bytes given back. Called
        by itself when the last Fuser is garbage-collected and before a forward that would not fit."""
        return self.impl.release_memory()

    def fuse(self, a: np.ndarray, b: np.ndarray, text: np.ndarray, taps: dict | None = None) -> np.ndarray:
        """Fuse A and B guided by ``text``.

        a, b: float32 HxW in [0, 1] (or NxHxW / Nx1xHxW, any size); uint8 is divided by 255 (the official
        reading); colour arrays, floats outside [0, 1] and other integer types are refused with a FilmError
        (see :func:`as_image_batch`). text: (L, 768), (1, L, 768) or (N, L, 768).
        Returns the raw network output (sigmoid, before the official min-max stretch), float32 of the
        same leading shape as ``a`` (HxW for HxW input).
        """
        squeeze = np.asarray(a).ndim
        a4, b4 = as_image_batch(a, "a"), as_image_batch(b, "b")
        if a4.shape != b4.shape:
            raise FilmError(f"a and b differ in shape: {a4.shape[-2:]} vs {b4.shape[-2:]}")
        t = check_text(text, self.cfg.text_dim, a4.shape[0])
        check_memory(self.impl, a4.shape[0], a4.shape[2], a4.shape[3], self.device)
        out = self.impl.forward_numpy(self.model, a4, b4, t, taps=taps)
        if squeeze == 2:
            return out[0, 0]
        if squeeze == 3:
            return out[:, 0]
        return out


def load_fuser(
    checkpoint: str | os.PathLike | dict | None,
    backend: str | None = None,
    device: str = "auto",
    cfg: FilmConfig | None = None,
    fast: bool | None = None,
    precision: str = "float32",
    task: str | None = None,
) -> Fuser:
    """Load a FILM checkpoint into a backend.

    checkpoint: a path (.pth official/training dict/bare, .pkl Jittor, .safetensors; .onnx: a model made by
    ``film export``, run by onnxruntime: backend "onnx", the default for that extension), a numpy state dict,
    ``"demo"`` (the shipped demo weights: not the official FILM, trained briefly on public pairs with synthetic
    text; ``"demo-IVF"``, ``"demo-MIF"``, ``"demo-MEF"``, ``"demo-MFF"``: one task's), or ``"random"`` / None for
    the seeded random weights of :func:`film.common.init.random_state_dict`.
    task: with ``"demo"``, that task's demo weights (IVF, MIF, MEF or MFF); refused with any other checkpoint.
    cfg: the network configuration; None takes the one stored with the weights (safetensors metadata written
    by film, or the run's param.json for ``<run>/model/ckpt_*`` of film train), else the official one.
    fast: the backend's fast inference layout. torch: channels_last convolutions (1.5-1.8x on CPU, outputs
    4-8e-6 from the official-style kernels instead of 2e-6); None: the device's default (on for CPU, off for
    CUDA until measured there). Jittor: NHWC feature maps on oneDNN (~1.3x; None: on when oneDNN runs).
    False: the official NCHW order in both.
    precision: "float32" (default; the precision tested against the official network), or opt-in "bf16" (torch,
    on CPUs with native bf16 such as AVX512-BF16 / AMX, and on CUDA) or "fp16" (torch on CUDA): refused with a
    FilmError elsewhere (film.common.precision; its cost: docs/parity.md, "Reduced precision").
    """
    checkpoint = for_task(checkpoint, task)
    if backend is None:  # an exported model runs with onnxruntime, anything else with torch
        backend = default_backend(checkpoint)
    check_name(backend)
    impl = get_backend(backend, device)
    model, ck = impl.load_model(checkpoint, cfg, device)
    cfg = ck.cfg
    dev = str(impl.resolve_device(device))
    impl.set_fast(model, fast)
    impl.set_precision(model, precision)
    return Fuser(backend, model, cfg, dev, ck)
