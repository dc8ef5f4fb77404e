"""Every command end to end, and bad input: one clear message naming the file, non-zero exit,
no traceback, no partial output, previous outputs intact."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import cv2
import h5py
import numpy as np
import pytest
from conftest import run_cli as run

from film.cli import main
from film.common.checkpoint import save_checkpoint
from film.common.init import random_state_dict
from film.common.spec import TINY


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
    # each PNG is the official test.py saving step, restated here, of a direct forward of the same pair
    import film
    from film.common.images import read_gray

    fuser = film.load_fuser(str(weights), backend="torch", device="cpu")
    for n in ("p1", "p2"):
        a, b = (read_gray(str(root / d / f"{n}.png")) / np.float32(255) for d in ("ir", "vi"))
        raw = fuser.fuse(a, b, np.load(text / f"{n}.npy"))
        expected = ((raw - raw.min()) / (raw.max() - raw.min()) * np.float32(255)).astype(np.uint8)
        got = cv2.imread(str(out / "Gray" / f"{n}.png"), cv2.IMREAD_UNCHANGED)
        assert got.dtype == np.uint8 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
    grid = cv2.imread(str(out / "grid" / "p1.png"), cv2.IMREAD_UNCHANGED)
    band = grid.shape[0] - 21  # a title band over the three panels (A, B, fused) and two 4-pixel gaps
    assert grid.shape[1] == 3 * 29 + 8 and band >= 18
    assert grid[:band].min() < 128  # the titles are drawn
    np.testing.assert_array_equal(grid[band:, 2 * 29 + 8 :, 0], cv2.imread(str(out / "Gray" / "p1.png"), 0))


def test_fuse_unknown_backend(capsys, tmp_path, pairs, weights):
    root, text = pairs
    fails(capsys, *_fuse_argv(weights, root / "ir", root / "vi", text, tmp_path / "o", "--backend", "tensorflow"),
          match="unknown backend")
    assert not (tmp_path / "o").exists()


def test_fuse_backend_not_installed(capsys, tmp_path, pairs, weights, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr("film.backends.jittor.runtime._imported", None)
    monkeypatch.setitem(sys.modules, "jittor", None)  # as if not installed
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "jittor" else real(n, *a))
    root, text = pairs
    fails(capsys, *_fuse_argv(weights, root / "ir", root / "vi", text, tmp_path / "o", "--backend", "jittor"),
          match="pip install")


def _fuse_argv(weights, a, b, text, out, *extra) -> list[str]:
    return ["fuse", "--checkpoint", str(weights), "--device", "cpu", "--a", str(a), "--b", str(b),
            "--text", str(text), "-o", str(out), *extra]


def _fuse(capsys, tmp_path, weights, a, b, text, *extra):
    return fails(capsys, *_fuse_argv(weights, a, b, text, tmp_path / "o", *extra))


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
    """Palette and 1xN images are read as the official cv2.imread does, and fuse; a 16-bit image (cv2.imread
    would squash it to 8 bits: data loss) and an image with alpha are refused in one line, nothing written."""
    from PIL import Image

    root, text = pairs
    a = cv2.imread(str(root / "ir" / "p1.png"))
    Image.fromarray(cv2.imread(str(root / "ir" / "p2.png"))).convert("P").save(
        root / "ir" / "p2.png"
    )  # palette
    out = tmp_path / "o"
    code, msg = run(capsys, *_fuse_argv(weights, root / "ir", root / "vi", text, out))
    assert code == 0, msg
    for bad, why in ((cv2.cvtColor(a, cv2.COLOR_BGR2BGRA), "alpha channel"),
                     (a[..., 0].astype(np.uint16) * 257, "16-bit")):
        cv2.imwrite(str(root / "ir" / "p1.png"), bad)
        out2 = tmp_path / f"o_{why[:5]}"
        msg = fails(capsys, *_fuse_argv(weights, root / "ir", root / "vi", text, out2), match=why)
        assert "p1.png" in msg and len(msg.strip().splitlines()) == 1, msg
        assert not out2.exists()
    cv2.imwrite(str(root / "ir" / "p1.png"), a)
    for d in ("ir", "vi"):  # 1xN
        cv2.imwrite(str(root / d / "p1.png"), np.full((1, 9), 100, np.uint8))
        cv2.imwrite(str(root / d / "p2.png"), np.full((7, 1), 50, np.uint8))
    code, msg = run(capsys, *_fuse_argv(weights, root / "ir", root / "vi", text, out))
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
    for bad in (np.zeros(7, np.float32), np.zeros((1, 149, 512), np.float32), np.array(b"text")):
        _h5(p, ["x"], ["x"], [])
        with h5py.File(p, "a") as f:
            f["text"].create_dataset("x", data=bad)
        fails(capsys, "fuse", "--checkpoint", str(weights), "--h5", str(p), "-o", str(tmp_path / "o"),
              match="sample x: text features of shape")
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


def test_eval_baselines(capsys, tmp_path, pairs, fused):
    """--baselines scores the average of A and B and the max rule: the same numbers as folders of those images
    written by hand here (integer arithmetic: (a + b + 1) // 2 is the average rounded half up)."""
    import json

    root, _ = pairs
    rules = {"avg": lambda a, b: (a + b + 1) // 2, "mx": np.maximum}
    for folder, rule in rules.items():
        (tmp_path / folder).mkdir()
        for n in ("p1", "p2"):
            a, b = (cv2.imread(str(root / d / f"{n}.png"), cv2.IMREAD_GRAYSCALE).astype(np.int32)
                    for d in ("ir", "vi"))
            cv2.imwrite(str(tmp_path / folder / f"{n}.png"), rule(a, b).astype(np.uint8))
    code, msg = run(capsys, "eval", "--fused", str(fused), "--fused", str(tmp_path / "avg"), "--fused",
                    str(tmp_path / "mx"), "--a", str(root / "ir"), "--b", str(root / "vi"), "--baselines",
                    "--metrics", "VIFF", "Qabf", "SSIM", "--json", str(tmp_path / "r.json"))
    assert code == 0, msg
    assert "average of A and B" in msg and "max rule" in msg
    res = json.loads((tmp_path / "r.json").read_text())
    assert list(res) == ["fused", "avg", "mx", "average of A and B", "max rule"]
    assert res["average of A and B"] == res["avg"] and res["max rule"] == res["mx"]
    assert res["fused"] != res["avg"]
    fails(capsys, "eval", "--fused", str(fused), "--name", "max rule", "--a", str(root / "ir"), "--b",
          str(root / "vi"), "--baselines", match="named like a baseline")


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


def _prepare_vlf_argv(root, out, *extra) -> list[str]:
    """film prepare on the Mini IVF dataset of the ``vlf`` fixture, train split."""
    return ["prepare", "--vlf", str(root), "--task", "IVF", "--dataset", "Mini", "--split", "train",
            *extra, "-o", str(out)]


def test_prepare_and_official_reader_layout(capsys, tmp_path, vlf):
    root, _ = vlf
    code, msg = run(capsys, *_prepare_vlf_argv(root, tmp_path / "h5", "--small"))
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
    fails(capsys, *_prepare_vlf_argv(root, out), match=match)
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


# --------------------------------------------------------------------------- large inputs


def test_fuse_2048_refused_before_allocation(capsys, tmp_path, weights, monkeypatch):
    """A 2048x2048 pair on a machine with too little memory: a clear message before anything is allocated
    (the estimate is the measured bytes per pixel of docs/memory.md), nothing written."""
    root = tmp_path / "big"
    rng = np.random.default_rng(0)
    for sub in ("ir", "vi"):
        os.makedirs(root / sub)
        cv2.imwrite(str(root / sub / "x.png"), rng.integers(0, 256, (2048, 2048), dtype=np.uint8))
    (tmp_path / "t").mkdir()
    np.save(tmp_path / "t" / "x.npy", np.zeros((1, 149, 768), np.float32))
    monkeypatch.setattr("film.api.available_memory", lambda: 6 * 2**30)
    msg = _fuse(capsys, tmp_path, weights, root / "ir", root / "vi", tmp_path / "t")
    assert "2048x2048" in msg and "GiB" in msg and "available" in msg
    assert not (tmp_path / "o").exists()  # refused before any output folder was made


def test_memory_estimate_matches_measurement():
    """The estimate used by the check equals the measured line fit committed in benchmarks/results."""
    import glob
    import json

    from film.backends.registry import get_backend

    files = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results", "*_cpu_memory.json")))
    assert files, "no committed memory measurement (film bench --memory)"
    fit = json.load(open(files[-1]))["memory_fit"]
    for backend in ("torch", "jittor"):
        measured = fit[backend]["bytes_per_pixel"]
        per_pixel = get_backend(backend, "cpu").inference_memory()[1]
        assert measured <= per_pixel <= 1.25 * measured, (backend, measured)


# --------------------------------------------------------------------------- train


def _train_h5(path, names=("s0", "s1", "s2"), shape=(1, 12, 14), text=(1, 5, 768), drop=None, text_value=None):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for g in ("imageA", "imageB", "text"):
            if g == drop:
                continue
            grp = f.create_group(g)
            for n in names:
                if g == "text":
                    t = rng.standard_normal(text).astype(np.float32)
                    if text_value is not None:
                        t[0, 0, 0] = text_value
                    grp.create_dataset(n, data=t)
                else:
                    grp.create_dataset(n, data=rng.random(shape, dtype=np.float32))
    return path


def _train(capsys, tmp_path, *extra, match=None):
    text = fails(capsys, "train", "--device", "cpu", "--out", str(tmp_path / "exp"), *extra, match=match)
    assert files_under(tmp_path / "exp") == [], "a failed start must not leave a run folder"
    return text


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda p: str(p / "missing.h5"), "no such H5 file"),
        (lambda p: str(_train_h5(p / "d.h5", drop="text")), "missing group(s) text"),
        (lambda p: (p / "d.h5").write_bytes(b"not an h5 file") and str(p / "d.h5"), "not a readable H5"),
        (lambda p: str(_train_h5(p / "d.h5", text=(1, 5, 512))), "text features of shape (1, 5, 512)"),
        (lambda p: str(_train_h5(p / "d.h5", shape=(3, 12, 14))), "expected equal (1, H, W)"),
        (lambda p: str(_train_h5(p / "d.h5", names=("only",))), "fewer than one batch"),
    ],
    ids=["missing", "no-text-group", "not-h5", "text-width", "rgb-images", "too-few"],
)
def test_train_bad_train_h5(capsys, tmp_path, tb, make, match):
    _train(capsys, tmp_path, "--backend", "torch", "--h5", make(tmp_path), match=match)


