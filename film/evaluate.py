"""``film eval``: the official Evaluator's twelve metrics over folders, as a table, JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from film.common.atomic import atomic_write_bytes, check_output_file
from film.common.images import list_images, read_gray
from film.common.metrics import BASELINES, METRICS, baseline_images
from film.common.metrics import evaluate as evaluate_images
from film.errors import FilmError


def _metric_list(names) -> list[str]:
    if not names:
        return list(METRICS)
    lookup = {m.lower(): m for m in METRICS}
    out = []
    for n in names:
        for part in n.split(","):
            part = part.strip()
            if not part:
                continue
            if part.lower() not in lookup:
                raise FilmError(f"unknown metric {part!r}: choose from {' '.join(METRICS)}")
            out.append(lookup[part.lower()])
    return out


def eval_folder(
    fused_dir: str, dir_a: str, dir_b: str, metrics: list[str], workers: int | None = None, baselines: bool = False
) -> dict:
    """{"mean": {metric: value}, "per_image": {name: {metric: value}}} for one folder of fused images; with
    ``baselines``, {"": that, rule: the same for the rule's images, ...} for every rule of BASELINES, scored in the
    same pass over the pairs (A and B read once)."""
    fused, a, b = list_images(fused_dir), list_images(dir_a), list_images(dir_b)
    missing = [n for n in fused if n not in a or n not in b]
    if missing:
        raise FilmError(f"{fused_dir}: no source pair in {dir_a} / {dir_b} for: {', '.join(missing[:10])}")

    def one(name: str) -> tuple[str, dict]:
        f, ia, ib = read_gray(fused[name]), read_gray(a[name]), read_gray(b[name])
        if not (f.shape == ia.shape == ib.shape):
            raise FilmError(f"{name}: sizes differ (fused {f.shape}, A {ia.shape}, B {ib.shape})")
        if min(f.shape) < 7:
            raise FilmError(f"{name}: {f.shape[1]}x{f.shape[0]} is too small for SSIM/VIFF (at least 7x7)")
        images = {"": f, **(baseline_images(ia, ib) if baselines else {})}
        return name, {k: evaluate_images(img, ia, ib, metrics) for k, img in images.items()}

    names = sorted(fused)
    workers = workers or min(len(names), os.cpu_count() or 1)
    from tqdm import tqdm

    # numpy, OpenCV and scipy release the GIL in the heavy parts: threads use every core
    with ThreadPoolExecutor(max_workers=workers) as pool:
        per = dict(
            tqdm(
                pool.map(one, names), total=len(names), desc="eval", unit="img", file=sys.stderr, disable=None
            )
        )
    out = {k: {"mean": {m: float(np.mean([per[n][k][m] for n in names])) for m in metrics},
               "per_image": {n: per[n][k] for n in names}} for k in per[names[0]]}
    return out if baselines else out[""]


def format_table(results: dict[str, dict], metrics: list[str], dataset: str) -> str:
    w = max([len(dataset) + 2] + [len(k) + 2 for k in results])
    # each column wide enough for its largest value (MSE reaches 5 digits) plus two spaces
    cw = {m: max(8, len(m) + 2, *(len(f"{res['mean'][m]:.2f}") + 2 for res in results.values())) for m in metrics}
    head = f"{'':{w}s}" + "".join(f"{m:>{cw[m]}s}" for m in metrics)
    lines = [f"{dataset}", head]
    for label, res in results.items():
        lines.append(f"{label:{w}s}" + "".join(f"{res['mean'][m]:{cw[m]}.2f}" for m in metrics))
    return "\n".join(lines)


def method_labels(folders: list[str]) -> list[str]:
    """A name per folder of fused images: its last path component (film fuse's Gray/ and Color/ skipped), with
    as many parent folders as it takes to tell the folders apart: a/RoadScene and b/RoadScene -> a/RoadScene,
    b/RoadScene; out/Gray -> out. The same folder named twice (e.g. to check that a metric is deterministic) gets
    primes: fused, fused'."""

    def parts(d: str) -> list[str]:
        p = [x for x in os.path.normpath(os.path.abspath(d)).split(os.sep) if x]
        if len(p) > 1 and p[-1].lower() in ("gray", "color"):
            p = p[:-1]
        return p

    split = [parts(d) for d in folders]
    distinct = list({tuple(p): p for p in split}.values())  # the same folder twice does not deepen the names
    depth = 1
    while True:
        names = ["/".join(p[-depth:]) for p in distinct]
        if len(set(names)) == len(names) or all(depth >= len(p) for p in distinct):
            break
        depth += 1
    labels = ["/".join(p[-depth:]) for p in split]
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        labels[i] = label + "'" * seen.get(label, 0)
        seen[label] = seen.get(label, 0) + 1
    return labels


def evaluate(
    fused: list[str] | str,
    a: str,
    b: str,
    *,
    metrics: list[str] | None = None,
    json_path: str | None = None,
    csv_path: str | None = None,
    names: list[str] | None = None,
    baselines: bool = False,
) -> dict[str, dict]:
    """The twelve official metrics of one or more folders of fused images against the A and B folders.

    Returns {method label: {"mean": {metric: value}, "per_image": {name: {metric: value}}}} (label: ``names``,
    or ``method_labels`` of the folders); ``baselines`` adds the average of A and B and the max rule, scored on
    the first folder's pairs (the bar a fusion method should clear); ``json_path`` / ``csv_path`` also write them
    (checked writable before anything is computed)."""
    fused = [fused] if isinstance(fused, str) else list(fused)
    metrics = _metric_list(metrics)
    for target in (json_path, csv_path):  # refuse an unwritable output before computing anything
        if target:
            check_output_file(target)
    if names is not None and len(names) != len(fused):
        raise FilmError(f"{len(names)} --name(s) for {len(fused)} --fused folder(s)")
    labels = list(names) if names else method_labels(fused)
    if baselines and set(labels) & set(BASELINES):
        raise FilmError(f"a method is named like a baseline ({', '.join(BASELINES)}): rename it with --name")
    if len(set(labels)) != len(labels):
        raise FilmError(f"two methods share a name: {', '.join(labels)}")
    scored = [eval_folder(d, a, b, metrics, baselines=baselines and i == 0) for i, d in enumerate(fused)]
    rules = {}
    if baselines:  # the rules are scored with the first folder, in the same pass over its pairs
        rules = scored[0]
        scored[0] = rules.pop("")
    results = {**dict(zip(labels, scored)), **rules}
    if json_path:
        payload = results[labels[0]] if len(results) == 1 else results
        atomic_write_bytes(json_path, json.dumps(payload, indent=2).encode())
    if csv_path:
        buf = io.StringIO()
        wr = csv.writer(buf)
        wr.writerow(["method", "image", *metrics])
        for label, res in results.items():
            for name, vals in res["per_image"].items():
                wr.writerow([label, name, *[repr(vals[m]) for m in metrics]])
            wr.writerow([label, "mean", *[repr(res["mean"][m]) for m in metrics]])
        atomic_write_bytes(csv_path, buf.getvalue().encode())
    return results
