"""Every command end to end, and bad input: one clear message naming the file, non-zero exit,
no traceback, no partial output, previous outputs intact."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys

import cv2
import h5py
import numpy as np
import pytest

from film.cli import main
from film.common.checkpoint import save_checkpoint
from film.common.init import random_state_dict
from film.common.spec import TINY


def run(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text
    return code, text


def fails(capsys, *argv, match: str | None = None) -> str:
    code, text = run(capsys, *argv)
    assert code != 0, text
    if match:
        assert match in text, text
    return text


def files_under(d) -> list[str]:
    return (
        sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs)
        if os.path.isdir(d)
        else []
    )


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("w")
    p = d / "w.safetensors"
    save_checkpoint(p, random_state_dict(seed=2))
    return p


@pytest.fixture
def pairs(tmp_path):
    """A small folder of real pairs (crops of a shipped sample) with text features."""
    from film.common.images import samples_root

    src = os.path.join(samples_root(), "IVF", "TNO")
    root = tmp_path / "pairs"
    for sub in ("ir", "vi"):
        os.makedirs(root / sub)
        img = cv2.imread(os.path.join(src, sub, "07.png"))
        cv2.imwrite(str(root / sub / "p1.png"), img[:21, :29])
        cv2.imwrite(str(root / sub / "p2.png"), img[30:47, 40:53])
    text = tmp_path / "text"
    os.makedirs(text)
    for i, n in enumerate(("p1", "p2")):
        np.save(text / f"{n}.npy", np.random.default_rng(i).standard_normal((1, 149, 768)).astype(np.float32))
    return root, text


# --------------------------------------------------------------------------- convert


def test_convert_all_formats(capsys, tmp_path, weights):
    for ext in ("pth", "pkl", "safetensors"):
        code, text = run(capsys, "convert", str(weights), "-o", str(tmp_path / f"x.{ext}"))
        assert code == 0 and "189 tensors" in text


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("empty.pth", b"", "empty file"),
        ("trunc.pth", b"PK\x03\x04\x14\x00\x00\x00", "not a readable"),
        ("text.pth", b"just some text", "not a"),
        ("empty.pkl", b"", "empty file"),
        ("text.pkl", b"hello world", "not a readable pickle"),
        ("bad.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}{}{}{}", "safetensors"),
        ("x.ckpt", b"abc", "unknown checkpoint extension"),
    ],
)
def test_convert_garbage(capsys, tmp_path, name, content, match):
    p = tmp_path / name
    p.write_bytes(content)
    out = tmp_path / "out.pkl"
    fails(capsys, "convert", str(p), "-o", str(out), match=match)
    assert not out.exists()


def test_convert_missing_file(capsys, tmp_path):
    fails(capsys, "convert", str(tmp_path / "nope.pth"), "-o", str(tmp_path / "o.pkl"), match="no such file")


def test_convert_malicious_pickle_not_run(capsys, tmp_path):
    marker = tmp_path / "PWNED"
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"model": _Payload(marker)}))
    fails(capsys, "convert", str(p), "-o", str(tmp_path / "o.pth"), match="refused")
    assert not marker.exists() and not (tmp_path / "o.pth").exists()


def test_convert_pth_needing_weights_only_false(capsys, tmp_path, tb):
    import torch

    marker = tmp_path / "PWNED"
    p = tmp_path / "evil.pth"
    torch.save({"model": _Payload(marker)}, p)
    fails(capsys, "convert", str(p), "-o", str(tmp_path / "o.pkl"), match="refused")
    assert not marker.exists()


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda sd: sd.pop("conv2.bias"), "missing"),
        (lambda sd: sd.__setitem__("head.fc.weight", np.zeros(3, np.float32)), "unexpected"),
        (lambda sd: sd.__setitem__("conv1.weight", np.zeros((32, 64), np.float32)), "wrong shape"),
        (lambda sd: sd.__setitem__("conv1.bias", np.full(32, np.nan, np.float32)), "NaN or inf"),
        (lambda sd: sd.__setitem__("conv1.bias", np.zeros(32, np.int64)), "not floating point"),
    ],
)
def test_convert_schema_violations(capsys, tmp_path, edit, match):
    from safetensors.numpy import save_file

    sd = dict(random_state_dict(seed=1))
    edit(sd)
    p = tmp_path / "bad.safetensors"
    save_file(sd, str(p))
    fails(capsys, "convert", str(p), "-o", str(tmp_path / "o.pth"), match=match)
    assert not (tmp_path / "o.pth").exists()


def test_convert_other_network(capsys, tmp_path):
    from safetensors.numpy import save_file

    p = tmp_path / "resnet.safetensors"
    save_file({"fc.weight": np.zeros((10, 5), np.float32), "fc.bias": np.zeros(10, np.float32)}, str(p))
    fails(capsys, "convert", str(p), "-o", str(tmp_path / "o.pth"), match="not a FILM checkpoint")


def test_convert_tiny_config_is_wrong_shape(capsys, tmp_path):
    p = tmp_path / "tiny.pkl"
    from film.common.safeio import write_jittor_pkl

    write_jittor_pkl(str(p), {"model": dict(random_state_dict(TINY))})
    fails(capsys, "convert", str(p), "-o", str(tmp_path / "o.pth"), match="wrong shape")


def test_convert_unwritable_output_keeps_nothing(capsys, tmp_path, weights):
    fails(
        capsys,
        "convert",
        str(weights),
        "-o",
        str(tmp_path / "no" / "such" / "dir.pkl"),
        match="does not exist",
    )
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions
            pytest.skip("running as root: permissions are not enforced")
        fails(capsys, "convert", str(weights), "-o", str(ro / "o.pkl"), match="not writable")
    finally:
        os.chmod(ro, 0o700)


def test_convert_onto_itself_refused(capsys, weights):
    fails(capsys, "convert", str(weights), "-o", str(weights), match="overwrite the input")


def test_convert_keeps_previous_output_on_failure(capsys, tmp_path, weights):
    out = tmp_path / "o.pkl"
    assert run(capsys, "convert", str(weights), "-o", str(out))[0] == 0
    before = out.read_bytes()
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"")
    fails(capsys, "convert", str(bad), "-o", str(out))
    assert out.read_bytes() == before


# --------------------------------------------------------------------------- fuse


def test_fuse_end_to_end_torch(capsys, tmp_path, pairs, weights):
    root, text = pairs
    out = tmp_path / "out"
    code, msg = run(
        capsys,
        "fuse",
        "--checkpoint",
        str(weights),
        "--backend",
        "torch",
        "--device",
        "cpu",
        "--a",
        str(root / "ir"),
        "--b",
        str(root / "vi"),
        "--text",
        str(text),
        "-o",
        str(out),
        "--grid",
        "--batch-size",
        "2",
    )
    assert code == 0, msg
    assert files_under(out) == ["Gray/p1.png", "Gray/p2.png", "grid/p1.png", "grid/p2.png"]
    g = cv2.imread(str(out / "Gray" / "p1.png"), cv2.IMREAD_UNCHANGED)
    assert g.shape == (21, 29) and g.dtype == np.uint8 and g.min() == 0 and g.max() == 255


def test_fuse_unknown_backend(capsys, tmp_path, pairs, weights):
    root, text = pairs
    fails(
        capsys,
        "fuse",
        "--checkpoint",
        str(weights),
        "--backend",
        "tensorflow",
        "--a",
        str(root / "ir"),
        "--b",
        str(root / "vi"),
        "--text",
        str(text),
        "-o",
        str(tmp_path / "o"),
        match="unknown backend",
    )
    assert not (tmp_path / "o").exists()


def test_fuse_backend_not_installed(capsys, tmp_path, pairs, weights, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr("film.backends.jittor.runtime._imported", None)
    monkeypatch.setitem(sys.modules, "jittor", None)  # as if not installed
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "jittor" else real(n, *a))
    root, text = pairs
    fails(
        capsys,
        "fuse",
        "--checkpoint",
        str(weights),
        "--backend",
        "jittor",
        "--a",
        str(root / "ir"),
        "--b",
        str(root / "vi"),
        "--text",
        str(text),
        "-o",
        str(tmp_path / "o"),
        match="pip install",
    )


def _fuse(capsys, tmp_path, weights, a, b, text, *extra):
    return fails(
        capsys,
        "fuse",
        "--checkpoint",
        str(weights),
        "--device",
        "cpu",
        "--a",
        str(a),
        "--b",
        str(b),
        "--text",
        str(text),
        "-o",
        str(tmp_path / "o"),
        *extra,
    )


def test_fuse_empty_folders(capsys, tmp_path, weights):
    for d in ("a", "b", "t"):
        (tmp_path / d).mkdir()
    msg = _fuse(capsys, tmp_path, weights, tmp_path / "a", tmp_path / "b", tmp_path / "t")
    assert "no images" in msg
    assert files_under(tmp_path / "o") == []


def test_fuse_missing_partner(capsys, tmp_path, pairs, weights):
    root, text = pairs
    os.remove(root / "vi" / "p2.png")
    msg = _fuse(capsys, tmp_path, weights, root / "ir", root / "vi", text)
    assert "p2" in msg and "partner" in msg


def test_fuse_size_mismatch(capsys, tmp_path, pairs, weights):
    root, text = pairs
    cv2.imwrite(str(root / "vi" / "p2.png"), np.zeros((5, 6, 3), np.uint8))
    msg = _fuse(capsys, tmp_path, weights, root / "ir", root / "vi", text)
    assert "p2" in msg and "6x5" in msg


@pytest.mark.parametrize("content", [b"", b"this is not a png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_fuse_unreadable_image(capsys, tmp_path, pairs, weights, content):
    root, text = pairs
    (root / "vi" / "p1.png").write_bytes(content)
    msg = _fuse(capsys, tmp_path, weights, root / "ir", root / "vi", text)
    assert "p1.png" in msg


@pytest.mark.parametrize(
    "arr,match",
    [
        (np.zeros((1, 149, 512), np.float32), "768"),
        (np.full((1, 149, 768), np.nan, np.float32), "NaN"),
        (np.full((1, 149, 768), np.inf, np.float32), "NaN or inf"),
        (np.zeros((1, 0, 768), np.float32), "shape"),
        (np.array(["a", "b"]), "float"),
    ],
)
def test_fuse_bad_text(capsys, tmp_path, pairs, weights, arr, match):
    root, text = pairs
    np.save(text / "p1.npy", arr)
    msg = _fuse(capsys, tmp_path, weights, root / "ir", root / "vi", text)
    assert "p1.npy" in msg and match in msg


def test_fuse_pickled_text_refused(capsys, tmp_path, pairs, weights):
    root, text = pairs
    marker = tmp_path / "PWNED"
    np.save(text / "p1.npy", np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    msg = _fuse(capsys, tmp_path, weights, root / "ir", root / "vi", text)
    assert "p1.npy" in msg and not marker.exists()


def test_fuse_missing_text(capsys, tmp_path, pairs, weights):
    root, text = pairs
    os.remove(text / "p2.npy")
    msg = _fuse(capsys, tmp_path, weights, root / "ir", root / "vi", text)
    assert "p2" in msg


def test_fuse_output_is_a_file(capsys, tmp_path, pairs, weights):
    root, text = pairs
    (tmp_path / "o").write_text("I am a file")
    msg = _fuse(capsys, tmp_path, weights, root / "ir", root / "vi", text)
    assert "o" in msg
    assert (tmp_path / "o").read_text() == "I am a file"


def test_fuse_odd_image_kinds(capsys, tmp_path, pairs, weights):
    """RGBA, 16-bit, palette and 1xN images are read as the official cv2.imread does, and fuse."""
    from PIL import Image

    root, text = pairs
    a = cv2.imread(str(root / "ir" / "p1.png"))
    cv2.imwrite(str(root / "ir" / "p1.png"), cv2.cvtColor(a, cv2.COLOR_BGR2BGRA))  # RGBA
    cv2.imwrite(str(root / "vi" / "p1.png"), (a[..., 0].astype(np.uint16) * 257))  # 16-bit gray
    Image.fromarray(cv2.imread(str(root / "ir" / "p2.png"))).convert("P").save(
        root / "ir" / "p2.png"
    )  # palette
    out = tmp_path / "o"
    code, msg = run(
        capsys,
        "fuse",
        "--checkpoint",
        str(weights),
        "--device",
        "cpu",
        "--a",
        str(root / "ir"),
        "--b",
        str(root / "vi"),
        "--text",
        str(text),
        "-o",
        str(out),
    )
    assert code == 0, msg
    for d in ("ir", "vi"):  # 1xN
        cv2.imwrite(str(root / d / "p1.png"), np.full((1, 9), 100, np.uint8))
        cv2.imwrite(str(root / d / "p2.png"), np.full((7, 1), 50, np.uint8))
    code, msg = run(
        capsys,
        "fuse",
        "--checkpoint",
        str(weights),
        "--device",
        "cpu",
        "--a",
        str(root / "ir"),
        "--b",
        str(root / "vi"),
        "--text",
        str(text),
        "-o",
        str(out),
    )
    assert code == 0, msg


def test_fuse_bad_checkpoint(capsys, tmp_path, pairs):
    root, text = pairs
    ck = tmp_path / "w.pth"
    ck.write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    msg = _fuse(capsys, tmp_path, ck, root / "ir", root / "vi", text)
    assert "w.pth" in msg


def _h5(path, names_a, names_b, names_t, shape=(1, 12, 14)):
    with h5py.File(path, "w") as f:
        for g, names in (("imageA", names_a), ("imageB", names_b), ("text", names_t)):
            grp = f.create_group(g)
            for n in names:
                grp.create_dataset(
                    n,
                    data=np.zeros((1, 149, 768), np.float32) if g == "text" else np.zeros(shape, np.float32),
                )


def test_fuse_h5_problems(capsys, tmp_path, weights):
    p = tmp_path / "d.h5"
    _h5(p, ["x", "y"], ["x", "y"], ["x"])
    msg = fails(capsys, "fuse", "--checkpoint", str(weights), "--h5", str(p), "-o", str(tmp_path / "o"))
    assert "y" in msg and "differ" in msg
    with h5py.File(p, "w") as f:
        f.create_group("imageA")
    fails(
        capsys,
        "fuse",
        "--checkpoint",
        str(weights),
        "--h5",
        str(p),
        "-o",
        str(tmp_path / "o"),
        match="missing group",
    )
    p.write_bytes(b"not hdf5")
    fails(
        capsys, "fuse", "--checkpoint", str(weights), "--h5", str(p), "-o", str(tmp_path / "o"), match="d.h5"
    )
    assert not (tmp_path / "o").exists()


def test_fuse_h5_end_to_end(capsys, tmp_path, weights):
    p = tmp_path / "d.h5"
    _h5(p, ["x", "y"], ["x", "y"], ["x", "y"])
    code, msg = run(
        capsys,
        "fuse",
        "--checkpoint",
        str(weights),
        "--device",
        "cpu",
        "--h5",
        str(p),
        "-o",
        str(tmp_path / "o"),
    )
    assert code == 0, msg
    assert files_under(tmp_path / "o") == ["Gray/x.png", "Gray/y.png"]


# --------------------------------------------------------------------------- eval


@pytest.fixture
def fused(tmp_path, pairs):
    root, _ = pairs
    out = tmp_path / "fused"
    out.mkdir()
    for n in ("p1", "p2"):
        a = cv2.imread(str(root / "ir" / f"{n}.png"), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(out / f"{n}.png"), (a // 2 + 20).astype(np.uint8))
    return out


def test_eval_end_to_end(capsys, tmp_path, pairs, fused):
    import json

    root, _ = pairs
    code, msg = run(
        capsys,
        "eval",
        "--fused",
        str(fused),
        "--fused",
        str(fused),
        "--a",
        str(root / "ir"),
        "--b",
        str(root / "vi"),
        "--json",
        str(tmp_path / "r.json"),
        "--csv",
        str(tmp_path / "r.csv"),
    )
    assert code == 0, msg
    for m in ("EN", "SSIM", "Qabf", "VIFF"):
        assert m in msg
    res = json.loads((tmp_path / "r.json").read_text())
    assert set(res) == {"fused", "fused'"} and set(res["fused"]["per_image"]) == {"p1", "p2"}


def test_eval_problems(capsys, tmp_path, pairs, fused):
    root, _ = pairs
    fails(
        capsys,
        "eval",
        "--fused",
        str(fused),
        "--a",
        str(root / "ir"),
        "--b",
        str(root / "vi"),
        "--metrics",
        "XYZ",
        match="unknown metric",
    )
    os.remove(root / "vi" / "p2.png")
    fails(capsys, "eval", "--fused", str(fused), "--a", str(root / "ir"), "--b", str(root / "vi"), match="p2")
    cv2.imwrite(str(root / "vi" / "p2.png"), np.zeros((3, 3), np.uint8))
    fails(capsys, "eval", "--fused", str(fused), "--a", str(root / "ir"), "--b", str(root / "vi"), match="p2")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(
        capsys,
        "eval",
        "--fused",
        str(empty),
        "--a",
        str(root / "ir"),
        "--b",
        str(root / "vi"),
        match="no images",
    )


# --------------------------------------------------------------------------- prepare


@pytest.fixture
def vlf(tmp_path, pairs):
    root, text = pairs
    img = tmp_path / "vlf" / "Image" / "IVF" / "Mini"
    shutil.copytree(root / "ir", img / "IR")
    shutil.copytree(root / "vi", img / "VI")
    shutil.copytree(text, tmp_path / "vlf" / "TextFeature" / "IVF" / "Mini")
    (img / "train.txt").write_text("p1.png\np2.png\n")
    (img / "test.txt").write_text("p1.png\np2.png\n")
    return tmp_path / "vlf", img


def test_prepare_and_official_reader_layout(capsys, tmp_path, vlf):
    root, _ = vlf
    code, msg = run(
        capsys,
        "prepare",
        "--vlf",
        str(root),
        "--task",
        "IVF",
        "--dataset",
        "Mini",
        "--split",
        "train",
        "--small",
        "-o",
        str(tmp_path / "h5"),
    )
    assert code == 0, msg
    with h5py.File(tmp_path / "h5" / "Mini_train.h5") as f:
        assert list(f.keys()) == ["imageA", "imageB", "text"]
        assert list(f["imageA"].keys()) == ["p1", "p2"]
        a = f["imageA"]["p1"][()]
        assert a.shape == (1, 288, 384) and a.dtype == np.float32 and 0 <= a.min() <= a.max() <= 1
        assert f["text"]["p2"][()].shape == (1, 149, 768)


@pytest.mark.parametrize(
    "breakage,match",
    [
        (lambda img, t: os.remove(img / "VI" / "p2.png"), "p2: missing B image"),
        (lambda img, t: os.remove(t / "p1.npy"), "p1: missing text"),
        (lambda img, t: cv2.imwrite(str(img / "VI" / "p1.png"), np.zeros((4, 4), np.uint8)), "p1: A is"),
        (lambda img, t: (img / "IR" / "p2.png").write_bytes(b"garbage"), "p2"),
        (lambda img, t: (img / "train.txt").write_text(""), "empty split list"),
        (lambda img, t: shutil.rmtree(img / "VI"), "folder not found"),
    ],
)
def test_prepare_problems_leave_nothing(capsys, tmp_path, vlf, breakage, match):
    root, img = vlf
    breakage(img, root / "TextFeature" / "IVF" / "Mini")
    out = tmp_path / "h5"
    fails(
        capsys,
        "prepare",
        "--vlf",
        str(root),
        "--task",
        "IVF",
        "--dataset",
        "Mini",
        "--split",
        "train",
        "-o",
        str(out),
        match=match,
    )
    assert files_under(out) == []


def test_prepare_own_folders(capsys, tmp_path, pairs):
    root, text = pairs
    code, msg = run(
        capsys,
        "prepare",
        "--a",
        str(root / "ir"),
        "--b",
        str(root / "vi"),
        "--text",
        str(text),
        "--name",
        "mine",
        "-o",
        str(tmp_path / "h5"),
    )
    assert code == 0, msg
    assert (tmp_path / "h5" / "mine.h5").exists()


# --------------------------------------------------------------------------- parity


def test_parity_bad_inputs(capsys, tmp_path):
    p = tmp_path / "w.pth"
    p.write_bytes(b"")
    fails(capsys, "parity", str(p), match="empty file")
    (tmp_path / "nopairs").mkdir()
    fails(capsys, "parity", "random", "--pairs", str(tmp_path / "nopairs"), match="expected two sub-folders")


def test_no_traceback_from_subprocess(tmp_path):
    """The installed entry point: an unexpected failure is one line, exit code non-zero."""
    r = subprocess.run(
        [sys.executable, "-m", "film", "convert", str(tmp_path / "x.pth"), "-o", str(tmp_path / "y.pkl")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "no such file" in r.stderr