def test_train_mismatched_sample_names(capsys, tmp_path, tb):
    p = _train_h5(tmp_path / "d.h5")
    with h5py.File(p, "a") as f:
        f["text"].move("s2", "other")
    _train(capsys, tmp_path, "--backend", "torch", "--h5", str(p), match="sample names differ")


def test_train_bad_init_leaves_no_run(capsys, tmp_path, tb):
    bad = tmp_path / "init.pth"
    bad.write_bytes(b"PK\x03\x04 truncated")
    _train(capsys, tmp_path, "--backend", "torch", "--h5", str(_train_h5(tmp_path / "d.h5")), "--init", str(bad),
           match=str(bad))


def test_train_unknown_backend_and_bad_numbers(capsys, tmp_path):
    h5 = str(_train_h5(tmp_path / "d.h5"))
    _train(capsys, tmp_path, "--backend", "paddle", "--h5", h5, match="unknown backend 'paddle'")
    _train(capsys, tmp_path, "--backend", "torch", "--h5", h5, "--epochs", "0", match="--epochs must be at least 1")
    _train(capsys, tmp_path, "--backend", "torch", "--h5", h5, "--lr", "-1", match="--lr must be positive")


def test_train_resume_without_checkpoint(capsys, tmp_path, tb):
    (tmp_path / "run").mkdir()
    h5 = str(_train_h5(tmp_path / "d.h5"))
    fails(capsys, "train", "--backend", "torch", "--h5", h5, "--resume", str(tmp_path / "run"), "--device", "cpu",
          match="not a run folder (param.json missing")
    (tmp_path / "run" / "param.json").write_text('{"backend": "torch"}')
    fails(capsys, "train", "--backend", "torch", "--h5", h5, "--resume", str(tmp_path / "run"), "--device", "cpu",
          match="no model/ckpt_<epoch>.pth or step_<step>.pth to resume from")


