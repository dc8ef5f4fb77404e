"""Jittor's own kernels for FILM: compiled C++ loops (``jt.code``), oneDNN calls and the custom gradients
around them. ``ops.py`` mirrors torch/ops.py name for name and calls these where Jittor's own op is slower or
less accurate than torch's (the measurements: docs/jittor_onednn.md); ``model.py`` uses the convolutions.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from film.backends.jittor.configured import jt

# Memory order of image maps while a Net builds its graph: NCHW, or NHWC (channels last) when the convolutions
# run on oneDNN, whose NHWC kernels are ~2x its NCHW ones on FILM's depth-wise and 1x1 convolutions (measured:
# docs/jittor_onednn.md). The layout belongs to the model (Net.uses_nhwc): Net.execute enters it for the time
# its graph is built (Jittor is lazy: the graph is all that depends on it), per thread, so two models of
# different layouts, in turn or in two threads, never see each other's; recompute (below) re-enters the layout
# of the forward it repeats. Sub-modules called on their own (tests) see NCHW. Shapes seen by
# film.common.forward stay logical (B, C, H, W) through the accessors below.
_state = threading.local()


@contextlib.contextmanager
def layout(nhwc: bool):
    prev = getattr(_state, "nhwc", False)
    _state.nhwc = bool(nhwc)
    try:
        yield
    finally:
        _state.nhwc = prev


def is_nhwc() -> bool:
    return getattr(_state, "nhwc", False)


def onednn():
    """Jittor's oneDNN ops module when loaded (use_mkl=1, see runtime.configure_onednn), else None."""
    from jittor import compile_extern

    return compile_extern.mkl_ops


def _stack(parts: list) -> jt.Var:
    return jt.stack(parts) if len(parts) > 1 else parts[0].reshape(1, *parts[0].shape)


def batched_sgemm(a: jt.Var, b: jt.Var, trans_a: bool = False, trans_b: bool = False) -> jt.Var:
    """op(a[i]) @ op(b[i]) for every i of (n, ., .) float32 stacks, op a transpose where asked: one oneDNN sgemm
    per entry, forward and backward (``_BatchedSgemm``)."""
    return _BatchedSgemm.apply(a, b, trans_a, trans_b)


class _BatchedSgemm(jt.Function):
    """C[i] = op_a(A[i]) op_b(B[i]) as n oneDNN sgemms. Backward, with the transposes folded into the sgemm
    flags: dA = dC op_b(B)^T (its transpose when A is transposed), dB = op_a(A)^T dC (likewise). Slicing a
    graph per entry instead would make Jittor's backward write each slice's gradient into a full-size zero map."""

    def execute(self, a, b, trans_a: bool, trans_b: bool):
        self.saved = (a, b, trans_a, trans_b)
        return _stack([onednn().mkl_matmul(a[i], b[i], trans_a, trans_b) for i in range(a.shape[0])])

    def grad(self, dc):
        a, b, ta, tb = self.saved
        mm, n = onednn().mkl_matmul, a.shape[0]
        if ta:
            da = _stack([mm(b[i], dc[i], tb, True) for i in range(n)])
        else:
            da = _stack([mm(dc[i], b[i], False, not tb) for i in range(n)])
        if tb:
            db = _stack([mm(dc[i], a[i], True, ta) for i in range(n)])
        else:
            db = _stack([mm(a[i], dc[i], not ta, False) for i in range(n)])
        return da, db, None, None


def bmm(a: jt.Var, b: jt.Var, trans_b: bool = False) -> jt.Var:
    """Batched float32 matmul (..., M, K) @ (..., K, N), or @ (..., N, K) transposed with ``trans_b``. Jittor
    lowers a batched ``jt.matmul`` to broadcast-multiply-sum; with oneDNN loaded, one sgemm per batch entry
    (``batched_sgemm``, the transpose an sgemm flag) instead: 5-13x faster on FILM's attention shapes."""
    if onednn() is None or a.ndim < 3:
        last = list(range(b.ndim - 2)) + [b.ndim - 1, b.ndim - 2]
        return jt.matmul(a, b.transpose(*last) if trans_b else b)
    lead = a.shape[:-2]
    n = int(np.prod(lead))
    a2, b2 = a.reshape(n, a.shape[-2], a.shape[-1]), b.reshape(n, b.shape[-2], b.shape[-1])
    return batched_sgemm(a2, b2, trans_b=trans_b).reshape(*lead, a.shape[-2], b.shape[-2 if trans_b else -1])


