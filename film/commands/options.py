"""Flags that several subcommands share, written once."""

from __future__ import annotations

import argparse


def add_fast(parser) -> None:
    parser.add_argument(
        "--fast",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the backend's fast layout: torch channels_last convolutions (1.5-1.8x on CPU), Jittor NHWC on oneDNN "
        "(3-4x its NCHW kernels); 4-8e-6 from the official kernels' output (default: on for CPU where the layout "
        "runs, off for CUDA); --no-fast runs the official NCHW kernel order",
    )


def add_config(parser) -> None:
    """--config tiny: the tiny test configuration (same structure, small shapes), for smoke tests in seconds."""
    parser.add_argument("--config", choices=("official", "tiny"), default="official", help=argparse.SUPPRESS)


def model_config(args, default=None):
    """The tiny configuration for --config tiny, else ``default`` (None: the one stored with the weights)."""
    from film.common.spec import TINY

    return TINY if args.config == "tiny" else default
