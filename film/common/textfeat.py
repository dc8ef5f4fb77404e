"""VLF text features (.npy, BLIP-2 768-d, shape (1, L, 768) or (L, 768)), read safely."""

from __future__ import annotations

import os

import numpy as np

from film.errors import FilmError


def load_text(path: str, text_dim: int = 768) -> np.ndarray:
    """A float32 (L, text_dim) array from a .npy file; never unpickles (allow_pickle=False)."""
    if not os.path.isfile(path):
        raise FilmError(f"{path}: no such text-feature file")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # a corrupt header raises ValueError, SyntaxError, MemoryError, ...
        raise FilmError(f"{path}: not a readable .npy array ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.floating):
        raise FilmError(
            f"{path}: expected float text features, got {getattr(arr, 'dtype', type(arr).__name__)}"
        )
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[1] != text_dim or arr.shape[0] == 0:
        raise FilmError(f"{path}: expected shape (1, L, {text_dim}) or (L, {text_dim}), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise FilmError(f"{path}: contains NaN or inf")
    return arr.astype(np.float32, copy=False)


def load_text_for(text_dir: str, name: str, text_dim: int = 768) -> np.ndarray:
    path = os.path.join(text_dir, name + ".npy")
    if not os.path.isfile(path):
        raise FilmError(f"{name}: no text features {path}")
    return load_text(path, text_dim)