GRAM_ROWS = 4096  # pixel rows per float32 sgemm partial of the NHWC gram (partials summed in float64)


def gram_f64(pix: jt.Var) -> jt.Var:
    """P^T P of (B, N, K) float32 pixel rows as (B, K, K) float64 (``_Gram``)."""
    return _Gram.apply(pix)


class _Gram(jt.Function):
    """G = P^T P of (B, N, K) float32 pixel rows -> (B, K, K) float64: float32 oneDNN sgemm partials over
    GRAM_ROWS rows, summed in float64 (the accuracy of qk_cosine's NHWC path). Backward: dP = P (dG + dG^T),
    one float32 sgemm per sample."""

    def execute(self, pix):
        self.pix = pix
        b, n, _ = pix.shape
        gs = []
        for i in range(b):
            parts = [onednn().mkl_matmul(pix[i, s : s + GRAM_ROWS], pix[i, s : s + GRAM_ROWS], True, False).float64()
                     for s in range(0, n, GRAM_ROWS)]
            g = parts[0]
            for p in parts[1:]:
                g = g + p
            gs.append(g)
        return _stack(gs)

    def grad(self, dg):
        sym = (dg + dg.transpose(0, 2, 1)).float32()
        return _stack([onednn().mkl_matmul(self.pix[i], sym[i], False, False) for i in range(self.pix.shape[0])])


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


# Its gradient, row by row: dx = y * (dy - sum(y * dy)), the row sum in float64.
_SOFTMAX_ROWS_GRAD = r"""
const int R = in0_shape0, N = in0_shape1;
#pragma omp parallel for
for (int r = 0; r < R; r++) {
  const float* __restrict__ y = in0_p + (size_t)r * N;
  const float* __restrict__ g = in1_p + (size_t)r * N;
  float* __restrict__ dx = out0_p + (size_t)r * N;
  double s = 0;
  for (int n = 0; n < N; n++) s += (double)y[n] * g[n];
  const float sf = (float)s;
  for (int n = 0; n < N; n++) dx[n] = y[n] * (g[n] - sf);
}
"""


class _SoftmaxRows(jt.Function):
    """Softmax of float32 rows (R, N) on CPU as compiled loops, forward and backward (_SOFTMAX_ROWS*): in
    training the cross-attention's (B, 8, L, 13824) scores took ~0.9 s per Jittor fused op, three per call."""

    def execute(self, rows):
        self.y = jt.code(rows.shape, rows.dtype, [rows], cpu_src=_SOFTMAX_ROWS)
        return self.y

    def grad(self, dy):
        return jt.code(dy.shape, dy.dtype, [self.y, dy], cpu_src=_SOFTMAX_ROWS_GRAD)


def softmax_rows(rows: jt.Var) -> jt.Var:
    """Softmax of float32 rows (R, N) on CPU: the compiled loop, with its gradient unless no_grad."""
    if jt.flags.no_grad:
        return jt.code(rows.shape, rows.dtype, [rows], cpu_src=_SOFTMAX_ROWS)
    return _SoftmaxRows.apply(rows)


class _Recompute(jt.Function):
    """``fn(*xs)`` without keeping its insides: the forward runs without a graph, and the backward runs it again
    with one and differentiates that (Jittor has no torch.utils.checkpoint). Arguments: fn, the layout of the
    forward, the parameters fn uses (their gradients come out of the recomputation), n = len(xs), then xs and
    the same parameters as Vars (so that Jittor routes their gradients through this function)."""

    def execute(self, fn, nhwc, params, n, *vs):
        self.fn, self.nhwc, self.params, self.xs = fn, nhwc, params, vs[:n]
        with jt.no_grad(), layout(nhwc):
            return fn(*self.xs)

    def grad(self, dout):
        with jt.flag_scope(no_grad=0), layout(self.nhwc):
            # Jittor runs the whole backward as one lazy graph, in an order of its choosing: left alone it runs
            # every recomputation early and keeps them all (measured: 2x the peak). Each one is therefore made
            # to wait for its own output gradient (+ 0 * one element of it: an exact no-op on finite values).
            later = dout.detach().reshape(-1)[0:1] * 0.0
            xs = [(x.detach() + later.cast(x.dtype)).start_grad() for x in self.xs]  # fresh leaves
            out = self.fn(*xs)
            grads = jt.grad((out * dout.detach()).sum(), xs + list(self.params))
            # and the gradients of the inputs wait for those of the parameters, so that the parameters'
            # gradient products (which need the recomputed maps) are not put off to the end, keeping every
            # unit's maps alive until then
            done = None
            for g in grads[len(xs) :]:
                one = g.reshape(-1)[0:1].cast("float32") * 0.0
                done = one if done is None else done + one
            if done is not None:
                grads = [g + done.cast(g.dtype) for g in grads[: len(xs)]] + list(grads[len(xs) :])
        return (None, None, None, None, *grads)


