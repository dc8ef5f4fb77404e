"""The FILM forward computation, written once for both backends.

Each function takes a module ``m`` (whose sub-modules and parameters carry the official names) and
``ops``, the backend's ``ops`` module: small primitives with identical signatures in
``film/backends/torch/ops.py`` and ``film/backends/jittor/ops.py``. Tensor methods used here
(``reshape``, ``transpose``, ``shape``, ``*``, ``+``) behave the same in both frameworks.
Keeping the computation in one place means the two backends cannot drift apart in layer order.

Image feature maps are (B, C, H, W) *logically*; where a backend stores them channels-last (the Jittor
backend on oneDNN keeps them physically NHWC, as oneDNN's fast convolutions want), every access that
depends on the memory order goes through ``ops``: ``image_dims``, ``conv_split``, ``cat_channels``,
``qk_cosine`` / ``attend_project`` (the MDTA's products over its (B, heads, C/heads, H*W) rows),
``to_nchw`` / ``from_nchw`` (the official token ``view`` of an NCHW map, network input and output), and
``conv_to_nchw`` / ``conv_from_nchw`` (the token grid's 1x1 convolutions, writing or reading that NCHW memory).

Restates the official ``net/Film.py`` / ``net/restormer.py`` (IF-FILM) forward.
"""

from __future__ import annotations

import math


def tap(taps, name, x, ops) -> None:
    if taps is not None:  # image maps recorded as NCHW whatever the backend's memory order
        taps[name] = ops.detach(ops.to_nchw(x) if len(x.shape) == 4 else x)


def mdta(m, ops, x):
    """Restormer Multi-DConv Head Transposed Attention over channels. (B,C,H,W) -> (B,C,H,W).

    Official: q, k, v = chunk(qkv_dwconv(qkv(x))) as (B, heads, C/heads, H*W) rows; attn =
    softmax(normalize(q) @ normalize(k)^T * temperature); out = project_out(attn @ v). ``ops.qk_cosine`` and
    ``ops.attend_project`` compute those two products in the backend's memory order (see each ops module).
    """
    c = ops.image_dims(x)[1]
    # official: qkv_dwconv(qkv(x)), then chunks; q|k is summed over H*W next (ops.qk_cosine)
    qk, v = ops.conv_split(x, m.qkv, m.qkv_dwconv, (2 * c, c), first_as_rows=True)
    attn = ops.softmax(ops.qk_cosine(qk, m.num_heads, m.eps) * m.temperature)
    return ops.attend_project(attn, v, m.project_out)


def gdfn_gate(m, ops, x):
    """The GDFN before its last convolution: gelu(x1) * x2 with x1, x2 = dwconv(project_in(x)).chunk(2, dim=1)."""
    return ops.gelu_gate(x, m.project_in, m.dwconv, m.project_out.weight.shape[1])


def gdfn(m, ops, x):
    """Restormer Gated-Dconv Feed-Forward Network. (B,C,H,W) -> (B,C,H,W)."""
    return m.project_out(gdfn_gate(m, ops, x))


def recomputed(on: bool, ops, fn, xs: tuple, modules: list):
    """``fn(*xs)``; with ``on``, run again in the backward pass instead of keeping its insides
    (``film.common.recompute``: each Restormer block, and with ``all`` each cross-attention branch too). Only
    ``xs`` and the result are kept, which cuts a training step's activation memory several times for one more
    forward of the recomputed parts; the numbers are the same. ``modules``: those whose parameters ``fn``
    uses (their gradients come out of the recomputation)."""
    return ops.recompute(fn, modules, *xs) if on else fn(*xs)


def transformer_block(m, ops, x):
    """Restormer block: x + attn(norm1(x)), then + ffn(norm2(x)); with recompute, each half is recomputed on
    its own (the FFN's 4x-wide maps are the largest of the network, and are not kept alongside the attention's)."""
    on = getattr(m, "_film_recompute", False)
    x = x + recomputed(on, ops, lambda y: m.attn(m.norm1(y)), (x,), [m.norm1, m.attn])
    if on:
        return x + recomputed(on, ops, lambda y: m.ffn(m.norm2(y)), (x,), [m.norm2, m.ffn])
    # x + ffn(norm2(x)), the residual added by the FFN's last convolution (ops.conv_add)
    return ops.conv_add(m.ffn.project_out, gdfn_gate(m.ffn, ops, m.norm2(x)), x)


