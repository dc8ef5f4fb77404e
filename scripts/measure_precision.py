"""What the opt-in bf16 precision costs and buys on real pairs (issue 35, item 4; docs/parity.md "Reduced precision").

For every pair under DATA (task/dataset/{A,B}, e.g. ../shared/data/fusion_samples: 47 public pairs), the torch
backend's library call ``film.load_fuser(<task's demo weights>, precision=...).fuse()`` runs in float32 and in
bf16 with ``film fuse --random-text``'s seeded features. Per pair: the time of each (the second of two calls, so
that neither pays the first call's set-up), the agreement of the bf16 output with the float32 one (max abs and PSNR
on [0, 1], and PSNR of the saved uint8 images), and Qabf / VIFF of each saved image against its sources (the
official metrics, film.common.metrics). Refused in one line where the CPU has no native bf16.

usage: python scripts/measure_precision.py --data ../shared/data/fusion_samples [-o RESULTS.json]
Writes benchmarks/results/<date>_cpu_bf16.json (machine, date, per pair and per task) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("Qabf", "VIFF")


def psnr(x: np.ndarray, ref: np.ndarray, peak: float) -> float:
    mse = float(np.mean((np.asarray(x, np.float64) - np.asarray(ref, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak * peak / mse)


def timed(fuser, it) -> tuple[np.ndarray, float]:
    fuser.fuse(it.a, it.b, it.text)  # the first call of a size sets up (workspace, oneDNN primitives)
    t0 = time.perf_counter()
    out = fuser.fuse(it.a, it.b, it.text)
    return out, time.perf_counter() - t0


def measure(data: str, weights: str = "demo-{task}") -> dict:
    import film
    from film.bench import machine_info
    from film.common.images import read_gray, to_uint8
    from film.common.metrics import evaluate
    from film.common.pairs import collect_pairs
    from film.common.precision import check_precision

    check_precision("bf16", "cpu", "torch")  # one line where this CPU has no native bf16
    items = collect_pairs(pairs=data, random_text_seed0=0, text_dim=768)
    fusers: dict[tuple[str, str], object] = {}
    rows = []
    from tqdm import tqdm

    for it in tqdm(items, desc="bf16 vs float32", file=sys.stderr, disable=None):
        task = it.name.split(os.sep)[0]
        out = {}
        for precision in ("float32", "bf16"):
            key = (task, precision)
            if key not in fusers:
                fusers[key] = film.load_fuser(weights.format(task=task), backend="torch", device="cpu",
                                              precision=precision)
            out[precision] = timed(fusers[key], it)
        a, b = read_gray(it.pair.a), read_gray(it.pair.b)
        (f32, t32), (f16, t16) = out["float32"], out["bf16"]
        u32, u16 = to_uint8(f32), to_uint8(f16)
        s32 = evaluate(u32.astype(np.float32), a, b, METRICS)
        s16 = evaluate(u16.astype(np.float32), a, b, METRICS)
        rows.append({
            "pair": it.name, "task": task, "size": f"{f32.shape[0]}x{f32.shape[1]}",
            "float32_s": t32, "bf16_s": t16, "speedup": t32 / t16,
            "max_abs": float(np.abs(f16 - f32).max()), "psnr_db": psnr(f16, f32, 1.0),
            "psnr_uint8_db": psnr(u16, u32, 255.0), "uint8_changed": float(np.mean(u16 != u32)),
            **{f"{m}_float32": s32[m] for m in METRICS}, **{f"{m}_bf16": s16[m] for m in METRICS},
        })
    per_task = {task: summary([r for r in rows if r["task"] == task]) for task in dict.fromkeys(r["task"] for r in rows)}
    return {"machine": machine_info("cpu"), "weights": weights, "text": "film fuse --random-text (seeded by pair)",
            "pairs": rows, "per_task": per_task, "all": summary(rows)}


def summary(rows: list[dict]) -> dict:
    def mean(k):
        return float(np.mean([r[k] for r in rows]))

    t32, t16 = (float(np.sum([r[k] for r in rows])) for k in ("float32_s", "bf16_s"))
    return {
        "pairs": len(rows), "float32_s": t32, "bf16_s": t16, "speedup": t32 / t16,
        "max_abs": float(np.max([r["max_abs"] for r in rows])), "psnr_db_mean": mean("psnr_db"),
        "psnr_db_min": float(np.min([r["psnr_db"] for r in rows])), "psnr_uint8_db_mean": mean("psnr_uint8_db"),
        "uint8_changed_mean": mean("uint8_changed"),
        **{f"{m}_{p}": mean(f"{m}_{p}") for m in METRICS for p in ("float32", "bf16")},
    }


def table(res: dict) -> str:
    m = res["machine"]
    lines = [f"{m.get('cpu', '')}, {m['cpus']} CPUs, {m['date']}; torch library call, {res['weights']} weights", "",
             "| task | pairs | float32 s | bf16 s | speed-up | max abs | PSNR dB (mean / min) | uint8 PSNR dB | "
             "uint8 pixels changed | Qabf f32 -> bf16 | VIFF f32 -> bf16 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in [*res["per_task"].items(), ("all", res["all"])]:
        lines.append(
            f"| {name} | {s['pairs']} | {s['float32_s']:.1f} | {s['bf16_s']:.1f} | {s['speedup']:.2f}x | "
            f"{s['max_abs']:.1e} | {s['psnr_db_mean']:.1f} / {s['psnr_db_min']:.1f} | {s['psnr_uint8_db_mean']:.1f} | "
            f"{100 * s['uint8_changed_mean']:.1f} % | {s['Qabf_float32']:.4f} -> {s['Qabf_bf16']:.4f} | "
            f"{s['VIFF_float32']:.4f} -> {s['VIFF_bf16']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, ROOT)
    from film.common.atomic import atomic_write_bytes, check_output_file
    from film.errors import FilmError

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="pairs in film's layout (task/dataset/{A,B})")
    p.add_argument("--weights", default="demo-{task}", help="checkpoint per task ({task} is replaced; default "
                   "the shipped demo-<TASK> weights)")
    p.add_argument("-o", "--output", help="results JSON (default benchmarks/results/<date>_cpu_bf16.json)")
    args = p.parse_args(argv)
    out = args.output or os.path.join(ROOT, "benchmarks", "results", f"{time.strftime('%Y-%m-%d')}_cpu_bf16.json")
    try:
        check_output_file(out, create_dir=True)
        res = measure(args.data, args.weights)
    except FilmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    atomic_write_bytes(out, json.dumps(res, indent=2).encode())
    print(table(res))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
