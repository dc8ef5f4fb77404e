"""``film fuse``: pairs -> Gray/<name>.png (official test.py saving), optional Color/ and grid/."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import cv2
import numpy as np

from film.common.atomic import make_dirs
from film.common.images import (
    Pair,
    is_color,
    read_bgr,
    to_uint8,
    write_png,
)
from film.common.pairs import Item, collect_pairs
from film.errors import FilmError


@dataclass
class FuseOptions:
    """What :func:`fuse_folder` was asked to do (the ``film fuse`` flags, typed)."""

    output: str
    checkpoint: str | None = None  # a checkpoint path, "demo" (shipped demo weights); None or "random": seeded random
    backend: str | None = None  # None: onnx for an .onnx checkpoint, else torch
    device: str = "auto"
    a: str | None = None  # folder of A images (with b)
    b: str | None = None
    pairs: str | None = None  # folder searched for paired sub-folders
    h5: str | None = None  # an H5 made by film prepare
    text: str | None = None  # folder of <name>.npy text features
    random_text: bool = False
    color: bool = False
    grid: bool = False
    batch_size: int = 1
    fast: bool | None = None
    precision: str = "float32"  # opt-in bf16 / fp16 (film.common.precision)


def collect(args, dim: int) -> list[Item]:
    if args.h5:
        from film.common.data import H5Pairs

        ds = H5Pairs(args.h5)
        try:
            ds.check(dim)  # every sample's shapes from the metadata, named, before anything is written
            return [Item(name, a[0], b[0], t[0]) for a, b, t, name in (ds[i] for i in range(len(ds)))]
        finally:
            ds.close()
    return collect_pairs(a=args.a, b=args.b, pairs=args.pairs, text=args.text,
                         random_text_seed0=0 if args.random_text else None, text_dim=dim)


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


def save_outputs(args, item: Item, fused: np.ndarray) -> None:
    gray = to_uint8(fused)
    write_png(os.path.join(args.output, "Gray", item.name + ".png"), gray)
    fused_bgr = None
    if args.color and item.pair is not None:
        chroma = _chroma(item.pair)
        if chroma is not None:
            ycrcb = np.dstack([gray, np.clip(np.round(chroma), 0, 255).astype(np.uint8)])
            fused_bgr = cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR)
            write_png(os.path.join(args.output, "Color", item.name + ".png"), fused_bgr)
    if args.grid:
        def panel(x01, path):  # the source as read (in colour with --color), else its grey channel
            if args.color and path is not None:
                return read_bgr(path)
            return cv2.cvtColor(np.round(x01 * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)

        pair = item.pair
        panels = [
            (panel(item.a, pair.a if pair else None), "A: " + source_label(pair.a if pair else None, "source A")),
            (panel(item.b, pair.b if pair else None), "B: " + source_label(pair.b if pair else None, "source B")),
            (fused_bgr if fused_bgr is not None else cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR),
             getattr(args, "fused_title", "FILM fused")),
        ]
        write_png(os.path.join(args.output, "grid", item.name + ".png"), grid_image(panels))


def _prepare_dirs(args, items: list[Item]) -> None:
    subs = ["Gray"] + (["Color"] if args.color else []) + (["grid"] if args.grid else [])
    for s in subs:
        for it in items:
            make_dirs(os.path.dirname(os.path.join(args.output, s, it.name + ".png")))


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
) -> int:
    """Fuse every pair of one source (``a`` + ``b`` folders, a ``pairs`` tree, or an ``h5`` file) and write what
    the official test.py writes: ``output/Gray/<name>.png`` (+ ``Color/``, ``grid/``). Returns the pair count.
    Every problem is found before any output folder is made; each PNG is written atomically."""
    if sum(x is not None for x in (a, pairs, h5)) != 1:
        raise FilmError("give exactly one source: a (with b), pairs, or h5")
    opts = FuseOptions(output=output, checkpoint=checkpoint, backend=backend, device=device, a=a, b=b, pairs=pairs,
                       h5=h5, text=text, random_text=random_text, color=color, grid=grid, batch_size=batch_size,
                       fast=fast, precision=precision)
    return _fuse(opts)


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


def _fuse(args: FuseOptions) -> int:
    from film.api import load_fuser
    from film.backends.registry import check_name, default_backend

    if args.backend is None:  # as load_fuser: an exported model runs with onnxruntime
        args.backend = default_backend(args.checkpoint)
    check_name(args.backend)
    if args.batch_size < 1:
        raise FilmError("--batch-size must be at least 1")
    if args.text and args.random_text:
        raise FilmError("--text and --random-text exclude each other")
    # inputs that are not there are named before the network loads (seconds to minutes), not after
    for flag, path, is_file in (("--a", args.a, False), ("--b", args.b, False), ("--pairs", args.pairs, False),
                                ("--text", args.text, False), ("--h5", args.h5, True)):
        if path is not None and not (os.path.isfile(path) if is_file else os.path.isdir(path)):
            raise FilmError(f"{flag} {path}: no such {'H5 file' if is_file else 'folder'}")
    fuser = load_fuser(
        args.checkpoint,
        backend=args.backend,
        device=args.device,
        fast=args.fast,
        precision=args.precision,
    )
    kind = weights_kind(fuser)
    args.fused_title = FUSED_TITLE[kind]
    if kind:
        print(f"film fuse: {WEIGHTS_NOTICE[kind]}", file=sys.stderr, flush=True)
    items = collect(args, fuser.cfg.text_dim)
    if not items:
        raise FilmError("no image pairs to fuse")
    from film.api import check_memory

    # Batch same-size pairs with the same text length; keep the input order for output.
    groups: dict[tuple, list[Item]] = {}
    for it in items:
        groups.setdefault((it.a.shape, it.text.shape), []).append(it)
    batches = []
    for group in groups.values():
        for i in range(0, len(group), args.batch_size):
            batches.append(group[i : i + args.batch_size])
    # whole or nothing: the largest forward (batch x pixels) is checked before any output folder is made
    biggest = max(batches, key=lambda bt: len(bt) * bt[0].a.size)
    check_memory(fuser.impl, len(biggest), *biggest[0].a.shape[-2:], str(fuser.device))
    _prepare_dirs(args, items)
    from tqdm import tqdm

    with tqdm(
        total=len(items), desc=f"fuse [{args.backend}]", unit="pair", file=sys.stderr, disable=None
    ) as bar:
        for k, batch in enumerate(batches):
            a = np.stack([it.a for it in batch])
            b = np.stack([it.b for it in batch])
            t = np.stack([it.text for it in batch])
            try:
                fused = fuser.fuse(a, b, t)
            except FilmError as e:  # memory taken by another program since the check: say what was written
                left = [it.name for bt in batches[k:] for it in bt]
                raise FilmError(f"{e} -- stopped after writing {len(items) - len(left)} of {len(items)} pairs under "
                                f"{args.output}; not written: {', '.join(left[:5])}{' ...' if len(left) > 5 else ''}"
                                ) from None
            for it, f in zip(batch, fused):
                save_outputs(args, it, f)
            bar.update(len(batch))
    return len(items)
