"""Every mirrored primitive: jittor vs torch (and torch's own reference op where ours is a rewrite)."""

import os

import numpy as np
import pytest

from film.common.init import random_state_dict
from film.common.resize import nearest_index, resize_nearest_np

ATOL = 1e-5


def close(x, y, atol=ATOL, what=""):
    d = float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max())
    assert d <= atol, f"{what}: max_abs={d:.2e} > {atol}"


@pytest.mark.parametrize("n_in", [1, 2, 7, 37, 97, 131, 256, 288, 300, 351, 384, 401, 520, 577])
@pytest.mark.parametrize("n_out", [1, 5, 53, 288, 384, 401, 768])
def test_nearest_index_matches_torch_interpolate(tb, n_in, n_out):
    import torch
    import torch.nn.functional as F

    x = torch.arange(n_in, dtype=torch.float32).reshape(1, 1, 1, n_in)
    ref = F.interpolate(x, size=[1, n_out], mode="nearest")[0, 0, 0].long().numpy()
    np.testing.assert_array_equal(nearest_index(n_in, n_out), ref)


@pytest.mark.parametrize(
    "shape,size",
    [((2, 3, 37, 53), (288, 384)), ((1, 4, 288, 384), (131, 97)), ((1, 2, 300, 401), (288, 384))],
)
def test_resize_backends(tb, jb, rng, shape, size):
    import jittor as jt
    import torch
    import torch.nn.functional as F

    from film.backends.jittor import kernels as jk
    from film.backends.jittor import ops as jops
    from film.backends.torch import ops as tops

    x = rng.standard_normal(shape).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x), size=list(size), mode="nearest").numpy()
    np.testing.assert_array_equal(resize_nearest_np(x, size), ref)
    np.testing.assert_array_equal(tops.resize_nearest(torch.from_numpy(x), size).numpy(), ref)
    np.testing.assert_array_equal(jops.resize_nearest(jt.array(x), size).numpy(), ref)
    # channels-last paths (one gather of pixel rows): torch channels_last, Jittor's NHWC layout
    t = tops.resize_nearest(torch.from_numpy(x).contiguous(memory_format=torch.channels_last), size)
    assert t.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(t.numpy(), ref)
    with jk.layout(True):
        j = jops.resize_nearest(jt.array(x.transpose(0, 2, 3, 1).copy()), size).numpy()
    np.testing.assert_array_equal(j.transpose(0, 3, 1, 2), ref)


def _both(tb, jb, fn_name, *arrays, **kw):
    import jittor as jt
    import torch

    from film.backends.jittor import ops as jops
    from film.backends.torch import ops as tops

    t = getattr(tops, fn_name)(*[torch.from_numpy(a) for a in arrays], **kw).numpy()
    j = getattr(jops, fn_name)(*[jt.array(a) for a in arrays], **kw).numpy()
    return t, j


def test_layer_norm(tb, jb, rng):
    x = (3 * rng.standard_normal((2, 32, 17, 23)) + 1).astype(np.float32)
    w = rng.standard_normal(32).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    t, j = _both(tb, jb, "layer_norm_withbias", x, w, b, eps=1e-5)
    # numpy restatement of the official WithBias_LayerNorm (to_3d: normalise over channels)
    x64 = x.astype(np.float64)
    mu = x64.mean(1, keepdims=True)
    ref = (x64 - mu) / np.sqrt(x64.var(1, keepdims=True) + 1e-5) * w[:, None, None] + b[:, None, None]
    close(t, ref, 1e-5, "torch vs numpy")
    close(j, t, 1e-5, "jittor vs torch")


def test_l1_normalize_with_zero_rows(tb, jb, rng):
    x = rng.standard_normal((2, 8, 4, 1000)).astype(np.float32)
    x[0, 0, 0] = 0.0  # jt.normalize(p=1) would give NaN here
    t, j = _both(tb, jb, "l1_normalize", x, eps=1e-12)
    norm = np.maximum(np.abs(x.astype(np.float64)).sum(-1, keepdims=True), 1e-12)
    close(t, x / norm, 1e-6, "torch vs numpy")
    close(j, t, 1e-6, "jittor vs torch")
    assert np.isfinite(j).all() and (j[0, 0, 0] == 0).all()


