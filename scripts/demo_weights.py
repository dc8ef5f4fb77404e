"""The demo weights recipe (``make demo-weights``; docs/training.md, "Demo weights"): a build script, not part
of the film package.

Not the official FILM: a FILM trained on 2 CPU cores (one epoch in torch and in Jittor side by side, about an
hour, then a second Jittor epoch, then the CONTINUATIONS runs, each from the last one's weights, the last three
on the MEF pairs alone with FINISH's loss weights: 1,880 steps shipped) on the public pairs of
``../shared/data/fusion_samples``
(all four tasks; credits in its SOURCES.md) minus the pairs shipped in ``film/samples`` (held out: the demo is
judged on them), with **seeded synthetic text features** (the VLF features are not available here). Enough to
show what the pipeline does on real images; not a model to publish results with.

    python scripts/demo_weights.py all --data DATA      # everything below (make demo-weights)
    python scripts/demo_weights.py prepare --data DATA -o demo_train.h5
    film train --backend torch|jittor --h5 demo_train.h5 <RECIPE_FLAGS> --out exp_demo
    python scripts/demo_weights.py judge torch=exp_demo/<run>/model/ckpt_1.pth jittor=<run>/model/ckpt_1.pkl@jittor
    python scripts/demo_weights.py export exp_demo/<run> -o film/weights/demo.safetensors --manifest demo_train.h5.json
    python scripts/demo_weights.py task MFF --data DATA --init TRUNK   # one task's weights (make demo-task-weights)

The task weights (film/weights/demo-<TASK>.safetensors, float16): the trunk (the recipe's first 1,640 steps,
all tasks) trained on for one task (TASK_STAGES); MEF's are demo.safetensors (the MEF finish); MFF's train on
synthetic multi-focus pairs whose truth is the loss's target (prepare_mff).

DATA: a folder of public pairs in film's layout (task/dataset/{A,B} sub-folders), e.g. ../shared/data/fusion_samples
beside a clone of this repository.

Every random choice (crops, flips, text features, initial weights, data order) is seeded, so both
frameworks train on the same batches from the same weights.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys

import numpy as np

from film.common.images import find_ab_folders, find_datasets, load_pair, match_pairs, samples_root
from film.common.init import SYNTHETIC_TEXT_LEN, random_text
from film.errors import FilmError

CROP = 128  # pixels: the Restormer blocks' cost follows the crop; the 288x384 token grid is paid at any size
CROPS_PER_PAIR = 16  # random crops (with a random flip / 90-degree turn each) of every training pair
SEED = 20261201
TEXT_SEED0 = 1000  # pair i's synthetic text features: random_text(seed=TEXT_SEED0 + i), the same for its crops

# The film train flags of the recipe (the official loss and Adam; a higher learning rate than the official 1e-5
# because the run starts from random weights and has one epoch of ~160 steps instead of ~100,000; no step decay
# inside it). A step of 4 crops costs ~10-12 s on 2 CPU cores (the cross-attention runs on the fixed 288x384
# token grid whatever the crop), so one epoch is about an hour with both frameworks side by side, one core each.
RECIPE = {"batch_size": 4, "epochs": 1, "lr": 2e-4, "step_size": 1000, "gamma": 0.6, "seed": 0,
          "grad_weight": 20.0, "ssim_weight": 0.0}
SHIPPED_EPOCHS = 2  # the Jittor run continued (--resume) to this many epochs, every core
# The last stages reweight the official loss's own terms: its LpLssim term to both sources (official weight 0) at
# 0.05 and the Sobel-gradient term at 10 instead of 20, at lr 1e-4. With max(A, B) as the intensity target and
# the gradient term at 20, MEF's fused image follows the over-exposed source and its VIFF stays below the
# average of A and B, even on the pairs trained on (docs/training.md, "Why MEF's VIFF stays below ...").
FINISH = {"--lr": "1e-4", "--ssim-weight": "0.05", "--grad-weight": "10"}
# After the SHIPPED_EPOCHS run, Jittor runs, each started from the previous one's last weights (--init: a fresh
# Adam state, the same seed and data order): (epochs, the tasks whose pairs it trains on (None: all), flags
# replacing the recipe's). The last one's weights are shipped.
CONTINUATIONS = ((2, None, {}), (6, None, {}), (4, ("MEF",), FINISH), (4, ("MEF",), FINISH), (4, ("MEF",), FINISH))
TRUNK = 2  # the first CONTINUATIONS stages (1,640 steps in all): the trunk every task's weights start from
MFF_SYNTHETIC = "synthetic multi-focus"  # a stage's data: prepare_mff's pairs instead of the public pairs
# Per-task weights (film/weights/demo-TASK.safetensors, float16): MEF's are the weights above (the trunk, then the
# MEF finish); the others are the trunk trained on for their task alone, each stage from the trunk's weights
# (--init, a fresh Adam state), with the official loss at lr 1e-4 (MFF: aimed at the synthetic pairs' truth).
TASK_STAGES = {
    "IVF": ((1, ("IVF",), {"--lr": "1e-4"}),),
    "MIF": ((1, ("MIF",), {"--lr": "1e-4"}),),
    "MFF": ((1, MFF_SYNTHETIC, {"--lr": "1e-4"}),),
}
RECIPE_FLAGS = [f for k, v in RECIPE.items() for f in (f"--{k.replace('_', '-')}", str(v))] + ["--init", "random"]


def held_out() -> set[tuple[str, str]]:
    """(dataset folder relative to the tasks root, pair name) of every pair shipped in film/samples."""
    out = set()
    root = samples_root()
    for ds in find_datasets(root):
        da, db = find_ab_folders(ds)
        for p in match_pairs(da, db):
            out.add((os.path.relpath(ds, root), p.name))
    return out


def training_pairs(data: str, tasks: tuple[str, ...] | None = None) -> list:
    """[(rel dataset, Pair)] of the data folder, the held-out pairs left out, in a fixed order; ``tasks``: only
    the datasets under these task folders (IVF, MEF, MFF, MIF)."""
    skip = held_out()
    pairs = []
    for ds in find_datasets(data):
        rel = os.path.relpath(ds, data)
        if tasks and rel.split(os.sep)[0] not in tasks:
            continue
        da, db = find_ab_folders(ds)
        pairs += [(rel, p) for p in match_pairs(da, db) if (rel, p.name) not in skip]
    if not pairs:
        only = f" of {', '.join(tasks)}" if tasks else ""
        raise FilmError(f"{data}: no training pairs{only} (after leaving out the shipped samples)")
    return pairs


def _augment(x: np.ndarray, k: int, flip: bool) -> np.ndarray:
    x = np.rot90(x, k)
    return np.ascontiguousarray(x[:, ::-1] if flip else x)


def prepare(data: str, out: str, tasks: tuple[str, ...] | None = None) -> dict:
    """Write the training H5 (film prepare's layout: imageA, imageB, text groups) and its manifest next to it
    (``out + ".json"``: the recipe's constants and every pair with its images' SHA-256); returns the manifest.
    ``tasks``: only those tasks' pairs (numbered, cropped and given text from the seeds as if alone)."""
    import h5py

    from film.common.atomic import atomic_path

    rng = np.random.default_rng(SEED)
    pairs = training_pairs(data, tasks)
    manifest = {"crop": CROP, "crops_per_pair": CROPS_PER_PAIR, "seed": SEED, "text_seed0": TEXT_SEED0, "pairs": []}
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        ga, gb, gt = (f.create_group(g) for g in ("imageA", "imageB", "text"))
        for i, (rel, p) in enumerate(pairs):
            a, b = load_pair(p)
            h, w = a.shape
            if min(h, w) < CROP:
                raise FilmError(f"{p.a}: {w}x{h}, smaller than the {CROP}-pixel crops")
            text = random_text(SYNTHETIC_TEXT_LEN, 768, seed=TEXT_SEED0 + i)[None]
            manifest["pairs"].append({"dataset": rel, "name": p.name,
                                      "sha256_a": _sha(p.a), "sha256_b": _sha(p.b)})
            for c in range(CROPS_PER_PAIR):
                y, x = int(rng.integers(0, h - CROP + 1)), int(rng.integers(0, w - CROP + 1))
                k, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
                name = f"{rel.replace(os.sep, '_')}_{p.name}_{c:02d}"
                for g, img in ((ga, a), (gb, b)):
                    g.create_dataset(name, data=_augment(img[y : y + CROP, x : x + CROP], k, flip)[None])
                gt.create_dataset(name, data=text)
    from film.common.atomic import atomic_write_bytes

    atomic_write_bytes(out + ".json", json.dumps(manifest, indent=1).encode())
    return manifest


# Synthetic multi-focus pairs (the demo-MFF data): a sharp image S, a random region R with a soft edge; A = S in
# R and S blurred outside, B the other way round, the truth S kept as the H5's ``target`` (film train then aims its
# loss at the truth: film/common/loss.py). Sharp images: scikit-image's bundled photographs (a film dependency;
# public domain or CC0, skimage/data/README.txt) and the sharp sources of the training pairs (visible, MRI,
# over-exposed); those of the held-out shipped samples and SKIMAGE_HELD_OUT are left out (the MFF judge uses them).
SKIMAGE_TRAIN = ("brick.png", "cell.png", "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg",
                 "ihc.png", "moon.png", "motorcycle_left.png", "page.png", "retina.jpg", "text.png")
SKIMAGE_HELD_OUT = ("astronaut.png", "camera.png", "chelsea.png", "rocket.jpg")
SHARP_SOURCES = {"IVF": "B", "MIF": "A", "MEF": "A"}  # which image of a pair is sharp: visible, MRI, over-exposed
MFF_SEED = 20261203
MFF_CROPS = 16  # synthetic pairs per sharp image, each from its own crop, region and blurs
BLUR_PAD = 16  # pixels around a crop that its blur sees (no edge effect inside the crop)


def skimage_gray(name: str) -> np.ndarray:
    """A photograph bundled with scikit-image (its file name in skimage/data) as official GRAY in [0, 1]."""
    import skimage

    from film.common.images import read_gray01

    return read_gray01(os.path.join(os.path.dirname(skimage.__file__), "data", name))


def skimage_images(names: tuple[str, ...]) -> list[tuple[str, np.ndarray]]:
    """(label, image) of scikit-image's bundled photographs ``names``."""
    return [(f"skimage_{os.path.splitext(n)[0]}", skimage_gray(n)) for n in names]


def sharp_source(rel: str, pair) -> tuple[str, np.ndarray]:
    """(label, the sharp image) of a pair of dataset ``rel`` (task/dataset) whose task is in SHARP_SOURCES."""
    a, b = load_pair(pair)
    return f"{rel.replace(os.sep, '_')}_{pair.name}", a if SHARP_SOURCES[rel.split(os.sep)[0]] == "A" else b


def sharp_images(data: str | None) -> list[tuple[str, np.ndarray]]:
    """(label, sharp gray image) for the synthetic multi-focus training pairs."""
    out = skimage_images(SKIMAGE_TRAIN)
    if data:
        out += [sharp_source(rel, p) for rel, p in training_pairs(data, tuple(SHARP_SOURCES))]
    return out


def focus_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random in-focus region in [0, 1] with a soft edge: a half-plane, an ellipse or a smooth blob."""
    from scipy.ndimage import gaussian_filter

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(0, 3)
    if kind == 0:
        th = rng.uniform(0, 2 * np.pi)
        m = (np.cos(th) * (xx - rng.uniform(0.25, 0.75) * w) + np.sin(th) * (yy - rng.uniform(0.25, 0.75) * h)) > 0
    elif kind == 1:
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        ry, rx = rng.uniform(0.2, 0.5) * h, rng.uniform(0.2, 0.5) * w
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    else:
        field = gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), rng.uniform(6, 16))
        m = field > np.median(field)
    m = m.astype(np.float32)
    soft = rng.uniform(0, 2.5)
    return np.clip(gaussian_filter(m, soft), 0, 1) if soft > 0.3 else m


def defocus(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """A random defocus blur: Gaussian (sigma 1-4) or a disk (radius 2-5), edges reflected."""
    import cv2

    if rng.random() < 0.7:
        return cv2.GaussianBlur(x, (0, 0), float(rng.uniform(1.0, 4.0)), borderType=cv2.BORDER_REFLECT)
    r = int(rng.integers(2, 6))
    k = (np.hypot(*np.mgrid[-r : r + 1, -r : r + 1]) <= r + 0.5).astype(np.float32)
    return cv2.filter2D(x, -1, k / k.sum(), borderType=cv2.BORDER_REFLECT)


def multi_focus_pair(rng: np.random.Generator, sharp: np.ndarray, mask: np.ndarray | None = None):
    """(A, B, truth): A sharp where the mask is 1 and defocused elsewhere, B the other way round."""
    m = focus_mask(rng, *sharp.shape) if mask is None else mask
    blur_a, blur_b = defocus(rng, sharp), defocus(rng, sharp)
    a = m * sharp + (1 - m) * blur_a
    b = (1 - m) * sharp + m * blur_b
    return a.astype(np.float32), b.astype(np.float32), sharp


def prepare_mff(data: str | None, out: str) -> dict:
    """The synthetic multi-focus training H5 (imageA, imageB, text and the ``target`` group: the sharp crop) and
    its manifest; MFF_CROPS pairs of CROP x CROP per sharp image, each with its own crop, turn, region and blurs."""
    import h5py

    from film.common.atomic import atomic_path, atomic_write_bytes

    rng = np.random.default_rng(MFF_SEED)
    images = sharp_images(data)
    manifest = {"crop": CROP, "crops_per_image": MFF_CROPS, "seed": MFF_SEED, "text_seed0": TEXT_SEED0,
                "images": [label for label, _ in images]}
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        ga, gb, gt, gg = (f.create_group(g) for g in ("imageA", "imageB", "text", "target"))
        for i, (label, img) in enumerate(images):
            text = random_text(SYNTHETIC_TEXT_LEN, 768, seed=TEXT_SEED0 + i)[None]
            h, w = img.shape
            size = CROP + 2 * BLUR_PAD
            if min(h, w) < size:
                raise FilmError(f"{label}: {w}x{h}, smaller than {size} pixels")
            for c in range(MFF_CROPS):
                y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
                k, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
                patch = _augment(img[y : y + size, x : x + size], k, flip)
                a, b, g = multi_focus_pair(rng, patch)
                if rng.random() < 0.5:
                    a, b = b, a
                inner = np.s_[BLUR_PAD : BLUR_PAD + CROP, BLUR_PAD : BLUR_PAD + CROP]
                name = f"{label}_{c:02d}"
                for grp, im in ((ga, a), (gb, b), (gg, g)):
                    grp.create_dataset(name, data=np.ascontiguousarray(im[inner])[None])
                gt.create_dataset(name, data=text)
    atomic_write_bytes(out + ".json", json.dumps(manifest, indent=1).encode())
    return manifest


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def export(run_dir: str, out: str, data_manifest: str | None = None, steps_before: int = 0,
           history: str | None = None, task: str | None = None, half: bool = False) -> str:
    """The run's last checkpoint as one .safetensors with the recipe in its metadata (film.load_fuser reads the
    FilmConfig back); ``steps_before``: steps of the run(s) its --init weights came from; ``task``: the task the
    weights are for; ``half``: stored as float16 (loaded back as float32; the cost: docs/training.md). Returns
    its SHA-256."""
    from film.common.checkpoint import load_checkpoint
    from film.common.training import latest_checkpoint, read_run_params

    params = read_run_params(run_dir)
    found = max((c for c in (latest_checkpoint(run_dir, e) for e in (".pth", ".pkl")) if c), key=lambda c: c[1],
                default=None)
    if found is None:
        raise FilmError(f"{run_dir}: no checkpoint to export")
    ck = load_checkpoint(found[0])
    steps = _steps(run_dir) + steps_before
    info = {
        "what": "FILM demo weights: not the official FILM; trained from seeded random weights on public image "
                "pairs with synthetic text features, for trying the pipeline (docs/training.md, Demo weights)",
        "framework": params.get("backend"), "steps": steps, "epochs": found[1],
        "recipe": {**{k: params.get(k) for k in RECIPE}, "epochs": found[1]}, "crop": CROP,
        "crops_per_pair": CROPS_PER_PAIR,
        "text": f"seeded synthetic features (random_text, seed {TEXT_SEED0} + pair index)",
    }
    if history:
        info["history"] = history
    info = _for_task(info, task, half)
    if data_manifest:
        with open(data_manifest) as f:
            manifest = json.load(f)
        info["data"] = manifest.get("pairs") or {"synthetic multi-focus pairs of": manifest["images"]}
    return _save_demo(out, ck, info, half)


def half_copy(src: str, out: str, task: str) -> str:
    """``src`` (demo weights exported by ``export``) stored in float16 as ``task``'s weights (its metadata says
    so). Returns the new file's SHA-256."""
    from film.common.checkpoint import load_checkpoint

    ck = load_checkpoint(src)
    return _save_demo(out, ck, _for_task(json.loads(ck.extras["film_demo"]), task, True), half=True)


