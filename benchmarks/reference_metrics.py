"""A straightforward, unoptimised restatement of the official ``utils/Evaluator.py`` formulas.

Written from the formulas (not copied): full 2-D ``convolve2d`` windows for VIFF, a contingency
table for MI. It is the baseline of ``film bench --metrics`` and the reference of tests/test_metrics.py.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import convolve2d


def en(img):
    v = np.uint8(np.round(img)).flatten()
    p = np.bincount(v) / v.shape[0]
    return -sum(p * np.log2(p + (p == 0)))


def sd(img):
    return np.std(img)


def sf(img):
    return np.sqrt(np.mean((img[:, 1:] - img[:, :-1]) ** 2) + np.mean((img[1:, :] - img[:-1, :]) ** 2))


def ag(img):
    gx, gy = np.zeros_like(img), np.zeros_like(img)
    gx[:, 0], gx[:, -1] = img[:, 1] - img[:, 0], img[:, -1] - img[:, -2]
    gx[:, 1:-1] = (img[:, 2:] - img[:, :-2]) / 2
    gy[0, :], gy[-1, :] = img[1, :] - img[0, :], img[-1, :] - img[-2, :]
    gy[1:-1, :] = (img[2:, :] - img[:-2, :]) / 2
    return np.mean(np.sqrt((gx**2 + gy**2) / 2))


def mutual_info(x, y):
    """sum_ij p_ij ln(p_ij / (p_i p_j)) over the contingency table of the pixel values (natural log)."""
    xs, xi = np.unique(x.flatten(), return_inverse=True)
    ys, yi = np.unique(y.flatten(), return_inverse=True)
    table = np.zeros((len(xs), len(ys)))
    np.add.at(table, (xi.ravel(), yi.ravel()), 1)
    p = table / table.sum()
    pi, pj = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / (pi @ pj)[nz])).sum())


def mi(f, a, b):
    try:  # the official code calls sklearn
        from sklearn.metrics import mutual_info_score as mis

        return mis(f.flatten(), a.flatten()) + mis(f.flatten(), b.flatten())
    except ImportError:
        return mutual_info(f, a) + mutual_info(f, b)


def mse(f, a, b):
    return (np.mean((a - f) ** 2) + np.mean((b - f) ** 2)) / 2


def _r(x, y):
    return np.sum((x - np.mean(x)) * (y - np.mean(y))) / np.sqrt(
        np.sum((x - np.mean(x)) ** 2) * np.sum((y - np.mean(y)) ** 2)
    )


def cc(f, a, b):
    return (_r(a, f) + _r(b, f)) / 2


def psnr(f, a, b):
    return 10 * np.log10(np.max(f) ** 2 / mse(f, a, b))


def scd(f, a, b):
    return _r(a, f - b) + _r(b, f - a)


def viff_one(ref, dist):
    sigma_nsq, eps = 2, 1e-10
    num = den = 0.0
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        s = n / 5.0
        m = (n - 1.0) / 2.0
        y, x = np.ogrid[-m : m + 1, -m : m + 1]
        h = np.exp(-(x * x + y * y) / (2.0 * s * s))
        h[h < np.finfo(h.dtype).eps * h.max()] = 0
        win = np.rot90(h / h.sum(), 2)
        if scale > 1:
            ref = convolve2d(ref, win, mode="valid")[::2, ::2]
            dist = convolve2d(dist, win, mode="valid")[::2, ::2]
        mu1, mu2 = convolve2d(ref, win, mode="valid"), convolve2d(dist, win, mode="valid")
        s1 = convolve2d(ref * ref, win, mode="valid") - mu1 * mu1
        s2 = convolve2d(dist * dist, win, mode="valid") - mu2 * mu2
        s12 = convolve2d(ref * dist, win, mode="valid") - mu1 * mu2
        s1[s1 < 0] = 0
        s2[s2 < 0] = 0
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        g[s1 < eps] = 0
        sv[s1 < eps] = s2[s1 < eps]
        s1[s1 < eps] = 0
        g[s2 < eps] = 0
        sv[s2 < eps] = 0
        sv[g < 0] = s2[g < 0]
        g[g < 0] = 0
        sv[sv <= eps] = eps
        num += np.sum(np.log10(1 + g * g * s1 / (sv + sigma_nsq)))
        den += np.sum(np.log10(1 + s1 / sigma_nsq))
    v = num / den
    return 1.0 if np.isnan(v) else v


def viff(f, a, b):
    return viff_one(a, f) + viff_one(b, f)


def _grad(img):
    h1 = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]]).astype(np.float32)
    h3 = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]).astype(np.float32)
    sx, sy = convolve2d(img, h3, mode="same"), convolve2d(img, h1, mode="same")
    g = np.sqrt(sx * sx + sy * sy)
    ang = np.zeros_like(img)
    ang[sx == 0] = math.pi / 2
    ang[sx != 0] = np.arctan(sy[sx != 0] / sx[sx != 0])
    return g, ang


def _q(a_ang, ga, f_ang, gf):
    gaf = np.zeros_like(a_ang)
    gaf[ga > gf] = gf[ga > gf] / ga[ga > gf]
    gaf[ga == gf] = gf[ga == gf]
    gaf[ga < gf] = ga[ga < gf] / gf[ga < gf]
    aaf = 1 - np.abs(a_ang - f_ang) / (math.pi / 2)
    return 0.9994 / (1 + np.exp(-15 * (gaf - 0.5))) * (0.9879 / (1 + np.exp(-22 * (aaf - 0.8))))


def qabf(f, a, b):
    ga, aa = _grad(a)
    gb, ab = _grad(b)
    gf, af = _grad(f)
    return np.sum(_q(aa, ga, af, gf) * ga + _q(ab, gb, af, gf) * gb) / np.sum(ga + gb)


def ssim(f, a, b):
    from skimage.metrics import structural_similarity

    return structural_similarity(f, a, data_range=255) + structural_similarity(f, b, data_range=255)


FUNCS = {
    "EN": en,
    "SD": sd,
    "SF": sf,
    "AG": ag,
    "MI": mi,
    "MSE": mse,
    "CC": cc,
    "PSNR": psnr,
    "SCD": scd,
    "VIFF": viff,
    "Qabf": qabf,
    "SSIM": ssim,
}


def evaluate(f, a, b, metrics=tuple(FUNCS)):
    return {m: float(FUNCS[m](f) if m in ("EN", "SD", "SF", "AG") else FUNCS[m](f, a, b)) for m in metrics}
