"""The official training loss (``utils/lossfun.py``), described once for both backends.

``Fusionloss(coeff_grad=20)`` as ``train.py`` builds it::

    L_in_grad = coeff_int * L1(max(A, B), F) + coeff_grad * L1(max(sobel(A), sobel(B)), sobel(F))
    sobel(x)  = |conv(x, Kx, pad=1)| + |conv(x, Ky, pad=1)|          (cross-correlation, zero padding)

With a known fused image T (synthetic pairs, the H5's optional ``target`` group) the two stand-ins for it,
max(A, B) and max(sobel(A), sobel(B)), are T and sobel(T): the same form, aimed at the truth. Not in the
official code, which has no such data.

plus ``ssim_weight * (LpLssim(A, F) + LpLssim(B, F))`` with
``LpLssim(I, F) = ||I - F||_2 + (1 - SSIM_5x5(I, F)) * int(sqrt(H * W))`` — 0 by default, and then skipped.
``ops`` is a backend's ops module (its loss primitives: conv2d_same(x, kernel numpy), abs, maximum, mean,
sqrt, sum).
"""

from __future__ import annotations

from math import exp

import numpy as np

SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)
SOBEL_Y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float32)
SSIM_WINDOW = 5
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    g = np.array([exp(-((x - size // 2) ** 2) / float(2 * sigma**2)) for x in range(size)], dtype=np.float32)
    g = g / g.sum()
    return np.outer(g, g).astype(np.float32)


SSIM_KERNEL = gaussian_window()


def sobel(ops, x):
    return ops.abs(ops.conv2d_same(x, SOBEL_X)) + ops.abs(ops.conv2d_same(x, SOBEL_Y))


def fusion_loss(ops, a, b, f, coeff_int: float = 1.0, coeff_grad: float = 20.0, target=None):
    """(total, intensity, gradient) for A, B, F of shape (B,1,H,W); ``target``: a known fused image or None."""
    if target is None:
        aim, aim_grad = ops.maximum(a, b), ops.maximum(sobel(ops, a), sobel(ops, b))
    else:
        aim, aim_grad = target, sobel(ops, target)
    loss_in = ops.mean(ops.abs(aim - f))
    loss_grad = ops.mean(ops.abs(aim_grad - sobel(ops, f)))
    return coeff_int * loss_in + coeff_grad * loss_grad, loss_in, loss_grad


def ssim(ops, x, y):
    mu1, mu2 = ops.conv2d_same(x, SSIM_KERNEL), ops.conv2d_same(y, SSIM_KERNEL)
    s1 = ops.conv2d_same(x * x, SSIM_KERNEL) - mu1 * mu1
    s2 = ops.conv2d_same(y * y, SSIM_KERNEL) - mu2 * mu2
    s12 = ops.conv2d_same(x * y, SSIM_KERNEL) - mu1 * mu2
    m = ((2 * mu1 * mu2 + SSIM_C1) * (2 * s12 + SSIM_C2)) / (
        (mu1 * mu1 + mu2 * mu2 + SSIM_C1) * (s1 + s2 + SSIM_C2)
    )
    return ops.mean(m)


def lp_lssim(ops, image_in, image_out, weight: float):
    lp = ops.sqrt(ops.sum((image_in - image_out) * (image_in - image_out)))
    lssim = 1 - ssim(ops, image_in, image_out)
    return lp + lssim * weight


def total_loss(ops, a, b, f, coeff_int: float, coeff_grad: float, ssim_weight: float, target=None):
    """The official lossALL; returns (total, dict of scalar parts)."""
    loss, l_in, l_grad = fusion_loss(ops, a, b, f, coeff_int, coeff_grad, target)
    parts = {"loss_in": l_in, "loss_grad": l_grad}
    if ssim_weight:
        h, w = a.shape[-2], a.shape[-1]
        weight = int(np.sqrt(h * w))  # train.py: weighttemp = int(np.sqrt(rows * columns))
        lssim = lp_lssim(ops, a, f, weight) + lp_lssim(ops, b, f, weight)
        parts["lplssim"] = lssim
        loss = loss + ssim_weight * lssim
    return loss, parts


def compute_loss(ops, a, b, f, cfg, target=None):
    """The official training loss with the recipe's coefficients (``cfg.grad_weight``, ``cfg.ssim_weight``);
    ``ops``: the backend's ops module (its loss primitives: abs, maximum, mean, sqrt, sum, conv2d_same);
    ``target``: the batch's known fused images (framework arrays) or None."""
    from film.common.spec import OFFICIAL_RECIPE

    return total_loss(ops, a, b, f, OFFICIAL_RECIPE.int_weight, cfg.grad_weight, cfg.ssim_weight, target)
