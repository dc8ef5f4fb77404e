"""``film prepare``: the VLF layout (or two folders and text) -> an H5 for film train / film fuse."""

from __future__ import annotations

from film.defaults import TASKS


def register(sub) -> None:
    r = sub.add_parser(
        "prepare", help="VLF dataset layout (or two folders + text) -> H5 for training/testing"
    )
    r.add_argument("--vlf", help="VLF dataset root (Image/, TextFeature/)")
    r.add_argument("--task", choices=TASKS, help="task (with --vlf)")
    r.add_argument("--dataset", help="dataset name, e.g. MSRS (with --vlf)")
    r.add_argument(
        "--split", choices=["train", "test"], help="split list file Image/<task>/<dataset>/<split>.txt"
    )
    r.add_argument(
        "--small", action="store_true", help="official 'small' training resize to 384x288 / 288x384"
    )
    r.add_argument("--a", help="folder of A images (own data mode)")
    r.add_argument("--b", help="folder of B images (own data mode)")
    r.add_argument("--text", help="folder of <name>.npy text features (own data mode)")
    r.add_argument("--name", help="output name in own-data mode (default: folder name of --a's parent)")
    r.add_argument("--random-text", action="store_true",
                   help="own-data mode without text features: seeded synthetic ones per pair (as film fuse "
                   "--random-text; for trying the training pipeline only)")
    r.add_argument("--patch", type=int, metavar="SIZE",
                   help="cut each pair into non-overlapping SIZE x SIZE tiles (<name>_000, ...; each with the "
                   "pair's text): smaller, more samples for training on a CPU")
    r.add_argument("-o", "--output", required=True, help="output folder for <dataset>_<split>.h5")
    r.set_defaults(func=run)


def run(args) -> int:
    from film.prepare import prepare_h5

    n, out = prepare_h5(args.output, vlf=args.vlf, task=args.task, dataset=args.dataset, split=args.split,
                        small=args.small, a=args.a, b=args.b, text=args.text, name=args.name,
                        random_text=args.random_text, patch=args.patch)
    print(f"wrote {n} samples to {out}")
    return 0
