"""Seeded random weights in numpy, so both backends (and tests) start from the very same numbers."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

from film.common.spec import OFFICIAL, FilmConfig, param_schema


def random_state_dict(cfg: FilmConfig = OFFICIAL, seed: int = 0) -> OrderedDict[str, np.ndarray]:
    """A float32 state dict matching :func:`param_schema` with activations of sensible scale.

    Weights ~ N(0, 1/fan_in) like a Kaiming-style init, LayerNorm gains near 1, PReLU near the
    torch default 0.25, attention temperatures near 1: outputs neither saturate nor vanish, so
    parity tests exercise every path with non-trivial values.
    """
    rng = np.random.default_rng(seed)
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, shape in param_schema(cfg).items():
        leaf = name.rsplit(".", 1)[-1]
        if ".prelu" in name:
            arr = 0.25 + 0.05 * rng.standard_normal(shape)
        elif leaf == "temperature":
            arr = 1.0 + 0.2 * rng.standard_normal(shape)
        elif ".norm" in name and leaf == "weight":
            arr = 1.0 + 0.1 * rng.standard_normal(shape)
        elif leaf.endswith("bias"):
            arr = 0.05 * rng.standard_normal(shape)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
            arr = rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))
        out[name] = np.ascontiguousarray(arr, dtype=np.float32)
    return out


# How film train draws its starting weights when no --init is given (recorded in the run's param.json)
INIT_DESCRIPTION = ("PyTorch's default initialisation of each official layer, drawn once in numpy "
                    "(film.common.init.official_init_state_dict) from the run's seed, the same in every backend")


def official_init_state_dict(cfg: FilmConfig = OFFICIAL, seed: int = 0) -> OrderedDict[str, np.ndarray]:
    """The starting weights the official code gets from PyTorch's default initialisation, drawn in numpy.

    Each parameter from the distribution its layer's ``reset_parameters`` uses (torch 2.x): convolutions (and
    Conv1d) weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5));
    ``nn.MultiheadAttention`` in_proj_weight xavier_uniform U(+-sqrt(6 / (E + 3E))), in_proj_bias and
    out_proj.bias 0, out_proj.weight as a Linear; the Restormer LayerNorm weight 1 and bias 0; PReLU 0.25;
    the attention temperature 1. One generator over the schema's order, so torch and Jittor trainers given the
    same seed start from the same numbers (each framework's own init would draw different ones).
    """
    rng = np.random.default_rng(seed)
    schema = param_schema(cfg)
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, shape in schema.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "temperature" or (".norm" in name and leaf == "weight"):
            arr = np.ones(shape)
        elif ".prelu" in name:
            arr = np.full(shape, 0.25)
        elif (".norm" in name and leaf == "bias") or leaf == "in_proj_bias" or name.endswith("out_proj.bias"):
            arr = np.zeros(shape)
        elif leaf == "in_proj_weight":
            bound = np.sqrt(6.0 / (shape[0] + shape[1]))
            arr = rng.uniform(-bound, bound, shape)
        else:  # convolution / linear weight, or the bias of one (fan_in of its weight)
            w = shape if leaf == "weight" else schema[name[: -len("bias")] + "weight"]
            bound = 1.0 / np.sqrt(int(np.prod(w[1:])))
            arr = rng.uniform(-bound, bound, shape)
        out[name] = np.ascontiguousarray(arr, dtype=np.float32)
    return out


# The token count of the VLF text features (two paragraphs, each with its own [CLS]/[SEP]): the length of the
# seeded synthetic features used by demos, parity and benchmarks
SYNTHETIC_TEXT_LEN = 149


def random_text(length: int = SYNTHETIC_TEXT_LEN, dim: int = 768, seed: int = 0, batch: int | None = None) -> np.ndarray:
    """Synthetic text features of the VLF shape: (L, dim), or (batch, L, dim)."""
    rng = np.random.default_rng(seed)
    shape = (length, dim) if batch is None else (batch, length, dim)
    # BLIP-2 features are roughly unit-scale; the exact distribution does not matter for parity.
    return rng.standard_normal(shape).astype(np.float32)


def text_seed(name: str, seed0: int = 0) -> int:
    """The seed of a pair's synthetic text features: a stable hash of the pair's own name (its file stem, e.g.
    "31" for MRI_CT/31.png) and ``seed0``, so the same pair gets the same features whichever folder it is fused
    from and whichever other pairs are beside it (until 2026-12-03 it was seed0 + the pair's index in the listing)."""
    return int.from_bytes(hashlib.sha256(f"{seed0}:{name}".encode()).digest()[:4], "little")


def random_text_for(name: str, dim: int = 768, seed0: int = 0) -> np.ndarray:
    """The seeded synthetic (SYNTHETIC_TEXT_LEN, dim) text features of the pair called ``name`` (``text_seed``)."""
    return random_text(SYNTHETIC_TEXT_LEN, dim, seed=text_seed(name, seed0))
