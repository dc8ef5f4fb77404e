"""``film`` command line: convert | parity | fuse | eval | prepare | train | curves | export | text | describe |
bench | serve.

Every expected problem is a :class:`film.FilmError`: one line (or one block) on stderr, exit code 2,
no traceback. Anything unexpected is reported in one line with exit code 1 (FILM_DEBUG=1 shows the
traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from film.common.spec import OFFICIAL_RECIPE
from film.errors import FilmError


def _progress(iterable, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(
        iterable, total=total, desc=desc, unit="pair", file=sys.stderr, disable=None, dynamic_ncols=True
    )


# --------------------------------------------------------------------------- convert


def add_convert(sub) -> None:
    c = sub.add_parser("convert", help="convert a checkpoint between .pth, .pkl and .safetensors")
    c.add_argument("src", help="input checkpoint (.pth official/training dict/bare, .pkl, .safetensors)")
    c.add_argument("-o", "--output", required=True, help="output path; its extension picks the format")
    c.add_argument(
        "--keep-optimizer", action="store_true", help="keep optimizer/scheduler state (.pth/.pkl only)"
    )
    c.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    from film.common.checkpoint import convert

    ck = convert(args.src, args.output, keep_optimizer=args.keep_optimizer)
    kept = " (optimizer state kept)" if args.keep_optimizer else ""
    print(f"{args.src} [{ck.source_format}] -> {args.output}: {len(ck.state_dict)} tensors{kept}")
    return 0


# --------------------------------------------------------------------------- parity


def _add_fast(parser) -> None:
    parser.add_argument(
        "--fast",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the backend's fast layout: torch channels_last convolutions (1.5-1.8x on CPU), Jittor NHWC on oneDNN "
        "(3-4x its NCHW kernels); 4-8e-6 from the official kernels' output (default: on for CPU where the layout "
        "runs, off for CUDA); --no-fast runs the official NCHW kernel order",
    )


def add_parity(sub) -> None:
    q = sub.add_parser("parity", help="run torch and jittor on the same weights and inputs and compare")
    q.add_argument("checkpoint", help="checkpoint path, or 'random' for seeded random weights")
    q.add_argument(
        "--pairs",
        help="folder with paired images (ir/vi, MRI/CT, over/under, near/far, A/B sub-folders, "
        "searched recursively); default: the shipped samples",
    )
    q.add_argument("--text", help="folder of <name>.npy text features; default: seeded synthetic features")
    q.add_argument("--limit", type=int, default=None, help="compare at most this many pairs")
    _add_fast(q)
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
    # the tiny test configuration (same structure, small shapes): smoke tests of --train in seconds
    q.add_argument("--config", choices=("official", "tiny"), default="official", help=argparse.SUPPRESS)
    q.set_defaults(func=cmd_parity)


def cmd_parity(args) -> int:
    from film.api import load_fuser
    from film.common.checkpoint import load_checkpoint
    from film.parity import ATOL_OUTPUT, RTOL_TAP, collect_inputs, format_report, run_pair

    args.atol = ATOL_OUTPUT if args.atol is None else args.atol
    args.rtol = RTOL_TAP if args.rtol is None else args.rtol
    if args.train and not args.h5:
        raise FilmError("film parity --train needs --h5 TRAIN.h5 (the batches to train on)")
    if args.steps < 1:
        raise FilmError("--steps must be at least 1")
    from film.backends.registry import FRAMEWORKS, get_backend

    for name in FRAMEWORKS:  # both backends usable (installed, numpy<2 for Jittor) before minutes of work
        get_backend(name, args.device)
    from film.common.spec import TINY

    # the configuration stored with the weights (official .pth: the official one); --config tiny for tests
    ck = load_checkpoint(args.checkpoint, TINY if args.config == "tiny" else None)
    if args.train:
        from film.parity_train import format_train_report, run_train_parity

        report = run_train_parity(ck.state_dict, args.h5, steps=args.steps, lr=args.lr, seed=args.seed,
                                  device=args.device, model_cfg=ck.cfg, reference=not args.no_reference)
        text, ok = format_train_report(report)
        print(text)
        return 0 if ok else 1
    fusers = {}
    for name in FRAMEWORKS:
        fusers[name] = load_fuser(ck.state_dict, backend=name, device=args.device, cfg=ck.cfg, fast=args.fast)
        fusers[name].impl.set_deterministic()
    inputs = collect_inputs(args.pairs, args.text, ck.cfg.text_dim, args.limit)
    reference = None
    if not args.no_reference:  # the float64 network, from the first backend that can run one (torch)
        for f in fusers.values():
            model = f.impl.float64_reference(f.model)
            if model is not None:
                reference = (f.impl, model)
                break
    reports = []
    t0 = time.time()
    for i, (label, a, b, text) in enumerate(_progress(inputs, len(inputs), "parity")):
        reports.append(run_pair(fusers, label, a, b, text, reference, metrics=args.metrics))
        if not sys.stderr.isatty():  # no progress bar without a terminal: a line per pair (minutes each at full size)
            print(f"parity: {i + 1}/{len(inputs)} {label} ({a.shape[1]}x{a.shape[0]}) done, {time.time() - t0:.0f}s so far",
                  file=sys.stderr, flush=True)
    print(f"torch: {fusers['torch'].impl.describe()} | jittor: {fusers['jittor'].impl.describe()}")
    print(format_report(reports, args.atol, args.rtol))
    if args.metrics:
        from film.parity import format_metrics

        print(format_metrics(reports))
    return 0 if all(r.ok(args.atol, args.rtol) for r in reports) else 1


# --------------------------------------------------------------------------- fuse


def add_fuse(sub) -> None:
    f = sub.add_parser("fuse", help="fuse image pairs and save PNGs as the official test.py does")
    f.add_argument(
        "--checkpoint", required=True, help="checkpoint path, or 'random' for seeded random weights (demo)"
    )
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
    _add_fast(f)
    f.add_argument("--precision", default="float32", choices=["float32", "bf16", "fp16"],
                   help="float32 (default: the precision tested against the official network); opt-in bf16 with "
                   "the torch backend on CPUs with native bf16 (AVX512-BF16, AMX) or CUDA, fp16 on CUDA: faster, "
                   "less exact (docs/parity.md, Reduced precision); refused in one line elsewhere")
    f.set_defaults(func=cmd_fuse)


def cmd_fuse(args) -> int:
    from film.backends.registry import default_backend
    from film.fuse import fuse_folder

    t0 = time.time()
    n = fuse_folder(
        args.output, args.checkpoint, a=args.a, b=args.b, pairs=args.pairs, h5=args.h5, text=args.text,
        random_text=args.random_text, backend=args.backend, device=args.device, color=args.color, grid=args.grid,
        batch_size=args.batch_size, fast=args.fast, precision=args.precision,
    )
    backend = args.backend or default_backend(args.checkpoint)
    print(f"fused {n} pair(s) with {backend} in {time.time() - t0:.1f}s -> {args.output}")
    return 0


def add_eval(sub) -> None:
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
    e.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    from film.evaluate import evaluate, format_table

    results = evaluate(args.fused, args.a, args.b, args.metrics, args.json, args.csv, args.name, args.baselines)
    dataset = args.dataset or os.path.basename(os.path.dirname(os.path.normpath(args.a))) or "dataset"
    print(format_table(results, list(next(iter(results.values()))["mean"]), dataset))
    return 0


def add_train(sub) -> None:
    t = sub.add_parser("train", help="train FILM with the official recipe in either backend")
    t.add_argument("--backend", default=None,
                   help="torch (default) or jittor (with --resume: the run's own)")
    t.add_argument("--h5", help="training H5 made by film prepare (with --resume: taken from the run)")
    r = OFFICIAL_RECIPE  # the help's defaults are the recipe's own values, never restated here
    t.add_argument("--epochs", type=int, default=None,
                   help=f"default {r.epochs} (official); with --resume, a larger number extends a run (default: the "
                   "run's own)")
    t.add_argument("--batch-size", type=int, default=None, help=f"default {r.batch_size} (official)")
    t.add_argument("--lr", type=float, default=None, help=f"default {r.lr:g} (official)")
    t.add_argument("--step-size", type=int, default=None, help=f"StepLR step in epochs, default {r.step_size}")
    t.add_argument("--gamma", type=float, default=None, help=f"StepLR gamma, default {r.gamma:g}")
    t.add_argument("--grad-weight", type=float, default=None,
                   help=f"Sobel-gradient loss coefficient, default {r.grad_weight:g}")
    t.add_argument("--ssim-weight", type=float, default=None,
                   help=f"weight of the LpLssim loss, default {r.ssim_weight:g} (0: skipped)")
    t.add_argument("--out", default="exp", help="parent folder of run folders (default exp/)")
    t.add_argument("--seed", type=int, default=0, help="data order and init seed")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda")
    t.add_argument("--init", help="start from this checkpoint (any format, either framework)")
    t.add_argument("--resume", help="run folder to continue (model, optimizer, scheduler, epoch, step)")
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke tests)")
    t.add_argument("--recompute", choices=("auto", "none", "blocks", "all"), default="auto",
                   help="activation recomputation: none keeps every map (the official code's ~16 GB at batch 2, "
                   "288x384), blocks recomputes each Restormer block, all also each cross-attention branch "
                   "(default auto: the backend's measured choice, torch all, Jittor blocks, about 0.4x the official "
                   "peak memory; the same numbers either way)")
    t.add_argument("--micro-batch", type=int, default=None,
                   help="samples per forward/backward, their gradients added up (the same mean-loss step); "
                   "default: the whole batch, or the largest part that fits in memory")
    t.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                   help="the backends' channels-last layout (default: on for CPU; --no-fast trains in the "
                   "official NCHW order, about 2x slower on CPU)")
    t.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="data-parallel over N processes on this machine: starts torchrun (torch) or mpirun (jittor) with "
        "the same command; --batch-size stays the global batch",
    )
    t.add_argument("--config", choices=("official", "tiny"), default="official", help=argparse.SUPPRESS)
    t.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from film.common.spec import OFFICIAL, TINY
    from film.train import is_main_process, launch, train

    if args.nproc is not None and args.nproc != 1:
        from film.common.training import TrainConfig, read_run_params

        backend = args.backend or (read_run_params(args.resume).get("backend") if args.resume else None) or "torch"

        step = TrainConfig(h5="", recompute=args.recompute, fast=args.fast,
                           ssim_weight=args.ssim_weight if args.ssim_weight is not None else 0.0)
        return launch(backend, args.device, args.nproc, sys.argv[1:] if args.argv is None else args.argv,
                      model_cfg=TINY if args.config == "tiny" else OFFICIAL, step_cfg=step)
    run_dir = train(
        args.h5, backend=args.backend, out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        step_size=args.step_size, gamma=args.gamma, grad_weight=args.grad_weight, ssim_weight=args.ssim_weight,
        seed=args.seed, device=args.device, init=args.init, resume=args.resume, max_steps=args.max_steps,
        model_cfg=TINY if args.config == "tiny" else OFFICIAL, recompute=args.recompute,
        micro_batch=args.micro_batch, fast=args.fast, heap_reuse=True,
    )
    if is_main_process():
        print(f"run folder: {run_dir}")
    return 0


def add_text(sub) -> None:
    x = sub.add_parser("text", help="BLIP-2 Q-Former text features of your own paragraphs (what film fuse --text takes)")
    x.add_argument("--a-text", help="folder of <name>.txt paragraphs describing the A images")
    x.add_argument("--b-text", help="folder of <name>.txt paragraphs describing the B images")
    x.add_argument("--a", help="one pair: the A paragraph itself (with --b and -o OUT.npy)")
    x.add_argument("--b", help="one pair: the B paragraph itself")
    x.add_argument("-o", "--output", help="output folder for <name>.npy (one pair: the .npy file)")
    x.add_argument("--encoder", default="Salesforce/blip2-itm-vit-g",
                   help="a transformers BLIP-2 model name or folder (default Salesforce/blip2-itm-vit-g; only the "
                   "Q-Former text part is loaded)")
    x.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    x.add_argument("--batch-size", type=int, default=8, help="pairs encoded together (default 8)")
    x.add_argument("--max-tokens", type=int, default=None,
                   help="pad/truncate each side to N tokens, so features of different pairs have one length and "
                   "can be batched in film train (default: each paragraph's own length, as VLF)")
    x.add_argument("--save-encoder", metavar="DIR",
                   help="save just the text encoder and tokenizer to DIR (~0.7 GB instead of the multi-GB "
                   "checkpoint), to copy to an offline machine")
    x.set_defaults(func=cmd_text)


def cmd_text(args) -> int:
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
        feats = T.encode_text(args.a, args.b, args.encoder, args.device, args.max_tokens)
        T.save_npy(args.output, feats)
        print(f"wrote {args.output} {feats.shape} in {time.time() - t0:.1f}s")
        return 0
    if not args.a_text or not args.b_text:
        raise FilmError("give --a-text DIR and --b-text DIR (folders of <name>.txt), or --a and --b paragraphs")
    n, secs = T.encode_folders(args.a_text, args.b_text, args.output, args.encoder, args.device,
                               args.batch_size, args.max_tokens)
    print(f"encoded {n} pair(s) in {secs:.1f}s -> {args.output}")
    return 0


def add_describe(sub) -> None:
    d = sub.add_parser("describe", help="draft one paragraph per source image with a captioning model (edit them, "
                       "then film text)")
    d.add_argument("--a", help="folder of A images")
    d.add_argument("--b", help="folder of B images (paired by file name)")
    d.add_argument("--task", choices=["IVF", "MIF", "MEF", "MFF"], help="the fusion task (picks the templates)")
    d.add_argument("--b-modality", choices=["CT", "PET", "SPECT"], help="MIF: what the B images are (default CT)")
    d.add_argument("-o", "--output", help="folder for A/<name>.txt and B/<name>.txt")
    d.add_argument("--save-captioner", metavar="DIR",
                   help="save the captioning model and its processor to DIR (on a machine with internet), to copy to "
                   "an offline machine and use with --captioner DIR")
    d.add_argument("--captioner", default="Salesforce/blip-image-captioning-base",
                   help="a transformers BLIP captioning model name or folder (default Salesforce/blip-image-captioning-base)")
    d.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    d.add_argument("--overwrite", action="store_true", help="replace existing paragraphs (they may hold your edits)")
    d.set_defaults(func=cmd_describe)


def cmd_describe(args) -> int:
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
    n, secs = describe_folders(args.a, args.b, args.task, args.output, args.captioner, args.device,
                               args.b_modality, args.overwrite)
    print(f"drafted paragraphs for {n} pair(s) in {secs:.1f}s -> {args.output}/A, {args.output}/B "
          "(read and edit them, then: film text)")
    return 0


def add_bench(sub) -> None:
    k = sub.add_parser("bench", help="timings, peak memory and agreement vs an official-style eager forward")
    k.add_argument("--device", default="auto", help="auto, cpu or cuda")
    k.add_argument("--sizes", nargs="+", help="HxW sizes (default: 288x384 480x640, plus 768x1024 on GPU)")
    k.add_argument("--backends", help="comma list of torch (as shipped, as the film command runs it), "
        "torch-library (film.load_fuser(...).fuse() in a host program: no opt-in, glibc's defaults), torch-nchw, "
        "torch-nhwc, jittor, jittor-library, onnx (default: all of them except the torch layout the device does not "
        "ship by default, onnx only when onnxruntime is installed; official-style and official-heap always run)")
    k.add_argument("--official-code", metavar="DIR",
                   help="a checkout of the official IF-FILM repository: its network is timed too, with glibc's "
                   "defaults and under GLIBC_TUNABLES (the tuned official: every ratio is also given against it)")
    k.add_argument("--repeats", type=int, default=3, help="timed runs per case (median reported)")
    k.add_argument("--warmup", type=int, default=1, help="untimed runs first (Jittor compiles on its first run)")
    k.add_argument("--train", action="store_true",
                   help="also time a training step at batch 2 and 8 (film train's defaults; official-style where it "
                   "fits in memory)")
    k.add_argument("--train-batches", type=int, nargs="+", default=[2, 8], help="batch sizes of --train (default 2 8)")
    k.add_argument("--train-memory", action="store_true",
                   help="peak memory of a training step per backend, recompute mode and heap policy (the constants "
                   "of film train's memory plan)")
    k.add_argument("--metrics", action="store_true", help="also time film eval's metrics vs a straightforward port")
    k.add_argument("--memory", action="store_true",
                   help="peak memory per megapixel: one run per size (default 256x256 512x512 768x768) and a line fit")
    k.add_argument("-o", "--output", help="results JSON (default benchmarks/results/<date>_<device>.json)")
    k.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from film.bench import bench, format_results

    results, out = bench(args.device, args.sizes, args.backends, args.repeats, args.warmup, args.train,
                         args.metrics, args.memory, args.output, tuple(args.train_batches), args.train_memory,
                         official_code=args.official_code)
    print(format_results(results))
    print(f"results: {out}")
    return 0


def add_export(sub) -> None:
    o = sub.add_parser("export", help="one ONNX model for every image size and text length (onnxruntime, TensorRT)")
    o.add_argument("checkpoint", help="any checkpoint film reads (.pth, .pkl, .safetensors), demo or random")
    o.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    o.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18: onnxruntime >= 1.14, TensorRT >= 8.6)")
    o.add_argument("--check", action="store_true",
                   help="run the model with onnxruntime on the shipped samples at their own sizes and compare with the "
                   "float64 network (exit 1 when farther than 2x the torch backend's own float32 error, floor 1e-5)")
    o.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from film.common.atomic import check_output_file
    from film.export import CHECK_FACTOR, CHECK_FLOOR, OPSET, check, export

    check_output_file(args.output)  # a refused location fails here, in one line, before the export
    t0 = time.time()
    # with --check the model is written under a temporary name and kept only when the check passes
    target = os.path.join(os.path.dirname(os.path.abspath(args.output)),
                          f".film-check-{os.getpid()}-{os.path.basename(args.output)}") if args.check else args.output
    print("film export: tracing the network for every image size (a minute or two on 2 cores)...", file=sys.stderr,
          flush=True)
    try:
        meta = export(args.checkpoint, target, args.opset)
        size = os.path.getsize(target) / 2**20
        print(f"{args.checkpoint} -> {args.output} ({size:.1f} MiB, opset {args.opset or OPSET}, dynamic N, H, W and "
              f"L) in {time.time() - t0:.1f}s; " + ("seeded random weights" if args.checkpoint == "random" else
                                                   f"checkpoint sha256 {meta['film_checkpoint_sha256'][:16]}..."))
        if not args.check:
            return 0
        print("film export --check: each shipped sample in onnxruntime, torch float32 and float64 (about a minute "
              "or two a pair on 2 cores)", file=sys.stderr, flush=True)

        def show(row):
            name, d_onnx, d_torch, d_ot = row
            print(f"  {name}: max |onnxruntime - float64| {d_onnx:.2e}   torch float32 - float64 {d_torch:.2e}   "
                  f"onnxruntime - torch {d_ot:.2e}", flush=True)

        ok, _ = check(target, args.checkpoint, on_row=show)
        print(f"check: {'OK' if ok else 'FAIL'}: onnxruntime within {CHECK_FACTOR:g} x max(torch float32 error, "
              f"{CHECK_FLOOR:g}) of the float64 network on every sample"
              + ("" if ok else f"; {args.output} not written"))
        if ok:
            os.replace(target, args.output)
        return 0 if ok else 1
    finally:
        if target != args.output and os.path.exists(target):
            os.unlink(target)


def add_curves(sub) -> None:
    v = sub.add_parser("curves", help="overlay the loss curves of training runs (total, intensity, gradient) and say "
                       "where they part")
    v.add_argument("runs", nargs="+", help="run folders of film train (or their losses.jsonl / log.txt)")
    v.add_argument("-o", "--output", help="PNG to write (the four panels); without it only the summary is printed")
    v.add_argument("--label", action="append", help="a name per run, in order (default: backend: folder name)")
    v.add_argument("--tol", type=float, default=1e-3, help="relative difference reported as parting (default 1e-3)")
    v.set_defaults(func=cmd_curves)


def cmd_curves(args) -> int:
    from film.curves import curves

    _, lines = curves(args.runs, args.output, args.label, args.tol)
    print("\n".join(lines))
    if args.output:
        print(f"plot: {args.output}")
    return 0


def add_prepare(sub) -> None:
    r = sub.add_parser(
        "prepare", help="VLF dataset layout (or two folders + text) -> H5 for training/testing"
    )
    r.add_argument("--vlf", help="VLF dataset root (Image/, TextFeature/)")
    r.add_argument("--task", choices=["IVF", "MIF", "MEF", "MFF"], help="task (with --vlf)")
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
    r.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> int:
    from film.prepare import prepare_h5

    n, out = prepare_h5(args.output, vlf=args.vlf, task=args.task, dataset=args.dataset, split=args.split,
                        small=args.small, a=args.a, b=args.b, text=args.text, name=args.name,
                        random_text=args.random_text, patch=args.patch)
    print(f"wrote {n} samples to {out}")
    return 0


# --------------------------------------------------------------------------- parser


def add_serve(sub) -> None:
    s = sub.add_parser("serve", help="a local web page (Gradio) to fuse your own pair with your own words, and its API")
    s.add_argument("--checkpoint", default="demo", help="checkpoint path, demo (default) or random")
    s.add_argument("--backend", default="torch", help="torch (default), jittor, or both (live parity on the page)")
    s.add_argument("--encoder", default=None,
                   help="the BLIP-2 Q-Former text encoder (a folder saved by film text --save-encoder, or a model name "
                   "in the Hugging Face cache); default: film text's, if it loads; 'none': synthetic text features")
    s.add_argument("--captioner", default=None, help="a BLIP captioning model (folder) for the Draft button")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 shares it on your network)")
    s.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    s.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    s.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from film.serve import serve

    if args.backend not in ("torch", "jittor", "both"):
        raise FilmError(f"--backend: unknown {args.backend!r} (torch, jittor or both)")
    serve(args.checkpoint, args.backend, args.encoder, args.captioner, args.host, args.port, args.device)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="film", description="FILM image fusion in PyTorch and Jittor")
    from film import __version__

    p.add_argument("--version", action="version", version=f"film {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (add_convert, add_parity, add_fuse, add_eval, add_prepare, add_train, add_text, add_describe,
                add_export, add_curves, add_bench, add_serve):
        add(sub)
    return p


def _failed(code: int) -> int:
    """A failing rank of torchrun / mpirun ends at once, without the interpreter's exit handlers: Jittor's
    MPI_Finalize at exit waits for ranks that are themselves waiting in an all-reduce for this one, so the job
    would hang; ending without it makes mpirun (and torchrun, on any failure) stop every other rank within
    seconds, and report which one failed."""
    from film.common.launch import in_multiprocess_job

    if code and in_multiprocess_job():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv  # film train --nproc re-launches the same command
    if args.command in ("fuse", "parity", "serve") and argv is None:
        # a process film owns: freed feature maps are kept for reuse, for the whole command (film.common.heap;
        # not when main() is called from a program of its own, argv given: that program's malloc is its own).
        # film train decides in its memory plan (the trainer holds it while it trains, when it fits)
        from film.common.heap import enable_for_process

        enable_for_process()
    try:
        return int(args.func(args) or 0)
    except FilmError as e:
        print(f"film {args.command}: {_rank_prefix()}error: {e}", file=sys.stderr)
        return _failed(2)
    except KeyboardInterrupt:
        print(f"film {args.command}: interrupted", file=sys.stderr)
        return _failed(130)
    except OSError as e:  # an I/O failure no writer anticipated: still one line, still the user's problem
        if os.environ.get("FILM_DEBUG") == "1":
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"film {args.command}: {_rank_prefix()}error: {where}{e.strerror or e}", file=sys.stderr)
        return _failed(2)
    except MemoryError:
        print(
            f"film {args.command}: {_rank_prefix()}error: out of memory (try a smaller image or batch, or a GPU)",
            file=sys.stderr,
        )
        return _failed(2)
    except Exception as e:  # last resort: one line, not a traceback
        if os.environ.get("FILM_DEBUG") == "1":
            raise
        print(
            f"film {args.command}: {_rank_prefix()}internal error: {type(e).__name__}: {e} (set FILM_DEBUG=1 for the "
            "traceback)",
            file=sys.stderr,
        )
        return _failed(1)


def _rank_prefix() -> str:
    from film.common.launch import in_multiprocess_job, rank

    return f"rank {rank()}: " if in_multiprocess_job() else ""


if __name__ == "__main__":
    sys.exit(main())
