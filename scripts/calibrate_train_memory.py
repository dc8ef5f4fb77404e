"""Measure the constants of film train's memory plan: each backend's ``TRAIN_MEMORY`` table.

Peak resident memory of a training step (at the official token grid's size, 288x384, two steps in a fresh
process) per backend, recompute mode and heap policy, at batch 1 and 2 (the whole batch per forward), and the
line fit per configuration: peak = fixed + batch x bytes_per_pixel x 288 x 384. Copy the fits into
``TRAIN_MEMORY`` of film/backends/torch/backend.py and film/backends/jittor/backend.py.

    python scripts/calibrate_train_memory.py [-o benchmarks/results/<date>_cpu_train_memory.json]

CPU only (about 30 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from film.bench import Case, case_npy, machine_info, run_child
from film.common.atomic import atomic_write_bytes, check_output_file
from film.common.recompute import MODES
from film.common.spec import OFFICIAL

BATCHES = (1, 2)


def calibrate(output: str) -> dict:
    from tqdm import tqdm

    h, w = OFFICIAL.token_grid
    rows, fits = [], {}
    configs = [(impl, mode, heap) for impl in ("torch", "jittor") for mode in MODES for heap in (True, False)]
    with tempfile.TemporaryDirectory() as tmp:
        for impl, mode, heap in tqdm(configs, desc="train memory", file=sys.stderr, disable=None):
            pts = []
            for bs in BATCHES:
                case = Case(impl, h, w, "cpu", repeats=1, warmup=1, train=True,
                            out_npy=case_npy(tmp, impl, (h, w), True, bs), batch=bs, recompute=mode, heap=heap)
                r = run_child(case)
                r.pop("_npy", None)
                rows.append(r)
                if "failed" not in r:
                    pts.append((bs, r["peak_rss_mb"] * 2**20))
            if len(pts) == 2:
                (b1, m1), (b2, m2) = pts
                per_sample = (m2 - m1) / (b2 - b1)
                fits[f"{impl}/{mode}/{'heap' if heap else 'default'}"] = {
                    "fixed_bytes": int(m1 - b1 * per_sample), "bytes_per_pixel": int(per_sample / (h * w))}
    results = {"machine": machine_info("cpu"), "train_memory": rows, "fit": fits,
               "note": f"peak RSS of a process that built the trainer and ran two steps of the given batch at {h}x{w} "
                       f"(the whole batch per forward); fit: peak = fixed + batch x per_pixel x {h} x {w}"}
    atomic_write_bytes(output, json.dumps(results, indent=2).encode())
    return results


def main() -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", default=os.path.join(root, "benchmarks", "results",
                                                         f"{time.strftime('%Y-%m-%d')}_cpu_train_memory.json"))
    args = p.parse_args()
    check_output_file(args.output, create_dir=True)
    res = calibrate(args.output)
    print("| backend | recompute | heap reuse | batch | peak MB |\n|---|---|---|---|---|")
    for r in res["train_memory"]:
        peak = r.get("failed") or f"{r['peak_rss_mb']:.0f}"
        print(f"| {r['impl']} | {r['recompute']} | {'on' if r['heap_reuse'] else 'off'} | {r['batch']} | {peak} |")
    for k, f in res["fit"].items():
        print(f"fit {k}: {f['fixed_bytes'] / 2**20:.0f} MB + {f['bytes_per_pixel']} B/pixel per sample")
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
