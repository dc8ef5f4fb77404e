"""Image I/O exactly as the official code does it, plus pair discovery and safe saving.

``read_gray`` is the official ``image_read_cv2(path, 'GRAY')``: ``cv2.imread`` (8-bit BGR, palettes
expanded), float32, BGR->GRAY, rounded; 16-bit images and images with alpha are refused instead of being
squashed or flattened silently (``read_bgr``). ``read_gray01`` is the same divided by 255, what
``Fuser.fuse`` takes. ``to_uint8`` is the
official ``test.py`` saving step (per-image min-max stretch, x255, truncation to uint8).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from film.common.atomic import atomic_write_bytes
from film.errors import FilmError

# OpenCV's own logger would print "[ WARN:0@7.287] ... imread_ ... PNG input buffer is incomplete" before film's
# one-line message about the same file: film reports unreadable images itself
cv2.setLogLevel(0)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Folder names of the A and B sources, per task, as the VLF dataset and the official scripts use them.
AB_FOLDERS = [
    ("ir", "vi"),
    ("IR", "VI"),
    ("ir", "vis"),
    ("MRI", "CT"),
    ("MRI", "PET"),
    ("MRI", "SPECT"),
    ("MRI", "T"),
    ("over", "under"),
    ("OVER", "UNDER"),
    ("near", "far"),
    ("NEAR", "FAR"),
    ("A", "B"),
    ("a", "b"),
]


def _imread(path: str, flags: int) -> np.ndarray:
    if not os.path.isfile(path):
        raise FilmError(f"{path}: no such image file")
    if os.path.getsize(path) == 0:
        raise FilmError(f"{path}: empty file, not an image")
    # np.fromfile + imdecode: works for non-ASCII paths, and never prints libpng warnings as errors.
    data = np.fromfile(path, dtype=np.uint8)
    try:
        img = cv2.imdecode(data, flags)
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        raise FilmError(f"{path}: not a readable image (unsupported or corrupt file)")
    return img


def read_bgr(path: str) -> np.ndarray:
    """8-bit BGR HxWx3 as ``cv2.imread(path)`` returns it, for 8-bit images without alpha (grey, colour,
    palette). Refused with one line: more than 8 bits per channel (``cv2.imread`` would squash a 16-bit
    thermal or medical image to 8 bits without a word: data loss; the windowing is the user's choice) and an
    alpha channel (``cv2.imread`` would drop it: transparent areas would be fused as whatever colour they hold)."""
    raw = _imread(path, cv2.IMREAD_UNCHANGED)
    if raw.dtype != np.uint8:
        bits = {np.dtype(np.uint16): "16-bit", np.dtype(np.float32): "32-bit float"}.get(raw.dtype, str(raw.dtype))
        raise FilmError(
            f"{path}: a {bits} image; FILM reads 8-bit images (as the official code), and squashing it to 8 bits "
            "here would lose data: convert it to 8 bits with the windowing your data needs, e.g. "
            "cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype('uint8')"
        )
    if raw.ndim == 3 and raw.shape[2] == 4:
        raise FilmError(
            f"{path}: has an alpha channel (transparency); FILM fuses opaque images: save it without alpha "
            "(e.g. cv2.imwrite(out, cv2.imread(path)))"
        )
    return _imread(path, cv2.IMREAD_COLOR)


def read_gray(path: str) -> np.ndarray:
    """Official ``image_read_cv2(path, 'GRAY')``: float32 HxW with integer values 0..255."""
    return np.round(cv2.cvtColor(read_bgr(path).astype("float32"), cv2.COLOR_BGR2GRAY))


def read_gray01(path: str) -> np.ndarray:
    """``read_gray(path) / 255``: float32 HxW in [0, 1], the official network input (``Fuser.fuse`` takes it)."""
    return read_gray(path) / np.float32(255.0)


def read_ycrcb(path: str) -> np.ndarray:
    """Official ``image_read_cv2(path, 'YCrCb')``: float32 HxWx3 (Y, Cr, Cb), values 0..255."""
    return cv2.cvtColor(read_bgr(path).astype("float32"), cv2.COLOR_BGR2YCrCb)


def is_color(path: str) -> bool:
    """True when the image has real colour (not gray stored as three equal channels)."""
    bgr = read_bgr(path)
    return not (np.array_equal(bgr[..., 0], bgr[..., 1]) and np.array_equal(bgr[..., 1], bgr[..., 2]))


def to_uint8(fused: np.ndarray) -> np.ndarray:
    """Official test.py: (F - min) / (max - min) * 255 in float32, then astype uint8 (truncation).

    A constant image (max == min) would be NaN in the official code; here it becomes all zeros.
    """
    f = np.asarray(fused, dtype=np.float32)
    mn, mx = f.min(), f.max()
    if not mx > mn:
        return np.zeros(f.shape, dtype=np.uint8)
    return (((f - mn) / (mx - mn)) * np.float32(255)).astype(np.uint8)


def write_png(path: str, img: np.ndarray) -> None:
    """Lossless PNG, atomically (temp file + rename)."""
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise FilmError(f"{path}: could not encode PNG")
    atomic_write_bytes(path, buf.tobytes())


@dataclass(frozen=True)
class Pair:
    name: str  # file stem, the sample name used for outputs and text features
    a: str
    b: str


def list_images(folder: str) -> dict[str, str]:
    """{stem: path} of the images in ``folder``; raises on a missing/empty folder or duplicate stems."""
    if not os.path.isdir(folder):
        raise FilmError(f"{folder}: no such folder")
    out: dict[str, str] = {}
    for fn in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(fn)
        if ext.lower() not in IMAGE_EXTS or fn.startswith("."):
            continue
        if stem in out:
            raise FilmError(f"{folder}: two images named {stem!r} ({os.path.basename(out[stem])}, {fn})")
        out[stem] = os.path.join(folder, fn)
    if not out:
        raise FilmError(f"{folder}: no images ({', '.join(IMAGE_EXTS)}) in this folder")
    return out


def match_pairs(dir_a: str, dir_b: str) -> list[Pair]:
    """Pairs by file stem; every image must have a partner (the message lists those that do not)."""
    a, b = list_images(dir_a), list_images(dir_b)
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        parts = []
        if only_a:
            parts.append(f"only in {dir_a}: {', '.join(only_a[:10])}" + (" ..." if len(only_a) > 10 else ""))
        if only_b:
            parts.append(f"only in {dir_b}: {', '.join(only_b[:10])}" + (" ..." if len(only_b) > 10 else ""))
        raise FilmError("images without a partner — " + "; ".join(parts))
    return [Pair(k, a[k], b[k]) for k in sorted(a)]


def find_ab_folders(root: str) -> tuple[str, str]:
    """The A and B sub-folders of a dataset folder (ir/vi, MRI/CT, over/under, near/far, A/B, ...)."""
    if not os.path.isdir(root):
        raise FilmError(f"{root}: no such folder")
    subs = set(os.listdir(root))
    for a, b in AB_FOLDERS:
        if a in subs and b in subs:
            return os.path.join(root, a), os.path.join(root, b)
    raise FilmError(
        f"{root}: expected two sub-folders of paired images such as ir/vi, MRI/CT, over/under, near/far or A/B; "
        f"found: {', '.join(sorted(subs)) or 'nothing'}"
    )


def find_datasets(root: str) -> list[str]:
    """Every folder under ``root`` (itself included) that holds an A/B pair of sub-folders."""
    found = []
    for cur, dirs, _files in os.walk(root):
        dirs.sort()
        try:
            find_ab_folders(cur)
        except FilmError:
            continue
        found.append(cur)
        dirs[:] = []
    return found


def load_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """Both images of a pair as official GRAY / 255 (float32 in [0, 1]); sizes must match."""
    a, b = read_gray(pair.a), read_gray(pair.b)
    if a.shape != b.shape:
        raise FilmError(
            f"{pair.name}: A is {a.shape[1]}x{a.shape[0]} but B is {b.shape[1]}x{b.shape[0]} ({pair.a}, {pair.b})"
        )
    return a / np.float32(255.0), b / np.float32(255.0)


def samples_root() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(__file__)), "samples")