def _for_task(info: dict, task: str | None, half: bool) -> dict:
    """The film_demo metadata ``info`` naming the task the weights are for and, in float16, their storage."""
    if task:
        info = {**info, "task": task}
    if half:
        info = {**info, "storage": "float16 (trained in float32)"}
    return info


def _save_demo(out: str, ck, info: dict, half: bool) -> str:
    """Write ``ck``'s weights (in float16 with ``half``) with ``info`` as their film_demo metadata; returns the
    file's SHA-256."""
    from film.common.checkpoint import save_checkpoint

    sd = {k: v.astype(np.float16) for k, v in ck.state_dict.items()} if half else ck.state_dict
    save_checkpoint(out, sd, {"film_demo": json.dumps(info)}, ck.cfg)
    return _sha(out)


def history(steps_before: int) -> str:
    """The metadata's account of the stages before the exported run (``steps_before``: their steps)."""
    first = f"a Jittor run of {SHIPPED_EPOCHS} epochs (the second after --resume)"
    more = ", then ".join(_describe(*stage) for stage in CONTINUATIONS)
    return f"{steps_before} steps before the last stage; in all: {first}, then {more}"


def _describe(epochs: int, tasks, flags: dict) -> str:
    if tasks == MFF_SYNTHETIC:
        only = " on the synthetic multi-focus pairs (their known truth as the loss's target)"
    else:
        only = f" on the {', '.join(tasks)} pairs only" if tasks else ""
    changed = f" with {' '.join(f'{k} {v}' for k, v in flags.items())}" if flags else ""
    runs = f"{epochs} epoch{'s' if epochs != 1 else ''}"
    return (f"a Jittor run of {runs}{only} started from the previous one's last weights (--init, a fresh Adam "
            f"state){changed}")


