"""Bad inputs a new user met (issue 37): each gives film's one line and nothing from the libraries underneath."""

from __future__ import annotations

import os
import shutil

import numpy as np

from film.cli import main


def _pair(tmp_path, samples):
    for side in ("ir", "vi"):
        os.makedirs(tmp_path / "pairs" / side)
        shutil.copy(os.path.join(samples, "IVF", "RoadScene", side, "FLIR_07809.jpg"), tmp_path / "pairs" / side / "p.jpg")
    return tmp_path / "pairs"


def test_truncated_png_one_line_no_opencv_warning(tmp_path, samples, capfd):
    """OpenCV's logger writes to the process's stderr itself ("[ WARN:0@...] ... PNG input buffer is
    incomplete"); capfd reads the file descriptor, so that line would be seen."""
    pairs = _pair(tmp_path, samples)
    png = (tmp_path / "full.png")
    import cv2

    cv2.imwrite(str(png), np.full((64, 80), 128, np.uint8))
    data = png.read_bytes()
    os.remove(pairs / "ir" / "p.jpg")
    (pairs / "ir" / "p.png").write_bytes(data[: len(data) // 2])
    os.rename(pairs / "vi" / "p.jpg", pairs / "vi" / "p.png")
    code = main(["fuse", "--checkpoint", "random", "--random-text", "--a", str(pairs / "ir"), "--b",
                 str(pairs / "vi"), "--device", "cpu", "-o", str(tmp_path / "out")])
    err = capfd.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if "seeded random weights" not in ln]  # the weights' notice
    assert "WARN" not in err and len(lines) == 1 and "p.png" in lines[0], err


def test_text_file_named_npy_says_not_an_npy_array(tmp_path, samples, capfd):
    pairs = _pair(tmp_path, samples)
    os.makedirs(tmp_path / "text")
    (tmp_path / "text" / "p.npy").write_text("a paragraph, not features")
    code = main(["fuse", "--checkpoint", "random", "--pairs", str(pairs), "--text", str(tmp_path / "text"),
                 "--device", "cpu", "-o", str(tmp_path / "out")])
    err = capfd.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if "seeded random weights" not in ln]  # the weights' notice
    assert code == 2 and len(lines) == 1 and "not a .npy array" in lines[0] and "pickle" not in err, err


def test_random_text_follows_the_pair_not_the_folder_listing(tmp_path, samples, capfd):
    """The same pair fused from the whole tree and from its own dataset folder gets the same synthetic text,
    so the same image (with index seeds the second dataset's pair took another pair's seed)."""
    import cv2

    root = tmp_path / "tree"
    for ds, name, (y, x) in (("A_set", "first", (40, 60)), ("B_set", "second", (100, 30))):
        for side, sub in (("ir", "ir"), ("vi", "vi")):
            img = cv2.imread(os.path.join(samples, "IVF", "TNO", sub, "07.png"), cv2.IMREAD_GRAYSCALE)
            os.makedirs(root / ds / side, exist_ok=True)
            cv2.imwrite(str(root / ds / side / f"{name}.png"), img[y : y + 40, x : x + 48])
    for src, out in ((root, "all"), (root / "B_set", "one")):
        assert main(["fuse", "--checkpoint", "random", "--random-text", "--pairs", str(src), "--device", "cpu",
                     "-o", str(tmp_path / out)]) == 0
    capfd.readouterr()
    whole = cv2.imread(str(tmp_path / "all" / "Gray" / "B_set" / "second.png"), cv2.IMREAD_UNCHANGED)
    alone = cv2.imread(str(tmp_path / "one" / "Gray" / "second.png"), cv2.IMREAD_UNCHANGED)
    assert whole is not None and alone is not None and np.array_equal(whole, alone)


def test_missing_input_folder_named_before_the_model_loads(tmp_path, capfd, monkeypatch):
    """The folder is checked first: loading the network (seconds to minutes) never happens."""
    import film.api

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(film.api, "load_fuser", no_load)
    code = main(["fuse", "--checkpoint", "demo", "--random-text", "--pairs", str(tmp_path / "nowhere"),
                 "-o", str(tmp_path / "out")])
    err = capfd.readouterr().err
    assert code == 2 and "--pairs" in err and "no such folder" in err and len(err.strip().splitlines()) == 1, err


