"""Framework-specific primitives of FILM for Jittor, one small function each (mirrors torch/ops.py).

Written by hand where Jittor's own op differs from torch's: ``jt.normalize(p=1)`` has no eps (NaN on a
zero row), and Jittor's CUDA softmax uses a cub API that CUDA 13 removed.
"""

from __future__ import annotations

import math

import jittor as jt
import numpy as np

from film.common.resize import nearest_index

_index_cache: dict[tuple[int, int], jt.Var] = {}


def _index(in_size: int, out_size: int) -> jt.Var:
    key = (in_size, out_size)
    idx = _index_cache.get(key)
    if idx is None:
        idx = jt.array(nearest_index(in_size, out_size).astype(np.int32)).stop_grad()
        _index_cache[key] = idx
    return idx


def resize_nearest(x: jt.Var, size: tuple[int, int]) -> jt.Var:
    """Nearest resize of (B,C,H,W) with the same index maps as the torch backend (film.common.resize)."""
    h, w = x.shape[-2:]
    if h != size[0]:
        x = x[:, :, _index(h, size[0])]
    if w != size[1]:
        x = x[:, :, :, _index(w, size[1])]
    return x


def layer_norm_withbias(x: jt.Var, weight: jt.Var, bias: jt.Var, eps: float) -> jt.Var:
    mu = x.mean(1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(1, keepdims=True)
    return xc / jt.sqrt(var + eps) * weight.reshape(-1, 1, 1) + bias.reshape(-1, 1, 1)


def l2_normalize(x: jt.Var, eps: float) -> jt.Var:
    # The norm runs over H*W (10^5 values): accumulate in float64, as Jittor's float32 reduction
    # is a plain running sum whose error (~1e-5 relative) is 10x torch's blocked summation.
    norm = jt.sqrt((x.float64() * x.float64()).sum(-1, keepdims=True)).float32()
    return x / jt.maximum(norm, eps)


def l1_normalize(x: jt.Var, eps: float) -> jt.Var:
    return x / jt.maximum(x.abs().sum(-1, keepdims=True), eps)


def softmax(x: jt.Var) -> jt.Var:
    e = jt.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def gelu(x: jt.Var) -> jt.Var:
    return jt.nn.gelu(x)


def attention(q: jt.Var, k: jt.Var, v: jt.Var) -> jt.Var:
    scores = jt.matmul(q * (1.0 / math.sqrt(q.shape[-1])), k.transpose(0, 1, 3, 2))
    return jt.matmul(softmax(scores), v)


def cat(xs: list[jt.Var], dim: int) -> jt.Var:
    return jt.concat(xs, dim)


def sigmoid(x: jt.Var) -> jt.Var:
    return jt.sigmoid(x)


def linear(x: jt.Var, w: jt.Var, b: jt.Var) -> jt.Var:
    return jt.matmul(x, w.transpose(1, 0)) + b


def matmul(a: jt.Var, b: jt.Var) -> jt.Var:
    return jt.matmul(a, b)


def gram(q: jt.Var, k: jt.Var) -> jt.Var:
    """q @ k^T over the last axis (H*W long in MDTA), accumulated in float64 for the same reason as above."""
    return jt.matmul(q.float64(), k.float64().transpose(-2, -1)).float32()


def mean_keepdim(x: jt.Var, dim: int) -> jt.Var:
    return x.mean(dim, keepdims=True)


def detach(x: jt.Var) -> jt.Var:
    return x.detach()


def conv1x1(x: jt.Var, weight: jt.Var, bias: jt.Var | None) -> jt.Var:
    """1x1 convolution as one matmul: Jittor's CPU conv is ~20x slower than this for 1x1 kernels."""
    b, c, h, w = x.shape
    y = jt.matmul(weight.reshape(weight.shape[0], c), x.reshape(b, c, h * w)).reshape(b, -1, h, w)
    return y if bias is None else y + bias.reshape(1, -1, 1, 1)


def depthwise3x3(x: jt.Var, weight: jt.Var, bias: jt.Var | None) -> jt.Var:
    """Depth-wise 3x3 conv (padding 1) as one fused reindex + multiply + sum (faster than Jittor's conv on CPU)."""
    b, c, h, w = x.shape
    patches = x.reindex([b, c, h, w, 3, 3], ["i0", "i1", "i2+i4-1", "i3+i5-1"])  # out of range reads 0
    out = (patches * weight.reshape(1, c, 1, 1, 3, 3)).sum([4, 5])
    return out if bias is None else out + bias.reshape(1, -1, 1, 1)