def _mdta_numpy(qkv, heads, temperature, weight, bias, eps=1e-12):
    """numpy float64 restatement of the official Restormer Attention after qkv_dwconv (net/restormer.py):
    rearrange to (B, heads, C/heads, H*W), F.normalize(dim=-1), softmax(q k^T * temperature), attn @ v,
    rearrange back, project_out (1x1). Returns (the cosine matrix before the temperature, the output)."""
    x = qkv.astype(np.float64)
    b, c3, h, w = x.shape
    c = c3 // 3
    q, k, v = (t.reshape(b, heads, c // heads, h * w) for t in (x[:, :c], x[:, c : 2 * c], x[:, 2 * c :]))
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), eps)
    k = k / np.maximum(np.linalg.norm(k, axis=-1, keepdims=True), eps)
    cos = q @ k.transpose(0, 1, 3, 2)
    s = cos * temperature.astype(np.float64)
    e = np.exp(s - s.max(-1, keepdims=True))
    attn = e / e.sum(-1, keepdims=True)
    out = (attn @ v).reshape(b, c, h, w)
    out = np.einsum("oc,bchw->bohw", weight.astype(np.float64)[:, :, 0, 0], out) + bias[None, :, None, None]
    return cos, attn, out


def _mdta_case(rng, b=2, c=16, heads=4, h=23, w=31):
    qkv = rng.standard_normal((b, 3 * c, h, w)).astype(np.float32)
    qkv[0, 1] = 0.0  # an all-zero q row: F.normalize's eps keeps it 0, not NaN
    temperature = (rng.random((heads, 1, 1)) + 0.5).astype(np.float32)
    weight = (rng.standard_normal((c, c, 1, 1)) / 4).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    return qkv, heads, temperature, weight, bias


@pytest.mark.parametrize("fast", [False, True], ids=["nchw", "nhwc"])
def test_mdta_products_match_the_official_formula(tb, jb, rng, fast):
    """ops.qk_cosine and ops.attend_project in both memory orders of both backends against numpy float64
    (the NHWC paths compute them another way: one gram over the pixel rows, project_out folded into one
    matrix; the NCHW paths are the official order)."""
    import jittor as jt
    import torch

    from film.backends.jittor import kernels as jk
    from film.backends.jittor import model as jm
    from film.backends.jittor import ops as jops
    from film.backends.torch import ops as tops

    qkv, heads, temperature, weight, bias = _mdta_case(rng)
    cos_ref, attn_ref, out_ref = _mdta_numpy(qkv, heads, temperature, weight, bias)
    c = qkv.shape[1] // 3
    qk, v = qkv[:, : 2 * c].copy(), qkv[:, 2 * c :].copy()
    attn = attn_ref.astype(np.float32)

    conv = torch.nn.Conv2d(c, c, 1)
    conv.weight.data = torch.from_numpy(weight)
    conv.bias.data = torch.from_numpy(bias)
    tqk, tv = torch.from_numpy(qk), torch.from_numpy(v)
    if fast:
        tqk, tv = (t.contiguous(memory_format=torch.channels_last) for t in (tqk, tv))
        conv = conv.to(memory_format=torch.channels_last)
    with torch.no_grad():
        cos = tops.qk_cosine(tqk, heads, 1e-12)
        out = tops.attend_project(torch.from_numpy(attn), tv, conv)
    close(cos.numpy(), cos_ref, 2e-6, "torch qk_cosine")
    assert not fast or out.is_contiguous(memory_format=torch.channels_last)
    close(out.numpy(), out_ref, 2e-5, "torch attend_project")

    if fast and jk.onednn() is None:
        pytest.skip("the NHWC Jittor layout needs oneDNN")
    jconv = jm.Conv2d(c, c, 1)
    jconv.weight.update(jt.array(weight))
    jconv.bias.update(jt.array(bias))

    def j(x):
        return jt.array(x.transpose(0, 2, 3, 1).copy() if fast else x)

    with jk.layout(fast), jt.no_grad():
        jcos = jops.qk_cosine(j(qk), heads, 1e-12).numpy()
        jout = jops.attend_project(jt.array(attn), j(v), jconv).numpy()
    close(jcos, cos_ref, 2e-6, "jittor qk_cosine")
    close(jout.transpose(0, 3, 1, 2) if fast else jout, out_ref, 2e-5, "jittor attend_project")


