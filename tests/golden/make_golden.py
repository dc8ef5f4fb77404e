"""Regenerate tests/golden/official_outputs.npz by running the *official* IF-FILM network.

Usage (not run by the tests; needs torch and einops):
    git clone <IF-FILM> /tmp/IF-FILM   # the public repository Zhaozixiang1228/IF-FILM
    python tests/golden/make_golden.py --official /tmp/IF-FILM

The official ``net.Film.Net`` is instantiated exactly as ``test.py`` does
(``Net(hidden_dim=256, image2text_dim=32)``), loaded with ``film.common.init.random_state_dict(seed=1)``,
and run on crops of the shipped sample pairs (read as the official ``image_read_cv2(..., 'GRAY') / 255``)
with seeded synthetic text features. Stored: the raw outputs and the official uint8 image
(``test.py``'s min-max stretch), the same network's float64 output (its float32 rounding error is
large on some inputs, see docs/parity.md), plus SHA-1 digests of weights, inputs and text so the test can tell
a changed generator from a changed network. Only tensors are committed, never the official code.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from film.common.images import read_gray  # noqa: E402
from film.common.init import random_state_dict, random_text  # noqa: E402

WEIGHT_SEED = 1
# (name, A path, B path, crop rows, crop cols, text seed): odd sizes below, across and above 288x384.
CASES = [
    ("tno07_crop", "IVF/TNO/ir/07.png", "IVF/TNO/vi/07.png", (10, 141), (20, 117), 11),
    ("roadscene_07809", "IVF/RoadScene/ir/FLIR_07809.jpg", "IVF/RoadScene/vi/FLIR_07809.jpg", None, None, 12),
    ("lytro01_crop", "MFF/Lytro/near/lytro_01.jpg", "MFF/Lytro/far/lytro_01.jpg", (5, 306), (3, 400), 13),
]


def sha1(*arrays: np.ndarray) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def load_case(case):
    name, pa, pb, rows, cols, tseed = case
    samples = os.path.join(ROOT, "film", "samples")
    a = read_gray(os.path.join(samples, pa)) / np.float32(255.0)
    b = read_gray(os.path.join(samples, pb)) / np.float32(255.0)
    if rows:
        a, b = a[rows[0] : rows[1], cols[0] : cols[1]], b[rows[0] : rows[1], cols[0] : cols[1]]
    return name, np.ascontiguousarray(a), np.ascontiguousarray(b), random_text(149, 768, seed=tseed)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", required=True, help="checkout of Zhaozixiang1228/IF-FILM")
    args = ap.parse_args()
    import torch

    sys.path.insert(0, args.official)
    from net.Film import Net  # the official network

    torch.backends.cuda.matmul.allow_tf32 = False
    sd = random_state_dict(seed=WEIGHT_SEED)
    model = torch.nn.DataParallel(Net(hidden_dim=256, image2text_dim=32))
    model.load_state_dict({"module." + k: torch.from_numpy(v) for k, v in sd.items()})
    model = model.module.eval()
    out = {"weights_sha1": np.array(sha1(*sd.values())), "torch_version": np.array(torch.__version__)}
    for case in CASES:
        name, a, b, text = load_case(case)
        with torch.no_grad():
            fused = model(
                torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None], torch.from_numpy(text)[None]
            )[0]
            f8 = (fused - torch.min(fused)) / (torch.max(fused) - torch.min(fused))
            u8 = np.squeeze((f8 * 255).numpy()).astype("uint8")
        with torch.no_grad():  # the same official network in float64: how far float32 rounding moves it
            m64 = model.double()
            f64 = m64(
                *(torch.from_numpy(x).double()[None, None] for x in (a, b)),
                torch.from_numpy(text).double()[None],
            )[0]
            model.float()
        out[f"{name}/output"] = fused[0].numpy()
        out[f"{name}/output_float64"] = f64[0].numpy().astype(np.float32)  # stored as float32 (6e-8 rounding)
        out[f"{name}/uint8"] = u8
        out[f"{name}/inputs_sha1"] = np.array(sha1(a, b, text))
        print(name, a.shape, "float32 vs float64:", float((fused.double() - f64).abs().max()))
    np.savez_compressed(os.path.join(HERE, "official_outputs.npz"), **out)


if __name__ == "__main__":
    main()
