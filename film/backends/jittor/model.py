"""FILM in Jittor: the same modules, attribute names and parameter shapes as backends/torch/model.py.

Every Var attribute without a leading ``_`` is a Jittor parameter, so ``state_dict()`` keys equal
``film.common.spec.param_schema(cfg)``. The computation is :mod:`film.common.forward`, shared with
the PyTorch backend. Loading is strict here (Jittor's own ``load_state_dict`` only logs problems).
"""

from __future__ import annotations

import os

import numpy as np

from film.backends.jittor import kernels as K
from film.backends.jittor import ops
from film.backends.jittor.configured import jt
from film.common import forward as fw
from film.common.checkpoint import canonical_state_dict
from film.common.spec import OFFICIAL, FilmConfig, param_schema

nn = jt.nn


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters): every FILM convolution (stride 1) on oneDNN when Jittor has it,
    forward and backward; otherwise fast Jittor paths for the 1x1 and depth-wise 3x3 cases."""

    def execute(self, x):
        k, g = tuple(self.kernel_size), self.groups
        p = tuple(self.padding)
        if (
            tuple(self.stride) == (1, 1)
            and tuple(self.dilation) == (1, 1)
            and p[0] == p[1]
            and K.onednn() is not None
        ):
            return K.conv2d_onednn(x, self.weight, self.bias, p[0], g)
        if K.is_nhwc():
            raise RuntimeError("the channels-last layout needs oneDNN convolutions (stride 1)")
        if k == (1, 1) and g == 1 and tuple(self.stride) == (1, 1) and tuple(self.padding) == (0, 0):
            return K.conv1x1(x, self.weight, self.bias)
        if (
            k == (3, 3)
            and g == self.in_channels == self.out_channels
            and tuple(self.padding) == (1, 1)
            and tuple(self.stride) == (1, 1)
        ):
            return K.depthwise3x3(x, self.weight, self.bias)
        return super().execute(x)


class PReLU(nn.PReLU):
    """``nn.PReLU`` (same ``weight``) whose slope gradient is accumulated in float64 (kernels.prelu)."""

    def execute(self, x):
        return K.prelu(x, self.weight)


class WithBias_LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        self.weight = jt.ones(dim)
        self.bias = jt.zeros(dim)
        self._eps = eps

    def execute(self, x):
        return ops.layer_norm_withbias(x, self.weight, self.bias, self._eps)


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        self.body = WithBias_LayerNorm(dim, eps)

    def execute(self, x):
        return self.body(x)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, bias: bool, eps: float):
        self.num_heads = num_heads
        self.eps = eps
        self.temperature = jt.ones((num_heads, 1, 1))
        self.qkv = Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = Conv2d(
            dim * 3, dim * 3, kernel_size=3, stride=1, padding=1, groups=dim * 3, bias=bias
        )
        self.project_out = Conv2d(dim, dim, kernel_size=1, bias=bias)

    def execute(self, x):
        return fw.mdta(self, ops, x)


class FeedForward(nn.Module):
    def __init__(self, dim: int, ffn_expansion_factor: int, bias: bool):
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = Conv2d(
            hidden * 2, hidden * 2, kernel_size=3, stride=1, padding=1, groups=hidden * 2, bias=bias
        )
        self.project_out = Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def execute(self, x):
        return fw.gdfn(self, ops, x)


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: int, cfg: FilmConfig):
        self.norm1 = LayerNorm(dim, cfg.layernorm_eps)
        self.attn = Attention(dim, num_heads, cfg.bias, cfg.normalize_eps)
        self.norm2 = LayerNorm(dim, cfg.layernorm_eps)
        self.ffn = FeedForward(dim, ffn_expansion_factor, cfg.bias)

    def execute(self, x):
        return fw.transformer_block(self, ops, x)


class MultiheadAttention(nn.Module):
    """Owns torch ``nn.MultiheadAttention``'s packed layout, so official keys load without conversion."""

    def __init__(self, embed_dim: int, num_heads: int):
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        bound = float(np.sqrt(6.0 / (4 * embed_dim)))  # xavier_uniform on (3E, E), as torch
        self.in_proj_weight = jt.init.uniform((3 * embed_dim, embed_dim), "float32", -bound, bound)
        self.in_proj_bias = jt.zeros(3 * embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj.bias = jt.zeros(embed_dim)

    def execute(self, query, key, value):
        return fw.multihead_attention(self, ops, query, key, value)


class CrossAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int):
        self.multihead_attn = MultiheadAttention(embed_dim, num_heads)

    def execute(self, query, key, value):
        return self.multihead_attn(query, key, value)


class imagefeature2textfeature(nn.Module):
    def __init__(self, in_channel: int, mid_channel: int, hidden_dim: int, token_grid: tuple[int, int]):
        self.conv = Conv2d(in_channel, mid_channel, kernel_size=1)
        self.hidden_dim = hidden_dim
        self.token_grid = token_grid

    def execute(self, x):
        return fw.image_to_tokens(self, ops, x)


