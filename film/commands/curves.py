"""``film curves``: the loss curves of training runs overlaid, and where they part (film.curves)."""

from __future__ import annotations


def register(sub) -> None:
    v = sub.add_parser("curves", help="overlay the loss curves of training runs (total, intensity, gradient) and say "
                       "where they part")
    v.add_argument("runs", nargs="+", help="run folders of film train (or their losses.jsonl / log.txt)")
    v.add_argument("-o", "--output", help="PNG to write (the four panels); without it only the summary is printed")
    v.add_argument("--label", action="append", help="a name per run, in order (default: backend: folder name)")
    v.add_argument("--tol", type=float, default=1e-3, help="relative difference reported as parting (default 1e-3)")
    v.set_defaults(func=run)


def run(args) -> int:
    from film.curves import curves

    _, lines = curves(args.runs, output=args.output, labels=args.label, tol=args.tol)
    print("\n".join(lines))
    if args.output:
        print(f"plot: {args.output}")
    return 0
