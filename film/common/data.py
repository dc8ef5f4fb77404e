"""The VLF H5 layout (groups imageA, imageB, text; one dataset per sample) read framework-free.

An optional fourth group, ``target``, holds a known fused image per sample (synthetic pairs made from one sharp
or well-exposed image, where the truth is known); ``film train`` then aims its loss at it
(``film.common.loss.fusion_loss``). The official files have no such group.

The official ``H5ImageTextDataset`` reopens the file and lists every key on each item; this reader
opens it once per process (worker) and keeps the sorted sample list. Order = h5py key order
(alphabetical), which is the order the official reader indexes.
"""

from __future__ import annotations

import os

import numpy as np

from film.common.textfeat import text_shape_problem
from film.errors import FilmError

GROUPS = ("imageA", "imageB", "text")
TARGET = "target"  # optional group: a known fused image per sample (synthetic pairs); the loss then aims at it


class H5Pairs:
    """Random access to (imageA (1,H,W) float32, imageB, text (1,L,D) float32, name)."""

    def __init__(self, path: str):
        import h5py

        self.path = path
        if not os.path.isfile(path):
            raise FilmError(f"{path}: no such H5 file")
        try:
            with h5py.File(path, "r") as f:
                missing = [g for g in GROUPS if g not in f]
                if missing:
                    raise FilmError(
                        f"{path}: missing group(s) {', '.join(missing)} (expected imageA, imageB, text)"
                    )
                names = [list(f[g].keys()) for g in GROUPS]
                target = set(f[TARGET].keys()) if TARGET in f else None
        except FilmError:
            raise
        except (OSError, KeyError, ValueError, AttributeError, TypeError) as e:
            raise FilmError(f"{path}: not a readable H5 file ({e})") from None
        a, b, t = (set(n) for n in names)
        if not (a == b == t):
            diff = sorted((a ^ b) | (a ^ t))
            raise FilmError(f"{path}: sample names differ between groups: {', '.join(diff[:10])}")
        if not names[0]:
            raise FilmError(f"{path}: no samples")
        if target is not None and target != a:
            diff = sorted(target ^ a)
            raise FilmError(f"{path}: the target group's sample names differ from imageA's: {', '.join(diff[:10])}")
        self.names = names[0]
        self.has_target = target is not None
        self._file = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.names)

    def check(self, text_dim: int | None = None) -> dict:
        """Check every sample's shapes from the file's metadata (no pixel is read): A and B equal
        (1, H, W) or (H, W), text (1, L, D) or (L, D) with D == text_dim. Returns {name: (H, W)}."""
        sizes = {}
        f = self._f()
        for name in self.names:
            try:
                sa, sb, st = (tuple(f[g][name].shape) for g in GROUPS)
            except (KeyError, AttributeError, TypeError) as e:
                raise FilmError(f"{self.path}: sample {name}: not a dataset in every group ({e})") from None
            if sa != sb or len(sa) not in (2, 3) or (len(sa) == 3 and sa[0] != 1) or 0 in sa:
                raise FilmError(
                    f"{self.path}: sample {name}: images of shape {sa} and {sb}, expected equal (1, H, W)"
                )
            if self.has_target and tuple(f[TARGET][name].shape) != sa:
                raise FilmError(f"{self.path}: sample {name}: target of shape {tuple(f[TARGET][name].shape)}, "
                                f"expected the images' {sa}")
            problem = text_shape_problem(st, text_dim)
            if problem:
                raise FilmError(f"{self.path}: sample {name}: {problem}")
            sizes[name] = sa[-2:]
        return sizes

    def _f(self):
        import h5py

        if self._file is None or self._pid != os.getpid():  # one handle per worker process
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def __getitem__(self, idx: int):
        name = self.names[idx]
        f = self._f()
        try:
            a = np.asarray(f["imageA"][name][()], dtype=np.float32)
            b = np.asarray(f["imageB"][name][()], dtype=np.float32)
            t = np.asarray(f["text"][name][()], dtype=np.float32)
        except (KeyError, OSError, ValueError, TypeError) as e:
            raise FilmError(f"{self.path}: sample {name}: unreadable ({e})") from None
        if a.ndim == 2:
            a, b = a[None], b[None]
        if a.ndim != 3 or a.shape != b.shape or a.shape[0] != 1:
            raise FilmError(
                f"{self.path}: sample {name}: images of shape {a.shape} and {b.shape}, expected equal (1, H, W)"
            )
        if t.ndim == 2:
            t = t[None]
        for what, x in (("imageA", a), ("imageB", b), ("text", t)):
            if not np.isfinite(x).all():
                raise FilmError(f"{self.path}: sample {name}: {what} contains NaN or inf")
        return a, b, t, name

    def target(self, idx: int) -> np.ndarray:
        """Sample ``idx``'s known fused image (1, H, W) float32 (only when the file has a ``target`` group)."""
        name = self.names[idx]
        try:
            g = np.asarray(self._f()[TARGET][name][()], dtype=np.float32)
        except (KeyError, OSError, ValueError, TypeError) as e:
            raise FilmError(f"{self.path}: sample {name}: target unreadable ({e})") from None
        g = g[None] if g.ndim == 2 else g
        if g.ndim != 3 or g.shape[0] != 1 or not np.isfinite(g).all():
            raise FilmError(f"{self.path}: sample {name}: target of shape {g.shape} or not finite, expected (1, H, W)")
        return g

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"] = None
        return state

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
