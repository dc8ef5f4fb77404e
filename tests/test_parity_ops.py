"""Every mirrored primitive: jittor vs torch (and torch's own reference op where ours is a rewrite)."""

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

    from film.backends.jittor import ops as jops
    from film.backends.torch import ops as tops

    x = rng.standard_normal(shape).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x), size=list(size), mode="nearest").numpy()
    np.testing.assert_array_equal(resize_nearest_np(x, size), ref)
    np.testing.assert_array_equal(tops.resize_nearest(torch.from_numpy(x), size).numpy(), ref)
    np.testing.assert_array_equal(jops.resize_nearest(jt.array(x), size).numpy(), ref)


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


@pytest.mark.parametrize("fn,p", [("l2_normalize", 2), ("l1_normalize", 1)])
def test_normalize_with_zero_rows(tb, jb, rng, fn, p):
    x = rng.standard_normal((2, 8, 4, 1000)).astype(np.float32)
    x[0, 0, 0] = 0.0  # jt.normalize(p=1) would give NaN here
    t, j = _both(tb, jb, fn, x, eps=1e-12)
    norm = np.maximum(np.linalg.norm(x.astype(np.float64), ord=p, axis=-1, keepdims=True), 1e-12)
    close(t, x / norm, 1e-6, "torch vs numpy")
    close(j, t, 1e-6, "jittor vs torch")
    assert np.isfinite(j).all() and (j[0, 0, 0] == 0).all()


def test_softmax_gelu_sigmoid(tb, jb, rng):
    x = (10 * rng.standard_normal((3, 5, 149))).astype(np.float32)
    for fn in ("softmax", "gelu", "sigmoid"):
        t, j = _both(tb, jb, fn, x)
        close(j, t, 1e-6, fn)
    t, _ = _both(tb, jb, "softmax", x)
    e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    close(t, e / e.sum(-1, keepdims=True), 1e-6, "softmax vs numpy")


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


def test_gram_long_axis(tb, jb, rng):
    q = rng.standard_normal((1, 8, 4, 120_000)).astype(np.float32) / 300
    k = rng.standard_normal((1, 8, 4, 120_000)).astype(np.float32) / 300
    t, j = _both(tb, jb, "gram", q, k)
    ref = q.astype(np.float64) @ k.astype(np.float64).transpose(0, 1, 3, 2)
    close(t, ref, 1e-6, "torch vs float64")
    close(j, ref, 1e-6, "jittor vs float64")


def test_jittor_conv_fast_paths_match_torch_conv(tb, jb, rng):
    import jittor as jt
    import torch
    import torch.nn.functional as F

    from film.backends.jittor import ops as jops

    x = rng.standard_normal((2, 24, 19, 31)).astype(np.float32)
    w1 = rng.standard_normal((40, 24, 1, 1)).astype(np.float32)
    b1 = rng.standard_normal(40).astype(np.float32)
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(w1), torch.from_numpy(b1)).numpy()
    close(jops.conv1x1(jt.array(x), jt.array(w1), jt.array(b1)).numpy(), ref, 1e-5, "conv1x1")
    wd = rng.standard_normal((24, 1, 3, 3)).astype(np.float32)
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(wd), padding=1, groups=24).numpy()
    close(jops.depthwise3x3(jt.array(x), jt.array(wd), None).numpy(), ref, 1e-5, "depthwise3x3")


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
