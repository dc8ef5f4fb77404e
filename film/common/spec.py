"""The single source of truth: FILM hyper-parameters and the canonical parameter schema.

Everything here restates the official IF-FILM code (``net/Film.py``, ``net/restormer.py``,
``train.py``) as data. Backends build their modules from :class:`FilmConfig`, the converter and
the loaders validate against :func:`param_schema`, and the tests compare both with it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, fields

Shape = tuple[int, ...]


@dataclass(frozen=True)
class FilmConfig:
    """Hyper-parameters of ``Net`` as the official code instantiates it (``Net(hidden_dim=256, image2text_dim=32)``)."""

    mid_channel: int = 32  # channels of the decoder restormers (restormer2/3) and of each cablock output
    decoder_num_heads: int = 8
    ffn_factor: int = 4
    bias: bool = False  # bias of the Restormer convolutions and of convA1/convB1
    layernorm_type: str = "WithBias"
    out_channel: int = 1
    hidden_dim: int = 256  # token width of the cross-attention (text projected 768 -> 256)
    image2text_dim: int = 32  # channels of the image-to-text 1x1 conv
    text_dim: int = 768  # BLIP-2 text feature width shipped in the VLF dataset
    # restormer_cablock is constructed with its defaults restormerdim=32, restormerhead=8,
    # ffn_expansion_factor=4 (Net never passes them), so they are separate from mid_channel.
    ca_dim: int = 32
    ca_heads: int = 8
    ca_ffn_factor: int = 4
    cross_attn_heads: int = 8  # CrossAttention(embed_dim=hidden_dim, num_heads=8) is hard-coded
    in_channel: int = 1
    # The 288x384 token grid is baked into the weights: image features are resized (nearest) to it
    # before being cut into image2text_dim*288*384/hidden_dim tokens, and resized back afterwards.
    token_grid: tuple[int, int] = (288, 384)
    num_cablocks: int = 3
    layernorm_eps: float = 1e-5
    normalize_eps: float = 1e-12  # torch.nn.functional.normalize default, used for p=2 and p=1

    def __post_init__(self) -> None:
        gh, gw = self.token_grid
        total = self.image2text_dim * gh * gw
        if total % self.hidden_dim:
            raise ValueError(
                f"image2text_dim*{gh}*{gw}={total} is not divisible by hidden_dim={self.hidden_dim}"
            )
        if self.hidden_dim % self.cross_attn_heads:
            raise ValueError("hidden_dim must be divisible by cross_attn_heads")
        if self.layernorm_type != "WithBias":
            raise ValueError("only the official WithBias LayerNorm is supported")

    @property
    def num_tokens(self) -> int:
        gh, gw = self.token_grid
        return self.image2text_dim * gh * gw // self.hidden_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FilmConfig:
        """The inverse of :meth:`to_dict` (JSON turns the token grid into a list); unknown keys are an error."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown FilmConfig fields {unknown}")
        d = dict(d)
        if "token_grid" in d:
            d["token_grid"] = tuple(int(v) for v in d["token_grid"])
        return cls(**d)


OFFICIAL = FilmConfig()

# A tiny configuration with the same structure for fast tests: the whole network runs in
# milliseconds. Its parameter names are the official ones; only shapes shrink.
TINY = FilmConfig(
    mid_channel=8,
    decoder_num_heads=2,
    ffn_factor=2,
    hidden_dim=16,
    image2text_dim=4,
    text_dim=24,
    ca_dim=8,
    ca_heads=2,
    ca_ffn_factor=2,
    cross_attn_heads=2,
    token_grid=(12, 16),
)


@dataclass(frozen=True)
class TrainRecipe:
    """Official training hyper-parameters (``train.py`` defaults). The one recipe vocabulary: a run's
    ``film.common.training.StepConfig`` takes these values under the same field names (plus how a step runs);
    the Adam constants and ``int_weight`` are fixed by the official recipe. The official loader shuffles and
    drops the last incomplete batch (``film.common.training.epoch_batches``)."""

    epochs: int = 150
    lr: float = 1e-5
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    step_size: int = 50
    gamma: float = 0.6
    batch_size: int = 2
    int_weight: float = 1.0  # coeff of the intensity term (official coeff_int)
    grad_weight: float = 20.0  # coeff of the Sobel-gradient term (official coeff_grad / gradweight)
    ssim_weight: float = 0.0


OFFICIAL_RECIPE = TrainRecipe()

# Keys of the official training checkpoint (train.py) and its DataParallel prefix.
CHECKPOINT_KEYS = ("model", "optimizer1", "lr_schedule1", "epoch", "step")
DATAPARALLEL_PREFIX = "module."


