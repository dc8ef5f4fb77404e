"""Metrics against hand-computed values and an independent straightforward restatement of the official formulas."""

import os

import numpy as np
import pytest

from benchmarks import reference_metrics as ref
from film.common import metrics as M
from film.common.images import read_gray


def test_hand_computed_tiny_images():
    img = np.array([[0, 0], [255, 255]], dtype=np.float32)
    assert M.EN(img) == pytest.approx(1.0)  # two equiprobable values: 1 bit
    assert M.SD(img) == pytest.approx(127.5)
    # SF: horizontal differences 0, vertical 255 -> sqrt(0 + 255^2)
    assert M.SF(img) == pytest.approx(255.0)
    # AG: gx = 0, gy = 255 everywhere -> sqrt(255^2 / 2)
    assert M.AG(img) == pytest.approx(255 / np.sqrt(2))
    f = np.array([[10, 20], [30, 40]], dtype=np.float32)
    a = np.zeros((2, 2), np.float32)
    b = np.full((2, 2), 10, np.float32)
    assert M.MSE(f, a, b) == pytest.approx(((100 + 400 + 900 + 1600) / 4 + (0 + 100 + 400 + 900) / 4) / 2)
    assert M.PSNR(f, a, b) == pytest.approx(10 * np.log10(40**2 / 550.0))
    # MI of an image with itself = its entropy in nats; with a constant image = 0
    x = np.array([[0, 1], [2, 3]], dtype=np.float32)
    assert M.MI(x, x, np.zeros_like(x)) == pytest.approx(np.log(4))


def test_mutual_info_against_sklearn_definition(rng):
    x = rng.integers(0, 256, (64, 48)).astype(np.float32)
    y = np.clip(x + rng.integers(-20, 20, x.shape), 0, 255).astype(np.float32)
    assert M._mutual_info(x, y) == pytest.approx(ref.mutual_info(x, y), rel=1e-12)
    z = x + 0.5  # non-integer values take the generic path
    assert M._mutual_info(z, y) == pytest.approx(ref.mutual_info(z, y), rel=1e-12)


def _real_triples(samples):
    out = []
    for task, ds, fa, fb, name in [
        ("IVF", "TNO", "ir", "vi", "07.png"),
        ("IVF", "RoadScene", "ir", "vi", "FLIR_07809.jpg"),
        ("MIF", "MRI_PET", "MRI", "PET", "11.png"),
        ("MEF", "MEFB", "over", "under", "Arno.png"),
    ]:
        a = read_gray(os.path.join(samples, task, ds, fa, name))
        b = read_gray(os.path.join(samples, task, ds, fb, name))
        f = np.round(np.maximum(a, b) * 0.7 + np.minimum(a, b) * 0.3).astype(
            np.float32
        )  # a plausible "fusion"
        out.append((f"{task}/{ds}", f, a, b))
    return out


def _ssim_numpy(x: np.ndarray, y: np.ndarray, data_range: float = 255.0) -> float:
    """skimage.metrics.structural_similarity's defaults restated from Wang et al. 2004 as skimage applies them,
    in float64 with scipy's uniform filter (no skimage code): 7x7 mean windows (reflected edges), sample
    covariances (N / (N - 1)), K1 = 0.01, K2 = 0.03, the mean over the map without its 3-pixel border."""
    from scipy.ndimage import uniform_filter

    x, y = x.astype(np.float64), y.astype(np.float64)
    win, n = 7, 49
    f = lambda z: uniform_filter(z, size=win)  # noqa: E731
    ux, uy = f(x), f(y)
    cov = n / (n - 1)
    vx, vy, vxy = cov * (f(x * x) - ux * ux), cov * (f(y * y) - uy * uy), cov * (f(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean())


@pytest.mark.parametrize("metric", M.METRICS)
def test_against_reference_on_real_pairs(samples, metric):
    """Every metric against the straightforward port (benchmarks/reference_metrics.py); SSIM, which both would
    take from the same skimage call, against a numpy restatement of the formula instead."""
    for label, f, a, b in _real_triples(samples):
        ours = M.evaluate(f, a, b, [metric])[metric]
        if metric == "SSIM":
            theirs, rel = _ssim_numpy(f, a) + _ssim_numpy(f, b), 1e-5  # skimage computes float32 in float32
        else:
            theirs, rel = ref.evaluate(f, a, b, [metric])[metric], 1e-6
        assert ours == pytest.approx(theirs, rel=rel, abs=1e-9), f"{label} {metric}: {ours} vs {theirs}"


def _official_cases():
    import json
    import sys

    here = os.path.join(os.path.dirname(__file__), "golden")
    sys.path.insert(0, here)
    import make_metrics_golden as mmg

    with open(os.path.join(here, "official_metrics.json")) as f:
        return mmg, json.load(f)


@pytest.mark.parametrize("metric", M.METRICS)
def test_against_the_official_evaluator(metric):
    """film eval's metrics against numbers the *official* utils/Evaluator.py produced on the same images
    (tests/golden/make_metrics_golden.py; only the numbers are committed). All four tasks, colour and grey
    sources. Measured agreement: <= 2e-10 relative (float64 vs float64 in another order)."""
    mmg, golden = _official_cases()
    assert golden["metrics"] == list(M.METRICS)
    for case in mmg.CASES:
        label, f, a, b = mmg.load_case(case)
        ours = M.evaluate(f, a, b, [metric])[metric]
        theirs = golden["cases"][label][metric]
        assert ours == pytest.approx(theirs, rel=1e-7, abs=1e-12), f"{label} {metric}: {ours!r} vs official {theirs!r}"
