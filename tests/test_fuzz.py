"""Property/fuzz tests (hypothesis) of the readers that see users' files: checkpoints (.pth, .pkl,
.safetensors), images, text features. Whatever the bytes, a reader returns a valid object or raises
FilmError (one clear message) -- never another exception, never a crash, never runs code.
Seeds are valid files; hypothesis truncates, flips and splices bytes. Runs in well under a minute."""

from __future__ import annotations

import os
import tempfile

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from film.common.checkpoint import load_checkpoint, save_checkpoint
from film.common.images import read_gray
from film.common.init import random_state_dict
from film.common.spec import TINY, param_schema
from film.common.textfeat import load_text
from film.errors import FilmError

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def _seed_bytes(ext: str) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "seed" + ext)
        if ext in (".pth", ".pkl", ".safetensors"):
            save_checkpoint(p, random_state_dict(TINY, seed=0), extras={"epoch": 1, "step": 2}, cfg=TINY)
        elif ext == ".png":
            img = (np.arange(7 * 9 * 3).reshape(7, 9, 3) * 5 % 256).astype(np.uint8)
            cv2.imwrite(p, img)
        elif ext == ".npy":
            np.save(p, np.random.default_rng(0).standard_normal((1, 5, 768)).astype(np.float32))
        with open(p, "rb") as f:
            return f.read()


SEEDS = {ext: _seed_bytes(ext) for ext in (".pth", ".pkl", ".safetensors", ".png", ".npy")}


@st.composite
def mutated(draw, ext):
    data = bytearray(SEEDS[ext])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "splice", "overwrite"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "truncate":
            del data[pos:]
        elif kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "splice":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[pos : pos + len(chunk)] = chunk
    return bytes(data)


def _write(data: bytes, ext: str) -> str:
    fd, p = tempfile.mkstemp(suffix=ext)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return p


def _check_checkpoint(data: bytes, ext: str) -> None:
    p = _write(data, ext)
    try:
        ck = load_checkpoint(p, TINY)
    except FilmError as e:
        assert str(e).strip(), "empty error message"
        return
    finally:
        os.unlink(p)
    schema = param_schema(TINY)
    assert list(ck.state_dict) == list(schema)
    for k, v in ck.state_dict.items():
        assert v.shape == schema[k] and np.isfinite(v).all()


@pytest.mark.parametrize("ext", [".pth", ".pkl", ".safetensors"])
def test_checkpoint_readers_survive_mutation(ext):
    given(mutated(ext))(FUZZ(lambda data: _check_checkpoint(data, ext)))()


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([".pth", ".pkl", ".safetensors"]))
def test_checkpoint_readers_survive_random_bytes(data, ext):
    _check_checkpoint(data, ext)


@FUZZ
@given(mutated(".png"))
def test_image_reader_survives_mutation(data):
    p = _write(data, ".png")
    try:
        img = read_gray(p)
    except FilmError as e:
        assert p in str(e)
        return
    finally:
        os.unlink(p)
    assert img.ndim == 2 and img.dtype == np.float32 and img.min() >= 0 and img.max() <= 255


@FUZZ
@given(mutated(".npy"))
def test_text_reader_survives_mutation(data):
    p = _write(data, ".npy")
    try:
        t = load_text(p, 768)
    except FilmError as e:
        assert p in str(e)
        return
    finally:
        os.unlink(p)
    assert t.ndim == 2 and t.shape[1] == 768 and np.isfinite(t).all()
