"""Checkpoint conversion entry points (thin wrappers over :mod:`film.common.checkpoint`)."""

from film.common.checkpoint import convert, load_checkpoint, save_checkpoint

__all__ = ["convert", "load_checkpoint", "save_checkpoint"]