def stage_flags(epochs: int, init: str, flags: dict) -> list[str]:
    """The film train flags of a CONTINUATIONS stage: the recipe's, with its epochs, --init and ``flags``."""
    out = list(RECIPE_FLAGS)
    for k, v in {"--epochs": str(epochs), "--init": init, **flags}.items():
        if k in out:
            out[out.index(k) + 1] = v
        else:
            out += [k, v]
    return out


def _steps(run_dir: str) -> int:
    from film.common.training import LOSS_RECORD

    try:
        with open(os.path.join(run_dir, LOSS_RECORD)) as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def judge(models: list[tuple], metrics: tuple[str, ...] | None = None, root: str | None = None,
          tasks: tuple[str, ...] | None = None) -> dict:
    """The twelve official metrics per task on the pairs of ``root`` (default: the held-out shipped samples,
    film/samples: not trained on; ``tasks``: only those tasks' pairs), for each (label, checkpoint, backend[,
    task]) in ``models`` (a model with a task scores that task's pairs only) and for the average and max rules.
    The models fuse with ``film fuse --random-text``'s features (seeded by the pair's name) and the official
    uint8 saving. Returns {"per_task": {task: {method: {metric: mean}}}, "mean": {method: {metric: mean over the
    tasks it scored}}}."""
    from film.api import load_fuser
    from film.common.images import read_gray, to_uint8
    from film.common.metrics import METRICS, baseline_images
    from film.common.metrics import evaluate as evaluate_images
    from film.common.pairs import collect_pairs

    metrics = tuple(metrics or METRICS)
    items = collect_pairs(pairs=root or samples_root(), random_text_seed0=0, text_dim=768)
    fusers = {m[0]: (load_fuser(m[1], backend=m[2], device="cpu"), m[3] if len(m) > 3 else None) for m in models}
    scores: dict[str, dict[str, list[dict]]] = {}
    import warnings

    # numpy's notice that a backend set flush-to-zero, and the max rule's SCD (0/0 where it equals one source):
    # neither says anything about the models; the table shows the nan
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.filterwarnings("ignore", message="The value of the smallest subnormal")
        for it in items:
            task = it.name.split(os.sep)[0]
            if tasks and task not in tasks:
                continue
            a, b = read_gray(it.pair.a), read_gray(it.pair.b)
            images = {label: to_uint8(f.fuse(it.a, it.b, it.text)).astype(np.float32)
                      for label, (f, only) in fusers.items() if only in (None, task)}
            images.update(baseline_images(a, b))
            for method, img in images.items():
                scores.setdefault(task, {}).setdefault(method, []).append(evaluate_images(img, a, b, metrics))
    per_task = {task: {m: {k: float(np.mean([r[k] for r in rows])) for k in metrics} for m, rows in by.items()}
                for task, by in scores.items()}
    methods = list(dict.fromkeys(m for by in per_task.values() for m in by))
    mean = {m: {k: float(np.mean([per_task[t][m][k] for t in per_task if m in per_task[t]])) for k in metrics}
            for m in methods}
    return {"per_task": per_task, "mean": mean, "pairs": [it.name for it in items]}


