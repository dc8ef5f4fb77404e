"""FILM in PyTorch: the official ``net/Film.py`` + ``net/restormer.py`` modules.

Class and attribute names are the official ones, so ``state_dict()`` keys equal
``film.common.spec.param_schema(cfg)``; the computation itself is :mod:`film.common.forward`,
shared with the Jittor backend. Left behind from the official code: ``.cuda()`` inside modules,
einops, the unused ``ChannelAttention``; nearest resizes are index gathers and the cross-attention
uses ``scaled_dot_product_attention`` over ``nn.MultiheadAttention``'s packed weights.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from film.backends.torch import ops
from film.common import forward as fw
from film.common.spec import OFFICIAL, FilmConfig


class WithBias_LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x):
        return ops.layer_norm_withbias(x, self.weight, self.bias, self.eps)


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.body = WithBias_LayerNorm(dim, eps)

    def forward(self, x):
        return self.body(x)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, bias: bool, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.eps = eps
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(
            dim * 3, dim * 3, kernel_size=3, stride=1, padding=1, groups=dim * 3, bias=bias
        )
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x):
        return fw.mdta(self, ops, x)


class FeedForward(nn.Module):
    def __init__(self, dim: int, ffn_expansion_factor: int, bias: bool):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(
            hidden * 2, hidden * 2, kernel_size=3, stride=1, padding=1, groups=hidden * 2, bias=bias
        )
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x):
        return fw.gdfn(self, ops, x)


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: int, cfg: FilmConfig):
        super().__init__()
        self.norm1 = LayerNorm(dim, cfg.layernorm_eps)
        self.attn = Attention(dim, num_heads, cfg.bias, cfg.normalize_eps)
        self.norm2 = LayerNorm(dim, cfg.layernorm_eps)
        self.ffn = FeedForward(dim, ffn_expansion_factor, cfg.bias)

    def forward(self, x):
        return fw.transformer_block(self, ops, x)


class MultiheadAttention(nn.Module):
    """Owns ``nn.MultiheadAttention``'s packed parameter layout (in_proj_weight/bias, out_proj)."""

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query, key, value):
        return fw.multihead_attention(self, ops, query, key, value)


class CrossAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        self.multihead_attn = MultiheadAttention(embed_dim, num_heads)

    def forward(self, query, key, value):
        return self.multihead_attn(query, key, value)


class imagefeature2textfeature(nn.Module):
    def __init__(self, in_channel: int, mid_channel: int, hidden_dim: int, token_grid: tuple[int, int]):
        super().__init__()
        self.conv = nn.Conv2d(in_channel, mid_channel, kernel_size=1)
        self.hidden_dim = hidden_dim
        self.token_grid = token_grid

    def forward(self, x):
        return fw.image_to_tokens(self, ops, x)


class restormer_cablock(nn.Module):
    def __init__(self, input_channel: int, cfg: FilmConfig):
        super().__init__()
        d, i2t, e = cfg.ca_dim, cfg.image2text_dim, cfg.hidden_dim
        self.cfg = cfg
        for s in "AB":  # registration order = official state_dict order
            setattr(
                self,
                f"conv{s}1",
                nn.Conv2d(input_channel, d, kernel_size=3, stride=1, padding=1, bias=cfg.bias),
            )
            setattr(self, f"prelu{s}1", nn.PReLU())
            setattr(self, f"conv{s}2", nn.Conv2d(i2t, d, kernel_size=1))
            setattr(self, f"prelu{s}2", nn.PReLU())
            setattr(self, f"conv{s}3", nn.Conv2d(2 * d, d, kernel_size=1))
            setattr(self, f"prelu{s}3", nn.PReLU())
        self.restormerA1 = TransformerBlock(d, cfg.ca_heads, cfg.ca_ffn_factor, cfg)
        self.restormerB1 = TransformerBlock(d, cfg.ca_heads, cfg.ca_ffn_factor, cfg)
        self.cross_attentionA1 = CrossAttention(e, cfg.cross_attn_heads)
        self.cross_attentionA2 = CrossAttention(e, cfg.cross_attn_heads)
        self.imagef2textfA1 = imagefeature2textfeature(d, i2t, e, cfg.token_grid)
        self.imagef2textfB1 = imagefeature2textfeature(d, i2t, e, cfg.token_grid)

    def forward(self, imageA, imageB, text, taps=None, prefix: str = "restormerca"):
        return fw.cablock(self, ops, imageA, imageB, text, taps, prefix)


class text_preprocess(nn.Module):
    def __init__(self, in_channel: int, out_channel: int):
        super().__init__()
        self.conv = nn.Conv1d(in_channel, out_channel, 1, 1, 0)

    def forward(self, x):
        return fw.text_preprocess(self, ops, x)


class Net(nn.Module):
    """FILM. ``forward(A, B, text)``: (B,1,H,W), (B,1,H,W), (B,L,768) -> (B,1,H,W) in (0, 1)."""

    def __init__(self, cfg: FilmConfig = OFFICIAL):
        super().__init__()
        self.cfg = cfg
        m = cfg.mid_channel
        self.text_process = text_preprocess(cfg.text_dim, cfg.hidden_dim)
        for i in range(1, cfg.num_cablocks + 1):
            setattr(self, f"restormerca{i}", restormer_cablock(cfg.in_channel if i == 1 else m, cfg))
        self.restormer1 = TransformerBlock(2 * m, cfg.decoder_num_heads, cfg.ffn_factor, cfg)
        self.restormer2 = TransformerBlock(m, cfg.decoder_num_heads, cfg.ffn_factor, cfg)
        self.restormer3 = TransformerBlock(m, cfg.decoder_num_heads, cfg.ffn_factor, cfg)
        self.conv1 = nn.Conv2d(2 * m, m, kernel_size=1)
        self.conv2 = nn.Conv2d(m, cfg.out_channel, kernel_size=1)

    def forward(self, imageA, imageB, text, taps: dict | None = None):
        return fw.net(self, ops, imageA, imageB, text, taps)
