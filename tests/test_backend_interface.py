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