def _restormer(prefix: str, dim: int, heads: int, ffn: int) -> list[tuple[str, Shape]]:
    hidden = dim * ffn
    return [
        (f"{prefix}.norm1.body.weight", (dim,)),
        (f"{prefix}.norm1.body.bias", (dim,)),
        (f"{prefix}.attn.temperature", (heads, 1, 1)),
        (f"{prefix}.attn.qkv.weight", (dim * 3, dim, 1, 1)),
        (f"{prefix}.attn.qkv_dwconv.weight", (dim * 3, 1, 3, 3)),
        (f"{prefix}.attn.project_out.weight", (dim, dim, 1, 1)),
        (f"{prefix}.norm2.body.weight", (dim,)),
        (f"{prefix}.norm2.body.bias", (dim,)),
        (f"{prefix}.ffn.project_in.weight", (hidden * 2, dim, 1, 1)),
        (f"{prefix}.ffn.dwconv.weight", (hidden * 2, 1, 3, 3)),
        (f"{prefix}.ffn.project_out.weight", (dim, hidden, 1, 1)),
    ]


def _cablock(prefix: str, cfg: FilmConfig, in_ch: int) -> list[tuple[str, Shape]]:
    d, i2t, e = cfg.ca_dim, cfg.image2text_dim, cfg.hidden_dim
    out: list[tuple[str, Shape]] = []
    for s in "AB":
        out += [
            (f"{prefix}.conv{s}1.weight", (d, in_ch, 3, 3)),
            (f"{prefix}.prelu{s}1.weight", (1,)),
            (f"{prefix}.conv{s}2.weight", (d, i2t, 1, 1)),
            (f"{prefix}.conv{s}2.bias", (d,)),
            (f"{prefix}.prelu{s}2.weight", (1,)),
            (f"{prefix}.conv{s}3.weight", (d, 2 * d, 1, 1)),
            (f"{prefix}.conv{s}3.bias", (d,)),
            (f"{prefix}.prelu{s}3.weight", (1,)),
        ]
    out += _restormer(f"{prefix}.restormerA1", d, cfg.ca_heads, cfg.ca_ffn_factor)
    out += _restormer(f"{prefix}.restormerB1", d, cfg.ca_heads, cfg.ca_ffn_factor)
    for name in ("cross_attentionA1", "cross_attentionA2"):
        p = f"{prefix}.{name}.multihead_attn"
        out += [
            (f"{p}.in_proj_weight", (3 * e, e)),
            (f"{p}.in_proj_bias", (3 * e,)),
            (f"{p}.out_proj.weight", (e, e)),
            (f"{p}.out_proj.bias", (e,)),
        ]
    for name in ("imagef2textfA1", "imagef2textfB1"):
        out += [(f"{prefix}.{name}.conv.weight", (i2t, d, 1, 1)), (f"{prefix}.{name}.conv.bias", (i2t,))]
    return out


def param_schema(cfg: FilmConfig = OFFICIAL) -> OrderedDict[str, Shape]:
    """Every parameter of ``Net`` in the official ``state_dict`` order, without ``module.``.

    For the official config: 189 tensors, 2,070,235 parameters.
    """
    if cfg.bias:
        raise ValueError("bias=True is not an official configuration")
    m = cfg.mid_channel
    items: list[tuple[str, Shape]] = [
        ("text_process.conv.weight", (cfg.hidden_dim, cfg.text_dim, 1)),
        ("text_process.conv.bias", (cfg.hidden_dim,)),
    ]
    for i in range(1, cfg.num_cablocks + 1):
        in_ch = cfg.in_channel if i == 1 else m
        items += _cablock(f"restormerca{i}", cfg, in_ch)
    items += _restormer("restormer1", 2 * m, cfg.decoder_num_heads, cfg.ffn_factor)
    items += _restormer("restormer2", m, cfg.decoder_num_heads, cfg.ffn_factor)
    items += _restormer("restormer3", m, cfg.decoder_num_heads, cfg.ffn_factor)
    items += [
        ("conv1.weight", (m, 2 * m, 1, 1)),
        ("conv1.bias", (m,)),
        ("conv2.weight", (cfg.out_channel, m, 1, 1)),
        ("conv2.bias", (cfg.out_channel,)),
    ]
    return OrderedDict(items)


def num_params(cfg: FilmConfig = OFFICIAL) -> int:
    total = 0
    for shape in param_schema(cfg).values():
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


def tap_names(cfg: FilmConfig = OFFICIAL) -> list[str]:
    """Names of the intermediate outputs ("taps") both backends record, in execution order."""
    names = ["text_process"]
    for i in range(1, cfg.num_cablocks + 1):
        p = f"restormerca{i}"
        names += [
            f"{p}.restormerA1",
            f"{p}.cross_attentionA1",
            f"{p}.outA",
            f"{p}.restormerB1",
            f"{p}.cross_attentionA2",
            f"{p}.outB",
        ]
    names += ["restormer1", "conv1", "restormer2", "restormer3", "head"]
    return names