def test_train_nan_text_in_train_h5(tmp_path, tb):
    """Non-finite features are named before they reach the network (a NaN loss would be the symptom)."""
    from film.common.data import H5Pairs
    from film.errors import FilmError

    data = H5Pairs(str(_train_h5(tmp_path / "d.h5", text_value=np.nan)))
    with pytest.raises(FilmError, match="sample s0: text contains NaN"):
        data[0]


@pytest.mark.parametrize("when", ["disk-full", "interrupted"])
def test_train_save_failure_keeps_last_checkpoint(tmp_path, tb, monkeypatch, when):
    """A full disk or a kill (KeyboardInterrupt) while writing epoch 2's checkpoint: ckpt_1 stays intact
    and loadable, no temp file is left, the full disk gives one clear message."""
    from film.common.checkpoint import load_checkpoint
    from film.common.training import RunConfig, train
    from film.errors import FilmError
    from film.train import make_trainer

    h5 = _train_h5(tmp_path / "d.h5", text=(1, 5, TINY.text_dim))
    trainer = make_trainer("torch", "cpu", TINY)
    real_save = trainer.save
    calls = []

    def save(path, epoch, step):
        calls.append(path)
        if len(calls) == 2:
            import torch

            def boom(obj, f, *a, **k):
                if when == "disk-full":
                    raise OSError(28, "No space left on device")
                with open(f, "wb") as fh:
                    fh.write(b"PK partial")
                raise KeyboardInterrupt

            monkeypatch.setattr(torch, "save", boom)
        real_save(path, epoch, step)

    trainer.save = save
    cfg = RunConfig(h5=str(h5), out=str(tmp_path / "exp"), epochs=3, device="cpu")
    with pytest.raises(FilmError if when == "disk-full" else KeyboardInterrupt) as ei:
        train(cfg, trainer)
    if when == "disk-full":
        assert "No space left" in str(ei.value) and "ckpt_2.pth" in str(ei.value)
    run = os.path.dirname(os.path.dirname(calls[0]))
    assert sorted(os.listdir(os.path.join(run, "model"))) == ["ckpt_1.pth"]
    assert len(load_checkpoint(calls[0], TINY).state_dict) == len(random_state_dict(TINY))


