"""Shared fixtures. FILM_TEST_BACKENDS=torch,jittor (default) picks which backends the tests use."""

from __future__ import annotations

import os

import numpy as np
import pytest

from film.common.images import samples_root

WANT = [b.strip() for b in os.environ.get("FILM_TEST_BACKENDS", "torch,jittor").split(",") if b.strip()]


def _backend(name: str):
    if name not in WANT:
        pytest.skip(f"{name} backend not selected (FILM_TEST_BACKENDS)")
    from film.backends.registry import get_backend

    return get_backend(name, "cpu")


@pytest.fixture(scope="session")
def tb():
    return _backend("torch")


@pytest.fixture(scope="session")
def jb():
    return _backend("jittor")


@pytest.fixture(scope="session")
def samples() -> str:
    return samples_root()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