@pytest.mark.parametrize("fast", [False, True], ids=["nchw", "nhwc"])
def test_conv_split_is_the_official_chunk(tb, jb, rng, fast):
    """ops.conv_split == depthwise(pointwise(x)) cut into channel groups (torch's own convolutions, float64),
    in both memory orders of both backends (NHWC makes each group with its own convolutions)."""
    import jittor as jt
    import torch
    import torch.nn.functional as F

    from film.backends.jittor import kernels as jk
    from film.backends.jittor import model as jm
    from film.backends.jittor import ops as jops
    from film.backends.torch import ops as tops

    x = rng.standard_normal((2, 8, 13, 17)).astype(np.float32)
    pw = (rng.standard_normal((12, 8, 1, 1)) / 3).astype(np.float32)
    dw = rng.standard_normal((12, 1, 3, 3)).astype(np.float32)
    sizes = (8, 4)
    ref = F.conv2d(F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(pw).double()),
                   torch.from_numpy(dw).double(), padding=1, groups=12).numpy()
    refs = (ref[:, :8], ref[:, 8:])

    tp, td = torch.nn.Conv2d(8, 12, 1, bias=False), torch.nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False)
    tp.weight.data, td.weight.data = torch.from_numpy(pw), torch.from_numpy(dw)
    tx = torch.from_numpy(x)
    if fast:
        tx = tx.contiguous(memory_format=torch.channels_last)
        tp, td = tp.to(memory_format=torch.channels_last), td.to(memory_format=torch.channels_last)
    with torch.no_grad():
        parts = tops.conv_split(tx, tp, td, sizes)
    for got, want in zip(parts, refs):
        assert not fast or got.is_contiguous(memory_format=torch.channels_last)
        close(got.numpy(), want, 1e-5, "torch conv_split")

    if fast and jk.onednn() is None:
        pytest.skip("the NHWC Jittor layout needs oneDNN")
    jp, jd = jm.Conv2d(8, 12, 1, bias=False), jm.Conv2d(12, 12, 3, padding=1, groups=12, bias=False)
    jp.weight.update(jt.array(pw))
    jd.weight.update(jt.array(dw))
    with jk.layout(fast), jt.no_grad():
        jparts = [p.numpy() for p in jops.conv_split(jt.array(x.transpose(0, 2, 3, 1).copy() if fast else x), jp, jd, sizes)]
    for got, want in zip(jparts, refs):
        close(got.transpose(0, 3, 1, 2) if fast else got, want, 1e-5, "jittor conv_split")


