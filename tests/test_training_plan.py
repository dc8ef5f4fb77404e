"""How a training step runs (issue 21): activation recomputation, micro-batches and the memory plan. The
numbers must not change: torch's recomputed gradients are bit-identical, micro-batches equal the whole batch
in float64, and Jittor's gradients in every configuration stay within float32 rounding of float64
(tests/test_parity_train.py judges them)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from test_parity_train import CFG, _batch, _float64_reference, _judge

from film.common.init import random_state_dict
from film.common.spec import TINY, param_schema
from film.common.training import StepConfig, StepPlan, plan_step
from film.errors import FilmError


def _counting(model, class_names):
    """Count the calls of every sub-module whose class is in class_names (forward or execute)."""
    counts: dict = {}
    for mod in model.modules():
        name = type(mod).__name__
        if name in class_names:
            fn = "forward" if hasattr(type(mod), "forward") and not hasattr(type(mod), "execute") else "execute"
            orig = getattr(mod, fn)

            def wrapped(*a, _orig=orig, _name=name, **k):
                counts[_name] = counts.get(_name, 0) + 1
                return _orig(*a, **k)

            setattr(mod, fn, wrapped)
    return counts


@pytest.mark.parametrize("backend", ["torch", "jittor"])
@pytest.mark.parametrize("mode,attn_calls,branch_calls", [("none", 1, 1), ("blocks", 2, 1), ("all", 2, 2)])
def test_recompute_runs_the_forward_again(request, backend, mode, attn_calls, branch_calls):
    """With recompute, each Restormer half (blocks) and each text-guided branch (all) runs a second time in the
    backward pass: counted per step on every such module."""
    impl = request.getfixturevalue("tb" if backend == "torch" else "jb")
    trainer = impl.make_trainer("cpu", TINY)
    trainer.build(replace(CFG, recompute=mode), random_state_dict(TINY, seed=3))
    counts = _counting(trainer.model, {"Attention", "imagefeature2textfeature"})
    trainer.gradients(*_batch(), CFG)
    blocks = 2 * TINY.num_cablocks + 3
    assert counts["Attention"] == attn_calls * blocks, counts
    assert counts["imagefeature2textfeature"] == branch_calls * 2 * TINY.num_cablocks, counts


def test_torch_recompute_is_bit_identical(tb):
    A, B, T = _batch()
    sd = random_state_dict(TINY, seed=11)
    res = {}
    for mode in ("none", "blocks", "all"):
        tr = tb.make_trainer("cpu", TINY)
        tr.build(replace(CFG, recompute=mode), sd)
        res[mode] = tr.gradients(A, B, T, CFG)
    for mode in ("blocks", "all"):
        assert res[mode][0] == res["none"][0]
        for k in param_schema(TINY):
            assert np.array_equal(res[mode][1][k], res["none"][1][k]), (mode, k)


def test_torch_micro_batches_equal_the_whole_batch_in_float64(tb):
    """Micro-batches weighted by their share of the batch give the whole batch's mean-loss gradient: exactly,
    up to float64 rounding (the float32 noise of other summation orders is the subject of the parity tests)."""
    import torch

    A, B, T = (np.concatenate([x, x[::-1]]) for x in _batch())  # 4 samples
    sd = random_state_dict(TINY, seed=5)
    grads = {}
    for micro in (None, 1, 3):
        tr = tb.make_trainer("cpu", TINY)
        tr.build(replace(CFG, fast=False, micro_batch=micro), sd)
        tr.model.double()
        tr._inputs = lambda a, b, t, dtype=None, _tr=tr: tuple(torch.from_numpy(x).double() for x in (a, b, t))
        loss, parts, fused = tr.step(A, B, T, replace(CFG, micro_batch=micro))
        assert fused.shape == A.shape
        grads[micro] = (loss, {k: p.grad.numpy().copy() for k, p in tr.model.named_parameters()})
    for micro in (1, 3):
        assert grads[micro][0] == pytest.approx(grads[None][0], rel=1e-12)
        for k, g in grads[None][1].items():
            d = float(np.abs(grads[micro][1][k] - g).max()) / max(float(np.abs(g).max()), 1e-300)
            assert d <= 1e-10, (micro, k, d)


def test_jittor_micro_batches_within_float32_rounding(tb, jb):
    """Jittor's micro-batched step (chunks of 1 of a batch of 2) accumulates the gradient that the whole batch
    has, judged against the float64 gradient exactly as the whole-batch gradient is."""
    A, B, T = _batch()
    sd = random_state_dict(TINY, seed=11)
    cfg = replace(CFG, micro_batch=1)
    ref = _float64_reference(tb, sd, A, B, T, cfg)
    tr = jb.make_trainer("cpu", TINY)
    tr.build(cfg, sd)
    loss, _, fused = tr.step(A, B, T, cfg)
    assert loss == pytest.approx(ref[0], rel=1e-6) and fused.shape == A.shape
    grads = dict(zip(param_schema(TINY), (g.numpy() for g in tr.opt.param_groups[0]["grads"])))
    print(_judge(grads, ref))


class _FakeBackend:
    """Measured constants stand-in: peak = 1 GiB + micro x 1 GiB (heap on: x 2)."""

    @staticmethod
    def resolve_recompute(mode, device):
        return "all" if mode == "auto" else mode

    @staticmethod
    def train_memory(recompute, heap):
        per = {"all": 1, "blocks": 2, "none": 4}[recompute] * 2**30 * (2 if heap else 1)
        return 2**30, per // (288 * 384)


@pytest.fixture
def memory(monkeypatch):
    def set_gib(gib):
        monkeypatch.setattr("film.common.memory.available_memory", lambda: int(gib * 2**30))

    monkeypatch.delenv("FILM_SKIP_MEMORY_CHECK", raising=False)
    monkeypatch.delenv("FILM_HEAP", raising=False)
    return set_gib


def test_plan_prefers_heap_reuse_then_whole_batches(memory):
    memory(21.9)
    be = _FakeBackend()
    p = plan_step(be, StepConfig(), 8, 288, 384, "cpu")
    assert (p.micro_batch, p.heap_reuse, p.recompute) == (8, True, "all")  # 1 + 8 x 2 = 17 GiB
    p = plan_step(be, StepConfig(batch_size=16), 16, 288, 384, "cpu")
    assert (p.micro_batch, p.heap_reuse) == (10, True)  # 1 + 10 x 2 = 21 GiB
    memory(2.5)
    p = plan_step(be, StepConfig(), 2, 288, 384, "cpu")
    assert (p.micro_batch, p.heap_reuse) == (1, False)  # heap reuse needs 3 GiB for one sample
    assert "micro-batches of 1" in p.describe(2) and "heap reuse off" in p.describe(2)


def test_plan_refuses_in_one_line_naming_what_fits(memory):
    be = _FakeBackend()
    memory(6)
    with pytest.raises(FilmError, match="--micro-batch 5") as e:
        plan_step(be, StepConfig(micro_batch=8), 8, 288, 384, "cpu")
    assert "\n" not in str(e.value) and "GiB" in str(e.value)
    memory(4)
    with pytest.raises(FilmError, match="--recompute all"):
        plan_step(be, StepConfig(recompute="none", micro_batch=2), 2, 288, 384, "cpu")
    memory(1.5)
    with pytest.raises(FilmError, match="smaller images"):
        plan_step(be, StepConfig(), 2, 288, 384, "cpu")
    memory(2.5)  # with the LpLssim term the batch cannot be split: a smaller batch is named instead
    with pytest.raises(FilmError, match="--batch-size 1"):
        plan_step(be, StepConfig(ssim_weight=1.0), 2, 288, 384, "cpu")


def test_plan_without_a_memory_reading(memory, monkeypatch):
    monkeypatch.setattr("film.common.memory.available_memory", lambda: None)
    p = plan_step(_FakeBackend(), StepConfig(micro_batch=3), 8, 288, 384, "cpu")
    assert p == StepPlan(3, "all", True)


def test_train_memory_constants_match_the_measurement(tb, jb):
    """Each backend's train_memory equals the line fit committed in benchmarks/results
    (scripts/calibrate_train_memory.py), with at most 15 % of margin, for every recompute mode and heap policy."""
    import glob
    import json
    import os

    files = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results",
                                          "*_cpu_train_memory.json")))
    assert files, "no committed training-memory measurement (scripts/calibrate_train_memory.py)"
    fit = json.load(open(files[-1]))["fit"]
    for impl in (tb, jb):
        for mode in ("none", "blocks", "all"):
            for heap in (True, False):
                m = fit[f"{impl.NAME}/{mode}/{'heap' if heap else 'default'}"]
                fixed, per_px = impl.train_memory(mode, heap)
                assert m["bytes_per_pixel"] <= per_px <= 1.15 * m["bytes_per_pixel"] + 1, (impl.NAME, mode, heap)
                assert fixed >= 0.9 * m["fixed_bytes"], (impl.NAME, mode, heap)


def test_missing_train_memory_entry_is_one_line(tb):
    """An entry a backend has not measured is a FilmError naming it (an empty table once gave a KeyError in every
    film train), and load_fuser/film fuse pick the backend by the checkpoint's kind in one place."""
    from film.backends.registry import default_backend
    from film.errors import FilmError

    with pytest.raises(FilmError, match="no measured training memory for --recompute bogus"):
        tb.train_memory("bogus", True)
    assert [default_backend(c) for c in ("m.onnx", "IVF.pth", "demo", None, {"a": 1})] == [
        "onnx", "torch", "torch", "torch", "torch"]