def recompute(fn, params: list, *xs: jt.Var) -> jt.Var:
    """``fn(*xs)`` whose insides are recomputed in the backward pass (``_Recompute``); ``params``: the
    parameters ``fn`` uses."""
    return _Recompute.apply(fn, is_nhwc(), params, len(xs), *xs, *params)


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


# The GDFN's gate in one pass (inference): both halves' depth-wise 3x3 (each summed as _DW3X3_NHWC sums) and
# gelu(x1) * x2 (jt.nn.gelu's formula, erf(x / sqrt 2)) per pixel, so that neither half is written to memory and
# read back for the GELU and the product.
_DW3X3_GATE_NHWC_HEADER = "#include <vector>\n#include <cmath>\n"
_DW3X3_GATE_NHWC = r"""
const int B = in0_shape0, H = in0_shape1, W = in0_shape2, C = in0_shape3;
const float* __restrict__ x1 = in0_p;
const float* __restrict__ x2 = in1_p;
const float* __restrict__ w1 = in2_p;
const float* __restrict__ w2 = in3_p;
const float* __restrict__ b1 = in4_p;
const float* __restrict__ b2 = in5_p;
float* __restrict__ y = out0_p;
#pragma omp parallel
{
  std::vector<float> acc(2 * C);
  float* __restrict__ u = acc.data();
  float* __restrict__ v = acc.data() + C;
  #pragma omp for collapse(2)
  for (int b = 0; b < B; b++)
  for (int i = 0; i < H; i++) {
    for (int j = 0; j < W; j++) {
      for (int c = 0; c < C; c++) { u[c] = b1[c]; v[c] = b2[c]; }
      for (int di = -1; di <= 1; di++) {
        const int ii = i + di;
        if (ii < 0 || ii >= H) continue;
        for (int dj = -1; dj <= 1; dj++) {
          const int jj = j + dj;
          if (jj < 0 || jj >= W) continue;
          const size_t at = ((size_t)(b * H + ii) * W + jj) * C;
          const int k = ((di + 1) * 3 + (dj + 1)) * C;
          for (int c = 0; c < C; c++) u[c] += x1[at + c] * w1[k + c];
          for (int c = 0; c < C; c++) v[c] += x2[at + c] * w2[k + c];
        }
      }
      float* __restrict__ yo = y + ((size_t)(b * H + i) * W + j) * C;
      for (int c = 0; c < C; c++)
        yo[c] = (std::erf(u[c] / 1.4142135623730951f) + 1.0f) * u[c] * 0.5f * v[c];
    }
  }
}
"""


def depthwise3x3_gate_nhwc(x1: jt.Var, x2: jt.Var, weight: jt.Var, bias: jt.Var | None) -> jt.Var:
    """``gelu(dw1(x1)) * dw2(x2)`` of two NHWC maps of C channels (inference): dw1 and dw2 are the first and
    last C channels of one depth-wise 3x3 convolution (padding 1), ``weight`` (2C, 1, 3, 3) and ``bias`` (2C)."""
    c = x1.shape[3]
    taps = weight.reshape(2 * c, 9).transpose(1, 0)  # (9, 2C)
    b = bias if bias is not None else jt.zeros((2 * c,), dtype=x1.dtype)
    return jt.code(x1.shape, x1.dtype, [x1, x2, taps[:, :c], taps[:, c:], b[:c], b[c:]],
                   cpu_header=_DW3X3_GATE_NHWC_HEADER, cpu_src=_DW3X3_GATE_NHWC)


