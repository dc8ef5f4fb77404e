"""An eager forward written the way the official ``net/Film.py`` computes, for ``film bench`` baselines.

It runs a ``film.backends.torch.model.Net``'s parameters through the official sequence of operations:
LayerNorm on (B, H*W, C) transposes, ``torch.nn.functional.multi_head_attention_forward`` on
sequence-first tensors with attention weights computed (the official default), ``F.interpolate`` for
every resize including the identity ones, ``F.normalize``, ``.contiguous().view``. It is the
"what users run today" baseline; the numbers it produces are the official ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _ln(norm, x):
    b, c, h, w = x.shape
    x3 = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
    mu = x3.mean(-1, keepdim=True)
    sigma = x3.var(-1, keepdim=True, unbiased=False)
    y = (x3 - mu) / torch.sqrt(sigma + 1e-5) * norm.body.weight + norm.body.bias
    return y.reshape(b, h, w, c).permute(0, 3, 1, 2)


def _mdta(m, x):
    b, c, h, w = x.shape
    q, k, v = m.qkv_dwconv(m.qkv(x)).chunk(3, dim=1)
    q, k, v = (t.reshape(b, m.num_heads, c // m.num_heads, h * w) for t in (q, k, v))
    q = F.normalize(q, dim=-1)
    k = F.normalize(k, dim=-1)
    attn = ((q @ k.transpose(-2, -1)) * m.temperature).softmax(dim=-1)
    return m.project_out((attn @ v).reshape(b, c, h, w))


def _ffn(m, x):
    x1, x2 = m.dwconv(m.project_in(x)).chunk(2, dim=1)
    return m.project_out(F.gelu(x1) * x2)


def _block(blk, x):
    x = x + _mdta(blk.attn, _ln(blk.norm1, x))
    return x + _ffn(blk.ffn, _ln(blk.norm2, x))


def _cross(ca, query, key, value):
    mha = ca.multihead_attn
    q, k, v = (t.transpose(0, 1) for t in (query, key, value))
    out, _ = F.multi_head_attention_forward(
        q, k, v, mha.embed_dim, mha.num_heads, mha.in_proj_weight, mha.in_proj_bias, None, None, False, 0.0,
        mha.out_proj.weight, mha.out_proj.bias, training=False, need_weights=True,
    )
    return out.transpose(0, 1)


def _cablock(m, imageA, imageB, text):
    cfg = m.cfg
    gh, gw = cfg.token_grid
    H, W = imageA.shape[-2:]
    outs = []
    for s, ca_name, image in (("A", "cross_attentionA1", imageA), ("B", "cross_attentionA2", imageB)):
        feat = _block(getattr(m, f"restormer{s}1"), getattr(m, f"prelu{s}1")(getattr(m, f"conv{s}1")(image)))
        i2t = getattr(m, f"imagef2textf{s}1")
        tok = F.interpolate(i2t.conv(feat), [gh, gw], mode="nearest")
        tok = tok.contiguous().view(tok.size(0), tok.size().numel() // tok.size(0) // i2t.hidden_dim, i2t.hidden_dim)
        ca = _cross(getattr(m, ca_name), text, tok, tok)
        side = feat
        ca = F.adaptive_avg_pool1d(ca.permute(0, 2, 1), 1).permute(0, 2, 1)
        ca = F.normalize(ca, p=1, dim=2)
        ca = (tok * ca).view(feat.shape[0], cfg.image2text_dim, gh, gw)
        side = F.interpolate(side, [H, W], mode="nearest")
        ca = F.interpolate(ca, [H, W], mode="nearest")
        conv2, prelu2 = getattr(m, f"conv{s}2"), getattr(m, f"prelu{s}2")
        cat = torch.cat((F.interpolate(feat, [H, W], mode="nearest"), prelu2(conv2(ca)) + side), 1)
        outs.append(getattr(m, f"prelu{s}3")(getattr(m, f"conv{s}3")(cat)))
    return outs


def official_forward(net, imageA, imageB, text):
    """(B,1,H,W), (B,1,H,W), (B,L,768) -> (B,1,H,W), computed as the official network does."""
    text = net.text_process.conv(text.permute(0, 2, 1)).permute(0, 2, 1)
    a, b = imageA, imageB
    for i in range(1, net.cfg.num_cablocks + 1):
        a, b = _cablock(getattr(net, f"restormerca{i}"), a, b, text)
    x = _block(net.restormer1, torch.cat((a, b), 1))
    x = net.conv1(x)
    x = _block(net.restormer3, _block(net.restormer2, x))
    return torch.sigmoid(net.conv2(x))
