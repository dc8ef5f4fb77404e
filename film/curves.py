"""``film curves``: the loss curves of training runs overlaid, and where they part.

Reads each run folder's ``losses.jsonl`` (one JSON line per step, full precision, written by ``film train``),
or, for runs without it (the official code's, older film runs), the ``[loss: ...]`` fields of ``log.txt``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import numpy as np

from film.errors import FilmError

TERMS = ("loss", "loss_in", "loss_grad")
TITLES = {"loss": "total loss", "loss_in": "intensity term (L1 to max(A, B))",
          "loss_grad": "gradient term (L1 of Sobel to the max)"}
_LOG_FIELD = re.compile(r"\[(loss|loss_in|loss_grad): ([-+0-9.eEnaifNI]+)\]")


@dataclass
class Run:
    path: str
    label: str
    terms: dict = field(default_factory=dict)  # name -> float64 array, one value per step

    @property
    def steps(self) -> int:
        return len(self.terms["loss"])


def read_run(path: str, label: str | None = None) -> Run:
    """The per-step losses of a run folder (or of a losses.jsonl / log.txt given directly)."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    if label is None:
        name = os.path.basename(os.path.normpath(folder))
        # film train's folders are named by start time and recipe (26_12_03_09_41_epochs_1_lr_...): the legend
        # says the backend and the start time; other folders keep their name, shortened
        stamp = re.match(r"(\d\d)_(\d\d)_(\d\d)_(\d\d)_(\d\d)_epochs_", name)
        label = (f"run of 20{stamp[1]}-{stamp[2]}-{stamp[3]} {stamp[4]}:{stamp[5]}" if stamp else
                 name if len(name) <= 30 else name[:14] + "..." + name[-13:])
        try:
            with open(os.path.join(folder, "param.json")) as f:
                params = json.load(f)
            label = f"{params.get('backend', '?')}, {label}" if isinstance(params, dict) else label
        except (OSError, ValueError):
            pass
    jsonl = path if path.endswith(".jsonl") else os.path.join(folder, "losses.jsonl")
    log = path if path.endswith(".txt") else os.path.join(folder, "log.txt")
    rows: list[dict] = []
    try:
        if os.path.exists(jsonl) and not path.endswith(".txt"):
            with open(jsonl) as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except ValueError:
                            raise FilmError(f"{jsonl}: line {n} is not JSON") from None
        elif os.path.exists(log):
            with open(log, errors="replace") as f:
                for line in f:
                    found = dict(_LOG_FIELD.findall(line))
                    if "loss" in found:
                        rows.append({k: float(v) for k, v in found.items()})
        else:
            raise FilmError(f"{path}: no losses.jsonl or log.txt (not a film train run folder)")
    except OSError as e:
        raise FilmError(f"{path}: cannot read ({e.strerror or e})") from None
    if not rows:
        raise FilmError(f"{path}: no training steps logged yet")
    terms = {k: np.array([r.get(k, np.nan) for r in rows], dtype=np.float64) for k in TERMS}
    return Run(path, label, terms)


def rel_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n = min(len(a), len(b))
    return np.abs(a[:n] - b[:n]) / np.maximum(np.abs(b[:n]), 1e-30)


def first_departure(a: Run, b: Run, tol: float = 1e-3) -> int | None:
    """The first step where the total losses of two runs differ by more than ``tol`` relative, or None."""
    d = rel_diff(a.terms["loss"], b.terms["loss"])
    over = np.flatnonzero(~(d <= tol))
    return int(over[0]) if len(over) else None


def summary(runs: list[Run], tol: float = 1e-3) -> list[str]:
    lines = []
    for r in runs:
        final = ", ".join(f"{k} {r.terms[k][-1]:.6g}" for k in TERMS)
        lines.append(f"{r.label}: {r.steps} steps, final {final}")
    base = runs[0]
    for r in runs[1:]:
        n = min(r.steps, base.steps)
        step = first_departure(r, base, tol)
        d = rel_diff(r.terms["loss"], base.terms["loss"])
        where = (f"first differs by more than {tol:g} relative at step {step}" if step is not None
                 else f"within {tol:g} relative at every one of {n} steps")
        lines.append(f"{r.label} vs {base.label}: {where}; largest relative difference {np.nanmax(d):.2e}, "
                     f"final {d[-1]:.2e}")
    return lines


def plot(runs: list[Run], output: str, tol: float = 1e-3) -> None:
    """Total, intensity and gradient terms of every run overlaid, and each run's relative difference to the
    first, on a log scale, in one PNG (written atomically)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FilmError("film curves needs matplotlib: pip install 'film-fusion[plot]'") from None
    from film.common.atomic import atomic_path, check_output_file

    check_output_file(output, create_dir=True)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    for ax, term in zip(axes.flat, TERMS):
        for i, r in enumerate(runs):
            ax.plot(np.arange(r.steps), r.terms[term], label=r.label, lw=1.2, ls="-" if i == 0 else "--")
        ax.set_title(TITLES[term])
        ax.set_xlabel("step")
        ax.set_ylabel(term)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax = axes.flat[3]
    base = runs[0]
    for r in runs[1:]:
        d = rel_diff(r.terms["loss"], base.terms["loss"])
        ax.plot(np.arange(len(d)), np.maximum(d, 1e-12), label=f"{r.label} vs {base.label}", lw=1.0)
    ax.axhline(tol, color="grey", ls=":", lw=1, label=f"{tol:g}")
    ax.set_yscale("log")
    ax.set_title("relative difference of the total loss")
    ax.set_xlabel("step")
    ax.set_ylabel("|a - b| / |b|")
    if len(runs) > 1:
        ax.legend(fontsize=8)
    with atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def curves(paths: list[str], *, output: str | None = None, labels: list[str] | None = None,
           tol: float = 1e-3) -> tuple[list[Run], list[str]]:
    """Read the runs, write the plot (when ``output``), return the runs and the summary lines."""
    if not paths:
        raise FilmError("give at least one run folder")
    if labels and len(labels) != len(paths):
        raise FilmError(f"{len(labels)} --label(s) for {len(paths)} run(s)")
    runs = [read_run(p, labels[i] if labels else None) for i, p in enumerate(paths)]
    if output:
        plot(runs, output, tol)
    return runs, summary(runs, tol)