# The weight and bias gradients of the depth-wise 3x3 over an NHWC map: per channel, sums over every pixel of
# x (shifted by the tap) * dy, and of dy. Each image row is summed in float32 (vectorised over channels), the
# rows in float64 per thread, the threads' partials added at the end: these sums run over ~10^5 terms per
# channel, where a running float32 sum would be ~10x less accurate than torch's blocked one (docs/jittor_onednn.md).
_DW3X3_NHWC_GRAD_W_HEADER = "#include <vector>\n#include <cstring>\n#include <algorithm>\n"
_DW3X3_NHWC_GRAD_W = r"""
@alias(x, in0)
@alias(dy, in1)
@alias(out, out0)
const int B = x_shape0, H = x_shape1, W = x_shape2, C = x_shape3;
double* __restrict__ acc = out_p;
std::memset(acc, 0, sizeof(double) * 10 * C);
#pragma omp parallel
{
  std::vector<double> part(10 * C, 0.0);
  std::vector<float> row(10 * C);
  #pragma omp for collapse(2) schedule(static)
  for (int b = 0; b < B; b++)
  for (int i = 0; i < H; i++) {
    std::fill(row.begin(), row.end(), 0.0f);
    for (int j = 0; j < W; j++) {
      const float* __restrict__ g = dy_p + ((size_t)(b * H + i) * W + j) * C;
      float* __restrict__ rb = row.data() + 9 * C;
      for (int c = 0; c < C; c++) rb[c] += g[c];
      for (int di = -1; di <= 1; di++) {
        const int ii = i + di;
        if (ii < 0 || ii >= H) continue;
        for (int dj = -1; dj <= 1; dj++) {
          const int jj = j + dj;
          if (jj < 0 || jj >= W) continue;
          const float* __restrict__ xi = x_p + ((size_t)(b * H + ii) * W + jj) * C;
          float* __restrict__ rk = row.data() + ((di + 1) * 3 + (dj + 1)) * C;
          for (int c = 0; c < C; c++) rk[c] += xi[c] * g[c];
        }
      }
    }
    for (int k = 0; k < 10 * C; k++) part[k] += row[k];
  }
  #pragma omp critical
  for (int k = 0; k < 10 * C; k++) acc[k] += part[k];
}
"""


class _DepthwiseNHWC(jt.Function):
    """Depth-wise 3x3 (padding 1) of an NHWC map with its gradient: dx is the same loop over dy with the taps
    turned by 180 degrees (the transposed convolution of a stride-1, pad-1 correlation), dw and db the float64
    sums of _DW3X3_NHWC_GRAD_W."""

    def execute(self, x, taps, bias):
        self.x, self.taps = x, taps
        return jt.code(x.shape, x.dtype, [x, taps, bias], cpu_src=_DW3X3_NHWC)

    def grad(self, dy):
        c = self.x.shape[3]
        turned = self.taps.reindex([9, c], ["8-i0", "i1"])  # tap (di, dj) -> (-di, -dj)
        dx = jt.code(dy.shape, dy.dtype, [dy, turned, jt.zeros((c,), dtype=dy.dtype)], cpu_src=_DW3X3_NHWC)
        sums = jt.code((10, c), "float64", [self.x, dy], cpu_header=_DW3X3_NHWC_GRAD_W_HEADER,
                       cpu_src=_DW3X3_NHWC_GRAD_W).float32()
        return dx, sums[:9], sums[9]


def depthwise3x3_nhwc(x: jt.Var, weight: jt.Var, bias: jt.Var | None) -> jt.Var:
    """Depth-wise 3x3 convolution, padding 1, of an NHWC map (gradients: _DepthwiseNHWC)."""
    c = x.shape[3]
    taps = weight.reshape(c, 9).transpose(1, 0)  # (9, C): one contiguous row of channel weights per tap
    b = bias if bias is not None else jt.zeros((c,), dtype=x.dtype)
    if jt.flags.no_grad:
        return jt.code(x.shape, x.dtype, [x, taps, b], cpu_src=_DW3X3_NHWC)
    return _DepthwiseNHWC.apply(x, taps, b)


def conv2d_onednn(x: jt.Var, weight: jt.Var, bias: jt.Var | None, padding: int, groups: int) -> jt.Var:
    """Stride-1, dilation-1 convolution with symmetric padding on oneDNN (needs use_mkl=1), in the current
    layout (NCHW, or NHWC inside a channels-last Net forward)."""
    nhwc = is_nhwc()
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
