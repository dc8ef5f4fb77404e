"""The ``film`` subcommands, one module each (the pattern of transformers' ``commands/``).

Each module has ``register(subparsers)``, which adds its parser, and ``run(args) -> int``, which calls the
library (``film.fuse``, ``film.train``, ...) and prints. Flag rules that matter to library callers live in the
library functions; what stays here is how a result is printed. ``film.cli`` holds ``main`` and the error
handling.
"""

from __future__ import annotations

# the order of ``film --help``
NAMES = ("convert", "parity", "fuse", "eval", "prepare", "train", "text", "describe", "export", "curves", "bench",
         "serve")


def register_all(subparsers) -> None:
    import importlib

    for name in NAMES:
        importlib.import_module(f"film.commands.{name}").register(subparsers)
