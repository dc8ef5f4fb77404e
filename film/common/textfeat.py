"""VLF text features (.npy, BLIP-2 768-d, shape (1, L, 768) or (L, 768)), read safely."""

from __future__ import annotations

import os

import numpy as np

from film.errors import FilmError


def text_shape_problem(shape: tuple, text_dim: int | None) -> str | None:
    """None when ``shape`` is one pair's text features, (L, D) or (1, L, D) with L > 0 and D == text_dim
    (any D when text_dim is None); else what was expected. The one shape rule of every reader."""
    d = text_dim or "D"
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[0] != 1) or 0 in shape or (
        text_dim and shape[-1] != text_dim
    ):
        return f"text features of shape {tuple(shape)}, expected (1, L, {d}) or (L, {d})"
    return None


def _check_dtype(arr, where: str) -> None:
    if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.floating):
        raise FilmError(f"{where}: expected float text features, got {getattr(arr, 'dtype', type(arr).__name__)}")


def check_text_values(arr, where: str) -> np.ndarray:
    """Float dtype and finite values, or one FilmError naming ``where``; returns float32 (same shape)."""
    _check_dtype(arr, where)
    if not np.isfinite(arr).all():
        raise FilmError(f"{where}: contains NaN or inf")
    return arr.astype(np.float32, copy=False)


def check_text(arr, text_dim: int | None, where: str) -> np.ndarray:
    """One pair's text features, validated (dtype, shape, values); returned float32 as stored."""
    _check_dtype(arr, where)
    problem = text_shape_problem(arr.shape, text_dim)
    if problem:
        raise FilmError(f"{where}: {problem}")
    return check_text_values(arr, where)


def read_npy(path: str) -> np.ndarray:
    """A .npy array; never unpickles (allow_pickle=False)."""
    if not os.path.isfile(path):
        raise FilmError(f"{path}: no such text-feature file")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":  # np.load would try it as a pickle and blame pickling, which misleads
        raise FilmError(f"{path}: not a .npy array (the file does not start with numpy's .npy header; save the "
                        "features with numpy.save)")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # a corrupt header raises ValueError, SyntaxError, MemoryError, ...
        raise FilmError(f"{path}: not a readable .npy array ({type(e).__name__}: {str(e)[:200]})") from None


def load_text(path: str, text_dim: int = 768) -> np.ndarray:
    """A float32 (L, text_dim) array from a .npy file of shape (1, L, D) or (L, D)."""
    arr = check_text(read_npy(path), text_dim, path)
    return arr[0] if arr.ndim == 3 else arr


def load_text_for(text_dir: str, name: str, text_dim: int = 768) -> np.ndarray:
    path = os.path.join(text_dir, name + ".npy")
    if not os.path.isfile(path):
        raise FilmError(f"{name}: no text features {path}")
    return load_text(path, text_dim)