# --------------------------------------------------------------------------- parity --train / --metrics, bench


def test_parity_train_and_bench_bad_inputs(capsys, tmp_path):
    fails(capsys, "parity", "random", "--train", match="needs --h5")
    fails(capsys, "parity", "random", "--train", "--h5", str(tmp_path / "none.h5"), match="no such H5 file")
    fails(capsys, "parity", "random", "--steps", "0", match="--steps must be at least 1")
    fails(capsys, "bench", "--device", "cpu", "--sizes", "12by5", match="expected HxW")
    fails(capsys, "bench", "--device", "cpu", "--backends", "torch,tensorflow", match="unknown tensorflow")


def test_bench_layouts_agree_with_official_style(capsys, tmp_path):
    """A tiny `film bench`: each torch layout is timed in its own process and compared with the official-style
    forward (an independent restatement of the official code, film/backends/torch/reference.py)."""
    import json

    out = tmp_path / "b.json"
    code, msg = run(capsys, "bench", "--device", "cpu", "--sizes", "24x40", "--backends", "torch,torch-fast,torch-nchw",
                    "--repeats", "1", "--warmup", "0", "-o", str(out))
    assert code == 0, msg
    rows = json.loads(out.read_text())["inference"]
    assert [(r["impl"], r["layout"]) for r in rows] == [
        ("official-style", "nchw"), ("torch", "nhwc"), ("torch-nhwc", "nhwc"), ("torch-nchw", "nchw")]
    for r in rows:
        assert r["max_abs_vs_official_style"] <= 1e-5, r
    assert "| torch (nhwc) |" in msg


