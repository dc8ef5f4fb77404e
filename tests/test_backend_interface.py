"""Both backends implement film.backends.base.Backend (and their Trainers base.Trainer) in full, with the
same parameters."""

from __future__ import annotations

import inspect

import pytest

from film.backends import base
from film.common.spec import TINY


def _params(fn):
    return [p for p in inspect.signature(fn).parameters if p != "self"]


@pytest.mark.parametrize("member", base.MEMBERS)
def test_backend_modules_implement_the_interface(tb, jb, member):
    for impl in (tb, jb):
        assert hasattr(impl, member), f"{impl.__name__} lacks {member}"
    if member == "NAME":
        assert (tb.NAME, jb.NAME) == ("torch", "jittor")
        return
    want = _params(getattr(base.Backend, member))
    for impl in (tb, jb):
        got = _params(getattr(impl, member))
        assert got == want, f"{impl.__name__}.{member}{got} differs from the interface {want}"


def test_trainers_implement_the_interface(tb, jb):
    for impl in (tb, jb):
        trainer = impl.make_trainer("cpu", TINY)
        for member in base.TRAINER_MEMBERS:
            assert hasattr(trainer, member), f"{type(trainer).__module__}.Trainer lacks {member}"
            if callable(getattr(base.Trainer, member, None)):
                assert _params(getattr(type(trainer), member))[: len(_params(getattr(base.Trainer, member)))] == \
                    _params(getattr(base.Trainer, member)), member


def test_no_backend_name_branches_outside_backends():
    """`if backend == "torch"`-style branches belong in film/backends/ (callers use the interface)."""
    import os
    import re

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "film")
    pattern = re.compile(r"""(==|!=)\s*["'](torch|jittor)["']|["'](torch|jittor)["']\s*(==|!=)""")
    offenders = []
    for dirpath, _, files in os.walk(root):
        if os.path.join(root, "backends") in dirpath or os.path.join(root, "common", "safeio") in dirpath:
            continue
        for fn in files:
            if not fn.endswith(".py"):
                continue
            path = os.path.join(dirpath, fn)
            with open(path) as f:
                for i, line in enumerate(f, 1):
                    # safeio's unpickler compares pickle module names ("torch" storages), not backends
                    if pattern.search(line) and "module ==" not in line:
                        offenders.append(f"{os.path.relpath(path, root)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
