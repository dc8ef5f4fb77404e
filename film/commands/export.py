"""``film export``: one ONNX model for every image size and text length (film.export)."""

from __future__ import annotations

import os
import sys
import time


def register(sub) -> None:
    from film.defaults import OPSET

    o = sub.add_parser("export", help="one ONNX model for every image size and text length (onnxruntime, TensorRT)")
    o.add_argument("checkpoint", help="any checkpoint film reads (.pth, .pkl, .safetensors), demo or random")
    o.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    o.add_argument("--opset", type=int, default=OPSET,
                   help=f"ONNX opset (default {OPSET}: onnxruntime >= 1.14, TensorRT >= 8.6)")
    o.add_argument("--check", action="store_true",
                   help="run the model with onnxruntime on the shipped samples at their own sizes and compare with the "
                   "float64 network (exit 1 when farther than 2x the torch backend's own float32 error, floor 1e-5); "
                   "the model is kept only when the check passes")
    o.set_defaults(func=run)


def run(args) -> int:
    from film.export import CHECK_FACTOR, CHECK_FLOOR, check_target, export, export_checked

    check_target(args.output)  # a refused name or location fails here, in one line, before the export
    t0 = time.time()
    print("film export: tracing the network for every image size (a minute or two on 2 cores)...", file=sys.stderr,
          flush=True)

    def exported(meta, path):
        size = os.path.getsize(path) / 2**20
        print(f"{args.checkpoint} -> {args.output} ({size:.1f} MiB, opset {args.opset}, dynamic N, H, W and L) in "
              f"{time.time() - t0:.1f}s; " + ("seeded random weights" if args.checkpoint == "random" else
                                             f"checkpoint sha256 {meta['film_checkpoint_sha256'][:16]}..."))
        if args.check:
            print("film export --check: each shipped sample in onnxruntime, torch float32 and float64 (about a "
                  "minute or two a pair on 2 cores)", file=sys.stderr, flush=True)

    if not args.check:
        exported(export(args.checkpoint, args.output, opset=args.opset), args.output)
        return 0

    def show(row):
        name, d_onnx, d_torch, d_ot = row
        print(f"  {name}: max |onnxruntime - float64| {d_onnx:.2e}   torch float32 - float64 {d_torch:.2e}   "
              f"onnxruntime - torch {d_ot:.2e}", flush=True)

    _, ok, _ = export_checked(args.checkpoint, args.output, opset=args.opset, on_exported=exported, on_row=show)
    print(f"check: {'OK' if ok else 'FAIL'}: onnxruntime within {CHECK_FACTOR:g} x max(torch float32 error, "
          f"{CHECK_FLOOR:g}) of the float64 network on every sample" + ("" if ok else f"; {args.output} not written"))
    return 0 if ok else 1
