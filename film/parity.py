"""Both backends on the same weights and inputs: per-tap and end-to-end differences."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from film.common.images import samples_root, to_uint8
from film.common.pairs import collect_pairs
from film.common.spec import tap_names

# The backends differ by float rounding only. How much rounding a float32 FILM forward carries depends
# on the input: torch's float32 vector_norm and matmul over H*W in the Restormer attention drift on
# images with large flat areas, and LayerNorm/softmax amplify it (measured: the official float32
# output 2.9e-4 away from the same network in float64 on the shipped MRI/PET pair; docs/parity.md).
# Jittor accumulates those two reductions in float64. So a pair passes when the torch-jittor
# difference is within ATOL plus torch's own float32 rounding error, measured against a float64 run
# of the same weights (torch backend in double). Taps: relative to their scale max(|x|, 1).
ATOL_OUTPUT = 1e-5
RTOL_TAP = 1e-5


@dataclass
class Row:
    name: str
    max_abs: float
    mean_abs: float
    scale: float
    torch_f64: float = 0.0  # max |torch float32 - float64 reference|: torch's own rounding error
    jittor_f64: float = 0.0

    @property
    def rel(self) -> float:
        return self.max_abs / max(self.scale, 1.0)

    @property
    def allowance(self) -> float:
        return self.torch_f64 / max(self.scale, 1.0)


@dataclass
class PairReport:
    name: str
    shape: tuple[int, int]
    rows: list[Row] = field(default_factory=list)
    output: Row | None = None
    uint8_diff_pixels: int = 0
    uint8_max_diff: int = 0
    pixels: int = 0
    metrics: dict | None = None  # {"torch": {metric: value}, "jittor": {...}} with --metrics

    def ok(self, atol: float = ATOL_OUTPUT, rtol: float = RTOL_TAP) -> bool:
        return (
            self.output is not None
            and self.output.max_abs <= atol + self.output.torch_f64
            and all(r.rel <= rtol + r.allowance for r in self.rows)
        )


def compare(x: np.ndarray, y: np.ndarray, name: str, ref: np.ndarray | None = None) -> Row:
    d = np.abs(x.astype(np.float64) - y.astype(np.float64))
    row = Row(name, float(d.max()), float(d.mean()), float(np.abs(x).max()))
    if ref is not None:
        row.torch_f64 = float(np.abs(x - ref).max())
        row.jittor_f64 = float(np.abs(y - ref).max())
    return row


def run_pair(
    fusers: dict, name: str, a: np.ndarray, b: np.ndarray, text: np.ndarray, reference=None, metrics: bool = False
) -> PairReport:
    """``fusers``: {"torch": Fuser, "jittor": Fuser} built from the same weights; ``reference``: (backend,
    model) of the float64 network (``Backend.float64_reference``, the rounding-free reference), or None."""
    taps = {k: {} for k in fusers}
    outs = {k: f.fuse(a, b, text, taps=taps[k]) for k, f in fusers.items()}
    t, j = outs["torch"], outs["jittor"]
    ref_taps: dict = {}
    ref = None
    if reference is not None:
        from film.api import as_image_batch, check_text

        impl, ref_model = reference
        ref = impl.forward_numpy(
            ref_model,
            as_image_batch(a, "a"),
            as_image_batch(b, "b"),
            check_text(text, fusers["torch"].cfg.text_dim, 1),
            taps=ref_taps,
        )
        ref = ref.reshape(t.shape)
    rep = PairReport(name, a.shape[-2:])
    cfg = fusers["torch"].cfg
    for tap in tap_names(cfg):
        rep.rows.append(compare(taps["torch"][tap], taps["jittor"][tap], tap, ref_taps.get(tap)))
    rep.output = compare(t, j, "output", ref)
    ut, uj = to_uint8(t), to_uint8(j)
    diff = np.abs(ut.astype(np.int16) - uj.astype(np.int16))
    rep.uint8_diff_pixels = int((diff > 0).sum())
    rep.uint8_max_diff = int(diff.max())
    rep.pixels = int(diff.size)
    if metrics:  # as film eval sees them: the saved uint8 images, the sources as official GRAY (0..255)
        from film.common.metrics import evaluate

        a255, b255 = (np.round(np.asarray(x, np.float64) * 255).astype(np.float32).reshape(ut.shape) for x in (a, b))
        images = [("torch", ut), ("jittor", uj)] + ([("float64", to_uint8(ref))] if ref is not None else [])
        rep.metrics = {k: evaluate(u.astype(np.float32), a255, b255) for k, u in images}
    return rep


def collect_inputs(pairs_dir: str | None, text_dir: str | None, text_dim: int, limit: int | None):
    """[(name, a, b, text)] from a folder of pairs (or the shipped samples), seeded text when none is given;
    text features found as film fuse finds them (film.common.pairs)."""
    items = collect_pairs(pairs=pairs_dir or samples_root(), text=text_dir,
                          random_text_seed0=None if text_dir else 0, text_dim=text_dim, limit=limit)
    return [(it.name, it.a, it.b, it.text) for it in items]


def format_report(reports: list[PairReport], atol: float, rtol: float) -> str:
    lines = []
    for rep in reports:
        h, w = rep.shape
        status = "OK" if rep.ok(atol, rtol) else "FAIL"
        lines.append(f"\n== {rep.name}  ({w}x{h})  {status}")
        lines.append(
            f"  {'tap (torch vs jittor)':34s} {'max_abs':>9s} {'mean_abs':>9s} {'max|x|':>7s} {'rel':>9s}"
            f" {'torch-f64':>9s} {'jittor-f64':>10s}"
        )
        for r in rep.rows + [rep.output]:
            good = r.rel <= rtol + r.allowance if r is not rep.output else r.max_abs <= atol + r.torch_f64
            flag = "" if good else "  <-- above tolerance"
            lines.append(
                f"  {r.name:34s} {r.max_abs:9.2e} {r.mean_abs:9.2e} {r.scale:7.3f} {r.rel:9.2e}"
                f" {r.torch_f64:9.2e} {r.jittor_f64:10.2e}{flag}"
            )
        pct = 100.0 * (rep.pixels - rep.uint8_diff_pixels) / max(rep.pixels, 1)
        lines.append(
            f"  uint8 (official saving step): {rep.uint8_diff_pixels} of {rep.pixels} pixels differ "
            f"(max {rep.uint8_max_diff}), {pct:.3f}% identical"
        )
    worst = max(r.output.max_abs for r in reports)
    worst_tap = max((row.rel for r in reports for row in r.rows), default=0.0)
    n_ok = sum(r.ok(atol, rtol) for r in reports)
    lines.append(
        f"\n{n_ok}/{len(reports)} pairs within tolerance (output: max_abs <= {atol:g} + torch's own float32 error "
        f"vs float64; taps: rel <= {rtol:g} + the same); "
        f"worst output max_abs {worst:.2e}, worst tap rel {worst_tap:.2e}"
    )
    return "\n".join(lines)


METRIC_RTOL = 1e-4


def format_metrics(reports: list[PairReport]) -> str:
    """The twelve metrics, mean over pairs, per backend, with the worst per-pair relative difference.
    With the float64 reference run, a metric is flagged only when torch-Jittor exceeds 1e-4 plus torch's
    own distance to the float64 network's metric (one uint8 level flipped by float32 rounding moves MI or
    SSIM by more than 1e-4 on some images)."""
    from film.common.metrics import METRICS

    reps = [r for r in reports if r.metrics]
    has_ref = all("float64" in r.metrics for r in reps)

    def rel(r, m, x, y):
        return abs(r.metrics[x][m] - r.metrics[y][m]) / max(abs(r.metrics[x][m]), 1e-12)

    lines = [f"\nmetrics of the uint8 images (mean over {len(reps)} pairs; rel = worst per-pair |t-j| / |t|)",
             f"  {'metric':7s} {'torch':>12s} {'jittor':>12s} {'rel':>9s}" + (f" {'torch-f64':>9s}" if has_ref else "")]
    worst_all, n_bad = 0.0, 0
    for m in METRICS:
        t = np.mean([r.metrics["torch"][m] for r in reps])
        j = np.mean([r.metrics["jittor"][m] for r in reps])
        d = max(rel(r, m, "torch", "jittor") for r in reps)
        own = max(rel(r, m, "torch", "float64") for r in reps) if has_ref else 0.0
        bad = any(rel(r, m, "torch", "jittor") > METRIC_RTOL + (rel(r, m, "torch", "float64") if has_ref else 0.0)
                  for r in reps)
        n_bad += bad
        worst_all = max(worst_all, d)
        lines.append(f"  {m:7s} {t:12.6f} {j:12.6f} {d:9.2e}" + (f" {own:9.2e}" if has_ref else "")
                     + ("  <-- above tolerance" if bad else ""))
    rule = f"<= {METRIC_RTOL:g} relative" + (" + torch's own float32 effect (torch-f64)" if has_ref else "")
    lines.append(f"  worst metric difference {worst_all:.2e}; {len(METRICS) - n_bad}/{len(METRICS)} metrics {rule}")
    return "\n".join(lines)


def load_parity_fusers(state_dict, cfg, device: str = "cpu", fast: bool | None = None) -> dict:
    """Both frameworks' fusers on the same weights, in deterministic mode; refuses (one line) before minutes of
    work when either backend cannot run (not installed, numpy>=2 for Jittor)."""
    from film.api import load_fuser
    from film.backends.registry import FRAMEWORKS, get_backend

    for name in FRAMEWORKS:
        get_backend(name, device)
    fusers = {}
    for name in FRAMEWORKS:
        fusers[name] = load_fuser(state_dict, backend=name, device=device, cfg=cfg, fast=fast)
        fusers[name].impl.set_deterministic()
    return fusers


def float64_reference(fusers: dict):
    """(backend module, float64 network) from the first backend that can build one (torch), or None."""
    for f in fusers.values():
        model = f.impl.float64_reference(f.model)
        if model is not None:
            return f.impl, model
    return None


def parity(checkpoint: str, *, pairs: str | None = None, text: str | None = None, limit: int | None = None,
           fast: bool | None = None, device: str = "cpu", reference: bool = True, metrics: bool = False,
           model_cfg=None, on_pair=None) -> tuple[dict, list[PairReport]]:
    """Fuse every pair (``pairs``, default the shipped samples) with both backends on the weights of
    ``checkpoint`` ("random": seeded random ones) and compare tap by tap, and against a float64 run unless
    ``reference`` is False. ``on_pair(i, n, report)`` is called after each pair. Returns (fusers, reports)."""
    from film.common.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint, model_cfg)  # the configuration stored with the weights, else model_cfg
    fusers = load_parity_fusers(ck.state_dict, ck.cfg, device, fast)
    inputs = collect_inputs(pairs, text, ck.cfg.text_dim, limit)
    ref = float64_reference(fusers) if reference else None
    reports = []
    for i, (label, a, b, t) in enumerate(inputs):
        reports.append(run_pair(fusers, label, a, b, t, ref, metrics=metrics))
        if on_pair is not None:
            on_pair(i, len(inputs), reports[-1])
    return fusers, reports