def test_bench_train_has_both_official_baselines(capsys, tmp_path):
    """film bench --train times the official step twice: with glibc's malloc defaults and with freed memory kept
    for reuse (the official code under GLIBC_TUNABLES, the baseline training has to beat); every other step is
    compared with both."""
    import json

    out = tmp_path / "t.json"
    code, msg = run(capsys, "bench", "--device", "cpu", "--sizes", "24x40", "--backends", "torch", "--train",
                    "--train-batches", "1", "--repeats", "1", "--warmup", "0", "-o", str(out))
    assert code == 0, msg
    rows = {r["impl"]: r for r in json.loads(out.read_text())["train_step"]}
    assert set(rows) == {"official-style", "official-heap", "torch"}
    assert not rows["official-style"]["heap_reuse_on"] and rows["official-heap"]["heap_reuse_on"]
    t = rows["torch"]
    for base in ("official_style", "official_heap"):
        b = rows[base.replace("_", "-")]
        assert t[f"speedup_vs_{base}"] == pytest.approx(b["median_s"] / t["median_s"])
        assert t[f"memory_vs_{base}"] == pytest.approx(t["peak_rss_mb"] / b["peak_rss_mb"])
    assert "| vs official-heap |" in msg


# --------------------------------------------------------------------------- fuse --color


@pytest.mark.parametrize("both_colour", [False, True])
def test_fuse_color_output(capsys, tmp_path, weights, both_colour):
    """Color/<name>.png: luma = the fused gray image, chroma = the colour source's; for two colour sources
    the saturation-weighted average |C-128| of both (restated here with cv2 on single colours)."""
    root = tmp_path / "p"
    (root / "over").mkdir(parents=True)
    (root / "under").mkdir()
    rng = np.random.default_rng(1)
    shade = rng.integers(60, 200, (13, 17, 1)).astype(np.uint8)
    ca, cb = np.array([150, 120, 105], np.uint8), np.array([105, 125, 150], np.uint8)
    img_a = np.ones((13, 17, 1), np.uint8) * ca
    img_b = np.repeat(shade, 3, axis=2) if not both_colour else (np.ones((13, 17, 1), np.uint8) * cb)
    cv2.imwrite(str(root / "over" / "x.png"), img_a)
    cv2.imwrite(str(root / "under" / "x.png"), img_b)
    out = tmp_path / "o"
    code, msg = run(capsys, "fuse", "--checkpoint", str(weights), "--device", "cpu", "--a", str(root / "over"),
                    "--b", str(root / "under"), "--random-text", "-o", str(out), "--color")
    assert code == 0, msg
    gray = cv2.imread(str(out / "Gray" / "x.png"), cv2.IMREAD_UNCHANGED).astype(int)
    col = cv2.cvtColor(cv2.imread(str(out / "Color" / "x.png")), cv2.COLOR_BGR2YCrCb).astype(int)

    def chroma(c):
        return cv2.cvtColor(c.reshape(1, 1, 3), cv2.COLOR_BGR2YCrCb)[0, 0, 1:].astype(float)

    if both_colour:
        wa, wb = np.abs(chroma(ca) - 128), np.abs(chroma(cb) - 128)
        want = (chroma(ca) * wa + chroma(cb) * wb) / (wa + wb)
    else:
        want = chroma(ca)
    # YCrCb -> BGR -> YCrCb in uint8: a few levels of rounding; near black/white BGR clips, so look
    # where the fused luma leaves room for the chroma
    mid = (gray >= 40) & (gray <= 215)
    assert mid.sum() > 20
    assert np.abs(col[..., 0] - gray)[mid].max() <= 2
    assert np.abs(col[..., 1:] - np.round(want))[mid].max() <= 2


