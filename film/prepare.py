"""``film prepare``: VLF dataset layout (or two folders + text features) -> H5, as ``data_process.py``.

H5 layout (what the official ``H5ImageTextDataset`` reads): groups ``imageA``, ``imageB``, ``text``,
one dataset per sample name; images (1, H, W) float32 in [0, 1] read as ``image_read_cv2(.., 'GRAY')
/ 255``; text exactly as stored in the .npy (e.g. (1, 149, 768)).

Written to a temporary file and renamed only when every sample succeeded: a problem anywhere leaves
no output, and the message lists every problem found, with file names.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import cv2
import numpy as np

from film.common.atomic import atomic_path, make_dirs
from film.common.images import list_images, read_gray
from film.common.init import random_text_for
from film.common.spec import OFFICIAL
from film.common.textfeat import check_text, read_npy
from film.errors import FilmError

# A and B folders per task, as in the official data_process.py. The official MFF *training* branch
# reads MRI/CT folders (a copy-paste bug from MIF: it cannot work on the VLF MFF layout); we use
# NEAR/FAR for every MFF split.
TASK_FOLDERS = {"IVF": ("IR", "VI"), "MIF": ("MRI", "T"), "MEF": ("OVER", "UNDER"), "MFF": ("NEAR", "FAR")}
SMALL_LANDSCAPE = (384, 288)  # cv2 dsize (width, height) for h < w
SMALL_PORTRAIT = (288, 384)  # resized to 288 wide x 384 tall, then transposed to 288x384 (official)


def small_resize(img: np.ndarray) -> np.ndarray:
    """The official 'small' training resize: landscape -> 384x288; portrait -> 288x384 then transposed."""
    h, w = img.shape
    if h < w:
        return cv2.resize(img, SMALL_LANDSCAPE)
    return cv2.resize(img, SMALL_PORTRAIT).T


def _names_from_list(list_file: str) -> list[str]:
    if not os.path.isfile(list_file):
        raise FilmError(f"{list_file}: split list not found")
    try:
        with open(list_file, encoding="utf-8") as f:
            lines = [ln.strip() for ln in f.readlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise FilmError(f"{list_file}: unreadable ({e})") from None
    names = [ln.split(".")[0] for ln in lines if ln]  # official: name.split('.')[0]
    if not names:
        raise FilmError(f"{list_file}: empty split list")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FilmError(f"{list_file}: duplicate sample names: {', '.join(dup[:10])}")
    return names


def _find(folder: str, name: str) -> str | None:
    p = os.path.join(folder, name + ".png")
    if os.path.isfile(p):
        return p
    imgs = list_images(folder) if os.path.isdir(folder) else {}
    return imgs.get(name)


RANDOM_TEXT = "<random-text>"  # a sample's text source: seeded synthetic features (film.common.init.random_text_for)


def patches(a: np.ndarray, b: np.ndarray, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Non-overlapping size x size tiles of a pair, row by row (the right and bottom remainders dropped)."""
    h, w = a.shape
    return [(a[y : y + size, x : x + size], b[y : y + size, x : x + size])
            for y in range(0, h - size + 1, size) for x in range(0, w - size + 1, size)]


def build_h5(
    out_path: str, samples: list[tuple[str, str | None, str | None, str | None]], small: bool,
    patch: int | None = None,
) -> int:
    """samples: (name, path A, path B, path text or RANDOM_TEXT). Writes atomically; raises listing every
    problem. ``patch``: each pair cut into patch x patch tiles (``<name>_<k>``, the pair's text for each)."""
    import h5py

    problems: list[str] = []
    for name, pa, pb, pt in samples:
        for what, p in (("A image", pa), ("B image", pb), ("text features", pt)):
            if p is None:
                problems.append(f"{name}: missing {what}")
    if problems:
        raise FilmError(
            "cannot build the H5:\n  "
            + "\n  ".join(problems[:50])
            + (f"\n  ... {len(problems) - 50} more" if len(problems) > 50 else "")
        )
    from tqdm import tqdm

    written = 0
    with atomic_path(out_path) as tmp:
        with h5py.File(tmp, "w") as h5:
            ga, gb, gt = h5.create_group("imageA"), h5.create_group("imageB"), h5.create_group("text")
            for name, pa, pb, pt in tqdm(samples, desc="prepare", unit="pair", file=sys.stderr, disable=None):
                try:
                    a, b = read_gray(pa), read_gray(pb)
                    if a.shape != b.shape:
                        raise FilmError(
                            f"A is {a.shape[1]}x{a.shape[0]} but B is {b.shape[1]}x{b.shape[0]} ({pa}, {pb})"
                        )
                    if small:
                        a, b = small_resize(a), small_resize(b)
                    t = random_text_for(name)[None] if pt == RANDOM_TEXT else _load_npy(pt)
                    tiles = [(name, a, b)] if not patch else [
                        (f"{name}_{k:03d}", ta, tb) for k, (ta, tb) in enumerate(patches(a, b, patch))]
                    if not tiles:
                        raise FilmError(f"{a.shape[1]}x{a.shape[0]} is smaller than --patch {patch}")
                except FilmError as e:
                    problems.append(f"{name}: {e}")
                    continue
                for key, ta, tb in tiles:
                    ga.create_dataset(key, data=ta[None, ...] / 255.0)
                    gb.create_dataset(key, data=tb[None, ...] / 255.0)
                    gt.create_dataset(key, data=t)
                    written += 1
        if problems:
            raise FilmError("cannot build the H5 (nothing was written):\n  " + "\n  ".join(problems[:50]))
    return written


