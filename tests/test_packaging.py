"""Packaging metadata that a new user's install reads (issue 37): the SPDX license string (a TOML table makes
setuptools print boxed deprecation warnings during make demo) and the workspace source shipped in the package."""

from __future__ import annotations

import os

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_license_is_an_spdx_string():
    p = _pyproject()
    assert p["project"]["license"] == "MIT"
    # setuptools 77 is the first to read an SPDX string
    assert [r for r in p["build-system"]["requires"] if r.startswith("setuptools")] == ["setuptools>=77"]


def test_workspace_source_is_package_data():
    data = _pyproject()["tool"]["setuptools"]["package-data"]["film"]
    assert "backends/torch/workspace.cpp" in data
