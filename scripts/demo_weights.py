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


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def export(run_dir: str, out: str, data_manifest: str | None = None, steps_before: int = 0,
           history: str | None = None) -> str:
    """The run's last checkpoint as one .safetensors with the recipe in its metadata (film.load_fuser reads the
    FilmConfig back); ``steps_before``: steps of the run(s) its --init weights came from. Returns its SHA-256."""
    from film.common.checkpoint import load_checkpoint, save_checkpoint
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
        "recipe": {k: params.get(k) for k in RECIPE}, "crop": CROP, "crops_per_pair": CROPS_PER_PAIR,
        "text": f"seeded synthetic features (random_text, seed {TEXT_SEED0} + pair index)",
    }
    if history:
        info["history"] = history
    if data_manifest:
        with open(data_manifest) as f:
            info["data"] = json.load(f)["pairs"]
    save_checkpoint(out, ck.state_dict, {"film_demo": json.dumps(info)}, ck.cfg)
    return _sha(out)


def history(steps_before: int) -> str:
    """The metadata's account of the stages before the exported run (``steps_before``: their steps)."""
    first = f"a Jittor run of {SHIPPED_EPOCHS} epochs (the second after --resume)"
    more = ", then ".join(_describe(*stage) for stage in CONTINUATIONS)
    return f"{steps_before} steps before the last stage; in all: {first}, then {more}"


def _describe(epochs: int, tasks: tuple[str, ...] | None, flags: dict) -> str:
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


def judge(models: list[tuple[str, str, str]], metrics: tuple[str, ...] | None = None) -> dict:
    """The twelve official metrics on the held-out shipped samples (film/samples: not trained on), per task, for
    each (label, checkpoint, backend) in ``models`` and for the average and max rules. The models fuse with
    ``film fuse --random-text``'s features (seeded by the pair's name) and the official uint8 saving.
    Returns {"per_task": {task: {method: {metric: mean}}}, "mean": {method: {metric: mean over tasks}}}."""
    from film.api import load_fuser
    from film.common.images import read_gray, to_uint8
    from film.common.metrics import METRICS, baseline_images
    from film.common.metrics import evaluate as evaluate_images
    from film.common.pairs import collect_pairs

    metrics = tuple(metrics or METRICS)
    items = collect_pairs(pairs=samples_root(), random_text_seed0=0, text_dim=768)
    fusers = {label: load_fuser(ck, backend=be, device="cpu") for label, ck, be in models}
    scores: dict[str, dict[str, list[dict]]] = {}
    import warnings

    # numpy's notice that a backend set flush-to-zero, and the max rule's SCD (0/0 where it equals one source):
    # neither says anything about the models; the table shows the nan
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.filterwarnings("ignore", message="The value of the smallest subnormal")
        for it in items:
            task = it.name.split(os.sep)[0]
            a, b = read_gray(it.pair.a), read_gray(it.pair.b)
            images = {label: to_uint8(f.fuse(it.a, it.b, it.text)).astype(np.float32) for label, f in fusers.items()}
            images.update(baseline_images(a, b))
            for method, img in images.items():
                scores.setdefault(task, {}).setdefault(method, []).append(evaluate_images(img, a, b, metrics))
    per_task = {task: {m: {k: float(np.mean([r[k] for r in rows])) for k in metrics} for m, rows in by.items()}
                for task, by in scores.items()}
    methods = list(next(iter(per_task.values())))
    mean = {m: {k: float(np.mean([per_task[t][m][k] for t in per_task])) for k in metrics} for m in methods}
    return {"per_task": per_task, "mean": mean, "pairs": [it.name for it in items]}


def judge_table(result: dict, focus: tuple[str, ...] = ("Qabf", "VIFF")) -> str:
    """Markdown: Qabf and VIFF per task, then the twelve metrics' means over the four tasks."""
    per_task, mean = result["per_task"], result["mean"]
    tasks, methods = sorted(per_task), list(mean)
    lines = ["| method | " + " | ".join(f"{t} {k}" for t in tasks for k in focus) + " |",
             "|---|" + "---|" * (len(tasks) * len(focus))]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(f"{per_task[t][m][k]:.3f}" for t in tasks for k in focus) + " |")
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
    init, stage_runs = second, []
    for i, (epochs, tasks, extra) in enumerate(CONTINUATIONS):
        out = os.path.join(work, f"jittor-continued-{i + 1}")
        stage_h5 = h5
        if tasks:
            stage_h5 = os.path.join(work, f"demo_train_{'_'.join(tasks)}.h5")
            if not os.path.exists(stage_h5):
                prepare(data, stage_h5, tasks)
        flags = stage_flags(epochs, init, extra)
        subprocess.run(film + ["train", "--backend", "jittor", "--h5", stage_h5, *flags, "--out", out], check=True)
        (run,) = [os.path.join(out, d) for d in os.listdir(out)]
        stage_runs.append(run)
        init = latest_checkpoint(run, ".pkl")[0]
    shipped = judge([(f"jittor, {SHIPPED_EPOCHS} epochs", second, "jittor"), ("jittor, shipped", init, "jittor")])
    atomic_write_bytes(os.path.join(work, "judge_shipped.json"), json.dumps(shipped, indent=1).encode())
    print(judge_table(shipped))
    before = sum(_steps(r) for r in [runs["jittor"], *stage_runs[:-1]])  # every stage before the exported one
    sha = export(stage_runs[-1], output, h5 + ".json", steps_before=before, history=history(before))
    print(f"{output}: sha256 {sha} (tests/test_demo.py DEMO_SHA256)")
    return 0


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
    args = p.parse_args(argv)
    try:
        if args.cmd == "all":
            return run_all(args.work, args.data, args.output)
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