def multihead_attention(m, ops, query, key, value):
    """``nn.MultiheadAttention`` on batch-first tensors: (B,L,E), (B,S,E), (B,S,E) -> (B,L,E)."""
    e, h = m.embed_dim, m.num_heads
    w, bias = m.in_proj_weight, m.in_proj_bias
    b, n_q = query.shape[0], query.shape[1]

    def heads(x, i):
        y = ops.linear(x, w[i * e : (i + 1) * e], bias[i * e : (i + 1) * e])
        return y.reshape(b, x.shape[1], h, e // h).transpose(1, 2)

    out = ops.attention(heads(query, 0), heads(key, 1), heads(value, 2))
    return m.out_proj(out.transpose(1, 2).reshape(b, n_q, e))


def pooled_cross_attention(ca, ops, text, tokens):
    """The cablock's cross-attention of the text over the image tokens, averaged over the text (the official
    ``adaptive_avg_pool1d``): (B,L,E), (B,S,E) -> (B,1,E). Training: the official order. Inference:
    :func:`attend_pooled`, the same quantity with less work."""
    if ops.inference():
        return attend_pooled(ca.multihead_attn, ops, text, tokens)
    return ops.mean_keepdim(ca(text, tokens, tokens), 1)


def attend_pooled(m, ops, query, x):
    """``mean over L of multihead_attention(m, ops, query, x, x)`` (inference), (B,L,E), (B,S,E) -> (B,1,E).

    The mean over the L query rows commutes with out_proj and with V: per head, mean_l(P[l] V) = p V with p the
    mean of P's rows, and p V = (p x) Wv^T + bv since p sums to 1. So V = x Wv^T + bv is never made (S E^2
    multiply-adds) and P V shrinks to one row per head (S = 13,824 image tokens, E = 256). The scores
    q K^T: for short texts, L heads < E + L (up to 36 tokens with 8 heads), q K^T = (q Wk) x^T + q . bk, whose
    last term the softmax ignores, so K is not made either; for a paragraph's features (149 tokens in the
    synthetic text) K is made as officially. 2-3e-6 from the official order on random weights, as far from
    float64. Training keeps the official order (with the short-text scores bk's gradient would be exactly zero,
    not the Adam-scaled rounding noise of the official code, and the trained weights would drift apart)."""
    e, h = m.embed_dim, m.num_heads
    d = e // h
    w, bias = m.in_proj_weight, m.in_proj_bias
    b, n_q, s = query.shape[0], query.shape[1], x.shape[1]
    q = ops.linear(query, w[:e], bias[:e]) * (1.0 / math.sqrt(d))  # scaled as in attention
    if ops.shapes_static() and n_q * h < e + n_q:  # (an exported graph serves texts of every length)
        # by head: (heads, L*B, d) @ (heads, d, E): the query rows taken through Wk; then by sample, the rows
        # (l, head) of (B, L*heads, E) against the tokens
        q = q.reshape(b, n_q, h, d).transpose(0, 2).reshape(h, n_q * b, d)
        qk = ops.bmm(q, w[e : 2 * e].reshape(h, d, e))
        qk = qk.reshape(h, n_q, b, e).transpose(0, 2).reshape(b, n_q * h, e)
        p = ops.mean_keepdim(ops.softmax(ops.bmm(qk, x, trans_b=True)).reshape(b, n_q, h, s), 1)
    else:
        keys = ops.head_keys(x, w[e : 2 * e], bias[e : 2 * e], h)

        def head(i):  # (B, 1, S): the mean of head i's softmax rows
            return ops.mean_keepdim(ops.softmax(ops.bmm(q[:, :, i * d : (i + 1) * d], keys[i], trans_b=True)), 1)

        p = ops.stack([head(i) for i in range(h)], 1)
    px = ops.bmm(p.reshape(b, h, s), x).transpose(0, 1)  # (heads, B, E): p x
    out = ops.bmm(px, w[2 * e :].reshape(h, d, e), trans_b=True) + bias[2 * e :].reshape(h, 1, d)
    return m.out_proj(out.transpose(0, 1).reshape(b, 1, e))


def resize_first(ops, src: tuple[int, int], dst: tuple[int, int]) -> bool:
    """Whether a per-pixel op next to a nearest resize from ``src`` to ``dst`` (1x1 convolutions, PReLU) runs
    after the resize instead of before it (the official order): a nearest resize only picks pixels, so it
    commutes with such an op, which then runs on whichever side has fewer pixels. The same numbers (each pixel's
    value is computed the same way), and at 480x640 the token-grid 1x1 convolutions run on 288x384 instead of
    480x640. While a graph is exported for every image size (``ops.shapes_static()`` False: film export), the
    official order always."""
    return ops.shapes_static() and src[0] * src[1] > dst[0] * dst[1]


def image_to_tokens(m, ops, x):
    """1x1 conv, nearest resize to the fixed token grid, cut into (B, N, hidden_dim) tokens.

    The official ``view`` cuts the flattened (C, 288, 384) map into consecutive runs of hidden_dim values.
    """
    _, _, h, w = ops.image_dims(x)
    if resize_first(ops, (h, w), m.token_grid):  # the conv on the token grid, written as NCHW memory
        x = ops.conv_to_nchw(ops.resize_nearest(x, m.token_grid), m.conv)
    else:
        x = ops.to_nchw(ops.resize_nearest(m.conv(x), m.token_grid))
    return x.reshape(x.shape[0], -1, m.hidden_dim)


def cablock_branch(m, ops, s: str, ca_name: str, image, text, taps, prefix: str):
    """One source (s = 'A' or 'B') of ``restormer_cablock``."""
    feat = getattr(m, f"restormer{s}1")(ops.conv_prelu(getattr(m, f"conv{s}1"), getattr(m, f"prelu{s}1"), image))
    tap(taps, f"{prefix}.restormer{s}1", feat, ops)
    if taps is None:  # the text-guided side branch, recomputed in the backward pass with recompute=all
        used = [getattr(m, n) for n in (f"imagef2textf{s}1", ca_name, f"conv{s}2", f"prelu{s}2", f"conv{s}3",
                                        f"prelu{s}3")]
        out = recomputed(getattr(m, "_film_recompute", False), ops,
                         lambda f, t: text_guided(m, ops, s, ca_name, f, t), (feat, text), used)
    else:
        out = text_guided(m, ops, s, ca_name, feat, text, taps, prefix)
    tap(taps, f"{prefix}.out{s}", out, ops)
    return out


def text_guided(m, ops, s: str, ca_name: str, feat, text, taps=None, prefix: str = ""):
    """The cablock branch after its Restormer: image tokens attend to the text, the pooled and L1-normalised
    result weights the tokens, which go back to the image grid and join ``feat``."""
    cfg = m.cfg
    tokens = getattr(m, f"imagef2textf{s}1")(feat)
    # adaptive_avg_pool1d over the text length, then L1 normalisation over the hidden_dim channels.
    ca = ops.l1_normalize(pooled_cross_attention(getattr(m, ca_name), ops, text, tokens), cfg.normalize_eps)
    tap(taps, f"{prefix}.{ca_name}", ca, ops)
    b, _, h, w = ops.image_dims(feat)
    gh, gw = cfg.token_grid
    # The official code also resizes `feat` to (H, W) twice here: identities, skipped.
    ca = (tokens * ca).reshape(b, cfg.image2text_dim, gh, gw)  # NCHW memory (the official view)
    conv2, prelu2 = getattr(m, f"conv{s}2"), getattr(m, f"prelu{s}2")
    if resize_first(ops, (gh, gw), (h, w)):
        side = ops.conv_prelu(conv2, prelu2, ops.resize_nearest(ops.from_nchw(ca), (h, w)))
    else:  # conv2 on the token grid, read from its NCHW memory into the feature maps' layout
        side = ops.resize_nearest(prelu2(ops.conv_from_nchw(ca, conv2, feat)), (h, w))
    side = side + feat
    return ops.conv_prelu(getattr(m, f"conv{s}3"), getattr(m, f"prelu{s}3"), ops.cat_channels([feat, side]))


def cablock(m, ops, imageA, imageB, text, taps, prefix: str):
    a = cablock_branch(m, ops, "A", "cross_attentionA1", imageA, text, taps, prefix)
    b = cablock_branch(m, ops, "B", "cross_attentionA2", imageB, text, taps, prefix)
    return a, b


def text_preprocess(m, ops, x):
    """Conv1d(768 -> hidden_dim, k=1) over the text tokens: (B,L,768) -> (B,L,hidden_dim)."""
    return m.conv(x.transpose(1, 2)).transpose(1, 2)


def net(m, ops, imageA, imageB, text, taps=None):
    """FILM: (B,1,H,W), (B,1,H,W), (B,L,768) -> (B,1,H,W) in (0, 1)."""
    text = m.text_process(text)
    tap(taps, "text_process", text, ops)
    a, b = ops.from_nchw(imageA), ops.from_nchw(imageB)
    for i in range(1, m.cfg.num_cablocks + 1):
        a, b = getattr(m, f"restormerca{i}")(a, b, text, taps, f"restormerca{i}")
    x = m.restormer1(ops.cat_channels([a, b]))
    tap(taps, "restormer1", x, ops)
    x = m.conv1(x)
    tap(taps, "conv1", x, ops)
    x = m.restormer2(x)
    tap(taps, "restormer2", x, ops)
    x = m.restormer3(x)
    tap(taps, "restormer3", x, ops)
    # The official attribute is called "softmax" but is a Sigmoid (no parameters).
    x = ops.sigmoid(m.conv2(x))
    tap(taps, "head", x, ops)
    return ops.to_nchw(x)
