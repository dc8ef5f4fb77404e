"""Framework-specific primitives of FILM for PyTorch, one small function each (mirrored in jittor/ops.py)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from film.common.resize import nearest_index

_index_cache: dict[tuple[int, int, str], torch.Tensor] = {}


def _index(in_size: int, out_size: int, device: torch.device) -> torch.Tensor:
    key = (in_size, out_size, str(device))
    idx = _index_cache.get(key)
    if idx is None:
        # made outside inference mode: a map first built by a fused (inference) run is reused by training,
        # and autograd refuses to save inference tensors for backward
        with torch.inference_mode(False):
            idx = torch.from_numpy(nearest_index(in_size, out_size)).to(device)
        _index_cache[key] = idx
    return idx


def resize_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode='nearest')`` as two gathers with index maps from film.common.resize."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if h != size[0]:
        x = x.index_select(-2, _index(h, size[0], x.device))
    if w != size[1]:
        x = x.index_select(-1, _index(w, size[1], x.device))
    return x


def layer_norm_withbias(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """Official WithBias_LayerNorm over channels of (B,C,H,W): biased variance, eps inside the sqrt."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        # fast mode: channels are the innermost axis, so the fused F.layer_norm (same formula) runs on an
        # NHWC view without a copy, 5x faster than mean/var over a strided axis; 1e-7-level rounding change
        return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), weight, bias, eps).permute(0, 3, 1, 2)
    mu = x.mean(1, keepdim=True)
    var = x.var(1, keepdim=True, unbiased=False)
    return (x - mu) / torch.sqrt(var + eps) * weight[:, None, None] + bias[:, None, None]


def l2_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    # contiguous(): no-op in the default layout; under channels_last (fast mode) x is a strided view and the
    # CPU norm over its 110k-long last axis is ~10x less accurate (measured), which the network amplifies
    return F.normalize(x.contiguous(), p=2.0, dim=-1, eps=eps)


def l1_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.normalize(x, p=1.0, dim=-1, eps=eps)


def softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, dim=-1)


def gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, heads, L, d) — what nn.MultiheadAttention computes."""
    return F.scaled_dot_product_attention(q, k, v)


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x)


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w, b)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a, b.contiguous())  # b strided under channels_last: see l2_normalize


def mean_keepdim(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.mean(dim, keepdim=True)


def gram(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q @ k^T over the last axis (H*W long in MDTA)."""
    return torch.matmul(q, k.transpose(-2, -1))


def detach(x: torch.Tensor) -> torch.Tensor:
    return x.detach()


# Memory-order accessors of film.common.forward. torch keeps image maps logically NCHW in every layout
# (channels_last is a stride pattern, not a shape), so these are plain NCHW reshapes and identities.


def image_dims(x: torch.Tensor) -> tuple[int, int, int, int]:
    b, c, h, w = x.shape
    return b, c, h, w


def split_channels(x: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    return x.chunk(n, 1)


def cat_channels(xs: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(xs, 1)


def qkv_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, 3C, H, W) -> q, k, v of shape (B, heads, C/heads, H*W): the official rearrange of the MDTA."""
    b, c3, h, w = qkv.shape
    qkv = qkv.reshape(b, 3, heads, c3 // 3 // heads, h * w)
    return qkv[:, 0], qkv[:, 1], qkv[:, 2]


def from_channel_heads(y: torch.Tensor, b: int, c: int, h: int, w: int) -> torch.Tensor:
    return y.reshape(b, c, h, w)


def to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x


def from_nchw(x: torch.Tensor) -> torch.Tensor:
    return x


# Loss primitives (film.common.loss, the official Fusionloss): the same ops module serves the forward and the loss.

_kernels: dict = {}


def conv2d_same(x: torch.Tensor, k: np.ndarray) -> torch.Tensor:
    """A fixed (Sobel / Gaussian) kernel over (B,1,H,W) with 'same' zero padding, the kernel cached per device."""
    key = (k.tobytes(), k.shape, x.device, x.dtype)
    w = _kernels.get(key)
    if w is None:
        with torch.inference_mode(False):  # cached across inference and training (see _index)
            w = _kernels[key] = torch.from_numpy(np.ascontiguousarray(k)).to(x.device, x.dtype)[None, None]
    return F.conv2d(x, w, padding=k.shape[-1] // 2)


abs = torch.abs  # noqa: A001 - the loss module's primitive names
maximum = torch.maximum
mean = torch.mean
sqrt = torch.sqrt
sum = torch.sum  # noqa: A001
