"""``film eval``: the twelve metrics of the official Evaluator (film.evaluate)."""

from __future__ import annotations

import os


def register(sub) -> None:
    e = sub.add_parser("eval", help="the twelve metrics of the official Evaluator")
    e.add_argument(
        "--fused", required=True, action="append", help="folder of fused images (repeat to compare methods)"
    )
    e.add_argument("--a", required=True, help="folder of A images")
    e.add_argument("--b", required=True, help="folder of B images")
    e.add_argument(
        "--metrics", nargs="+", default=None, help="subset of EN SD SF AG MI MSE CC PSNR SCD VIFF Qabf SSIM"
    )
    e.add_argument("--name", action="append",
                   help="a method name per --fused folder, in order (default: the folder names, with as many parent "
                   "folders as it takes to tell them apart)")
    e.add_argument("--dataset", default=None, help="dataset name for the table (default: folder name)")
    e.add_argument("--baselines", action="store_true",
                   help="also score the average of A and B and the max rule (per-pixel maximum) on the same pairs")
    e.add_argument("--json", help="write full-precision results as JSON")
    e.add_argument("--csv", help="write per-image results as CSV")
    e.set_defaults(func=run)


def run(args) -> int:
    from film.evaluate import evaluate, format_table

    results = evaluate(args.fused, args.a, args.b, metrics=args.metrics, json_path=args.json, csv_path=args.csv,
                       names=args.name, baselines=args.baselines)
    dataset = args.dataset or os.path.basename(os.path.dirname(os.path.normpath(args.a))) or "dataset"
    print(format_table(results, list(next(iter(results.values()))["mean"]), dataset))
    return 0
