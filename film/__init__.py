"""FILM image fusion in PyTorch and Jittor.

``import film`` imports neither framework; a backend is imported when first used.
"""

from film.errors import FilmError

__version__ = "0.1.0"
__all__ = ["FilmError", "load_fuser", "__version__"]


def load_fuser(checkpoint, backend: str = "torch", device: str = "auto", cfg=None, fast=None):
    """Load a FILM checkpoint (any supported format) into ``backend`` and return a :class:`film.api.Fuser`."""
    from film.api import load_fuser as _load

    return _load(checkpoint, backend=backend, device=device, cfg=cfg, fast=fast)
