"""The demo weights recipe (``make demo-weights``; docs/training.md, "Demo weights").

Not the official FILM: a FILM trained for about an hour on 2 CPU cores, on the public pairs of
``../shared/data/fusion_samples`` (all four tasks; credits in its SOURCES.md) minus the pairs shipped in
``film/samples`` (held out: the demo is judged on them), with **seeded synthetic text features** (the VLF
features are not available here). Enough to show what the pipeline does on real images; not a model to
publish results with.

    python -m film.demo_weights prepare --data ../shared/data/fusion_samples -o demo_train.h5
    film train --backend torch --h5 demo_train.h5 <RECIPE flags> --out exp_demo
    python -m film.demo_weights export exp_demo/<run> -o film/weights/demo.safetensors

Every random choice (crops, flips, text features, initial weights, data order) is seeded, so both
frameworks train on the same batches from the same weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np

from film.common.images import find_ab_folders, find_datasets, load_pair, match_pairs, samples_root
from film.common.init import SYNTHETIC_TEXT_LEN, random_text
from film.errors import FilmError

CROP = 128  # pixels: the Restormer blocks' cost follows the crop; the 288x384 token grid is paid at any size
CROPS_PER_PAIR = 24  # random crops (with a random flip / 90-degree turn each) of every training pair
SEED = 20261201
TEXT_SEED0 = 1000  # pair i's synthetic text features: random_text(seed=TEXT_SEED0 + i), the same for its crops

# The film train flags of the recipe (the official loss and Adam; a higher learning rate than the official 1e-5
# because the run starts from random weights and has ~1,200 steps instead of ~100,000; no step decay inside it).
RECIPE = {"batch_size": 4, "epochs": 5, "lr": 2e-4, "step_size": 1000, "gamma": 0.6, "seed": 0,
          "grad_weight": 20.0, "ssim_weight": 0.0}
RECIPE_FLAGS = ["--batch-size", "4", "--epochs", "5", "--lr", "2e-4", "--step-size", "1000", "--gamma", "0.6",
                "--seed", "0", "--init", "random"]


def held_out() -> set[tuple[str, str]]:
    """(dataset folder relative to the tasks root, pair name) of every pair shipped in film/samples."""
    out = set()
    root = samples_root()
    for ds in find_datasets(root):
        da, db = find_ab_folders(ds)
        for p in match_pairs(da, db):
            out.add((os.path.relpath(ds, root), p.name))
    return out


def training_pairs(data: str) -> list:
    """[(rel dataset, Pair)] of the data folder, the held-out pairs left out, in a fixed order."""
    skip = held_out()
    pairs = []
    for ds in find_datasets(data):
        da, db = find_ab_folders(ds)
        rel = os.path.relpath(ds, data)
        pairs += [(rel, p) for p in match_pairs(da, db) if (rel, p.name) not in skip]
    if not pairs:
        raise FilmError(f"{data}: no training pairs (after leaving out the shipped samples)")
    return pairs


def _augment(rng, x: np.ndarray, k: int, flip: bool) -> np.ndarray:
    x = np.rot90(x, k)
    return np.ascontiguousarray(x[:, ::-1] if flip else x)


def prepare(data: str, out: str) -> dict:
    """Write the training H5 (film prepare's layout: imageA, imageB, text groups) and return its manifest."""
    import h5py

    from film.common.safeio import atomic_path

    rng = np.random.default_rng(SEED)
    pairs = training_pairs(data)
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
                    g.create_dataset(name, data=_augment(rng, img[y : y + CROP, x : x + CROP], k, flip)[None])
                gt.create_dataset(name, data=text)
    return manifest


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def export(run_dir: str, out: str, data_manifest: str | None = None) -> str:
    """The run's last checkpoint as one .safetensors with the recipe in its metadata (film.load_fuser reads the
    FilmConfig back); returns its SHA-256."""
    from film.common.checkpoint import load_checkpoint, save_checkpoint
    from film.common.training import latest_checkpoint, read_run_params

    params = read_run_params(run_dir)
    found = max((c for c in (latest_checkpoint(run_dir, e) for e in (".pth", ".pkl")) if c), key=lambda c: c[1],
                default=None)
    if found is None:
        raise FilmError(f"{run_dir}: no checkpoint to export")
    ck = load_checkpoint(found[0])
    steps = _steps(run_dir)
    info = {
        "what": "FILM demo weights: not the official FILM; trained from seeded random weights on public image "
                "pairs with synthetic text features, for trying the pipeline (docs/training.md, Demo weights)",
        "framework": params.get("backend"), "steps": steps, "epochs": found[1],
        "recipe": {k: params.get(k) for k in RECIPE}, "crop": CROP, "crops_per_pair": CROPS_PER_PAIR,
        "text": "seeded synthetic features (random_text, seed 1000 + pair index)",
    }
    if data_manifest:
        with open(data_manifest) as f:
            info["data"] = json.load(f)["pairs"]
    save_checkpoint(out, ck.state_dict, {"film_demo": json.dumps(info)}, ck.cfg)
    return _sha(out)


def _steps(run_dir: str) -> int:
    try:
        with open(os.path.join(run_dir, "losses.jsonl")) as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m film.demo_weights", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare", help="the training H5 of crops of the public pairs")
    a.add_argument("--data", default=os.path.join("..", "shared", "data", "fusion_samples"))
    a.add_argument("-o", "--output", required=True)
    e = sub.add_parser("export", help="a run's last checkpoint as the demo .safetensors")
    e.add_argument("run")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--manifest", help="the prepare step's manifest JSON (the data list in the metadata)")
    args = p.parse_args(argv)
    try:
        if args.cmd == "prepare":
            manifest = prepare(args.data, args.output)
            with open(args.output + ".json", "w") as f:
                json.dump(manifest, f, indent=1)
            n = len(manifest["pairs"])
            print(f"{args.output}: {n} pairs x {CROPS_PER_PAIR} crops of {CROP}x{CROP}; film train flags: "
                  + " ".join(RECIPE_FLAGS))
        else:
            sha = export(args.run, args.output, args.manifest)
            print(f"{args.output}: sha256 {sha}")
    except FilmError as err:
        print(f"demo_weights: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
