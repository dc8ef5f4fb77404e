"""``film describe``: draft one paragraph per source image with a captioning model (film.describe)."""

from __future__ import annotations

import time

from film.errors import FilmError


def register(sub) -> None:
    from film.defaults import DEFAULT_CAPTIONER, MIF_B, TASKS

    d = sub.add_parser("describe", help="draft one paragraph per source image with a captioning model (edit them, "
                       "then film text)")
    d.add_argument("--a", help="folder of A images")
    d.add_argument("--b", help="folder of B images (paired by file name)")
    d.add_argument("--task", choices=TASKS, help="the fusion task (picks the templates)")
    d.add_argument("--b-modality", choices=MIF_B, help="MIF: what the B images are (default CT)")
    d.add_argument("-o", "--output", help="folder for A/<name>.txt and B/<name>.txt")
    d.add_argument("--save-captioner", metavar="DIR",
                   help="save the captioning model and its processor to DIR (on a machine with internet), to copy to "
                   "an offline machine and use with --captioner DIR")
    d.add_argument("--captioner", default=DEFAULT_CAPTIONER,
                   help=f"a transformers BLIP captioning model name or folder (default {DEFAULT_CAPTIONER})")
    d.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    d.add_argument("--overwrite", action="store_true", help="replace existing paragraphs (they may hold your edits)")
    d.set_defaults(func=run)


def run(args) -> int:
    from film.describe import Captioner, describe_folders

    if args.save_captioner:
        if args.a or args.b or args.output:
            raise FilmError("--save-captioner only saves the captioner: give no --a/--b/-o with it")
        t0 = time.time()
        Captioner(args.captioner, args.device).save(args.save_captioner)
        print(f"saved the captioner {args.captioner} to {args.save_captioner} in {time.time() - t0:.1f}s; "
              f"use it with --captioner {args.save_captioner}")
        return 0
    missing = [f for f, v in (("--a", args.a), ("--b", args.b), ("--task", args.task), ("-o", args.output)) if not v]
    if missing:
        raise FilmError(f"film describe needs {', '.join(missing)} (or --save-captioner DIR alone)")
    n, secs = describe_folders(args.a, args.b, task=args.task, out_dir=args.output, captioner=args.captioner,
                               device=args.device, b_modality=args.b_modality, overwrite=args.overwrite)
    print(f"drafted paragraphs for {n} pair(s) in {secs:.1f}s -> {args.output}/A, {args.output}/B "
          "(read and edit them, then: film text)")
    return 0
