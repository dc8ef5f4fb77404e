"""Activation recomputation for training (``film train --recompute none|blocks|all``), framework-free.

A training step keeps every intermediate map of the forward pass for the backward pass: ~16 GB at batch 2 and
288x384 in the official code. Marked modules keep only their inputs and outputs and run their forward again in
the backward pass (``film.common.forward.recomputed``; torch: ``torch.utils.checkpoint``, non-reentrant;
Jittor: a ``jt.Function`` in its ops module). The gradients are the same computation, so the same numbers.

* ``none``: keep everything (the official code's memory).
* ``blocks``: each Restormer ``TransformerBlock`` (6 in the three cablocks, 3 in the decoder).
* ``all``: also each cablock's text-guided branch after its Restormer (image tokens, cross-attention,
  pooling, resize back, the 1x1 convolutions and PReLUs).
"""

from __future__ import annotations

from film.errors import FilmError

MODES = ("none", "blocks", "all")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise FilmError(f"--recompute {mode!r}: choose one of {', '.join(MODES)}")
    return mode


def set_recompute(model, mode: str):
    """Mark the modules of a FILM ``Net`` (either backend: the official class names) for ``mode``."""
    check_mode(mode)
    for mod in model.modules():
        name = type(mod).__name__
        if name == "TransformerBlock":
            mod._film_recompute = mode in ("blocks", "all")
        elif name == "restormer_cablock":
            mod._film_recompute = mode == "all"
    model._film_recompute_mode = mode
    return model


def recompute_mode(model) -> str:
    return getattr(model, "_film_recompute_mode", "none")