def _two_pairs(tmp_path, samples):
    import cv2

    for side in ("ir", "vi"):
        img = cv2.imread(os.path.join(samples, "IVF", "TNO", side, "07.png"), cv2.IMREAD_GRAYSCALE)
        os.makedirs(tmp_path / "two" / side, exist_ok=True)
        for i in range(2):
            cv2.imwrite(str(tmp_path / "two" / side / f"p{i}.png"), img[40 * i : 40 * i + 40, :48])
    return tmp_path / "two"


def test_memory_refusal_is_whole_or_nothing(tmp_path, samples, capfd, monkeypatch):
    """Enough memory for one pair but not for a batch of two: refused before any output folder exists (the
    check used to be made for one pair only)."""
    import film.api
    from film.backends.registry import get_backend

    monkeypatch.delenv("FILM_SKIP_MEMORY_CHECK", raising=False)
    fixed, per_px = get_backend("torch", "cpu").inference_memory()
    monkeypatch.setattr(film.api, "available_memory", lambda: fixed + per_px * 40 * 48 * 3 // 2)
    src = _two_pairs(tmp_path, samples)
    code = main(["fuse", "--checkpoint", "random", "--random-text", "--pairs", str(src), "--batch-size", "2",
                 "--device", "cpu", "-o", str(tmp_path / "out")])
    err = capfd.readouterr().err
    assert code == 2 and "fusing 2x40x48" in err and not (tmp_path / "out").exists(), err


def test_memory_gone_mid_run_ends_with_a_summary(tmp_path, samples, capfd, monkeypatch):
    """Memory taken by another program after the check: the run stops with one line saying what was written."""
    import film.api

    monkeypatch.delenv("FILM_SKIP_MEMORY_CHECK", raising=False)
    calls = []

    def shrinking():
        calls.append(1)
        return 2**40 if len(calls) <= 2 else 1  # the up-front check and the first pair's; then nothing

    monkeypatch.setattr(film.api, "available_memory", shrinking)
    src = _two_pairs(tmp_path, samples)
    code = main(["fuse", "--checkpoint", "random", "--random-text", "--pairs", str(src), "--device", "cpu",
                 "-o", str(tmp_path / "out")])
    err = capfd.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if "error" in ln]
    assert code == 2 and len(lines) == 1 and "stopped after writing 1 of 2 pairs" in lines[0], err
    assert "not written: p1" in lines[0]
    assert sorted(os.listdir(tmp_path / "out" / "Gray")) == ["p0.png"]


def test_prepare_own_pairs_with_random_text_and_patches(tmp_path, samples, capfd):
    """film prepare --random-text --patch 16: each pair cut into 16x16 tiles (checked against the image read by
    hand), each with the pair's synthetic text, which is what film fuse --random-text gives that pair."""
    import cv2
    import h5py

    from film.common.init import random_text_for

    src = _two_pairs(tmp_path, samples)  # two 40x48 pairs: 2 x 3 tiles of 16x16 each
    assert main(["prepare", "--a", str(src / "ir"), "--b", str(src / "vi"), "--random-text", "--patch", "16",
                 "--name", "own", "-o", str(tmp_path / "h5")]) == 0
    with h5py.File(tmp_path / "h5" / "own.h5") as h5:
        assert sorted(h5["imageA"]) == [f"p{i}_{k:03d}" for i in range(2) for k in range(6)]
        ir = cv2.imread(str(src / "ir" / "p1.png"), cv2.IMREAD_GRAYSCALE) / 255.0
        np.testing.assert_allclose(h5["imageA"]["p1_004"][0], ir[16:32, 16:32])  # row 1, column 1
        assert np.array_equal(h5["text"]["p1_004"][()], random_text_for("p1")[None])
    capfd.readouterr()
    code = main(["prepare", "--a", str(src / "ir"), "--b", str(src / "vi"), "--random-text", "--patch", "64",
                 "-o", str(tmp_path / "h5b")])
    err = capfd.readouterr().err
    assert code == 2 and "smaller than --patch 64" in err and not os.listdir(tmp_path / "h5b"), err