@pytest.mark.parametrize("fast", [False, True], ids=["nchw", "nhwc"])
def test_fused_inference_convolutions_match_their_formulas(tb, jb, rng, fast):
    """ops.gelu_gate, conv_add and conv_prelu against their formulas in float64 (torch's own convolutions and
    erf GELU), in an inference forward (torch's fused oneDNN convolutions in channels_last: checked to run) and
    with gradients recorded (the plain path), and Jittor's in both layouts (NHWC inference: the one-pass gate
    kernel)."""
    import jittor as jt
    import torch
    import torch.nn.functional as F

    from film.backends.jittor import kernels as jk
    from film.backends.jittor import model as jm
    from film.backends.jittor import ops as jops
    from film.backends.torch import ops as tops

    x = rng.standard_normal((2, 8, 13, 17)).astype(np.float32)
    res = rng.standard_normal((2, 5, 13, 17)).astype(np.float32)
    pw = (rng.standard_normal((12, 8, 1, 1)) / 3).astype(np.float32)
    dw, db = rng.standard_normal((12, 1, 3, 3)).astype(np.float32), rng.standard_normal(12).astype(np.float32)
    cw, cb = (rng.standard_normal((5, 8, 3, 3)) / 5).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    ow, ob = (rng.standard_normal((5, 6, 1, 1)) / 2).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    alpha = np.float32(0.3)
    d = {k: torch.from_numpy(v).double() for k, v in dict(x=x, res=res, pw=pw, dw=dw, db=db, cw=cw, cb=cb, ow=ow,
                                                          ob=ob).items()}
    y = F.conv2d(F.conv2d(d["x"], d["pw"]), d["dw"], d["db"], padding=1, groups=12)
    gate = (0.5 * y[:, :6] * (1 + torch.erf(y[:, :6] / np.sqrt(2))) * y[:, 6:]).numpy()
    conv = F.conv2d(d["x"], d["cw"], d["cb"], padding=1)
    prelu = torch.where(conv > 0, conv, float(alpha) * conv).numpy()
    gate32 = gate.astype(np.float32)
    add = (d["res"] + F.conv2d(torch.from_numpy(gate32).double(), d["ow"], d["ob"])).numpy()

    tp, td = torch.nn.Conv2d(8, 12, 1, bias=False), torch.nn.Conv2d(12, 12, 3, padding=1, groups=12)
    tc, to, tpr = torch.nn.Conv2d(8, 5, 3, padding=1), torch.nn.Conv2d(6, 5, 1), torch.nn.PReLU()
    for m, ws in ((tp, [pw]), (td, [dw, db]), (tc, [cw, cb]), (to, [ow, ob]), (tpr, [np.array([alpha])])):
        for p, v in zip(m.parameters(), ws):
            p.data = torch.from_numpy(v)
    fmt = torch.channels_last if fast else torch.contiguous_format
    for m in (tp, td, tc, to):
        m.to(memory_format=fmt)
    tx, tr, tg = (torch.from_numpy(v).contiguous(memory_format=fmt) for v in (x, res, gate32))
    for grad in (False, True):
        with torch.set_grad_enabled(grad), torch.inference_mode(not grad):
            assert tops._fused(tx) == (fast and not grad and tops._POINTWISE is not None)
            close(tops.gelu_gate(tx, tp, td, 6).detach().numpy(), gate, 1e-5, f"torch gelu_gate grad={grad}")
            close(tops.conv_add(to, tg, tr).detach().numpy(), add, 1e-5, f"torch conv_add grad={grad}")
            close(tops.conv_prelu(tc, tpr, tx).detach().numpy(), prelu, 1e-5, f"torch conv_prelu grad={grad}")

    jp, jd = jm.Conv2d(8, 12, 1, bias=False), jm.Conv2d(12, 12, 3, padding=1, groups=12)
    jc, jo, jpr = jm.Conv2d(8, 5, 3, padding=1), jm.Conv2d(6, 5, 1), jm.PReLU()
    for m, ws in ((jp, [pw]), (jd, [dw, db]), (jc, [cw, cb]), (jo, [ow, ob]), (jpr, [np.array([alpha])])):
        for p, v in zip(m.parameters(), ws):
            p.update(jt.array(v))
    if fast and jk.onednn() is None:
        pytest.skip("the NHWC Jittor layout needs oneDNN")

    def nhwc(v):  # Jittor's channels-last maps are NHWC arrays
        return jt.array(v.transpose(0, 2, 3, 1).copy() if fast else v)

    def nchw(v):
        return v.numpy().transpose(0, 3, 1, 2) if fast else v.numpy()

    for grad in (False, True):  # inference: the one-pass gate kernel in NHWC
        with jk.layout(fast), jt.flag_scope(no_grad=not grad):
            close(nchw(jops.gelu_gate(nhwc(x), jp, jd, 6)), gate, 1e-5, f"jittor gelu_gate grad={grad}")
            close(nchw(jops.conv_add(jo, nhwc(gate32), nhwc(res))), add, 1e-5, f"jittor conv_add grad={grad}")
            close(nchw(jops.conv_prelu(jc, jpr, nhwc(x))), prelu, 1e-5, f"jittor conv_prelu grad={grad}")


def test_qk_cosine_long_axis_nhwc(tb, jb, rng):
    """The NHWC cosine takes its norms from a float32 gram over ~10^5 pixels: as accurate as the official
    order (F.normalize, then the gram) in float32, against float64."""
    import jittor as jt
    import torch

    from film.backends.jittor import kernels as jk
    from film.backends.jittor import ops as jops
    from film.backends.torch import ops as tops

    qkv = (rng.standard_normal((1, 48, 300, 400)) + 0.3).astype(np.float32)
    cos_ref = _mdta_numpy(qkv, 4, np.ones((4, 1, 1), np.float32), np.eye(16, dtype=np.float32)[:, :, None, None],
                          np.zeros(16, np.float32))[0]
    qk = qkv[:, :32].copy()
    with torch.no_grad():
        official_order = tops.qk_cosine(torch.from_numpy(qk), 4, 1e-12).numpy()
        nhwc = tops.qk_cosine(torch.from_numpy(qk).contiguous(memory_format=torch.channels_last), 4, 1e-12).numpy()
    err_official = float(np.abs(official_order - cos_ref).max())
    close(nhwc, cos_ref, max(2 * err_official, 1e-6), "torch channels_last")
    if jk.onednn() is not None:
        with jk.layout(True), jt.no_grad():
            j = jops.qk_cosine(jt.array(qk.transpose(0, 2, 3, 1).copy()), 4, 1e-12).numpy()
        close(j, cos_ref, max(2 * err_official, 1e-6), "jittor NHWC")