class restormer_cablock(nn.Module):
    def __init__(self, input_channel: int, cfg: FilmConfig):
        d, i2t, e = cfg.ca_dim, cfg.image2text_dim, cfg.hidden_dim
        self.cfg = cfg
        for s in "AB":
            setattr(
                self, f"conv{s}1", Conv2d(input_channel, d, kernel_size=3, stride=1, padding=1, bias=cfg.bias)
            )
            setattr(self, f"prelu{s}1", PReLU())
            setattr(self, f"conv{s}2", Conv2d(i2t, d, kernel_size=1))
            setattr(self, f"prelu{s}2", PReLU())
            setattr(self, f"conv{s}3", Conv2d(2 * d, d, kernel_size=1))
            setattr(self, f"prelu{s}3", PReLU())
        self.restormerA1 = TransformerBlock(d, cfg.ca_heads, cfg.ca_ffn_factor, cfg)
        self.restormerB1 = TransformerBlock(d, cfg.ca_heads, cfg.ca_ffn_factor, cfg)
        self.cross_attentionA1 = CrossAttention(e, cfg.cross_attn_heads)
        self.cross_attentionA2 = CrossAttention(e, cfg.cross_attn_heads)
        self.imagef2textfA1 = imagefeature2textfeature(d, i2t, e, cfg.token_grid)
        self.imagef2textfB1 = imagefeature2textfeature(d, i2t, e, cfg.token_grid)

    def execute(self, imageA, imageB, text, taps=None, prefix: str = "restormerca"):
        return fw.cablock(self, ops, imageA, imageB, text, taps, prefix)


class text_preprocess(nn.Module):
    def __init__(self, in_channel: int, out_channel: int):
        self.conv = nn.Conv1d(in_channel, out_channel, 1, 1, 0)

    def execute(self, x):
        return fw.text_preprocess(self, ops, x)


class Net(nn.Module):
    """FILM. ``Net()(A, B, text)``: (B,1,H,W), (B,1,H,W), (B,L,768) -> (B,1,H,W) in (0, 1)."""

    def __init__(self, cfg: FilmConfig = OFFICIAL):
        self.cfg = cfg
        m = cfg.mid_channel
        self.text_process = text_preprocess(cfg.text_dim, cfg.hidden_dim)
        for i in range(1, cfg.num_cablocks + 1):
            setattr(self, f"restormerca{i}", restormer_cablock(cfg.in_channel if i == 1 else m, cfg))
        self.restormer1 = TransformerBlock(2 * m, cfg.decoder_num_heads, cfg.ffn_factor, cfg)
        self.restormer2 = TransformerBlock(m, cfg.decoder_num_heads, cfg.ffn_factor, cfg)
        self.restormer3 = TransformerBlock(m, cfg.decoder_num_heads, cfg.ffn_factor, cfg)
        self.conv1 = Conv2d(2 * m, m, kernel_size=1)
        self.conv2 = Conv2d(m, cfg.out_channel, kernel_size=1)
        # None: NHWC when oneDNN runs the convolutions (inference and training: every NHWC op has its
        # gradient, ops.py), else NCHW; "nhwc" / "nchw" when set (backend.set_fast)
        self._layout: str | None = None

    def uses_nhwc(self) -> bool:
        if self._layout is not None:
            return self._layout == "nhwc"
        return K.onednn() is not None and os.environ.get("FILM_JITTOR_LAYOUT", "auto") != "nchw"

    def execute(self, imageA, imageB, text, taps: dict | None = None):
        with K.layout(self.uses_nhwc()):
            return fw.net(self, ops, imageA, imageB, text, taps)

    def load_state_dict(self, params) -> None:
        """Strict: every schema tensor, nothing else, every shape (common canonical_state_dict: ``module.``
        stripped, validated, float32); Jittor's own load_state_dict only logs problems."""
        arrays = canonical_state_dict(
            params, self.cfg, to_numpy=lambda v: v.numpy() if isinstance(v, jt.Var) else np.asarray(v)
        )
        own = self.state_dict()
        schema = param_schema(self.cfg)
        if set(own) != set(schema):  # a bug in this file, not in the user's checkpoint
            raise RuntimeError(f"jittor Net parameters differ from the schema: {sorted(set(own) ^ set(schema))[:10]}")
        for k in schema:
            own[k].assign(jt.array(arrays[k]))
        jt.sync_all()

    def load(self, path_or_dict) -> None:
        """``model.load(jt.load(p)['model'])`` (a dict) or ``model.load(path)`` (any checkpoint format), strict."""
        if isinstance(path_or_dict, dict):
            self.load_state_dict(path_or_dict)
        else:
            from film.common.checkpoint import load_checkpoint

            self.load_state_dict(load_checkpoint(path_or_dict, self.cfg).state_dict)
