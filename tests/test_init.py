"""film train's starting weights (issue 37): PyTorch's default initialisation drawn once in numpy, so torch and
Jittor given the same seed start from the same weights and the same step-0 loss. Judged against torch's own
default initialisation of the official layers and against the other backend."""

from __future__ import annotations

import numpy as np
import pytest

from film.common.init import official_init_state_dict
from film.common.spec import OFFICIAL, TINY


def test_draws_follow_torchs_default_initialisation(tb):
    """Constants equal torch's; uniform draws have torch's range and spread (its own init of the same layers,
    which the official code gets)."""
    import torch

    from film.backends.torch.model import Net

    refs = []
    for seed in range(12):  # torch's support and spread, pooled over a dozen of its own initialisations
        torch.manual_seed(seed)
        refs.append({k: v.detach().numpy().copy() for k, v in Net(OFFICIAL).state_dict().items()})
    ours = official_init_state_dict(OFFICIAL, seed=5)
    assert set(ours) == set(refs[0])
    for k, want in refs[0].items():
        got = ours[k]
        assert got.shape == want.shape and got.dtype == np.float32, k
        pooled = np.concatenate([r[k].ravel() for r in refs])
        if np.all(pooled == pooled[0]):  # ones, zeros, 0.25 whatever torch's seed: exactly torch's constant
            assert np.array_equal(got, want), k
            continue
        assert np.abs(got).max() <= np.abs(pooled).max() * 1.05, k  # the same support
        if got.size >= 2000:  # the same spread
            assert got.std() == pytest.approx(pooled.std(), rel=0.08), k


def test_same_seed_same_weights_and_step0_loss_in_both_frameworks(tb, jb, capsys):
    """Trainer.setup with no --init: the same parameters in torch and Jittor, and the same first loss. (And the
    Jittor trainer says, before its first step, that Jittor may compile for minutes: no silent stretch.)"""
    from film.backends.jittor.train import Trainer as JT
    from film.backends.torch.train import Trainer as TT
    from film.common.training import StepConfig

    cfg = StepConfig(seed=11, lr=1e-4, step_size=10, gamma=0.6, recompute="none", heap_reuse=False)
    t, j = TT("cpu", TINY), JT("cpu", TINY)
    t.setup(cfg)
    j.setup(cfg)
    assert "Jittor compiles the training step's operators" in capsys.readouterr().err
    pt, pj = t.params_numpy(), j.params_numpy()
    assert set(pt) == set(pj) and all(np.array_equal(pt[k], pj[k]) for k in pt)
    rng = np.random.default_rng(0)
    a, b = (rng.random((2, 1, 24, 32), dtype=np.float32) for _ in range(2))
    text = rng.standard_normal((2, 7, TINY.text_dim)).astype(np.float32)
    lt, lj = t.step(a, b, text, cfg)[0], j.step(a, b, text, cfg)[0]
    assert lt == pytest.approx(lj, rel=1e-5)
    # and another seed starts elsewhere (the seed is used)
    other = official_init_state_dict(TINY, seed=12)
    assert any(not np.array_equal(other[k], pt[k]) for k in pt)
