"""Image pairs and their text features, collected the same way by every command (film fuse, film parity, the
web page): one folder of A images with one of B images, or a tree searched for paired sub-folders.

Where text features are found (the one rule, README "Fuse"): for a pair named ``<name>`` in the dataset
sub-folder ``<rel>`` of a ``--pairs`` tree (``rel`` is empty for ``--a/--b`` and for a tree that is one
dataset), ``<text>/<rel>/<name>.npy`` and then ``<text>/<name>.npy``. A text folder may therefore mirror
the tree (``IVF/TNO/07.npy``, as ``film text`` and VLF write) or hold every file flat (``07.npy``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from film.common.images import Pair, find_ab_folders, find_datasets, load_pair, match_pairs
from film.common.init import random_text_for
from film.common.textfeat import load_text
from film.errors import FilmError


@dataclass
class Item:
    name: str  # output name: <rel>/<name> (the dataset sub-folder of a --pairs tree, if any)
    a: np.ndarray  # (H, W) float32 in [0, 1]
    b: np.ndarray
    text: np.ndarray  # (L, D)
    pair: Pair | None = None  # source files (None for H5 input)


def text_path(text_dir: str, rel: str, name: str) -> str:
    """The text-feature file of pair ``name`` in dataset sub-folder ``rel`` (module doc), or one FilmError
    naming every path tried."""
    tried = [os.path.join(text_dir, rel, name + ".npy")] if rel else []
    tried.append(os.path.join(text_dir, name + ".npy"))
    for path in tried:
        if os.path.isfile(path):
            return path
    raise FilmError(f"{os.path.join(rel, name) if rel else name}: no text features ({' or '.join(tried)})")


def pair_groups(a: str | None = None, b: str | None = None, pairs: str | None = None) -> list[tuple[str, str, str]]:
    """[(rel, A folder, B folder)]: one group for --a/--b, one per dataset folder of a --pairs tree."""
    if a or b:
        if not (a and b):
            raise FilmError("--a needs --b (the folder of B images), and --b needs --a")
        return [("", a, b)]
    datasets = find_datasets(pairs)
    if not datasets:
        find_ab_folders(pairs)  # raises with the explanation
    groups = []
    for ds in datasets:
        da, db = find_ab_folders(ds)
        rel = os.path.relpath(ds, pairs)
        groups.append(("" if rel == "." else rel, da, db))
    return groups


def collect_pairs(*, a: str | None = None, b: str | None = None, pairs: str | None = None,
                  text: str | None = None, random_text_seed0: int | None = None, text_dim: int = 768,
                  limit: int | None = None) -> list[Item]:
    """Every pair (read as the official GRAY / 255) with its text features: from ``text`` by the rule above, or,
    with ``random_text_seed0`` set, seeded synthetic features (``film.common.init.text_seed``: from the pair's name
    and seed0, the same whichever folder is given); else an error.
    Every problem is found here, before anything is written."""
    items: list[Item] = []
    for rel, da, db in pair_groups(a, b, pairs):
        for p in match_pairs(da, db):
            if text:
                t = load_text(text_path(text, rel, p.name), text_dim)
            elif random_text_seed0 is not None:  # seeded by the pair's own name, not its place in the listing
                t = random_text_for(p.name, text_dim, seed0=random_text_seed0)
            else:
                raise FilmError(f"{p.name}: no text features: pass --text DIR (<name>.npy files), or --random-text "
                                "for a demo")
            xa, xb = load_pair(p)
            items.append(Item(os.path.join(rel, p.name) if rel else p.name, xa, xb, t, p))
            if limit and len(items) >= limit:
                return items
    if not items:
        raise FilmError(f"{pairs or a}: no image pairs found")
    return items
