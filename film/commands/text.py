"""``film text``: BLIP-2 Q-Former text features of your own paragraphs (film.text)."""

from __future__ import annotations

import time

from film.errors import FilmError


def register(sub) -> None:
    from film.defaults import DEFAULT_ENCODER

    x = sub.add_parser("text", help="BLIP-2 Q-Former text features of your own paragraphs (what film fuse --text takes)")
    x.add_argument("--a-text", help="folder of <name>.txt paragraphs describing the A images")
    x.add_argument("--b-text", help="folder of <name>.txt paragraphs describing the B images")
    x.add_argument("--a", help="one pair: the A paragraph itself (with --b and -o OUT.npy)")
    x.add_argument("--b", help="one pair: the B paragraph itself")
    x.add_argument("-o", "--output", help="output folder for <name>.npy (one pair: the .npy file)")
    x.add_argument("--encoder", default=DEFAULT_ENCODER,
                   help=f"a transformers BLIP-2 model name or folder (default {DEFAULT_ENCODER}; only the "
                   "Q-Former text part is loaded)")
    x.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    x.add_argument("--batch-size", type=int, default=8, help="pairs encoded together (default 8)")
    x.add_argument("--max-tokens", type=int, default=None,
                   help="pad/truncate each side to N tokens, so features of different pairs have one length and "
                   "can be batched in film train (default: each paragraph's own length, as VLF)")
    x.add_argument("--save-encoder", metavar="DIR",
                   help="save just the text encoder and tokenizer to DIR (~0.7 GB instead of the multi-GB "
                   "checkpoint), to copy to an offline machine")
    x.set_defaults(func=run)


def run(args) -> int:
    from film import text as T

    if args.save_encoder:
        if args.a_text or args.b_text or args.a or args.b:
            raise FilmError("--save-encoder only saves the encoder: give no paragraphs with it")
        t0 = time.time()
        T.load_encoder(args.encoder, args.device).save(args.save_encoder)
        print(f"saved the text encoder {args.encoder} to {args.save_encoder} in {time.time() - t0:.1f}s; "
              f"use it with --encoder {args.save_encoder}")
        return 0
    if not args.output:
        raise FilmError("-o/--output is required (a folder with --a-text/--b-text, a .npy file with --a/--b)")
    if args.a is not None or args.b is not None:  # one pair
        if args.a is None or args.b is None or args.a_text or args.b_text:
            raise FilmError("the one-pair form takes both --a PARAGRAPH and --b PARAGRAPH, and no folders")
        if not args.output.endswith(".npy"):
            raise FilmError(f"{args.output}: the one-pair form writes a .npy file")
        from film.common.atomic import check_output_file

        check_output_file(args.output)
        t0 = time.time()
        feats = T.encode_text(args.a, args.b, encoder=args.encoder, device=args.device, max_tokens=args.max_tokens)
        T.save_npy(args.output, feats)
        print(f"wrote {args.output} {feats.shape} in {time.time() - t0:.1f}s")
        return 0
    if not args.a_text or not args.b_text:
        raise FilmError("give --a-text DIR and --b-text DIR (folders of <name>.txt), or --a and --b paragraphs")
    n, secs = T.encode_folders(args.a_text, args.b_text, args.output, encoder=args.encoder, device=args.device,
                               batch_size=args.batch_size, max_tokens=args.max_tokens)
    print(f"encoded {n} pair(s) in {secs:.1f}s -> {args.output}")
    return 0