def test_jittor_nhwc_depthwise_kernel_matches_torch(tb, jb, rng):
    import jittor as jt
    import torch
    import torch.nn.functional as F

    from film.backends.jittor import kernels as jk

    if jk.onednn() is None:
        pytest.skip("the NHWC Jittor layout needs oneDNN")
    for shape, with_bias in (((2, 24, 19, 31), True), ((1, 40, 1, 7), False), ((1, 8, 5, 1), True)):
        c = shape[1]
        x = rng.standard_normal(shape).astype(np.float32)
        w = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
        b = rng.standard_normal(c).astype(np.float32) if with_bias else None
        ref = F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(),
                       None if b is None else torch.from_numpy(b).double(), padding=1, groups=c).numpy()
        with jk.layout(True), jt.no_grad():
            y = jk.conv2d_onednn(jt.array(x.transpose(0, 2, 3, 1).copy()), jt.array(w),
                                   None if b is None else jt.array(b), 1, c).numpy()
        close(y.transpose(0, 3, 1, 2), ref, 1e-5, f"depth-wise NHWC {shape}")


def test_softmax_gelu_sigmoid(tb, jb, rng):
    x = (10 * rng.standard_normal((3, 5, 149))).astype(np.float32)
    for fn in ("softmax", "gelu", "sigmoid"):
        t, j = _both(tb, jb, fn, x)
        close(j, t, 1e-6, fn)
    t, _ = _both(tb, jb, "softmax", x)
    e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    close(t, e / e.sum(-1, keepdims=True), 1e-6, "softmax vs numpy")


def test_jittor_inference_softmax_kernel(jb, rng):
    """Without gradients Jittor's softmax is a compiled row loop (float64 row sums): against numpy float64,
    on the cross-attention's long rows and on short ones."""
    import jittor as jt

    from film.backends.jittor import ops as jops

    for shape in ((2, 3, 13824), (4, 5, 7), (1, 1)):
        x = (10 * rng.standard_normal(shape)).astype(np.float32)
        e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
        with jt.no_grad():
            y = jops.softmax(jt.array(x)).numpy()
        close(y, e / e.sum(-1, keepdims=True), 1e-6, f"softmax {shape}")


def test_attention_matches_multihead_formula(tb, jb, rng):
    q = rng.standard_normal((2, 8, 149, 32)).astype(np.float32)
    k = rng.standard_normal((2, 8, 700, 32)).astype(np.float32)
    v = rng.standard_normal((2, 8, 700, 32)).astype(np.float32)
    t, j = _both(tb, jb, "attention", q, k, v)
    s = q.astype(np.float64) @ k.transpose(0, 1, 3, 2) / np.sqrt(32)
    e = np.exp(s - s.max(-1, keepdims=True))
    ref = (e / e.sum(-1, keepdims=True)) @ v
    close(t, ref, 1e-5, "torch vs numpy")
    close(j, t, 1e-5, "jittor vs torch")


def test_jittor_conv_fast_paths_match_torch_conv(tb, jb, rng):
    import jittor as jt
    import torch
    import torch.nn.functional as F

    from film.backends.jittor import kernels as jk

    x = rng.standard_normal((2, 24, 19, 31)).astype(np.float32)
    w1 = rng.standard_normal((40, 24, 1, 1)).astype(np.float32)
    b1 = rng.standard_normal(40).astype(np.float32)
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(w1), torch.from_numpy(b1)).numpy()
    close(jk.conv1x1(jt.array(x), jt.array(w1), jt.array(b1)).numpy(), ref, 1e-5, "conv1x1")
    wd = rng.standard_normal((24, 1, 3, 3)).astype(np.float32)
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(wd), padding=1, groups=24).numpy()
    close(jk.depthwise3x3(jt.array(x), jt.array(wd), None).numpy(), ref, 1e-5, "depthwise3x3")


