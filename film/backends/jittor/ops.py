"""Framework-specific primitives of FILM for Jittor, one small function each, name for name as torch/ops.py.

Written by hand where Jittor's own op differs from torch's: ``jt.normalize(p=1)`` has no eps (NaN on a
zero row), and Jittor's CUDA softmax uses a cub API that CUDA 13 removed. Jittor's own kernels (compiled
loops, oneDNN calls, custom gradients) and the layout a Net's graph is built in are in kernels.py.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from film.backends.jittor import kernels as K
from film.backends.jittor.configured import jt
from film.common.resize import Cache, nearest_index

_index_cache = Cache()  # (in, out) and (h, w, H, W) -> index maps, the last 32 sizes


@contextlib.contextmanager
def exporting():
    """torch/ops.py's export mode; Jittor exports no graphs, so sizes stay known numbers inside it too."""
    yield


def shapes_static() -> bool:
    """Image sizes are known numbers (Jittor exports no graphs; torch/ops.py has an export mode)."""
    return True


def image_dims(x: jt.Var) -> tuple[int, int, int, int]:
    if K.is_nhwc():
        b, h, w, c = x.shape
        return b, c, h, w
    b, c, h, w = x.shape
    return b, c, h, w


def conv_split(x: jt.Var, pointwise, depthwise, sizes: tuple[int, ...],
               first_as_rows: bool = False) -> tuple[jt.Var, ...]:
    """``depthwise(pointwise(x))`` cut into channel groups of ``sizes`` (the MDTA's qk | v, the GDFN's halves).
    NHWC: slicing the innermost axis is a copy in Jittor, so each group is made by its own pair of
    convolutions over the matching output channels (a depth-wise convolution never mixes channels): the
    same numbers and work, no copies. ``first_as_rows`` (torch's NCHW q|k rows) is not needed here: this
    backend's ``qk_cosine`` reads the NHWC pixel rows directly."""
    if not K.is_nhwc():
        y = depthwise(pointwise(x))
        out, start = [], 0
        for n in sizes:
            out.append(y[:, start : start + n])
            start += n
        return tuple(out)
    return tuple(K.depthwise3x3_nhwc(y, _part(depthwise.weight, a, z), _part(depthwise.bias, a, z))
                 for y, (a, z) in zip(_pointwise_parts(x, pointwise, sizes), _bounds(sizes)))


def _bounds(sizes: tuple[int, ...]) -> list[tuple[int, int]]:
    """(start, end) of each channel group of ``sizes``."""
    ends = np.cumsum(sizes).tolist()
    return list(zip([0, *ends[:-1]], ends))


def _part(p: jt.Var | None, a: int, z: int) -> jt.Var | None:
    return None if p is None else p[a:z]


def _pointwise_parts(x: jt.Var, pointwise, sizes: tuple[int, ...]) -> list[jt.Var]:
    """``pointwise(x)`` of an NHWC map cut into channel groups of ``sizes``, each made by its own 1x1
    convolution over the matching output channels (a channel slice of an NHWC map is a copy in Jittor)."""
    return [K.conv2d_onednn(x, _part(pointwise.weight, a, z), _part(pointwise.bias, a, z), 0, 1)
            for a, z in _bounds(sizes)]


def _per_sample(weight: jt.Var, b: int) -> jt.Var:
    """A 1x1 convolution's (C_out, C, 1, 1) weight as a (b, C_out, C) stack, one matrix per sample."""
    c_out, c = weight.shape[0], weight.shape[1]
    return weight.reshape(1, c_out, c).broadcast((b, c_out, c))


def conv_to_nchw(x: jt.Var, conv) -> jt.Var:
    """``to_nchw(conv(x))`` for a 1x1 ``conv``, as NCHW memory (the official token view reads it): NHWC, one
    oneDNN sgemm (W times the pixel rows' transpose) instead of the convolution plus a transpose."""
    if not K.is_nhwc():
        return conv(x)
    b, h, w, c = x.shape
    y = K.batched_sgemm(_per_sample(conv.weight, b), x.reshape(b, h * w, c), trans_b=True)
    if conv.bias is not None:
        y = y + conv.bias.reshape(1, -1, 1)
    return y.reshape(b, -1, h, w)


