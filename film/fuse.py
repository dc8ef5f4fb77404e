"""``film fuse``: pairs -> Gray/<name>.png (official test.py saving), optional Color/ and grid/."""

from __future__ import annotations

import os
import sys

import cv2
import numpy as np

from film.common.atomic import make_dirs
from film.common.checkpoint import DEMO, for_task
from film.common.images import (
    Pair,
    is_color,
    read_bgr,
    to_uint8,
    write_png,
)
from film.common.pairs import Item, collect_pairs
from film.defaults import TASKS
from film.errors import FilmError


def collect(dim: int, *, a: str | None = None, b: str | None = None, pairs: str | None = None,
            h5: str | None = None, text: str | None = None, random_text: bool = False) -> list[Item]:
    """The pairs of one source (``a`` + ``b`` folders, a ``pairs`` tree, or an ``h5`` file) with their text
    features (``text`` folder, or seeded synthetic ones with ``random_text``) of width ``dim``."""
    if h5:
        from film.common.data import H5Pairs

        ds = H5Pairs(h5)
        try:
            ds.check(dim)  # every sample's shapes from the metadata, named, before anything is written
            return [Item(name, a[0], b[0], t[0]) for a, b, t, name in (ds[i] for i in range(len(ds)))]
        finally:
            ds.close()
    return collect_pairs(a=a, b=b, pairs=pairs, text=text, random_text_seed0=0 if random_text else None,
                         text_dim=dim)


def _chroma(pair: Pair) -> np.ndarray | None:
    """Cr/Cb for the colour output: from the colour source; for two colour sources (MEF, MFF) a
    per-pixel average weighted by saturation |C - 128| (the usual rule of MEF/MFF fusion code)."""
    # uint8 conversion (chroma centred on 128); cv2 on float32 input assumes [0, 1] and centres on 0.5.
    ya = cv2.cvtColor(read_bgr(pair.a), cv2.COLOR_BGR2YCrCb).astype(np.float32)
    yb = cv2.cvtColor(read_bgr(pair.b), cv2.COLOR_BGR2YCrCb).astype(np.float32)
    ca, cb = is_color(pair.a), is_color(pair.b)
    if ca and cb:
        wa, wb = np.abs(ya[..., 1:] - 128.0), np.abs(yb[..., 1:] - 128.0)
        den = wa + wb
        return np.where(den > 0, (ya[..., 1:] * wa + yb[..., 1:] * wb) / np.maximum(den, 1e-12), 128.0)
    if ca:
        return ya[..., 1:]
    if cb:
        return yb[..., 1:]
    return None


# panel titles of --grid, by the name of the source folder (the official layouts' names)
SOURCE_LABELS = {
    "ir": "infrared", "IR": "infrared", "vi": "visible", "VI": "visible", "over": "over-exposed",
    "OVER": "over-exposed", "under": "under-exposed", "UNDER": "under-exposed", "near": "near focus",
    "NEAR": "near focus", "far": "far focus", "FAR": "far focus",
}


def source_label(path: str | None, default: str) -> str:
    """A readable name for a source image's modality, from its folder (ir -> infrared, MRI, CT, ...)."""
    if not path:
        return default
    folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return SOURCE_LABELS.get(folder, folder or default)