def mff_held_out_pairs(pairs_per_image: int = 2) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, A, B, truth) at full size, official GRAY in [0, 1]: synthetic multi-focus pairs of the sharp images
    never trained on (SKIMAGE_HELD_OUT and the sharp sources of the held-out shipped samples), each
    ``pairs_per_image`` times with its own region and blurs, all seeded."""
    rng = np.random.default_rng(MFF_SEED + 1)
    images = skimage_images(SKIMAGE_HELD_OUT)
    root = samples_root()
    for ds in find_datasets(root):
        rel = os.path.relpath(ds, root)
        if rel.split(os.sep)[0] in SHARP_SOURCES:
            images += [sharp_source(rel, p) for p in match_pairs(*find_ab_folders(ds))]
    out = []
    for label, img in images:
        for k in range(pairs_per_image):
            a, b, g = multi_focus_pair(rng, img)
            out.append((f"{label}_{k}", a, b, g))
    return out


def fitted_psnr(image: np.ndarray, truth: np.ndarray) -> float:
    """PSNR (peak 255) of ``image`` against ``truth`` (both 0..255) after the least-squares gain and offset that
    map the image onto the truth (the official saving step stretches every output to 0..255)."""
    x = image.astype(np.float64).ravel()
    y = truth.astype(np.float64).ravel()
    gain, offset = np.polyfit(x, y, 1)
    mse = float(np.mean((gain * x + offset - y) ** 2))
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def judge_mff(models: list[tuple[str, str, str]], pairs_per_image: int = 2) -> dict:
    """PSNR after a gain/offset fit against the known truth on the held-out synthetic multi-focus pairs, for each
    (label, checkpoint, backend) in ``models`` and for the average and max rules: {method: mean PSNR}, with the
    pairs' count and how many pairs each model beats both rules on."""
    from film.api import load_fuser
    from film.common.images import to_uint8
    from film.common.init import random_text_for

    fusers = {label: load_fuser(ck, backend=be, device="cpu") for label, ck, be in models}
    rows: dict[str, list[float]] = {}
    wins: dict[str, int] = {}
    pairs = mff_held_out_pairs(pairs_per_image)
    for name, a, b, g in pairs:
        a8, b8, g8 = (np.round(x * 255) for x in (a, b, g))  # the pair as 8-bit files would carry it
        scores = {"average of A and B": fitted_psnr(np.floor((a8 + b8) / 2 + 0.5), g8),
                  "max rule": fitted_psnr(np.maximum(a8, b8), g8)}
        for label, f in fusers.items():
            fused = f.fuse(a8 / 255, b8 / 255, random_text_for(name, f.cfg.text_dim))
            scores[label] = fitted_psnr(to_uint8(fused).astype(np.float64), g8)
            wins[label] = wins.get(label, 0) + (scores[label] > max(scores["average of A and B"], scores["max rule"]))
        for m, v in scores.items():
            rows.setdefault(m, []).append(v)
    return {"psnr": {m: float(np.mean(v)) for m, v in rows.items()}, "pairs": len(pairs), "beats_both": wins}