def test_fuse_fast_mode(capsys, tmp_path, pairs, weights):
    """CPU default = --fast (channels_last); --no-fast = official NCHW kernels: same files, pixels within one
    level; the default is exactly --fast."""
    from film.api import load_fuser

    root, text = pairs
    modes = {"default": [], "fast": ["--fast"], "nchw": ["--no-fast"]}
    for mode, extra in modes.items():
        code, msg = run(capsys, *_fuse_argv(weights, root / "ir", root / "vi", text, tmp_path / mode, *extra))
        assert code == 0, msg
        assert files_under(tmp_path / mode) == ["Gray/p1.png", "Gray/p2.png"]
    for n in ("p1", "p2"):
        x, y, z = (cv2.imread(str(tmp_path / m / "Gray" / f"{n}.png"), cv2.IMREAD_UNCHANGED).astype(int) for m in modes)
        assert np.array_equal(x, y)
        assert np.abs(x - z).max() <= 1
    from film.backends.torch.backend import is_fast

    assert is_fast(load_fuser(None, device="cpu").model)
    assert not is_fast(load_fuser(None, device="cpu", fast=False).model)
    assert not is_fast(load_fuser(None, backend="torch", device="cpu", fast=False).model)


def test_train_resume_reads_h5_from_run(capsys, tmp_path, tb):
    """`film train --resume RUN` alone: the H5 and the recipe come from the run's param.json."""
    h5 = str(_train_h5(tmp_path / "d.h5", names=("s0", "s1")))
    code, msg = run(capsys, "train", "--backend", "torch", "--h5", h5, "--epochs", "2", "--max-steps", "1",
                    "--device", "cpu", "--out", str(tmp_path / "exp"))
    assert code == 0, msg
    (run_dir,) = [os.path.join(tmp_path, "exp", d) for d in os.listdir(tmp_path / "exp")]
    assert os.listdir(os.path.join(run_dir, "model")) == ["ckpt_1.pth"]
    # param.json in one vocabulary: the recipe's field names (film train's flags), nothing said twice
    params = json.load(open(os.path.join(run_dir, "param.json")))
    assert set(params) == {"h5", "backend", "out", "epochs", "device", "init", "resume", "max_steps", "batch_size",
                           "lr", "step_size", "gamma", "grad_weight", "ssim_weight", "seed", "recompute", "fast",
                           "heap_reuse", "micro_batch", "save_every", "world_size", "model_config", "init_drawn"}
    assert params["epochs"] == 2 and params["backend"] == "torch"
    # how the starting weights were drawn: PyTorch's default init in numpy from the seed (the same in Jittor)
    assert "numpy" in params["init_drawn"] and params["init_drawn"].endswith("seed 0")
    code, msg = run(capsys, "train", "--backend", "torch", "--resume", run_dir, "--device", "cpu")
    assert code == 0, msg
    assert sorted(os.listdir(os.path.join(run_dir, "model"))) == ["ckpt_1.pth", "ckpt_2.pth"]
    assert "[Epoch 2/2]" in open(os.path.join(run_dir, "log.txt")).read()
    fails(capsys, "train", "--backend", "torch", "--resume", str(tmp_path), "--device", "cpu", match="not a run folder")
    with open(os.path.join(run_dir, "param.json"), "w") as f:
        f.write("[1, 2]")
    fails(capsys, "train", "--backend", "torch", "--resume", run_dir, "--device", "cpu", match="holds a list")
    fails(capsys, "train", "--backend", "torch", "--resume", run_dir, "--h5", h5, "--device", "cpu", match="holds a list")


# --------------------------------------------------------------------------- every writer, unwritable targets


def _one_line_exit_2(capsys, argv):
    code = main(argv)
    out = capsys.readouterr()
    assert code == 2, (code, out.err)
    assert "Traceback" not in out.err + out.out
    lines = [ln for ln in out.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"film {argv[0]}: error: "), out.err
    return lines[0]


