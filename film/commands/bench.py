"""``film bench``: timings, peak memory and agreement, each case in its own process (film.bench)."""

from __future__ import annotations


def register(sub) -> None:
    k = sub.add_parser("bench", help="timings, peak memory and agreement vs an official-style eager forward")
    k.add_argument("--device", default="auto", help="auto, cpu or cuda")
    k.add_argument("--sizes", nargs="+", help="HxW sizes (default: 288x384 480x640, plus 768x1024 on GPU)")
    k.add_argument("--backends", help="comma list of torch (as shipped, as the film command runs it), "
        "torch-library (film.load_fuser(...).fuse() in a host program: no opt-in, glibc's defaults), "
        "torch-library-bf16 (the same with the opt-in precision bf16), torch-nchw, torch-nhwc, jittor, "
        "jittor-library, onnx (default: all of them except the torch layout the device does not ship by default, "
        "bf16 only where the CPU computes it natively, onnx only when onnxruntime is installed; official-style and "
        "official-heap always run)")
    k.add_argument("--official-code", metavar="DIR",
                   help="a checkout of the official IF-FILM repository: its network is timed too, with glibc's "
                   "defaults and under GLIBC_TUNABLES (the tuned official: every ratio is also given against it)")
    k.add_argument("--repeats", type=int, default=3, help="timed runs per case (median reported)")
    k.add_argument("--warmup", type=int, default=1, help="untimed runs first (Jittor compiles on its first run)")
    k.add_argument("--train", action="store_true",
                   help="also time a training step at batch 2 and 8 (film train's defaults; official-style where it "
                   "fits in memory)")
    k.add_argument("--train-batches", type=int, nargs="+", default=[2, 8], help="batch sizes of --train (default 2 8)")
    k.add_argument("--metrics", action="store_true", help="also time film eval's metrics vs a straightforward port")
    k.add_argument("--memory", action="store_true",
                   help="peak memory per megapixel: one run per size (default 256x256 512x512 768x768) and a line fit")
    k.add_argument("-o", "--output", help="results JSON (default benchmarks/results/<date>_<device>.json)")
    k.set_defaults(func=run)


def run(args) -> int:
    from film.bench import bench, format_results

    results, out = bench(args.device, sizes=args.sizes, backends=args.backends, repeats=args.repeats,
                         warmup=args.warmup, train=args.train, metrics=args.metrics, memory=args.memory,
                         output=args.output, train_batches=tuple(args.train_batches), official_code=args.official_code)
    print(format_results(results))
    print(f"results: {out}")
    return 0
