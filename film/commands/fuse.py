"""``film fuse``: pairs -> Gray/<name>.png as the official test.py saves them (film.fuse.fuse_folder)."""

from __future__ import annotations

import time

from film.commands.options import add_fast
from film.defaults import TASKS


def register(sub) -> None:
    f = sub.add_parser("fuse", help="fuse image pairs and save PNGs as the official test.py does")
    f.add_argument(
        "--checkpoint", required=True,
        help="checkpoint path; demo (the demo weights: with --pairs, the task weights of pairs under a task folder), "
        "demo-IVF, demo-MIF, demo-MEF, demo-MFF (one task's), or random (seeded random weights)")
    f.add_argument("--task", choices=TASKS, help="with --checkpoint demo: that task's demo weights for every pair")
    f.add_argument("--backend", default=None,
                   help="torch (default), jittor, or onnx (a model made by film export; the default for .onnx)")
    f.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    src = f.add_mutually_exclusive_group(required=True)
    src.add_argument("--h5", help="an H5 file made by film prepare (imageA, imageB, text groups)")
    src.add_argument("--a", help="folder of A images (IR, MRI, over-exposed, near-focus)")
    src.add_argument(
        "--pairs", help="folder searched for paired sub-folders (ir/vi, MRI/CT, over/under, near/far, A/B)"
    )
    f.add_argument("--b", help="folder of B images (with --a)")
    f.add_argument("--text", help="folder of <name>.npy text features (with --a/--pairs)")
    f.add_argument(
        "--random-text", action="store_true", help="use seeded synthetic text features (demo only)"
    )
    f.add_argument("-o", "--output", required=True, help="output folder")
    f.add_argument("--color", action="store_true", help="also write Color/<name>.png for colour sources")
    f.add_argument("--grid", action="store_true", help="also write grid/<name>.png (A | B | fused)")
    f.add_argument(
        "--batch-size", type=int, default=1, help="pairs per forward pass (same-size pairs are batched)"
    )
    add_fast(f)
    f.add_argument("--precision", default="float32", choices=["float32", "bf16", "fp16"],
                   help="float32 (default: the precision tested against the official network); opt-in bf16 with "
                   "the torch backend on CPUs with native bf16 (AVX512-BF16, AMX) or CUDA, fp16 on CUDA: faster, "
                   "less exact (docs/parity.md, Reduced precision); refused in one line elsewhere")
    f.set_defaults(func=run)


def run(args) -> int:
    from film.backends.registry import default_backend
    from film.fuse import fuse_folder

    t0 = time.time()
    n = fuse_folder(
        args.output, args.checkpoint, a=args.a, b=args.b, pairs=args.pairs, h5=args.h5, text=args.text,
        random_text=args.random_text, backend=args.backend, device=args.device, color=args.color, grid=args.grid,
        batch_size=args.batch_size, fast=args.fast, precision=args.precision, task=args.task,
    )
    backend = args.backend or default_backend(args.checkpoint)
    print(f"fused {n} pair(s) with {backend} in {time.time() - t0:.1f}s -> {args.output}")
    return 0
