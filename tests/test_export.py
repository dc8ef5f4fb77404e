"""film export: one ONNX model for every size, run by onnxruntime (the onnx backend).

The exported graph is judged against the float64 network (the torch modules in double precision, a different
executor and precision from onnxruntime's float32 kernels), at sizes, batches and text lengths other than the
one traced at export, and against the file's own bytes (metadata)."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from conftest import run_cli as run  # noqa: E402

from film.cli import main  # noqa: E402
from film.common.spec import TINY  # noqa: E402
from film.errors import FilmError  # noqa: E402

pytestmark = pytest.mark.torch




@pytest.fixture(scope="module")
def exported(tmp_path_factory, tb):
    """A TINY network with seeded random weights, saved as safetensors and exported (film export)."""
    from film.common.checkpoint import save_checkpoint
    from film.common.init import random_state_dict

    d = tmp_path_factory.mktemp("export")
    ck, onnx_path = d / "tiny.safetensors", d / "tiny.onnx"
    save_checkpoint(ck, random_state_dict(TINY, seed=3), cfg=TINY)
    assert main(["export", str(ck), "-o", str(onnx_path)]) == 0
    return ck, onnx_path


def _float64(ck, a, b, t):
    import torch

    import film

    m = film.load_fuser(str(ck), backend="torch", device="cpu", fast=False).model.double()
    with torch.no_grad():
        return m(*(torch.from_numpy(x).double() for x in (a, b, t))).numpy()


@pytest.mark.parametrize("n,h,w,L", [(1, 29, 41, 5), (3, 64, 48, 20), (1, 288, 384, 7), (2, 300, 410, 9)])
def test_onnx_matches_float64_at_any_size(exported, n, h, w, L):
    """Sizes below, at and above the 288x384 token grid, batches and text lengths never traced: onnxruntime
    is within float32 rounding of the float64 network, judged by how far torch's own float32 run lands."""
    import film

    ck, onnx_path = exported
    rng = np.random.default_rng(h * w + L)
    a, b = (rng.random((n, 1, h, w), dtype=np.float32) for _ in range(2))
    t = rng.standard_normal((n, L, TINY.text_dim)).astype(np.float32)
    ref = _float64(ck, a, b, t)
    onnx_out = film.load_fuser(str(onnx_path), device="cpu").fuse(a, b, t)
    torch_out = film.load_fuser(str(ck), backend="torch", device="cpu", fast=False).fuse(a, b, t)
    assert onnx_out.shape == (n, 1, h, w)
    err_onnx = float(np.abs(onnx_out - ref).max())
    err_torch = float(np.abs(torch_out - ref).max())
    assert err_onnx <= 2 * max(err_torch, 1e-5), (err_onnx, err_torch)