def half_cost(full: str, half: str, task: str, root: str | None = None) -> dict:
    """What float16 storage costs: the float32 checkpoint ``full`` against its float16 export ``half`` on the task's
    pairs of ``root`` (default film/samples), torch, the text of film fuse --random-text: the largest difference
    of the fused outputs and the share of equal uint8 pixels (worst pair)."""
    from film.api import load_fuser
    from film.common.images import to_uint8
    from film.common.pairs import collect_pairs

    f32, f16 = (load_fuser(c, backend="torch", device="cpu") for c in (full, half))
    worst_abs, worst_equal = 0.0, 1.0
    for it in collect_pairs(pairs=root or samples_root(), random_text_seed0=0, text_dim=768):
        if it.name.split(os.sep)[0] != task:
            continue
        x, y = (f.fuse(it.a, it.b, it.text) for f in (f32, f16))
        worst_abs = max(worst_abs, float(np.abs(x - y).max()))
        worst_equal = min(worst_equal, float((to_uint8(x) == to_uint8(y)).mean()))
    return {"max_abs": worst_abs, "uint8_equal_worst_pair": worst_equal}


def stripe_fingerprint(checkpoint: str, size: tuple[int, int] = (288, 384)) -> dict:
    """The faint vertical stripes of FILM's outputs, measured on a smooth synthetic pair of ``size`` (no stripe in
    the sources): the mean column-wise high-pass of the fused image in grey levels, and the correlation of its
    column profile with itself shifted by lags in token-grid columns. The official network cuts the flattened
    (32, 288, 384) token-grid map into runs of 256 values and weights each run by one 256-vector (the pooled
    cross-attention), so pixel (y, x) gets weight w[(128 y + x) mod 256]: a pattern that repeats every 128
    columns once neighbouring rows mix (docs/training.md, "The stripes")."""
    from scipy.ndimage import gaussian_filter, uniform_filter1d

    from film.api import load_fuser

    rng = np.random.default_rng(0)
    h, w = size
    base = gaussian_filter(rng.standard_normal((h, w)), 25)
    base = (base - base.min()) / (base.max() - base.min())
    a, b = (0.2 + 0.6 * base).astype(np.float32), (0.3 + 0.5 * base[::-1]).astype(np.float32)
    fused = load_fuser(checkpoint, backend="torch", device="cpu").fuse(a, b, random_text(seed=1)).astype(np.float64)
    hp = fused - uniform_filter1d(fused, 5, axis=1, mode="nearest")
    profile = hp.mean(axis=0)
    scale = w / 384  # token-grid columns -> image columns

    def corr(lag: int) -> float:
        k = int(round(lag * scale))
        return float(np.corrcoef(profile[:-k], profile[k:])[0, 1])

    return {"amplitude": float(np.abs(hp).mean() * 255), "lag 128": corr(128), "lag 64": corr(64),
            "lag 100": corr(100)}


