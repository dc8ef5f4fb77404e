"""Regenerate tests/golden/official_metrics.json with the *official* ``utils/Evaluator.py`` (IF-FILM).

Usage (not run by the tests; needs scikit-learn, scipy, scikit-image, opencv):
    git clone <IF-FILM> /tmp/IF-FILM   # the public repository Zhaozixiang1228/IF-FILM
    python tests/golden/make_metrics_golden.py --official /tmp/IF-FILM

Each case is a shipped sample pair read as the official ``image_read_cv2(path, 'GRAY')`` and a
deterministic stand-in for a fused image (a fixed blend, rounded to integers as a saved PNG is); the twelve
metrics are computed by the official ``Evaluator`` class methods (one-image metrics on F, the others on
(F, A, B)). Only the numbers are committed, never the official code.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from film.common.images import read_gray  # noqa: E402

# (label, task, dataset, A folder, B folder, file): all four tasks, colour and grey sources, odd sizes
CASES = [
    ("IVF/TNO", "IVF", "TNO", "ir", "vi", "07.png"),
    ("IVF/RoadScene", "IVF", "RoadScene", "ir", "vi", "FLIR_07809.jpg"),
    ("MIF/MRI_PET", "MIF", "MRI_PET", "MRI", "PET", "11.png"),
    ("MEF/MEFB", "MEF", "MEFB", "over", "under", "Arno.png"),
    ("MFF/Lytro", "MFF", "Lytro", "near", "far", "lytro_01.jpg"),
]
METRICS = ["EN", "SD", "SF", "AG", "MI", "MSE", "CC", "PSNR", "SCD", "VIFF", "Qabf", "SSIM"]


def load_case(case):
    """(label, F, A, B): float32 images with integer values 0..255, as film eval and the Evaluator see them."""
    label, task, ds, fa, fb, name = case
    samples = os.path.join(ROOT, "film", "samples")
    a = read_gray(os.path.join(samples, task, ds, fa, name))
    b = read_gray(os.path.join(samples, task, ds, fb, name))
    f = np.round(np.maximum(a, b) * 0.7 + np.minimum(a, b) * 0.3).astype(np.float32)
    return label, f, a, b


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", required=True, help="checkout of Zhaozixiang1228/IF-FILM")
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("official_evaluator", os.path.join(args.official, "utils", "Evaluator.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ev = mod.Evaluator
    out = {"metrics": METRICS, "cases": {}}
    for case in CASES:
        label, f, a, b = load_case(case)
        # one-image metrics take F, the others (F, A, B)
        vals = {m: float(getattr(ev, m)(f) if m in ("EN", "SD", "SF", "AG") else getattr(ev, m)(f, a, b)) for m in METRICS}
        out["cases"][label] = vals
        print(label, {k: round(v, 4) for k, v in vals.items()})
    with open(os.path.join(HERE, "official_metrics.json"), "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