def test_export_prints_no_exporter_noise(tmp_path, exported):
    """A fresh process (the exporter logs once per process): film export's output is its own lines only, not the
    exporter's "torchvision is not installed. Skipping torchvision::nms" warnings (FILM uses no torchvision op)."""
    import subprocess
    import sys

    ck, _ = exported
    p = subprocess.run([sys.executable, "-m", "film", "export", str(ck), "-o", str(tmp_path / "x.onnx")],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    out = (p.stdout + p.stderr).strip().splitlines()
    # film's own two lines: what it is doing (the trace takes a while), then the result
    assert "torchvision" not in p.stdout + p.stderr and len(out) == 2, out
    assert " -> " in p.stdout and p.stderr.strip().startswith("film export: tracing"), out


def test_metadata_names_config_and_checkpoint(exported):
    from film.export import read_metadata

    ck, onnx_path = exported
    meta = read_metadata(str(onnx_path))
    assert json.loads(meta["film_config"]) == json.loads(json.dumps(TINY.to_dict()))
    assert meta["film_checkpoint_sha256"] == hashlib.sha256(ck.read_bytes()).hexdigest()
    import film

    assert film.load_fuser(str(onnx_path), device="cpu").cfg == TINY


def test_fuse_runs_an_onnx_model(capsys, tmp_path, exported, samples):
    """film fuse takes the .onnx (the onnx backend by default) and writes the same PNG names as torch would."""
    _, onnx_path = exported
    src = os.path.join(samples, "IVF", "RoadScene")
    code, text = run(capsys, "fuse", "--checkpoint", onnx_path, "--pairs", src, "--random-text", "-o",
                     tmp_path / "out", "--device", "cpu")
    assert code == 0, text
    assert "with onnx" in text
    stems = sorted(os.path.splitext(f)[0] + ".png" for f in os.listdir(os.path.join(src, "ir")))
    assert sorted(os.listdir(tmp_path / "out" / "Gray")) == stems


def test_onnx_model_refused_where_weights_are_needed(capsys, tmp_path, exported):
    _, onnx_path = exported
    code, text = run(capsys, "fuse", "--checkpoint", onnx_path, "--backend", "torch", "--pairs", "film/samples/IVF",
                     "--random-text", "-o", tmp_path / "o")
    assert code == 2 and "--backend onnx" in text and not (tmp_path / "o").exists()
    code, text = run(capsys, "convert", onnx_path, "-o", tmp_path / "x.pth")
    assert code == 2 and "--backend onnx" in text and not (tmp_path / "x.pth").exists()
    code, text = run(capsys, "train", "--backend", "onnx", "--h5", tmp_path / "none.h5", "--out", tmp_path / "r")
    assert code == 2 and "unknown backend 'onnx'" in text
    from film.backends.registry import get_backend

    with pytest.raises(FilmError, match="inference only"):
        get_backend("onnx", "cpu").build_model(TINY, None, "cpu")


def test_bad_inputs_leave_nothing(capsys, tmp_path, exported):
    ck, _ = exported
    code, text = run(capsys, "export", ck, "-o", tmp_path / "m.pth")
    assert code == 2 and ".onnx" in text
    code, text = run(capsys, "export", tmp_path / "missing.pth", "-o", tmp_path / "m.onnx")
    assert code == 2 and "missing.pth" in text and not (tmp_path / "m.onnx").exists()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    code, text = run(capsys, "fuse", "--checkpoint", bad, "--pairs", "film/samples/IVF", "--random-text",
                     "-o", tmp_path / "o")
    assert code == 2 and "bad.onnx" in text and len(text.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["bad.onnx"]


@pytest.mark.slow
def test_export_official_network_check_and_golden(capsys, tmp_path):
    """The official network (the golden file's seeded weights, saved as safetensors): film export --check passes
    on every shipped sample at its own size, and onnxruntime called directly (not through film) reproduces the
    *official* network's float64 outputs (tests/golden) to 1e-5, as the Jittor backend does."""
    import sys

    import onnxruntime as ort

    from film.common.checkpoint import save_checkpoint
    from film.common.init import random_state_dict

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "golden"))
    import make_golden as mg

    golden = np.load(os.path.join(os.path.dirname(__file__), "golden", "official_outputs.npz"))
    save_checkpoint(tmp_path / "w.safetensors", random_state_dict(seed=mg.WEIGHT_SEED))
    code, text = run(capsys, "export", tmp_path / "w.safetensors", "-o", tmp_path / "film.onnx", "--check")
    assert code == 0, text
    assert text.count("max |onnxruntime - float64|") >= 4 and "check: OK" in text
    session = ort.InferenceSession(str(tmp_path / "film.onnx"), providers=["CPUExecutionProvider"])
    for case in mg.CASES:
        name, a, b, t = mg.load_case(case)
        (out,) = session.run(["fused"], {"imageA": a[None, None].astype(np.float32),
                                         "imageB": b[None, None].astype(np.float32),
                                         "text": t[None].astype(np.float32)})
        d = float(np.abs(out[0, 0].astype(np.float64) - golden[f"{name}/output_float64"]).max())
        assert d <= 1e-5, f"{name}: onnxruntime {d:.2e} from the official network in float64"


def test_failed_check_leaves_no_model(capsys, tmp_path, monkeypatch):
    """film export --check: the model is written under a temporary name and kept only when the check passes; a
    failed check exits 1, says the file was not written, and leaves nothing (an earlier file stays as it was)."""
    import film.export as ex

    def fake_export(checkpoint, output, opset=None):
        with open(output, "wb") as f:
            f.write(b"onnx bytes")
        return {"film_checkpoint_sha256": "0" * 64}

    calls = []

    def fake_check(path, checkpoint, limit=None, on_row=None):
        calls.append(os.path.basename(path))
        assert open(path, "rb").read() == b"onnx bytes"  # the check runs on the temporary file
        on_row(("p (4x4)", 1.0, 1e-6, 1.0))
        return False, [("p (4x4)", 1.0, 1e-6, 1.0)]

    monkeypatch.setattr(ex, "export", fake_export)
    monkeypatch.setattr(ex, "check", fake_check)
    out = tmp_path / "m.onnx"
    code, text = run(capsys, "export", "random", "-o", out, "--check")
    assert code == 1 and "not written" in text and not out.exists() and calls and calls[0] != "m.onnx"
    assert os.listdir(tmp_path) == []  # no temporary file left either
    out.write_bytes(b"earlier")
    code, _ = run(capsys, "export", "random", "-o", out, "--check")
    assert code == 1 and out.read_bytes() == b"earlier"
    monkeypatch.setattr(ex, "check", lambda path, ck, limit=None, on_row=None: (True, []))
    code, _ = run(capsys, "export", "random", "-o", out, "--check")
    assert code == 0 and out.read_bytes() == b"onnx bytes" and os.listdir(tmp_path) == ["m.onnx"]