def judge_table(result: dict, focus: tuple[str, ...] = ("Qabf", "VIFF")) -> str:
    """Markdown: Qabf and VIFF per task (a blank where a method did not score a task), then the twelve metrics'
    means over the tasks each method scored."""
    per_task, mean = result["per_task"], result["mean"]
    tasks, methods = sorted(per_task), list(mean)
    lines = ["| method | " + " | ".join(f"{t} {k}" for t in tasks for k in focus) + " |",
             "|---|" + "---|" * (len(tasks) * len(focus))]
    for m in methods:
        cells = [f"{per_task[t][m][k]:.3f}" if m in per_task[t] else "" for t in tasks for k in focus]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    keys = list(next(iter(mean.values())))
    lines += ["", "| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(f"{mean[m][k]:.3f}" for k in keys) + " |")
    return "\n".join(lines)


def run_all(work: str, data: str, output: str) -> int:
    """``make demo-weights``: prepare the crops, train the recipe in torch and in Jittor side by side (one core
    each, the same seed, init and data order), plot their curves, judge both on the held-out samples, continue
    the Jittor run for SHIPPED_EPOCHS epochs in all (every core), then train the CONTINUATIONS stages (each from the
    last one's weights), judge the last and export it to ``output``. Prints the tables and the new file's SHA-256
    (record it in tests/test_demo.py)."""
    import subprocess

    os.makedirs(work, exist_ok=True)
    h5 = os.path.join(work, "demo_train.h5")
    if not os.path.exists(h5):
        prepare(data, h5)
    film = [sys.executable, "-m", "film"]
    procs, runs = {}, {}
    with contextlib.ExitStack() as logs:
        for be in ("torch", "jittor"):
            out = os.path.join(work, be)
            if os.path.isdir(out):
                raise FilmError(f"{out} exists: remove it (or the whole {work}) to train again")
            log = logs.enter_context(open(os.path.join(work, f"train_{be}.log"), "w"))
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            procs[be] = subprocess.Popen(film + ["train", "--backend", be, "--h5", h5, *RECIPE_FLAGS, "--out", out],
                                         stdout=log, stderr=subprocess.STDOUT, env=env)
            print(f"training {be}: log {log.name}", flush=True)
        for be, p in procs.items():
            if p.wait() != 0:
                raise FilmError(f"film train --backend {be} failed: see {os.path.join(work, f'train_{be}.log')}")
            (runs[be],) = [os.path.join(work, be, d) for d in os.listdir(os.path.join(work, be))]
    subprocess.run(film + ["curves", runs["torch"], runs["jittor"], "-o", os.path.join(work, "curves.png")],
                   check=True)
    from film.common.training import latest_checkpoint

    models = [(f"{be}-trained", latest_checkpoint(runs[be], ext)[0], be)
              for be, ext in (("torch", ".pth"), ("jittor", ".pkl"))]
    result = judge(models)
    from film.common.atomic import atomic_write_bytes

    atomic_write_bytes(os.path.join(work, "judge.json"), json.dumps(result, indent=1).encode())
    print(judge_table(result))
    subprocess.run(film + ["train", "--resume", runs["jittor"], "--epochs", str(SHIPPED_EPOCHS)], check=True)
    second = latest_checkpoint(runs["jittor"], ".pkl")[0]
    trunk_runs, trunk = run_stages(work, data, CONTINUATIONS[:TRUNK], second, "jittor-continued-")
    mef_runs, init = run_stages(work, data, CONTINUATIONS[TRUNK:], trunk, "jittor-continued-", first=TRUNK + 1)
    shipped = judge([(f"jittor, {SHIPPED_EPOCHS} epochs", second, "jittor"), ("jittor, shipped", init, "jittor")])
    atomic_write_bytes(os.path.join(work, "judge_shipped.json"), json.dumps(shipped, indent=1).encode())
    print(judge_table(shipped))
    stage_runs = trunk_runs + mef_runs
    before = sum(_steps(r) for r in [runs["jittor"], *stage_runs[:-1]])  # every stage before the exported one
    sha = export(stage_runs[-1], output, h5 + ".json", steps_before=before, history=history(before))
    print(f"{output}: sha256 {sha} (tests/test_demo.py DEMO_SHA256)")
    # the task weights: MEF's are these (the MEF finish), in float16; the others train on from the trunk
    folder = os.path.dirname(output)
    sha = half_copy(output, task_output(folder, "MEF"), "MEF")
    print(f"{task_output(folder, 'MEF')}: sha256 {sha} (tests/test_demo.py TASK_SHA256)")
    trunk_steps = sum(_steps(r) for r in [runs["jittor"], *trunk_runs])
    for task in TASK_STAGES:
        train_task(task, work, data, trunk, trunk_steps, folder)
    return 0


def task_output(folder: str, task: str) -> str:
    return os.path.join(folder, f"demo-{task}.safetensors")


def stage_h5(work: str, data: str, what) -> str:
    """The training H5 of a stage's data (None: all pairs; a tuple of tasks: their pairs; MFF_SYNTHETIC: the
    synthetic multi-focus pairs), made once in ``work``."""
    if what is None:
        path = os.path.join(work, "demo_train.h5")
    elif what == MFF_SYNTHETIC:
        path = os.path.join(work, "demo_train_MFF_synthetic.h5")
    else:
        path = os.path.join(work, f"demo_train_{'_'.join(what)}.h5")
    if not os.path.exists(path):
        if what == MFF_SYNTHETIC:
            prepare_mff(data, path)
        else:
            prepare(data, path, what)
    return path


def run_stages(work: str, data: str, stages, init: str, prefix: str, first: int = 1) -> tuple[list[str], str]:
    """Train ``stages`` (epochs, data, flags) one after the other with Jittor, each from the last one's weights
    (--init: a fresh Adam state). Returns (their run folders, the last weights)."""
    import subprocess

    from film.common.training import latest_checkpoint

    runs = []
    for i, (epochs, what, extra) in enumerate(stages):
        out = os.path.join(work, f"{prefix}{first + i}")
        if os.path.isdir(out):
            raise FilmError(f"{out} exists: remove it (or the whole {work}) to train again")
        h5 = stage_h5(work, data, what)
        flags = stage_flags(epochs, init, extra)
        subprocess.run([sys.executable, "-m", "film", "train", "--backend", "jittor", "--h5", h5, *flags, "--out",
                        out], check=True)
        (run,) = [os.path.join(out, d) for d in os.listdir(out)]
        runs.append(run)
        init = latest_checkpoint(run, ".pkl")[0]
    return runs, init


def train_task(task: str, work: str, data: str, trunk: str, trunk_steps: int, folder: str) -> str:
    """One task's weights: TASK_STAGES[task] from the trunk's weights, judged on that task's held-out pairs (and
    MFF on the held-out synthetic pairs), exported in float16 to ``folder``/demo-TASK.safetensors. Returns its
    SHA-256."""
    from film.common.atomic import atomic_write_bytes

    runs, last = run_stages(work, data, TASK_STAGES[task], trunk, f"jittor-{task}-")
    result = judge([("trunk", trunk, "jittor", task), (f"demo-{task}", last, "jittor", task)], tasks=(task,))
    print(judge_table(result))
    if task == "MFF":
        result["synthetic"] = judge_mff([("trunk", trunk, "jittor"), ("demo-MFF", last, "jittor")])
        print(result["synthetic"])
    atomic_write_bytes(os.path.join(work, f"judge_{task}.json"), json.dumps(result, indent=1).encode())
    return export_task(task, runs, stage_h5(work, data, TASK_STAGES[task][-1][1]) + ".json", trunk_steps, folder)


def export_task(task: str, runs: list[str], manifest: str, trunk_steps: int, folder: str) -> str:
    """Export the last of a task's stage ``runs`` (float16, its history in the metadata) to
    ``folder``/demo-TASK.safetensors; ``manifest``: its data's. Returns the SHA-256."""
    before = trunk_steps + sum(_steps(r) for r in runs[:-1])
    stages = ", then ".join(_describe(*st) for st in TASK_STAGES[task])
    sha = export(runs[-1], task_output(folder, task), manifest, steps_before=before, task=task, half=True,
                 history=f"{before} steps before the last stage; the trunk (the recipe's first {trunk_steps} steps, "
                         f"as for demo.safetensors), then {stages}")
    print(f"{task_output(folder, task)}: sha256 {sha} (tests/test_demo.py TASK_SHA256)")
    return sha


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/demo_weights.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare", help="the training H5 of crops of the public pairs")
    a.add_argument("--data", required=True, help="a folder of public pairs (task/dataset/{A,B})")
    a.add_argument("-o", "--output", required=True)
    e = sub.add_parser("export", help="a run's last checkpoint as the demo .safetensors")
    e.add_argument("run")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--manifest", help="the prepare step's manifest JSON (the data list in the metadata)")
    e.add_argument("--steps-before", type=int, default=0,
                   help="steps of the run the exported run's --init weights came from (the recipe's first stage)")
    j = sub.add_parser("judge", help="the twelve metrics of trained models on the held-out shipped samples, next "
                       "to the average and max rules")
    j.add_argument("models", nargs="+", help="LABEL=CHECKPOINT[@BACKEND] (backend default torch)")
    j.add_argument("--json", help="write the numbers here too")
    r = sub.add_parser("all", help="make demo-weights: prepare, train in both frameworks, curves, judge, export")
    r.add_argument("--data", required=True, help="a folder of public pairs (task/dataset/{A,B})")
    r.add_argument("--work", default=os.path.join("build", "demo"))
    r.add_argument("-o", "--output", default=os.path.join("film", "weights", "demo.safetensors"))
    t = sub.add_parser("task", help="one task's weights from the trunk's (TASK_STAGES), judged and exported")
    t.add_argument("task", choices=sorted(TASK_STAGES))
    t.add_argument("--data", required=True, help="a folder of public pairs (task/dataset/{A,B})")
    t.add_argument("--init", required=True, help="the trunk's weights (the recipe's first 1,640 steps)")
    t.add_argument("--trunk-steps", type=int, default=1640, help="the steps the --init weights were trained for")
    t.add_argument("--work", default=os.path.join("build", "demo"))
    t.add_argument("-o", "--output", default=os.path.join("film", "weights"), help="the folder of the weights")
    args = p.parse_args(argv)
    try:
        if args.cmd == "all":
            return run_all(args.work, args.data, args.output)
        if args.cmd == "task":
            os.makedirs(args.work, exist_ok=True)
            train_task(args.task, args.work, args.data, args.init, args.trunk_steps, args.output)
            return 0
        if args.cmd == "prepare":
            manifest = prepare(args.data, args.output)
            n = len(manifest["pairs"])
            print(f"{args.output}: {n} pairs x {CROPS_PER_PAIR} crops of {CROP}x{CROP}; film train flags: "
                  + " ".join(RECIPE_FLAGS))
        elif args.cmd == "judge":
            models = []
            for spec in args.models:
                label, _, rest = spec.partition("=")
                ck, _, be = rest.partition("@")
                if not label or not ck:
                    raise FilmError(f"{spec!r}: give LABEL=CHECKPOINT[@BACKEND]")
                models.append((label, ck, be or "torch"))
            result = judge(models)
            print(judge_table(result))
            if args.json:
                from film.common.atomic import atomic_write_bytes

                atomic_write_bytes(args.json, json.dumps(result, indent=1).encode())
        else:
            before = args.steps_before
            sha = export(args.run, args.output, args.manifest, before, history(before) if before else None)
            print(f"{args.output}: sha256 {sha}")
    except FilmError as err:
        print(f"demo_weights: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
