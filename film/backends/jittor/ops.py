"""Framework-specific primitives of FILM for Jittor, one small function each (mirrors torch/ops.py).

Written by hand where Jittor's own op differs from torch's: ``jt.normalize(p=1)`` has no eps (NaN on a
zero row), and Jittor's CUDA softmax uses a cub API that CUDA 13 removed.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from film.backends.jittor._jt import jt
from film.common.resize import nearest_index

_index_cache: dict[tuple[int, ...], jt.Var] = {}

# Memory order of image maps while a Net runs: NCHW, or NHWC (channels last) when the convolutions run on
# oneDNN, whose NHWC kernels are ~2x its NCHW ones on FILM's depth-wise and 1x1 convolutions (measured:
# docs/jittor_onednn.md). Set per forward by Net.execute (``layout``); sub-modules called on their own
# (tests) see NCHW. Shapes seen by film.common.forward stay logical (B, C, H, W) through the accessors below.
_NHWC = [False]


@contextlib.contextmanager
def layout(nhwc: bool):
    prev = _NHWC[0]
    _NHWC[0] = bool(nhwc)
    try:
        yield
    finally:
        _NHWC[0] = prev


def is_nhwc() -> bool:
    return _NHWC[0]


def image_dims(x: jt.Var) -> tuple[int, int, int, int]:
    if _NHWC[0]:
        b, h, w, c = x.shape
        return b, c, h, w
    b, c, h, w = x.shape
    return b, c, h, w


def conv_split(x: jt.Var, pointwise, depthwise, sizes: tuple[int, ...]) -> tuple[jt.Var, ...]:
    """``depthwise(pointwise(x))`` cut into channel groups of ``sizes`` (the MDTA's qk | v, the GDFN's halves).
    NHWC: slicing the innermost axis is a copy in Jittor, so each group is made by its own pair of
    convolutions over the matching output channels (a depth-wise convolution never mixes channels): the
    same numbers and work, no copies."""
    if not _NHWC[0]:
        y = depthwise(pointwise(x))
        out, start = [], 0
        for n in sizes:
            out.append(y[:, start : start + n])
            start += n
        return tuple(out)
    out, start = [], 0
    for n in sizes:
        def part(p, a=start, z=start + n):
            return None if p is None else p[a:z]

        y = conv2d_onednn(x, part(pointwise.weight), part(pointwise.bias), 0, 1)
        out.append(depthwise3x3_nhwc(y, part(depthwise.weight), part(depthwise.bias)))
        start += n
    return tuple(out)


def cat_channels(xs: list[jt.Var]) -> jt.Var:
    return jt.concat(xs, 3 if _NHWC[0] else 1)


_GRAM_ROWS = 4096  # pixel rows per float32 sgemm partial of the NHWC gram (partials summed in float64)


def qk_cosine(qk: jt.Var, heads: int, eps: float) -> jt.Var:
    """The MDTA's per-head cosine similarities ``normalize(q) @ normalize(k)^T`` over H*W (as F.normalize:
    x / max(||x||, eps)): qk = q | k channels, (B, 2C, H, W) logical -> (B, heads, C/heads, C/heads).

    NCHW (training): the official order, norms and gram accumulated in float64. NHWC (inference, oneDNN):
    G = [q k]^T [q k] over the pixel rows, whose diagonal holds the squared norms and whose q-k block holds
    the raw products, divided by the norms afterwards (the same quantity, no transpose of q, k). G is summed
    in float64 from float32 oneDNN sgemm partials over 4096 pixel rows each: one float32 sgemm over all H*W
    rows (0.2 s less per forward) was measured 1.13e-5 from float64 on the roadscene golden pair with oneDNN
    limited to AVX2, over the 1e-5 Jittor keeps; the float64 transposed loops cost 0.7 s more at 288x512.
    The torch backend keeps the official float32 order instead, to reproduce the official rounding."""
    b, c2, h, w = image_dims(qk)
    c, d = c2 // 2, c2 // 2 // heads
    if not _NHWC[0]:
        rows = l2_normalize(qk.reshape(b, 2, heads, d, h * w), eps)
        return gram(rows[:, 0], rows[:, 1])
    pix = qk.reshape(b, h * w, c2)
    gs = []
    for i in range(b):
        parts = [
            onednn().mkl_matmul(blk, blk, True, False).float64()
            for blk in (pix[i, s : s + _GRAM_ROWS] for s in range(0, h * w, _GRAM_ROWS))
        ]
        g = parts[0]
        for p in parts[1:]:
            g = g + p
        gs.append(g)
    g = jt.stack(gs) if b > 1 else gs[0].reshape(1, c2, c2)
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
    if not _NHWC[0]:
        return project_out(matmul(attn, v.reshape(b, heads, d, h * w)).reshape(b, c, h, w))
    # block_diag[b, i, j] = attn[b, i/d, i%d, j%d] where i/d == j/d, else 0
    block_diag = attn.reindex(
        [b, c, c], ["i0", f"i1/{d}", f"i1%{d}", f"i2%{d}"], overflow_conditions=[f"i1/{d}!=i2/{d}"]
    )
    weight = project_out.weight.reshape(project_out.weight.shape[0], c)
    pix = v.reshape(b, h * w, c)
    outs = [onednn().mkl_matmul(pix[i], jt.matmul(weight, block_diag[i]), False, True) for i in range(b)]
    out = (jt.stack(outs) if b > 1 else outs[0].reshape(1, h * w, -1)).reshape(b, h, w, -1)
    return out if project_out.bias is None else out + project_out.bias


def to_nchw(x: jt.Var) -> jt.Var:
    return x.transpose(0, 3, 1, 2) if _NHWC[0] else x


def from_nchw(x: jt.Var) -> jt.Var:
    return x.transpose(0, 2, 3, 1) if _NHWC[0] else x


def _index(in_size: int, out_size: int) -> jt.Var:
    key = (in_size, out_size)
    idx = _index_cache.get(key)
    if idx is None:
        idx = jt.array(nearest_index(in_size, out_size).astype(np.int32)).stop_grad()
        _index_cache[key] = idx
    return idx


def resize_nearest(x: jt.Var, size: tuple[int, int]) -> jt.Var:
    """Nearest resize of (B,C,H,W) (or NHWC in the channels-last layout) with the same index maps as the
    torch backend (film.common.resize). NHWC: one gather of whole pixel rows (~20x faster than two)."""
    b, c, h, w = image_dims(x)
    if (h, w) == tuple(size):
        return x
    if _NHWC[0]:
        key = (h, w, size[0], size[1])
        flat = _index_cache.get(key)
        if flat is None:
            rows = nearest_index(h, size[0])[:, None] * w + nearest_index(w, size[1])[None, :]
            flat = _index_cache[key] = jt.array(rows.reshape(-1).astype(np.int32)).stop_grad()
        return x.reshape(b, h * w, c)[:, flat].reshape(b, size[0], size[1], c)
    if h != size[0]:
        x = x[:, :, _index(h, size[0])]
    if w != size[1]:
        x = x[:, :, :, _index(w, size[1])]
    return x


def layer_norm_withbias(x: jt.Var, weight: jt.Var, bias: jt.Var, eps: float) -> jt.Var:
    # in NHWC the channels are the innermost axis: a contiguous reduction, per-channel affine broadcasts as is
    axis, shape = (3, (-1,)) if _NHWC[0] else (1, (-1, 1, 1))
    mu = x.mean(axis, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis, keepdims=True)
    return xc / jt.sqrt(var + eps) * weight.reshape(*shape) + bias.reshape(*shape)


def l2_normalize(x: jt.Var, eps: float) -> jt.Var:
    # The norm runs over H*W (10^5 values): accumulate in float64, as Jittor's float32 reduction
    # is a plain running sum whose error (~1e-5 relative) is 10x torch's blocked summation.
    norm = jt.sqrt((x.float64() * x.float64()).sum(-1, keepdims=True)).float32()
    return x / jt.maximum(norm, eps)


def l1_normalize(x: jt.Var, eps: float) -> jt.Var:
    return x / jt.maximum(x.abs().sum(-1, keepdims=True), eps)


# Softmax over the last axis of float32 rows, inference on CPU: a compiled loop (max, exp, float64 sum,
# scale), OpenMP over rows. The cross-attention's (B, 8, L, 13824) scores took 74 ms per call in Jittor's
# fused ops and 7 ms here, 3e-8 from float64 where Jittor's float32 row sums are 2e-5 away (measured,
# docs/jittor_onednn.md).
_SOFTMAX_ROWS = r"""
const int R = in0_shape0, N = in0_shape1;
#pragma omp parallel for
for (int r = 0; r < R; r++) {
  const float* __restrict__ x = in0_p + (size_t)r * N;
  float* __restrict__ y = out0_p + (size_t)r * N;
  float m = x[0];
  for (int n = 1; n < N; n++) m = x[n] > m ? x[n] : m;
  double s = 0;
  for (int n = 0; n < N; n++) { const float e = expf(x[n] - m); y[n] = e; s += e; }
  const float inv = (float)(1.0 / s);
  for (int n = 0; n < N; n++) y[n] *= inv;
}
"""


def softmax(x: jt.Var) -> jt.Var:
    if jt.flags.no_grad and not jt.flags.use_cuda and x.dtype == jt.float32:
        rows = x.reshape(-1, x.shape[-1])
        return jt.code(rows.shape, rows.dtype, [rows], cpu_src=_SOFTMAX_ROWS).reshape(x.shape)
    e = jt.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def gelu(x: jt.Var) -> jt.Var:
    return jt.nn.gelu(x)


def bmm(a: jt.Var, b: jt.Var) -> jt.Var:
    """Batched float32 matmul (..., M, K) @ (..., K, N). Jittor lowers a batched ``jt.matmul`` to
    broadcast-multiply-sum; with oneDNN loaded, one 2-D ``jt.matmul`` per batch entry runs as oneDNN's sgemm
    instead (``mkl_matmul``, with Jittor's own gradient): 5-13x faster on FILM's attention shapes."""
    if onednn() is None or a.ndim < 3:
        return jt.matmul(a, b)
    lead = a.shape[:-2]
    n = int(np.prod(lead))
    a2, b2 = a.reshape(n, a.shape[-2], a.shape[-1]), b.reshape(n, b.shape[-2], b.shape[-1])
    out = jt.stack([jt.matmul(a2[i], b2[i]) for i in range(n)]) if n > 1 else jt.matmul(a2[0], b2[0])[None]
    return out.reshape(*lead, a.shape[-2], b.shape[-1])


def attention(q: jt.Var, k: jt.Var, v: jt.Var) -> jt.Var:
    scores = bmm(q * (1.0 / math.sqrt(q.shape[-1])), k.transpose(0, 1, 3, 2))
    return bmm(softmax(scores), v)


def sigmoid(x: jt.Var) -> jt.Var:
    return jt.sigmoid(x)


def linear(x: jt.Var, w: jt.Var, b: jt.Var) -> jt.Var:
    return jt.matmul(x, w.transpose(1, 0)) + b


def matmul(a: jt.Var, b: jt.Var) -> jt.Var:
    return bmm(a, b)


def gram(q: jt.Var, k: jt.Var) -> jt.Var:
    """q @ k^T over the last axis (H*W long in MDTA), accumulated in float64 for the same reason as above."""
    return jt.matmul(q.float64(), k.float64().transpose(-2, -1)).float32()


def mean_keepdim(x: jt.Var, dim: int) -> jt.Var:
    return x.mean(dim, keepdims=True)


def detach(x: jt.Var) -> jt.Var:
    return x.detach()


def onednn():
    """Jittor's oneDNN ops module when loaded (use_mkl=1, see runtime.configure_onednn), else None."""
    from jittor import compile_extern

    return compile_extern.mkl_ops


class _OneDnnConv(jt.Function):
    """A stride-1 convolution on oneDNN, forward (``mkl_conv``) and backward (``mkl_conv_backward_x/_w``):
    Jittor gives ``mkl_conv`` no gradient of its own. Activations NCHW ("abcd") or NHWC ("acdb", the
    memory order oneDNN is fastest in), weights OIHW. The format is fixed at execute time, for the backward."""

    def execute(self, x, w, pad: int, groups: int, fmt: str):
        self.saved = (x, w, pad, groups, fmt)
        return onednn().mkl_conv(x, w, 1, 1, pad, pad, 1, 1, groups, fmt, "oihw", fmt)

    def grad(self, dy):
        x, w, p, g, fmt = self.saved
        m = onednn()
        h, wd = (x.shape[1], x.shape[2]) if fmt == "acdb" else (x.shape[2], x.shape[3])
        dx = m.mkl_conv_backward_x(w, dy, h, wd, 1, 1, p, p, 1, 1, g, fmt, "oihw", fmt)
        dw = m.mkl_conv_backward_w(x, dy, w.shape[2], w.shape[3], 1, 1, p, p, 1, 1, g, fmt, "oihw", fmt)
        return dx, dw, None, None, None


# Depth-wise 3x3 (padding 1) over an NHWC map, as a C++ loop compiled by Jittor (``jt.code``, OpenMP over
# rows, the channel loop vectorised by g++ -march=native). oneDNN 2.2's depth-wise kernel, as Jittor's
# mkl_conv calls it (format "any"), reorders NHWC to a blocked layout and back around every call: this loop
# reads the map once and was 5x faster on FILM's shapes (docs/jittor_onednn.md). Sum order: bias, then the
# taps row by row, as oneDNN's direct kernel; within 4e-6 of it on unit-variance inputs.
_DW3X3_NHWC = r"""
const int B = in0_shape0, H = in0_shape1, W = in0_shape2, C = in0_shape3;
const float* __restrict__ x = in0_p;
const float* __restrict__ wt = in1_p;
const float* __restrict__ bias = in2_p;
float* __restrict__ y = out0_p;
#pragma omp parallel for collapse(2)
for (int b = 0; b < B; b++)
for (int i = 0; i < H; i++) {
  for (int j = 0; j < W; j++) {
    float* __restrict__ yo = y + ((size_t)(b * H + i) * W + j) * C;
    for (int c = 0; c < C; c++) yo[c] = bias[c];
    for (int di = -1; di <= 1; di++) {
      const int ii = i + di;
      if (ii < 0 || ii >= H) continue;
      for (int dj = -1; dj <= 1; dj++) {
        const int jj = j + dj;
        if (jj < 0 || jj >= W) continue;
        const float* __restrict__ xi = x + ((size_t)(b * H + ii) * W + jj) * C;
        const float* __restrict__ wk = wt + ((di + 1) * 3 + (dj + 1)) * C;
        for (int c = 0; c < C; c++) yo[c] += xi[c] * wk[c];
      }
    }
  }
}
"""


def depthwise3x3_nhwc(x: jt.Var, weight: jt.Var, bias: jt.Var | None) -> jt.Var:
    """Depth-wise 3x3 convolution, padding 1, of an NHWC map (inference: no gradient)."""
    c = x.shape[3]
    taps = weight.reshape(c, 9).transpose(1, 0)  # (9, C): one contiguous row of channel weights per tap
    b = bias if bias is not None else jt.zeros((c,), dtype=x.dtype)
    return jt.code(x.shape, x.dtype, [x, taps, b], cpu_src=_DW3X3_NHWC)


def conv2d_onednn(x: jt.Var, weight: jt.Var, bias: jt.Var | None, padding: int, groups: int) -> jt.Var:
    """Stride-1, dilation-1 convolution with symmetric padding on oneDNN (needs use_mkl=1), in the current
    layout (NCHW, or NHWC inside a channels-last Net forward)."""
    nhwc = _NHWC[0]
    if nhwc and weight.shape[2:] == (1, 1) and groups == 1 and padding == 0:
        # 1x1 in NHWC is a plain (B*H*W, Cin) @ (Cin, Cout) product: oneDNN sgemm with Jittor's own gradient
        b, h, w, c = x.shape
        y = jt.matmul(x.reshape(b * h * w, c), weight.reshape(weight.shape[0], c).transpose(1, 0))
        y = y.reshape(b, h, w, weight.shape[0])
    elif nhwc and weight.shape[1:] == (1, 3, 3) and groups == x.shape[3] == weight.shape[0] and padding == 1:
        return depthwise3x3_nhwc(x, weight, bias)
    else:
        y = _OneDnnConv.apply(x, weight, padding, groups, "acdb" if nhwc else "abcd")
    if bias is None:
        return y
    return y + (bias if nhwc else bias.reshape(1, -1, 1, 1))


class _ScalarPReLU(jt.Function):
    """PReLU with one learned slope. Its weight gradient is a sum over every pixel with heavy cancellation;
    Jittor's float32 sum of ~10^6 terms is several times less accurate than torch's blocked one (measured
    1.4e-3 relative from float64 on a TINY pair, torch 4e-4), so it is accumulated in float64."""

    def execute(self, x, w):
        self.saved = (x, w)
        return jt.maximum(x, 0.0) + w * jt.minimum(x, 0.0)

    def grad(self, g):
        x, w = self.saved
        dx = jt.ternary(x > 0, g, g * w)  # torch's rule: slope 1 only where x > 0
        dw = (jt.minimum(x, 0.0).float64() * g.float64()).sum().float32().reshape(1)
        return dx, dw


def prelu(x: jt.Var, weight: jt.Var) -> jt.Var:
    if weight.shape[0] != 1:  # per-channel slopes (not used by FILM): Jittor's own formula
        return jt.maximum(x, 0.0) + weight.broadcast(x, [0, 2, 3]) * jt.minimum(x, 0.0)
    return _ScalarPReLU.apply(x, weight)


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


# Loss primitives (film.common.loss, the official Fusionloss): the same ops module serves the forward and the loss.

_kernels: dict = {}


def conv2d_same(x: jt.Var, k: np.ndarray) -> jt.Var:
    """A fixed (Sobel / Gaussian) kernel over (B,1,H,W) with 'same' zero padding, the kernel cached."""
    key = (k.tobytes(), k.shape)
    w = _kernels.get(key)
    if w is None:
        w = _kernels[key] = jt.array(np.ascontiguousarray(k)[None, None]).stop_grad()
    return jt.nn.conv2d(x, w, padding=k.shape[-1] // 2)


abs = jt.abs  # noqa: A001 - the loss module's primitive names
maximum = jt.maximum
mean = jt.mean
sqrt = jt.sqrt


def sum(x: jt.Var) -> jt.Var:  # noqa: A001
    return x.sum()
