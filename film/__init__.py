"""FILM image fusion in PyTorch and Jittor.

``import film`` imports neither framework; a backend is imported when first used.
"""

from film.common.heap import reuse_freed_memory  # opt-in heap reuse for library use
from film.errors import FilmError

__version__ = "0.1.0"
__all__ = ["FilmError", "load_fuser", "encode_text", "read_gray01", "reuse_freed_memory", "__version__"]


def load_fuser(checkpoint, backend: str | None = None, device: str = "auto", cfg=None, fast=None,
               precision: str = "float32", task: str | None = None):
    """Load a FILM checkpoint (any supported format; "demo", "demo-IVF" ...) into ``backend`` and return a
    :class:`film.api.Fuser`; ``task`` with "demo": that task's demo weights."""
    from film.api import load_fuser as _load

    return _load(checkpoint, backend=backend, device=device, cfg=cfg, fast=fast, precision=precision, task=task)


def encode_text(a_paragraph: str, b_paragraph: str, encoder="Salesforce/blip2-itm-vit-g", device: str = "cpu",
                max_tokens=None):
    """FILM text features of one pair, float32 (1, L_A + L_B, 768); see :func:`film.text.encode_text`."""
    from film.text import encode_text as _encode

    return _encode(a_paragraph, b_paragraph, encoder=encoder, device=device, max_tokens=max_tokens)


def read_gray01(path) -> "numpy.ndarray":  # noqa: F821 - numpy is imported by the call, not by import film
    """An image file as ``Fuser.fuse`` takes it: the official grey reading / 255, float32 HxW in [0, 1]."""
    from film.common.images import read_gray01 as _read

    return _read(str(path))