def conv_from_nchw(x: jt.Var, conv, like: jt.Var) -> jt.Var:
    """``conv(from_nchw(x))`` for a 1x1 ``conv`` of an NCHW map, in the current layout (``like``: a map of the
    forward, for the torch backend's sake): NHWC, one oneDNN sgemm reading the NCHW memory transposed and
    writing the pixel rows (no transpose)."""
    if not K.is_nhwc():
        return conv(x)
    b, c, h, w = x.shape
    y = K.batched_sgemm(x.reshape(b, c, h * w), _per_sample(conv.weight, b), trans_a=True, trans_b=True)
    if conv.bias is not None:
        y = y + conv.bias
    return y.reshape(b, h, w, -1)


def cat_channels(xs: list[jt.Var]) -> jt.Var:
    return jt.concat(xs, 3 if K.is_nhwc() else 1)


def qk_cosine(qk: jt.Var, heads: int, eps: float) -> jt.Var:
    """The MDTA's per-head cosine similarities ``normalize(q) @ normalize(k)^T`` over H*W (as F.normalize:
    x / max(||x||, eps)): qk = q | k channels, (B, 2C, H, W) logical -> (B, heads, C/heads, C/heads).

    NCHW (--no-fast): the official order, norms and gram accumulated in float64. NHWC (the default on oneDNN,
    inference and training): G = [q k]^T [q k] over the pixel rows, whose diagonal holds the squared norms and whose q-k block holds
    the raw products, divided by the norms afterwards (the same quantity, no transpose of q, k). G is summed
    in float64 from float32 oneDNN sgemm partials over 4096 pixel rows each: one float32 sgemm over all H*W
    rows (0.2 s less per forward) was measured 1.13e-5 from float64 on the roadscene golden pair with oneDNN
    limited to AVX2, over the 1e-5 Jittor keeps; the float64 transposed loops cost 0.7 s more at 288x512.
    The torch backend keeps the official float32 order instead, to reproduce the official rounding."""
    b, c2, h, w = image_dims(qk)
    c, d = c2 // 2, c2 // 2 // heads
    if not K.is_nhwc():
        rows = _l2_normalize(qk.reshape(b, 2, heads, d, h * w), eps)
        return _gram(rows[:, 0], rows[:, 1])
    g = K.gram_f64(qk.reshape(b, h * w, c2))
    norm = jt.maximum(jt.sqrt(g.reindex([b, c2], ["i0", "i1", "i1"])), eps)
    cross = g.reindex([b, heads, d, d], ["i0", f"i1*{d}+i2", f"{c}+i1*{d}+i3"])
    return (cross / (norm[:, :c].reshape(b, heads, d, 1) * norm[:, c:].reshape(b, heads, 1, d))).float32()


def attend_project(attn: jt.Var, v: jt.Var, project_out) -> jt.Var:
    """``project_out(rearrange(attn @ v))`` of the MDTA: attn (B, heads, d, d), v (B, C, H, W) logical.

    NHWC: attn @ v is v's pixel rows times the block-diagonal of attn^T and project_out (1x1) one more matrix,
    so both are one (C, C_out) matrix applied to v's pixel rows in one oneDNN sgemm, written straight into
    the NHWC output."""
    b, c, h, w = image_dims(v)
    heads = attn.shape[1]
    d = c // heads
    if not K.is_nhwc():
        return project_out(K.bmm(attn, v.reshape(b, heads, d, h * w)).reshape(b, c, h, w))
    # block_diag[b, i, j] = attn[b, i/d, i%d, j%d] where i/d == j/d, else 0
    block_diag = attn.reindex(
        [b, c, c], ["i0", f"i1/{d}", f"i1%{d}", f"i2%{d}"], overflow_conditions=[f"i1/{d}!=i2/{d}"]
    )
    weight = project_out.weight.reshape(project_out.weight.shape[0], c)
    pix = v.reshape(b, h * w, c)
    mats = jt.matmul(weight, block_diag)  # (B, C_out, C): weight @ block_diag[i] per sample
    out = K.batched_sgemm(pix, mats, trans_b=True).reshape(b, h, w, -1)
    return out if project_out.bias is None else out + project_out.bias