def _load_npy(path: str) -> np.ndarray:
    """Text features as stored (the official H5 keeps the .npy's own shape), validated."""
    t = read_npy(path)
    check_text(t, OFFICIAL.text_dim, path)
    return t


@dataclass
class PrepareOptions:
    output: str
    vlf: str | None = None
    task: str | None = None
    dataset: str | None = None
    split: str | None = None
    small: bool = False
    a: str | None = None
    b: str | None = None
    text: str | None = None
    name: str | None = None
    random_text: bool = False  # own-data mode: seeded synthetic text per pair (as film fuse --random-text)
    patch: int | None = None  # cut each pair into patch x patch tiles


def prepare_h5(
    output: str,
    *,
    vlf: str | None = None,
    task: str | None = None,
    dataset: str | None = None,
    split: str | None = None,
    small: bool = False,
    a: str | None = None,
    b: str | None = None,
    text: str | None = None,
    name: str | None = None,
    random_text: bool = False,
    patch: int | None = None,
) -> tuple[int, str]:
    """Build the H5 that the official ``H5ImageTextDataset`` opens: from the VLF layout (``vlf``, ``task``,
    ``dataset``, ``split``; ``small`` = the official training resize), or from your own ``a``/``b`` image
    folders and a ``text`` folder of <name>.npy (or ``random_text``: seeded synthetic features per pair, as
    ``film fuse --random-text``). ``patch``: each pair cut into non-overlapping patch x patch tiles (for
    training on a CPU). Returns (samples, path of OUTPUT/<name>_<split>.h5)."""
    return _prepare(PrepareOptions(output, vlf, task, dataset, split, small, a, b, text, name, random_text, patch))


def _prepare(args: PrepareOptions) -> tuple[int, str]:
    if args.vlf:
        for opt in ("task", "dataset", "split"):
            if not getattr(args, opt):
                raise FilmError(f"--vlf needs --{opt}")
        if args.a or args.b or args.text or args.random_text:
            raise FilmError("use either --vlf or --a/--b/--text (or --random-text), not both")
        fa, fb = TASK_FOLDERS[args.task]
        img_root = os.path.join(args.vlf, "Image", args.task, args.dataset)
        text_root = os.path.join(args.vlf, "TextFeature", args.task, args.dataset)
        for d in (img_root, os.path.join(img_root, fa), os.path.join(img_root, fb), text_root):
            if not os.path.isdir(d):
                raise FilmError(
                    f"{d}: folder not found (expected the VLF layout Image/<task>/<dataset>/{{{fa},{fb}}}, TextFeature/<task>/<dataset>)"
                )
        names = _names_from_list(os.path.join(img_root, args.split + ".txt"))
        small = args.small and args.split == "train"
        if args.small and args.task == "MIF":
            print(
                "film prepare: note: the official script has no 'small' resize for MIF; images are kept at full size",
                file=sys.stderr,
            )
            small = False
        if args.small and args.split != "train":
            print(
                "film prepare: note: --small applies to the train split only (as in the official script)",
                file=sys.stderr,
            )
        samples = []
        for n in names:
            tp = os.path.join(text_root, n + ".npy")
            samples.append(
                (
                    n,
                    _find(os.path.join(img_root, fa), n),
                    _find(os.path.join(img_root, fb), n),
                    tp if os.path.isfile(tp) else None,
                )
            )
        out_name = f"{args.dataset}_{args.split}.h5"
    else:
        if args.text and args.random_text:
            raise FilmError("--text and --random-text exclude each other")
        if not (args.a and args.b and (args.text or args.random_text)):
            raise FilmError("give --vlf ROOT --task --dataset --split, or --a DIR --b DIR and --text DIR (or "
                            "--random-text)")
        for flag, d in (("--a", args.a), ("--b", args.b), ("--text", args.text)):
            if d is not None and not os.path.isdir(d):
                raise FilmError(f"{flag} {d}: no such folder")
        a, b = list_images(args.a), list_images(args.b)
        names = sorted(set(a) | set(b))
        samples = []
        for n in names:
            if args.random_text:
                samples.append((n, a.get(n), b.get(n), RANDOM_TEXT))
                continue
            tp = os.path.join(args.text, n + ".npy")
            samples.append((n, a.get(n), b.get(n), tp if os.path.isfile(tp) else None))
        small = args.small
        name = args.name or os.path.basename(os.path.dirname(os.path.abspath(args.a))) or "pairs"
        out_name = f"{name}_{args.split}.h5" if args.split else f"{name}.h5"
    make_dirs(args.output)
    out = os.path.join(args.output, out_name)
    if args.patch is not None and args.patch < 8:
        raise FilmError(f"--patch {args.patch}: give a tile size of at least 8 pixels")
    return build_h5(out, samples, small, args.patch), out