def test_torch_caches_survive_inference_then_training(tb):
    """A fused (inference-mode) run first, then a training step in the same process: cached index maps
    must not be inference tensors (autograd refuses to save those for backward)."""
    import torch

    from film.backends.torch import ops as tops
    from film.common.spec import TINY

    tops._index_cache.clear()
    model = tb.build_model(TINY, random_state_dict(TINY, seed=0), "cpu")
    a = np.random.default_rng(0).random((1, 1, 9, 11), dtype=np.float32)
    t = np.random.default_rng(1).standard_normal((1, 5, TINY.text_dim)).astype(np.float32)
    tb.forward_numpy(model, a, a, t)
    model.train()
    out = model(*(torch.from_numpy(x) for x in (a, a, t)))
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    "cin,cout,k,pad,groups",
    [(24, 40, 1, 0, 1), (24, 24, 3, 1, 24), (6, 24, 3, 1, 1), (64, 32, 3, 1, 1)],
    ids=["1x1", "depthwise3x3", "dense3x3-in", "dense3x3"],
)
def test_onednn_conv_forward_and_gradients_match_torch(tb, jb, rng, cin, cout, k, pad, groups):
    """FILM's convolutions on oneDNN (the Jittor backend's path when oneDNN loads): output, input gradient,
    weight gradient and bias gradient against torch's conv2d autograd (an independent implementation),
    through a non-trivial upstream gradient; float64 numpy for the weight gradient's long sum."""
    import jittor as jt
    import torch
    import torch.nn.functional as F

    from film.backends.jittor import kernels as jk

    if jk.onednn() is None:
        pytest.skip("Jittor runs without oneDNN here (film.backends.jittor.runtime.onednn_status())")
    x = rng.standard_normal((2, cin, 23, 37)).astype(np.float32)
    w = rng.standard_normal((cout, cin // groups, k, k)).astype(np.float32) / k
    b = rng.standard_normal(cout).astype(np.float32)
    g = rng.standard_normal((2, cout, 23, 37)).astype(np.float32)
    tx, tw, tbias = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
    ty = F.conv2d(tx, tw, tbias, padding=pad, groups=groups)
    (ty * torch.from_numpy(g)).sum().backward()
    jx, jw, jbias = jt.array(x), jt.array(w), jt.array(b)
    jy = jk.conv2d_onednn(jx, jw, jbias, pad, groups)
    dx, dw, db = jt.grad((jy * jt.array(g)).sum(), [jx, jw, jbias])

    def rel(x, ref, what):  # float32 sums of up to ~1700 terms: judged relative to the result's scale
        scale = max(float(np.abs(ref).max()), 1.0)
        close(x / scale, ref / scale, 1e-5, what + " (relative to max|ref|)")

    rel(jy.numpy(), ty.detach().numpy(), "forward")
    rel(dx.numpy(), tx.grad.numpy(), "grad x")
    rel(dw.numpy(), tw.grad.numpy(), "grad w")
    rel(db.numpy(), g.astype(np.float64).sum((0, 2, 3)), "grad bias")


def test_onednn_bmm_forward_and_gradients(tb, jb, rng):
    """kernels.bmm (one oneDNN sgemm per batch entry) against numpy float64, values and gradients."""
    import jittor as jt

    from film.backends.jittor import kernels as jk

    a = rng.standard_normal((2, 3, 5, 70)).astype(np.float32)
    b = rng.standard_normal((2, 3, 70, 11)).astype(np.float32)
    g = rng.standard_normal((2, 3, 5, 11)).astype(np.float32)
    ja, jb_ = jt.array(a), jt.array(b)
    y = jk.bmm(ja, jb_)
    da, db = jt.grad((y * jt.array(g)).sum(), [ja, jb_])
    a64, b64, g64 = (v.astype(np.float64) for v in (a, b, g))
    close(y.numpy(), a64 @ b64, 1e-5, "bmm")
    close(da.numpy(), g64 @ b64.transpose(0, 1, 3, 2), 1e-5, "grad a")
    close(db.numpy(), a64.transpose(0, 1, 3, 2) @ g64, 1e-5, "grad b")


def test_onednn_setup_and_fallback(tmp_path, monkeypatch):
    """Without oneDNN (or with use_mkl=0), Jittor is configured for its own kernels and says why; with it,
    the folder Jittor would download into is made of links into this environment."""
    from film.backends.jittor import runtime

    monkeypatch.delenv("use_mkl", raising=False)
    monkeypatch.setattr(runtime, "pip_onednn", lambda: None)
    runtime.configure_onednn()
    assert runtime.os.environ["use_mkl"] == "0" and "not installed" in runtime.onednn_status()
    monkeypatch.setenv("use_mkl", "0")
    runtime.configure_onednn()
    assert "use_mkl=0 set" in runtime.onednn_status()
    inc, lib = tmp_path / "include", tmp_path / "lib"
    inc.mkdir()
    lib.mkdir()
    (lib / "libmkldnn.so.2").write_bytes(b"")
    monkeypatch.setenv("JITTOR_HOME", str(tmp_path / "home"))
    home = runtime.link_onednn(str(inc), str(lib))
    assert home.endswith(runtime.ONEDNN_DIR)
    assert os.readlink(os.path.join(home, "lib", "libmkldnn.so.2")) == str(lib / "libmkldnn.so.2")
    assert os.readlink(os.path.join(home, "include")) == str(inc)


def test_jittor_compiles_operators_in_one_thread(jb):
    """Jittor's parallel operator compiler races (a worker thread segfaulted in CI; a fresh operator failed to
    load in issue 20): film turns it off before Jittor is imported, and a user's own setting still wins."""
    import jittor

    from film.backends.jittor import runtime

    assert jb is not None and jittor.flags.use_parallel_op_compiler == 0
    env = dict(os.environ)
    try:
        os.environ.pop("use_parallel_op_compiler", None)
        runtime.configure_env("cpu")
        assert os.environ["use_parallel_op_compiler"] == "0"
        os.environ["use_parallel_op_compiler"] = "4"
        runtime.configure_env("cpu")
        assert os.environ["use_parallel_op_compiler"] == "4"
    finally:
        os.environ.clear()
        os.environ.update(env)


@pytest.mark.slow
def test_jittor_without_onednn_still_matches_torch(tb, tmp_path):
    """The forced fallback (use_mkl=0: Jittor's own kernels) end to end in a fresh process: the TINY network
    agrees with torch, and the runtime reports the path."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from film.backends.registry import get_backend\n"
        "from film.common.init import random_state_dict\n"
        "from film.common.spec import TINY\n"
        "jb, tb = get_backend('jittor', 'cpu'), get_backend('torch', 'cpu')\n"
        "from film.backends.jittor import runtime, kernels\n"
        "assert kernels.onednn() is None, 'oneDNN loaded despite use_mkl=0'\n"
        "sd = random_state_dict(TINY, seed=3); rng = np.random.default_rng(0)\n"
        "a, b = rng.random((2, 1, 1, 17, 23), dtype=np.float32)\n"
        "t = rng.standard_normal((1, 5, TINY.text_dim)).astype(np.float32)\n"
        "j = jb.forward_numpy(jb.build_model(TINY, sd, 'cpu'), a, b, t)\n"
        "r = tb.forward_numpy(tb.build_model(TINY, sd, 'cpu'), a, b, t)\n"
        "print('PATH', runtime.onednn_status()); print('DIFF', float(np.abs(j - r).max()))\n"
    )
    env = {**os.environ, "use_mkl": "0"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "PATH Jittor's own kernels (use_mkl=0 set)" in p.stdout, p.stdout
    assert float(p.stdout.split("DIFF")[1]) <= 3e-5  # TINY's tolerance (test_parity_blocks)


def _grads_vs_torch64(jfn, tfn, arrays, g, what, rtol=1e-5):
    """Values and input gradients of a Jittor op (its backward is ours) against torch float64 autograd of the
    official formula; relative to each result's largest magnitude."""
    import jittor as jt
    import torch

    jx = [jt.array(a) for a in arrays]
    y = jfn(*jx)
    jg = jt.grad((y * jt.array(g)).sum(), jx)
    tx = [torch.from_numpy(a.astype(np.float64)).requires_grad_() for a in arrays]
    ty = tfn(*tx)
    (ty * torch.from_numpy(g.astype(np.float64))).sum().backward()

    def rel(got, ref, name):
        d = float(np.abs(got.astype(np.float64) - ref).max()) / max(float(np.abs(ref).max()), 1e-30)
        assert d <= rtol, f"{what} {name}: rel {d:.2e} > {rtol}"

    rel(y.numpy(), ty.detach().numpy(), "forward")
    for i, (a, b) in enumerate(zip(jg, tx)):
        rel(a.numpy(), b.grad.numpy(), f"grad {i}")


def test_jittor_nhwc_depthwise_gradients(tb, jb, rng):
    """Training in NHWC: the compiled depth-wise loop's backward (dx: the same loop with the taps turned, dw/db:
    float64 sums over ~10^5 pixels per channel) against torch float64 autograd of the NCHW convolution."""
    import torch.nn.functional as F

    from film.backends.jittor import kernels as jk

    if jk.onednn() is None:
        pytest.skip("the NHWC Jittor layout needs oneDNN")
    for shape in ((2, 130, 191, 16), (1, 7, 1, 8), (1, 1, 9, 4)):
        c = shape[3]
        x = rng.standard_normal(shape).astype(np.float32)
        w = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
        b = rng.standard_normal(c).astype(np.float32)
        g = rng.standard_normal(shape).astype(np.float32)

        def jfn(x, w, b):
            with jk.layout(True):
                return jk.depthwise3x3_nhwc(x, w, b)

        def tfn(x, w, b, c=c):
            return F.conv2d(x.permute(0, 3, 1, 2), w, b, padding=1, groups=c).permute(0, 2, 3, 1)

        _grads_vs_torch64(jfn, tfn, [x, w, b], g, f"depth-wise NHWC {shape}")


def test_jittor_training_softmax_and_products(tb, jb, rng):
    """The compiled row softmax with its backward, the float64-summed gram P^T P and the per-sample sgemm
    products (kernels.gram_f64 and batched_sgemm with each transpose), values and gradients, against torch float64 autograd."""
    import torch

    from film.backends.jittor import kernels as jk
    from film.backends.jittor import ops as jops

    x = (5 * rng.standard_normal((2, 3, 13824))).astype(np.float32)
    _grads_vs_torch64(jops.softmax, lambda t: torch.softmax(t, -1), [x], rng.standard_normal(x.shape).astype(np.float32),
                      "softmax rows")
    if jk.onednn() is None:
        pytest.skip("the sgemm paths need oneDNN")
    p = rng.standard_normal((2, 9000, 12)).astype(np.float32)
    _grads_vs_torch64(lambda t: jk.gram_f64(t).float32(), lambda t: t.transpose(1, 2) @ t, [p],
                      rng.standard_normal((2, 12, 12)).astype(np.float32), "gram")
    a, b = rng.standard_normal((3, 149, 32)).astype(np.float32), rng.standard_normal((3, 32, 700)).astype(np.float32)
    _grads_vs_torch64(jk.batched_sgemm, lambda s, t: s @ t, [a, b], rng.standard_normal((3, 149, 700)).astype(np.float32),
                      "bmm")
    m = rng.standard_normal((2, 24, 12)).astype(np.float32)
    _grads_vs_torch64(lambda s, t: jk.batched_sgemm(s, t, trans_b=True), lambda s, t: s @ t.transpose(1, 2), [p, m],
                      rng.standard_normal((2, 9000, 24)).astype(np.float32), "rows x mat^T")
    at, bt = np.ascontiguousarray(a.transpose(0, 2, 1)), np.ascontiguousarray(b.transpose(0, 2, 1))
    _grads_vs_torch64(lambda s, t: jk.batched_sgemm(s, t, trans_a=True, trans_b=True),
                      lambda s, t: s.transpose(1, 2) @ t.transpose(1, 2), [at, bt],
                      rng.standard_normal((3, 149, 700)).astype(np.float32), "a^T b^T")


def test_index_caches_are_bounded(tb, jb, rng):
    """Both backends keep the resize index maps of the last 32 sizes, not of every size ever seen (a program
    fusing images of ever new sizes would otherwise grow without bound)."""
    import jittor as jt
    import torch

    from film.backends.jittor import ops as jops
    from film.backends.torch import ops as tops
    from film.common.resize import Cache

    for n in range(100):
        x = rng.standard_normal((1, 2, 5 + n, 7)).astype(np.float32)
        tops.resize_nearest(torch.from_numpy(x), (9, 7))
        jops.resize_nearest(jt.array(x), (9, 7))
    assert len(tops._index_cache) <= 32 and len(jops._index_cache) <= 32
    c = Cache(2)
    assert [c.get(k, lambda k=k: k * 10) for k in (1, 2, 1, 3)] == [10, 20, 10, 30]
    assert c.get(1, lambda: -1) == 10 and c.get(2, lambda: -2) == -2  # 2 was the least recently used
