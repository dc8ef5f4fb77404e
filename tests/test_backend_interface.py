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


def test_import_film_loads_no_framework():
    """`import film` (and its pure-numpy parts) imports neither torch nor Jittor: a missing or broken framework
    can only fail the backend that needs it."""
    import subprocess
    import sys

    code = ("import sys, film, film.api, film.cli, film.common.checkpoint, film.common.training, film.curves; "
            "print(sorted(m for m in ('torch', 'jittor') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_ops_modules_offer_the_same_primitives(tb, jb):
    """The shared forward and loss call each backend's ops module by the same names: both define every
    primitive that film.common.forward / film.common.loss use, with the same parameters."""
    import ast
    import os

    from film.backends.jittor import ops as jops
    from film.backends.torch import ops as tops
    from film.common import forward, loss

    used = set()
    for mod in (forward, loss):
        tree = ast.parse(open(mod.__file__).read())
        used |= {n.attr for n in ast.walk(tree)
                 if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "ops"}
    assert len(used) >= 20, sorted(used)
    for name in sorted(used):
        for ops in (tops, jops):
            assert hasattr(ops, name), f"{os.path.basename(ops.__file__)} of {ops.__name__} lacks {name}"
        ft, fj = getattr(tops, name), getattr(jops, name)
        try:
            pt, pj = _params(ft), _params(fj)
        except (TypeError, ValueError):  # a framework builtin (torch.abs): nothing to compare
            continue
        if not (callable(ft) and getattr(ft, "__module__", "").startswith("film")):
            continue
        assert pt == pj, f"ops.{name}: torch {pt} vs jittor {pj}"


def _public_names(path: str) -> set[str]:
    """The names a module defines at its top level (functions, classes, assignments), private ones left out."""
    import ast

    tree = ast.parse(open(path).read())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return {n for n in names if not n.startswith("_")}


def test_ops_modules_mirror_each_other_name_for_name():
    """jittor/ops.py defines the same public names as torch/ops.py (Jittor's own kernels live in kernels.py)."""
    import os

    root = os.path.join(os.path.dirname(__file__), "..", "film", "backends")
    names = {b: _public_names(os.path.join(root, b, "ops.py")) for b in ("torch", "jittor")}
    assert len(names["torch"]) >= 20
    assert names["torch"] == names["jittor"], (sorted(names["torch"] - names["jittor"]),
                                               sorted(names["jittor"] - names["torch"]))