@pytest.mark.parametrize("where", ["/sys/film-test-out", "/proc/film-test-out", "FILE/sub"])
def test_every_writer_refuses_an_unwritable_location(capsys, tmp_path, weights, pairs, fused, where, tb):
    """convert, eval (--json, --csv), prepare, train, bench and fuse: an output under /sys (EPERM even for
    root), /proc (ENOENT) or below a regular file each end with one line and exit code 2, before any work."""
    root, text = pairs
    if where == "FILE/sub":
        (tmp_path / "FILE").write_text("a file, not a folder")
        where = str(tmp_path / "FILE" / "sub")
    h5 = _train_h5(tmp_path / "d.h5")
    cases = [
        ["convert", str(weights), "-o", where + ".pkl"],
        ["eval", "--fused", str(fused), "--a", str(root / "ir"), "--b", str(root / "vi"), "--json", where + ".json"],
        ["eval", "--fused", str(fused), "--a", str(root / "ir"), "--b", str(root / "vi"), "--csv", where + ".csv"],
        ["prepare", "--a", str(root / "ir"), "--b", str(root / "vi"), "--text", str(text), "-o", where],
        ["train", "--h5", str(h5), "--device", "cpu", "--epochs", "1", "--out", where],
        ["bench", "--device", "cpu", "--sizes", "8x8", "--backends", "torch", "-o", where + ".json"],
        ["fuse", "--checkpoint", str(weights), "--a", str(root / "ir"), "--b", str(root / "vi"), "--text", str(text),
         "-o", where],
    ]
    for argv in cases:
        line = _one_line_exit_2(capsys, argv)
        assert where.split("/")[-2] in line or "film-test-out" in line, line  # names the place
    assert not os.path.exists("/sys/film-test-out") and not os.path.exists(str(tmp_path / "FILE" / "sub"))


def test_missing_output_folder_for_files(capsys, tmp_path, weights, pairs, fused):
    root, _ = pairs
    missing = tmp_path / "no" / "such"
    _one_line_exit_2(capsys, ["convert", str(weights), "-o", str(missing / "o.pkl")])
    line = _one_line_exit_2(
        capsys, ["eval", "--fused", str(fused), "--a", str(root / "ir"), "--b", str(root / "vi"), "--json",
                 str(missing / "x.json")]
    )
    assert "does not exist" in line


# --------------------------------------------------------------------------- parity success path, --pairs + text


def test_parity_success_path(capsys, tmp_path, pairs, tb, jb):
    """`film parity` on real crops with text features: per-tap report, OK verdict, both backends described
    (Jittor's kernel path included), exit 0."""
    root, text = pairs
    code, out = run(capsys, "parity", "random", "--pairs", str(root), "--text", str(text), "--limit", "1")
    assert code == 0, out
    assert "== p1" in out and "OK" in out and "1/1 pairs within tolerance" in out
    assert "restormerca1.cross_attentionA1" in out and "uint8 (official saving step)" in out
    assert "torch: torch " in out and "| jittor: jittor " in out and "convolutions and matmuls:" in out


def test_fuse_pairs_with_text_across_datasets(capsys, tmp_path, pairs, weights):
    """--pairs over a tree of datasets takes each dataset's text from the same relative folder of --text."""
    root, text = pairs
    tree, ttree = tmp_path / "tree", tmp_path / "ttree"
    for ds in ("IVF/One", "IVF/Two"):
        shutil.copytree(root, tree / ds)
        shutil.copytree(text, ttree / ds)
    os.remove(ttree / "IVF/Two/p2.npy")  # a missing feature file is named with its dataset's folder
    fails(capsys, "fuse", "--checkpoint", str(weights), "--pairs", str(tree), "--text", str(ttree), "-o",
          str(tmp_path / "o"), match=os.path.join("IVF", "Two"))
    np.save(ttree / "IVF/Two/p2.npy", np.random.default_rng(9).standard_normal((1, 77, 768)).astype(np.float32))
    code, out = run(capsys, "fuse", "--checkpoint", str(weights), "--pairs", str(tree), "--text", str(ttree), "-o",
                    str(tmp_path / "o"))
    assert code == 0, out
    assert files_under(tmp_path / "o") == [f"Gray/IVF/{d}/{n}.png" for d in ("One", "Two") for n in ("p1", "p2")]
