"""Nearest-neighbour resize as index maps, computed once in numpy.

The official network calls ``F.interpolate(x, size, mode='nearest')``. PyTorch picks the source
index ``min(floor(dst * scale), in - 1)`` with ``scale = float(in) / out`` evaluated in float32
(``aten/src/ATen/native/UpSample.h``), identity when sizes match and ``dst >> 1`` for exact 2x.
Both backends gather with these maps, so they agree bit for bit by construction.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=256)
def _nearest_index_cached(in_size: int, out_size: int) -> bytes:
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"sizes must be positive, got in={in_size} out={out_size}")
    dst = np.arange(out_size, dtype=np.int64)
    if out_size == in_size:
        idx = dst
    elif out_size == 2 * in_size:
        idx = dst >> 1
    else:
        scale = np.float32(in_size) / np.float32(out_size)
        idx = np.floor(dst.astype(np.float32) * scale).astype(np.int64)
        idx = np.minimum(idx, in_size - 1)
    return idx.tobytes()


def nearest_index(in_size: int, out_size: int) -> np.ndarray:
    """Source index for each of ``out_size`` destination positions (int64, read-only copy)."""
    return np.frombuffer(_nearest_index_cached(int(in_size), int(out_size)), dtype=np.int64).copy()


def resize_nearest_np(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Reference nearest resize of the last two axes of ``x`` (numpy)."""
    rows = nearest_index(x.shape[-2], size[0])
    cols = nearest_index(x.shape[-1], size[1])
    return x[..., rows, :][..., cols]


class Cache:
    """A small least-recently-used cache (the index maps and fixed kernels each backend's ops keep per image
    size and device): a program fusing images of ever new sizes keeps the last ``size`` entries, not all."""

    def __init__(self, size: int = 32):
        from collections import OrderedDict

        self.size, self._d = size, OrderedDict()

    def get(self, key, make):
        """The entry of ``key``, made by ``make()`` when missing."""
        if key in self._d:
            self._d.move_to_end(key)
            return self._d[key]
        value = self._d[key] = make()
        if len(self._d) > self.size:
            self._d.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._d)

    def clear(self) -> None:
        self._d.clear()
