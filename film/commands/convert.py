"""``film convert``: a checkpoint between .pth, .pkl and .safetensors."""

from __future__ import annotations


def register(sub) -> None:
    c = sub.add_parser("convert", help="convert a checkpoint between .pth, .pkl and .safetensors")
    c.add_argument("src", help="input checkpoint (.pth official/training dict/bare, .pkl, .safetensors)")
    c.add_argument("-o", "--output", required=True, help="output path; its extension picks the format")
    c.add_argument(
        "--keep-optimizer", action="store_true", help="keep optimizer/scheduler state (.pth/.pkl only)"
    )
    c.set_defaults(func=run)


def run(args) -> int:
    from film.common.checkpoint import convert

    ck = convert(args.src, args.output, keep_optimizer=args.keep_optimizer)
    kept = " (optimizer state kept)" if args.keep_optimizer else ""
    print(f"{args.src} [{ck.source_format}] -> {args.output}: {len(ck.state_dict)} tensors{kept}")
    return 0