def grid_image(panels: list[tuple[np.ndarray, str]]) -> np.ndarray:
    """Panels (HxWx3 uint8 BGR) side by side, each under a white title band, 4-pixel white gaps."""
    h = panels[0][0].shape[0]
    band = int(np.clip(h // 10, 18, 40))
    scale = band / 36
    cols = []
    for img, title in panels:
        strip = np.full((band, img.shape[1], 3), 255, np.uint8)
        cv2.putText(strip, title, (4, int(band * 0.75)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                    max(1, round(scale * 1.6)), cv2.LINE_AA)
        cols += [np.vstack([strip, img]), np.full((h + band, 4, 3), 255, np.uint8)]
    return np.hstack(cols[:-1])


def save_outputs(folder: str, item: Item, fused: np.ndarray, *, color: bool = False, grid: bool = False,
                 title: str = "FILM fused") -> None:
    """What the official test.py writes for one pair: ``folder/Gray/<name>.png``; with ``color``,
    ``Color/<name>.png`` (the fused grey as Y, the colour source's Cr/Cb); with ``grid``, ``grid/<name>.png``
    (A | B | fused, the fused panel titled ``title``). Each PNG is written atomically."""
    gray = to_uint8(fused)
    write_png(os.path.join(folder, "Gray", item.name + ".png"), gray)
    fused_bgr = None
    if color and item.pair is not None:
        chroma = _chroma(item.pair)
        if chroma is not None:
            ycrcb = np.dstack([gray, np.clip(np.round(chroma), 0, 255).astype(np.uint8)])
            fused_bgr = cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR)
            write_png(os.path.join(folder, "Color", item.name + ".png"), fused_bgr)
    if grid:
        def panel(x01, path):  # the source as read (in colour with color), else its grey channel
            if color and path is not None:
                return read_bgr(path)
            return cv2.cvtColor(np.round(x01 * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)

        pair = item.pair
        panels = [
            (panel(item.a, pair.a if pair else None), "A: " + source_label(pair.a if pair else None, "source A")),
            (panel(item.b, pair.b if pair else None), "B: " + source_label(pair.b if pair else None, "source B")),
            (fused_bgr if fused_bgr is not None else cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), title),
        ]
        write_png(os.path.join(folder, "grid", item.name + ".png"), grid_image(panels))


def prepare_output(folder: str, items: list[Item], *, color: bool = False, grid: bool = False) -> None:
    """Every output folder ``save_outputs`` will write into for ``items`` (a refused location fails here, in one
    line, before any forward)."""
    subs = ["Gray"] + (["Color"] if color else []) + (["grid"] if grid else [])
    for s in subs:
        for it in items:
            make_dirs(os.path.dirname(os.path.join(folder, s, it.name + ".png")))


# what the weights are, for the grid's title and a notice (film fuse, film serve): "random", "demo" or "" (any other)
FUSED_TITLE = {"random": "fused (random weights)", "demo": "fused (demo weights)", "": "FILM fused"}
WEIGHTS_NOTICE = {
    "random": "seeded random weights (--checkpoint random): the pictures show the pipeline, not a fusion; "
              "--checkpoint demo has trained demo weights",
    "demo": "the demo weights: not the official FILM, trained briefly on public pairs with synthetic text "
            "(docs/training.md, Demo weights)",
}


def weights_kind(fuser) -> str:
    ck = fuser.checkpoint
    if ck is None or ck.source_format == "random":
        return "random"
    return "demo" if "film_demo" in ck.extras else ""


def item_task(item: Item) -> str | None:
    """The task folder a pair of a --pairs tree sits under (its name's first part: IVF/TNO/07 -> IVF), or None."""
    first = item.name.replace(os.sep, "/").split("/")[0]
    return first if first in TASKS and first != item.name else None


def fuse_folder(
    output: str,
    checkpoint: str | None = None,
    *,
    a: str | None = None,
    b: str | None = None,
    pairs: str | None = None,
    h5: str | None = None,
    text: str | None = None,
    random_text: bool = False,
    backend: str | None = None,
    device: str = "auto",
    color: bool = False,
    grid: bool = False,
    batch_size: int = 1,
    fast: bool | None = None,
    precision: str = "float32",
    task: str | None = None,
) -> int:
    """Fuse every pair of one source (``a`` + ``b`` folders, a ``pairs`` tree, or an ``h5`` file) and write what
    the official test.py writes: ``output/Gray/<name>.png`` (+ ``Color/``, ``grid/``). Returns the pair count.
    Every problem is found before any output folder is made; each PNG is written atomically.
    ``task``: with ``checkpoint="demo"``, that task's demo weights for every pair. Without it, "demo" fuses the
    pairs of a ``pairs`` tree that sit under a task folder (IVF/, MIF/, MEF/, MFF/, as in film/samples) with their
    task's demo weights, and any other pair with the all-task ones."""
    if sum(x is not None for x in (a, pairs, h5)) != 1:
        raise FilmError("give exactly one source: a (with b), pairs, or h5")
    from film.api import load_fuser
    from film.backends.registry import check_name, default_backend

    if backend is None:  # as load_fuser: an exported model runs with onnxruntime
        backend = default_backend(checkpoint)
    check_name(backend)
    if batch_size < 1:
        raise FilmError("--batch-size must be at least 1")
    if text and random_text:
        raise FilmError("--text and --random-text exclude each other")
    # inputs that are not there are named before the network loads (seconds to minutes), not after
    for flag, path, is_file in (("--a", a, False), ("--b", b, False), ("--pairs", pairs, False),
                                ("--text", text, False), ("--h5", h5, True)):
        if path is not None and not (os.path.isfile(path) if is_file else os.path.isdir(path)):
            raise FilmError(f"{flag} {path}: no such {'H5 file' if is_file else 'folder'}")
    def load(name):
        return load_fuser(name, backend=backend, device=device, fast=fast, precision=precision)

    fuser = load(for_task(checkpoint, task))
    kind = weights_kind(fuser)
    if kind:
        print(f"film fuse: {WEIGHTS_NOTICE[kind]}", file=sys.stderr, flush=True)
    items = collect(fuser.cfg.text_dim, a=a, b=b, pairs=pairs, h5=h5, text=text, random_text=random_text)
    if not items:
        raise FilmError("no image pairs to fuse")
    from film.api import check_memory

    fusers = {None: fuser}  # task -> its fuser: the task demo weights of pairs under a task folder (docstring)
    if checkpoint == DEMO and task is None and pairs is not None:
        for t in sorted({item_task(it) for it in items} - {None}):
            fusers[t] = load(f"demo-{t}")
    # Batch same-size pairs with the same text length and weights; keep the input order for output.
    groups: dict[tuple, list[Item]] = {}
    for it in items:
        t = item_task(it)
        groups.setdefault((t if t in fusers else None, it.a.shape, it.text.shape), []).append(it)
    batches = []
    for (t, *_), group in groups.items():
        for i in range(0, len(group), batch_size):
            batches.append((fusers[t], group[i : i + batch_size]))
    # whole or nothing: the largest forward (batch x pixels) is checked before any output folder is made
    biggest = max((bt for _, bt in batches), key=lambda bt: len(bt) * bt[0].a.size)
    check_memory(fuser.impl, len(biggest), *biggest[0].a.shape[-2:], str(fuser.device))
    prepare_output(output, items, color=color, grid=grid)
    from tqdm import tqdm

    with tqdm(
        total=len(items), desc=f"fuse [{backend}]", unit="pair", file=sys.stderr, disable=None
    ) as bar:
        for k, (fuser, batch) in enumerate(batches):
            xa = np.stack([it.a for it in batch])
            xb = np.stack([it.b for it in batch])
            xt = np.stack([it.text for it in batch])
            try:
                fused = fuser.fuse(xa, xb, xt)
            except FilmError as e:  # memory taken by another program since the check: say what was written
                left = [it.name for _, bt in batches[k:] for it in bt]
                raise FilmError(f"{e} -- stopped after writing {len(items) - len(left)} of {len(items)} pairs under "
                                f"{output}; not written: {', '.join(left[:5])}{' ...' if len(left) > 5 else ''}"
                                ) from None
            for it, f in zip(batch, fused):
                save_outputs(output, it, f, color=color, grid=grid, title=FUSED_TITLE[kind])
            bar.update(len(batch))
    return len(items)