def to_nchw(x: jt.Var) -> jt.Var:
    return x.transpose(0, 3, 1, 2) if K.is_nhwc() else x


def from_nchw(x: jt.Var) -> jt.Var:
    return x.transpose(0, 2, 3, 1) if K.is_nhwc() else x


def _index(in_size: int, out_size: int) -> jt.Var:
    return _index_cache.get((in_size, out_size),
                            lambda: jt.array(nearest_index(in_size, out_size).astype(np.int32)).stop_grad())


def resize_nearest(x: jt.Var, size: tuple[int, int]) -> jt.Var:
    """Nearest resize of (B,C,H,W) (or NHWC in the channels-last layout) with the same index maps as the
    torch backend (film.common.resize). NHWC: one gather of whole pixel rows (~20x faster than two)."""
    b, c, h, w = image_dims(x)
    if (h, w) == tuple(size):
        return x
    if K.is_nhwc():
        def make():
            rows = nearest_index(h, size[0])[:, None] * w + nearest_index(w, size[1])[None, :]
            return jt.array(rows.reshape(-1).astype(np.int32)).stop_grad()

        flat = _index_cache.get((h, w, size[0], size[1]), make)
        return x.reshape(b, h * w, c)[:, flat].reshape(b, size[0], size[1], c)
    if h != size[0]:
        x = x[:, :, _index(h, size[0])]
    if w != size[1]:
        x = x[:, :, :, _index(w, size[1])]
    return x


def layer_norm_withbias(x: jt.Var, weight: jt.Var, bias: jt.Var, eps: float) -> jt.Var:
    # in NHWC the channels are the innermost axis: a contiguous reduction, per-channel affine broadcasts as is
    axis, shape = (3, (-1,)) if K.is_nhwc() else (1, (-1, 1, 1))
    mu = x.mean(axis, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis, keepdims=True)
    return xc / jt.sqrt(var + eps) * weight.reshape(*shape) + bias.reshape(*shape)


def _l2_normalize(x: jt.Var, eps: float) -> jt.Var:
    # The norm runs over H*W (10^5 values): accumulate in float64, as Jittor's float32 reduction
    # is a plain running sum whose error (~1e-5 relative) is 10x torch's blocked summation.
    norm = jt.sqrt((x.float64() * x.float64()).sum(-1, keepdims=True)).float32()
    return x / jt.maximum(norm, eps)


def l1_normalize(x: jt.Var, eps: float) -> jt.Var:
    return x / jt.maximum(x.abs().sum(-1, keepdims=True), eps)


def softmax(x: jt.Var) -> jt.Var:
    if not jt.flags.use_cuda and x.dtype == jt.float32:
        return K.softmax_rows(x.reshape(-1, x.shape[-1])).reshape(x.shape)
    e = jt.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def gelu(x: jt.Var) -> jt.Var:
    return jt.nn.gelu(x)


def gelu_gate(x: jt.Var, pointwise, depthwise, hidden: int) -> jt.Var:
    """The GDFN's gate ``gelu(x1) * x2`` with ``x1, x2 = depthwise(pointwise(x)).chunk(2, dim=1)``.

    NHWC inference: each half by its own 1x1 convolution, then one pass makes both depth-wise convolutions and
    the gate per pixel (kernels.depthwise3x3_gate_nhwc), neither half written out and read back."""
    if not (K.is_nhwc() and jt.flags.no_grad):
        x1, x2 = conv_split(x, pointwise, depthwise, (hidden, hidden))
        return gelu(x1) * x2
    y1, y2 = _pointwise_parts(x, pointwise, (hidden, hidden))
    return K.depthwise3x3_gate_nhwc(y1, y2, depthwise.weight, depthwise.bias)


