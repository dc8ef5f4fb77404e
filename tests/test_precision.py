"""Opt-in reduced precision (film.common.precision): refused in one line where it cannot run natively; where it
runs (a CPU with AVX512-BF16 / AMX), the torch backend's bf16 output is near its float32 output but not equal to
it (autocast really ran)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_cli

from film.common.precision import check_precision, cpu_has_native_bf16
from film.errors import FilmError


def test_rules():
    assert check_precision("float32", "cpu", "jittor", reduced=False, flags=set()) == "float32"
    assert check_precision("bf16", "cpu", "torch", flags={"avx512f", "avx512_bf16"}) == "bf16"
    assert check_precision("bf16", "cpu", "torch", flags={"amx_bf16"}) == "bf16"
    assert check_precision("fp16", "cuda", "torch", flags=set()) == "fp16"
    for args, words in [
        (("bf16", "cpu", "torch", {"avx512f", "avx2"}, True), "native bf16"),
        (("fp16", "cpu", "torch", {"avx512_bf16"}, True), "CUDA GPUs only"),
        (("bf16", "cpu", "jittor", {"avx512_bf16"}, False), "only the torch backend"),
        (("bf16", "cuda", "onnx", set(), False), "only the torch backend"),
        (("int8", "cpu", "torch", set(), True), "choose from"),
    ]:
        with pytest.raises(FilmError, match=words):
            check_precision(*args[:3], flags=args[3], reduced=args[4])


def test_cli_refuses_in_one_line(capsys, tmp_path, samples, monkeypatch):
    """Where this CPU lacks native bf16 (simulated), film fuse --precision bf16 says so in one line, exit 2, and
    writes nothing; jittor with bf16 likewise."""
    monkeypatch.setattr("film.common.precision.cpu_flags", lambda: {"avx2"})
    code, text = run_cli(capsys, "fuse", "--checkpoint", "random", "--random-text", "--pairs", samples,
                         "--precision", "bf16", "--device", "cpu", "-o", tmp_path / "out")
    assert code == 2 and "native bf16" in text and len(text.strip().splitlines()) == 1, text
    assert not (tmp_path / "out").exists()


@pytest.mark.torch
def test_bf16_near_float32_where_native(tb):
    if not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 / AMX): bf16 is refused here (test_rules)")
    import film

    rng = np.random.default_rng(3)
    a, b = rng.random((2, 96, 128), dtype=np.float32)
    t = rng.standard_normal((9, 768)).astype(np.float32)
    ref = film.load_fuser("demo", backend="torch", device="cpu").fuse(a, b, t)
    low = film.load_fuser("demo", backend="torch", device="cpu", precision="bf16").fuse(a, b, t)
    assert low.dtype == np.float32 and low.shape == ref.shape
    diff = np.abs(low - ref)
    assert 0 < diff.max() < 0.05, diff.max()


def test_bench_refuses_bf16_in_one_line(capsys, tmp_path, monkeypatch):
    """film bench --backends torch-library-bf16 where the CPU has no native bf16 (simulated): one line, before
    any timing, no results file."""
    monkeypatch.setattr("film.common.precision.cpu_flags", lambda: {"avx2"})
    out = tmp_path / "b.json"
    code, text = run_cli(capsys, "bench", "--device", "cpu", "--sizes", "24x40", "--backends", "torch-library-bf16",
                         "-o", out)
    assert code == 2 and "native bf16" in text and len(text.strip().splitlines()) == 1, text
    assert not out.exists()


@pytest.mark.torch
def test_bench_times_bf16_where_native(capsys, tmp_path):
    """Where the CPU has native bf16, film bench's torch-library-bf16 row is the library call in bf16: near the
    official-style forward, and not equal to it (bf16 really ran)."""
    if not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 / AMX): bf16 is refused here")
    import json

    out = tmp_path / "b.json"
    code, text = run_cli(capsys, "bench", "--device", "cpu", "--sizes", "24x40", "--backends",
                         "torch-library,torch-library-bf16", "--repeats", "1", "--warmup", "0", "-o", out)
    assert code == 0, text
    rows = {r["impl"]: r for r in json.loads(out.read_text())["inference"]}
    assert rows["torch-library"]["max_abs_vs_official_style"] <= 1e-5
    assert 1e-4 < rows["torch-library-bf16"]["max_abs_vs_official_style"] < 0.1
