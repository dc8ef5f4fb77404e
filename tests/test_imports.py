"""No import cycle between the files of film/ (issue 23): the static import graph, function-local imports
included (they hide a cycle from the interpreter, not from a reader), has no strongly connected component of
more than one module."""

from __future__ import annotations

import ast
import os

ROOT = os.path.join(os.path.dirname(__file__), "..")


def import_graph(root: str, package: str = "film") -> dict[str, set[str]]:
    """module -> the modules of ``package`` it imports anywhere in its file (relative imports resolved)."""
    mods = {}
    for dp, _, fs in os.walk(os.path.join(root, package)):
        for f in fs:
            if f.endswith(".py"):
                p = os.path.join(dp, f)
                name = os.path.relpath(p, root)[:-3].replace(os.sep, ".")
                mods[name[: -len(".__init__")] if name.endswith(".__init__") else name] = p

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        with open(p) as f:
            tree = ast.parse(f.read())
        pkg = m if p.endswith("__init__.py") else m.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [resolve(a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [resolve(f"{base}.{a.name}") if f"{base}.{a.name}" in mods else resolve(base)
                           for a in node.names]
            edges[m] |= {t for t in targets if t and t != m}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_no_import_cycle_in_film():
    edges = import_graph(ROOT)
    assert len(edges) > 40 and "film.backends.torch.core" in edges
    assert cycles(edges) == []


def test_the_check_finds_a_cycle(tmp_path):
    """The same check on a package with a cycle hidden in a function-local import finds it."""
    pkg = tmp_path / "film"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from film.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("import film.a\n")
    (pkg / "d.py").write_text("from film import c\n")
    assert cycles(import_graph(str(tmp_path))) == [["film.a", "film.c", "film.sub.b"]]


def layer(module: str) -> int:
    """The package's layers, lowest first: errors and defaults; film/common (framework-free); the backends; the
    library behind the commands (film.fuse, film.train, ...); the commands and the CLI."""
    if module in ("film.errors", "film.defaults"):
        return 0
    if module.startswith("film.common"):
        return 1
    if module.startswith("film.backends"):
        return 2
    if module.startswith("film.commands") or module in ("film.cli", "film.__main__"):
        return 4
    return 3


def upward_imports(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((m, t) for m, ts in edges.items() for t in ts if layer(t) > layer(m))


def test_no_import_up_a_layer():
    """film/common imports no backend and no library module; the backends import no library module; nothing below
    the commands imports a command (function-local imports included)."""
    assert upward_imports(import_graph(ROOT)) == []


def test_the_layer_check_finds_an_upward_import(tmp_path):
    pkg = tmp_path / "film"
    (pkg / "common").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "common" / "__init__.py").write_text("")
    (pkg / "api.py").write_text("def available_memory():\n    return 0\n")
    (pkg / "common" / "training.py").write_text("def plan():\n    from film.api import available_memory\n")
    assert upward_imports(import_graph(str(tmp_path))) == [("film.common.training", "film.api")]