def conv_add(conv, x: jt.Var, residual: jt.Var) -> jt.Var:
    """``residual + conv(x)`` (a block's residual connection around its last convolution)."""
    return residual + conv(x)


def conv_prelu(conv, prelu, x: jt.Var) -> jt.Var:
    """``prelu(conv(x))``."""
    return prelu(conv(x))


def attention(q: jt.Var, k: jt.Var, v: jt.Var) -> jt.Var:
    scores = K.bmm(q * (1.0 / math.sqrt(q.shape[-1])), k.transpose(0, 1, 3, 2))
    return K.bmm(softmax(scores), v)


def inference() -> bool:
    """Whether this forward is for inference only (no gradients are being recorded)."""
    return bool(jt.flags.no_grad)


def bmm(a: jt.Var, b: jt.Var, trans_b: bool = False) -> jt.Var:
    """(n, M, K) @ (n, K, N), or @ (n, N, K) transposed with ``trans_b`` (oneDNN sgemm flags, no copy)."""
    return K.bmm(a, b, trans_b)


def head_keys(x: jt.Var, w: jt.Var, bias: jt.Var, heads: int) -> list[jt.Var]:
    """The attention keys ``x w^T + bias`` (B, S, E) as each head's (B, S, E/heads), each made by its own slice
    of ``w`` (a column slice of one projection would be a copy in Jittor)."""
    d = w.shape[0] // heads
    return [linear(x, w[i * d : (i + 1) * d], bias[i * d : (i + 1) * d]) for i in range(heads)]


def stack(xs: list[jt.Var], dim: int) -> jt.Var:
    return jt.stack(xs, dim)


def sigmoid(x: jt.Var) -> jt.Var:
    return jt.sigmoid(x)


def linear(x: jt.Var, w: jt.Var, b: jt.Var) -> jt.Var:
    return jt.matmul(x, w.transpose(1, 0)) + b


def _gram(q: jt.Var, k: jt.Var) -> jt.Var:
    """q @ k^T over the last axis (H*W long in MDTA), accumulated in float64 for the same reason as above."""
    return jt.matmul(q.float64(), k.float64().transpose(-2, -1)).float32()


def mean_keepdim(x: jt.Var, dim: int) -> jt.Var:
    return x.mean(dim, keepdims=True)


def detach(x: jt.Var) -> jt.Var:
    return x.detach()


def recompute(fn, modules: list, *xs: jt.Var) -> jt.Var:
    """``fn(*xs)`` whose insides are recomputed in the backward pass (kernels.recompute)."""
    if jt.flags.no_grad:
        return fn(*xs)
    return K.recompute(fn, [p for m in modules for p in m.parameters()], *xs)


# Loss primitives (film.common.loss, the official Fusionloss): the same ops module serves the forward and the loss.

_kernels = Cache()


def conv2d_same(x: jt.Var, k: np.ndarray) -> jt.Var:
    """A fixed (Sobel / Gaussian) kernel over (B,1,H,W) with 'same' zero padding, the kernel cached."""
    w = _kernels.get((k.tobytes(), k.shape), lambda: jt.array(np.ascontiguousarray(k)[None, None]).stop_grad())
    return jt.nn.conv2d(x, w, padding=k.shape[-1] // 2)


abs = jt.abs  # noqa: A001 - the loss module's primitive names
maximum = jt.maximum
mean = jt.mean
sqrt = jt.sqrt


def sum(x: jt.Var) -> jt.Var:  # noqa: A001
    return x.sum()
