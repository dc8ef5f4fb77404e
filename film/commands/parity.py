"""``film parity``: torch and Jittor on the same weights and inputs (or a training step), compared."""

from __future__ import annotations

import sys
import time

from film.commands.options import add_config, add_fast, model_config
from film.common.spec import OFFICIAL_RECIPE
from film.errors import FilmError


def register(sub) -> None:
    q = sub.add_parser("parity", help="run torch and jittor on the same weights and inputs and compare")
    q.add_argument("checkpoint", help="checkpoint path, or 'random' for seeded random weights")
    q.add_argument(
        "--pairs",
        help="folder with paired images (ir/vi, MRI/CT, over/under, near/far, A/B sub-folders, "
        "searched recursively); default: the shipped samples",
    )
    q.add_argument("--text", help="folder of <name>.npy text features; default: seeded synthetic features")
    q.add_argument("--limit", type=int, default=None, help="compare at most this many pairs")
    add_fast(q)
    q.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    q.add_argument("--atol", type=float, default=None, help="output tolerance (default 1e-5)")
    q.add_argument(
        "--rtol", type=float, default=None, help="per-tap tolerance relative to max|x| (default 1e-5)"
    )
    q.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the float64 reference run (then the plain tolerances apply, without torch's own rounding allowance)",
    )
    q.add_argument(
        "--metrics", action="store_true", help="also compare the twelve film eval metrics of both backends' uint8 images"
    )
    q.add_argument("--train", action="store_true", help="compare a training step instead: loss, gradients, Adam steps")
    q.add_argument("--h5", help="with --train: the training H5 whose first batches are used")
    q.add_argument("--steps", type=int, default=3, help="with --train: Adam steps to compare (default 3)")
    q.add_argument("--lr", type=float, default=None,
                   help=f"with --train: learning rate (default the official {OFFICIAL_RECIPE.lr:g})")
    q.add_argument("--seed", type=int, default=0, help="with --train: batch order seed")
    add_config(q)
    q.set_defaults(func=run)


def run(args) -> int:
    from film.parity import ATOL_OUTPUT, RTOL_TAP, format_metrics, format_report, parity

    if args.steps < 1:  # refused with or without --train (a flag given with no effect is a mistake)
        raise FilmError("--steps must be at least 1")
    atol = ATOL_OUTPUT if args.atol is None else args.atol
    rtol = RTOL_TAP if args.rtol is None else args.rtol
    if args.train:
        from film.parity_train import format_train_report, train_parity

        report = train_parity(args.checkpoint, args.h5, steps=args.steps, lr=args.lr, seed=args.seed,
                              device=args.device, model_cfg=model_config(args), reference=not args.no_reference)
        text, ok = format_train_report(report)
        print(text)
        return 0 if ok else 1
    from tqdm import tqdm

    bar = tqdm(desc="parity", unit="pair", file=sys.stderr, disable=None, dynamic_ncols=True)
    t0 = time.time()

    def on_pair(i, n, rep):
        bar.total = n
        bar.update(1)
        if not sys.stderr.isatty():  # no progress bar without a terminal: a line per pair (minutes each at full size)
            print(f"parity: {i + 1}/{n} {rep.name} ({rep.shape[1]}x{rep.shape[0]}) done, {time.time() - t0:.0f}s so "
                  "far", file=sys.stderr, flush=True)

    try:
        fusers, reports = parity(args.checkpoint, pairs=args.pairs, text=args.text, limit=args.limit, fast=args.fast,
                                 device=args.device, reference=not args.no_reference, metrics=args.metrics,
                                 model_cfg=model_config(args), on_pair=on_pair)
    finally:
        bar.close()
    print(f"torch: {fusers['torch'].impl.describe()} | jittor: {fusers['jittor'].impl.describe()}")
    print(format_report(reports, atol, rtol))
    if args.metrics:
        print(format_metrics(reports))
    return 0 if all(r.ok(atol, rtol) for r in reports) else 1
