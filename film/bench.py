"""``film bench``: inference and training-step timings, peak memory and agreement, written to a results file.

Each (implementation, size) runs in its own child process so that peak memory (ru_maxrss on CPU,
max_memory_allocated on CUDA) belongs to that case alone. Implementations:
  official-style  the eager forward written as the official network computes (torch; the baseline)
  official-heap   the same, in a process that keeps freed memory for reuse (the official code run with
                  GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647, the same two
                  malloc settings film.common.heap makes): the strongest baseline (film bench --train only)
  torch           the torch backend as shipped (film fuse's and film train's default layout on that device)
  torch-nchw      the torch backend with the official NCHW kernel order (``--no-fast``)
  torch-nhwc      the torch backend in channels_last (``--fast``)
  jittor          the Jittor backend
  onnx            film export's ONNX model of the same weights, run by onnxruntime (inference only; when installed)
  torch-library   ``film.load_fuser(...).fuse()`` as a host program calls it: no opt-in, glibc's malloc defaults
                  (the torch backend's own CPU workspace only; film/backends/torch/workspace.py)
  jittor-library  the same with the Jittor backend
  torch-library-bf16  torch-library with the opt-in ``precision="bf16"`` (where the CPU computes bf16 natively:
                  AVX512-BF16 / AMX; on CUDA); refused in one line elsewhere
  official-code   the official IF-FILM network itself (``--official-code DIR``: a checkout of its repository),
                  glibc's defaults; official-code-tuned: the same under GLIBC_TUNABLES (the anchor of issue 35)
Results: benchmarks/results/<date>_<device>.json (machine, versions, date) and a Markdown table.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

import numpy as np

from film.common.atomic import atomic_write_bytes, check_output_file
from film.common.precision import check_precision
from film.common.spec import OFFICIAL
from film.errors import FilmError

ALIASES = {"torch-fast": "torch-nhwc"}
DEFAULT_SIZES = {"cpu": ["288x384", "480x640"], "cuda": ["288x384", "480x640", "768x1024"]}


def _parse_size(s: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise FilmError(f"size {s!r}: expected HxW, e.g. 480x640") from None
    if h < 1 or w < 1:
        raise FilmError(f"size {s!r}: must be positive")
    return h, w


def _inputs(h: int, w: int, batch: int = 1):
    rng = np.random.default_rng(0)
    from film.common.init import SYNTHETIC_TEXT_LEN, random_text

    return (rng.random((batch, 1, h, w), dtype=np.float32), rng.random((batch, 1, h, w), dtype=np.float32),
            random_text(SYNTHETIC_TEXT_LEN, 768, seed=1, batch=batch))


class Impl(NamedTuple):
    """What a bench case runs."""

    backend: str
    fast: bool | None  # the fast inference layout; None: as shipped
    official: bool  # the official-style forward (or the official code itself)
    process_heap: bool = False  # the process keeps freed memory (film.common.heap), as the film command does
    library: bool = False  # through film.load_fuser(...).fuse(), as a host program calls it
    tunables: bool = False  # the child runs under GLIBC_TUNABLES (the official code as PyTorch's guide tunes it)
    precision: str = "float32"  # opt-in reduced precision (film.common.precision), library calls only


IMPLS = {
    "official-style": Impl("torch", False, True),
    "official-heap": Impl("torch", False, True, process_heap=True),
    "official-code": Impl("torch", False, True),
    "official-code-tuned": Impl("torch", False, True, tunables=True),
    "torch": Impl("torch", None, False, process_heap=True),
    "torch-nchw": Impl("torch", False, False, process_heap=True),
    "torch-nhwc": Impl("torch", True, False, process_heap=True),
    "torch-library": Impl("torch", None, False, library=True),
    "torch-library-bf16": Impl("torch", None, False, library=True, precision="bf16"),
    "jittor": Impl("jittor", None, False, process_heap=True),
    "jittor-library": Impl("jittor", None, False, library=True),
    "onnx": Impl("onnx", None, False, process_heap=True),
}
OFFICIAL_CODE = ("official-code", "official-code-tuned")
BASELINES = ("official-style", "official-heap", *OFFICIAL_CODE)  # every other case is compared with each
TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"


def _check_impl_precision(impl: str, device: str) -> None:
    """A FilmError, in one line, where ``impl``'s precision cannot run on ``device`` (film.common.precision)."""
    spec = IMPLS[impl]
    check_precision(spec.precision, "cuda" if device.startswith("cuda") else "cpu", spec.backend)


def _runs_here(impl: str, device: str) -> bool:
    try:
        _check_impl_precision(impl, device)
    except FilmError:
        return False
    return True


def _official_code_net(path: str):
    """The official network class from a checkout of the IF-FILM repository (net/Film.py), or a FilmError."""
    if not os.path.isfile(os.path.join(path, "net", "Film.py")):
        raise FilmError(f"--official-code {path}: no net/Film.py there (give a checkout of the IF-FILM repository)")
    sys.path.insert(0, os.path.abspath(path))
    try:
        from net.Film import Net
    except ImportError as e:
        raise FilmError(f"--official-code {path}: the official code does not import here ({e})") from None
    return Net


class Case(NamedTuple):
    """One bench case, run in a child process of its own (``python -m film.bench --case JSON``)."""

    impl: str  # a key of IMPLS
    h: int
    w: int
    device: str
    repeats: int = 3
    warmup: int = 1
    train: bool = False
    out_npy: str | None = None  # where the output is saved (for the agreement columns)
    batch: int = 2  # the training step's batch
    recompute: str | None = None  # a forced training configuration (the memory calibration): recompute mode,
    heap: bool | None = None  # and heap policy, the whole batch per forward

    @property
    def size(self) -> str:
        return f"{self.h}x{self.w}"


def run_case(case: Case) -> dict:
    """Runs in the child process: one implementation, one size, inference or a training step, through the
    backend interface only. A training step is ``Trainer.step`` as ``film train`` runs it by default (its memory
    plan: micro-batch, recompute, heap reuse; ``recompute``/``heap`` force them, with the whole batch per
    forward: scripts/calibrate_train_memory.py); official-style trains as the official code (NCHW, every activation
    kept, glibc's malloc defaults). Inference is ``forward_numpy``."""
    import resource
    from dataclasses import replace

    from film.backends.registry import get_backend
    from film.common.init import random_state_dict
    from film.common.training import StepConfig

    impl, h, w, device, train, batch, recompute, heap = (case.impl, case.h, case.w, case.device, case.train,
                                                         case.batch, case.recompute, case.heap)
    spec = IMPLS[impl]
    backend, fast, official = spec.backend, spec.fast, spec.official
    # as film fuse runs (its process keeps freed memory; film.common.heap), and the official code under the glibc
    # tunables (the same two settings); a training step of ours decides in its memory plan
    if spec.process_heap and (impl == "official-heap" or not train):
        from film.common.heap import enable_for_process

        enable_for_process()
    be = get_backend(backend, device)
    be.set_deterministic()
    sd = random_state_dict(seed=0)
    a, b, t = _inputs(h, w, batch if train else 1)
    plan = None
    if train:
        cfg = StepConfig(fast=fast)  # film train's defaults (recompute, fast layout, heap reuse)
        if official:
            cfg = StepConfig(recompute="none", fast=False, heap_reuse=False, micro_batch=batch)
        trainer = be.make_trainer(device, OFFICIAL)
        if recompute is not None:  # a forced configuration (the memory calibration): the whole batch per forward
            cfg = replace(cfg, recompute=recompute, heap_reuse=bool(heap), micro_batch=batch)
        elif not official:
            p = trainer.plan(cfg, batch, h, w)
            cfg = replace(cfg, micro_batch=p.micro_batch, heap_reuse=p.heap_reuse, recompute=p.recompute)
            plan = p.describe(batch)
        trainer.build(cfg, sd)
        if official:  # the official-style forward inside the same training step
            trainer.forward = be.reference_model(trainer.model)
        layout = "nhwc" if be.is_fast(trainer.model) else "nchw"

        def once():
            return trainer.step(a, b, t, cfg)[2]
    elif backend == "onnx":  # the same seeded weights, exported once per bench run (not timed)
        path = os.path.join(os.path.dirname(case.out_npy) if case.out_npy else tempfile.gettempdir(), "film_bench.onnx")
        if not os.path.exists(path):
            from film.export import export

            export("random", path)
        model, _ = be.load_model(path, None, device)
        layout = f"onnxruntime {device}"

        def once():
            return be.forward_numpy(model, a, b, t)
    elif impl in OFFICIAL_CODE:  # the official network itself, as its test.py runs it (torch.no_grad, NCHW)
        import torch

        net = _official_code_net(os.environ["FILM_OFFICIAL_CODE"])(hidden_dim=256, image2text_dim=32)
        net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)  # the official names
        net = net.to(device).eval()
        layout = "nchw (official code)"
        xa, xb, xt = (torch.from_numpy(x).to(device) for x in (a, b, t))

        def once():
            with torch.no_grad():
                return net(xa, xb, xt).cpu().numpy()
    elif spec.library:  # a host program's call: load_fuser(...).fuse() on HxW arrays
        import film

        fuser = film.load_fuser(sd, backend=backend, device=device, precision=spec.precision)
        layout = "nhwc" if fuser.impl.is_fast(fuser.model) else "nchw"

        def once():
            return fuser.fuse(a[0, 0], b[0, 0], t[0])[None, None]
    else:
        model = be.set_fast(be.build_model(OFFICIAL, sd, device), fast)
        layout = "nhwc" if be.is_fast(model) else "nchw"
        runner = be.reference_model(model) if official else model

        def once():
            return be.forward_numpy(runner, a, b, t)

    from film.common.heap import is_on as heap_is_on

    for _ in range(case.warmup):
        once()
    be.gpu_memory_mb(reset=True)
    times: list[float] = []
    for _ in range(case.repeats):
        t0 = time.perf_counter()
        result = once()  # numpy out: the work is done when it returns
        times.append(time.perf_counter() - t0)
    if case.out_npy:
        np.save(case.out_npy, result)
    return {
        "impl": impl, "layout": layout, "size": f"{h}x{w}", "train": train, "batch": batch if train else 1,
        "plan": plan, "recompute": recompute, "heap_reuse": heap, "median_s": statistics.median(times),
        "times_s": times, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": be.gpu_memory_mb(), "versions": be.versions(), "heap_reuse_on": heap_is_on(),
    }


def case_npy(folder: str, impl: str, size: tuple[int, int], train: bool, batch: int) -> str:
    return os.path.join(folder, f"{impl}_{size[0]}x{size[1]}_{int(train)}_{batch}.npy")


def run_child(case: Case, official_code: str | None = None) -> dict:
    """``run_case`` in a fresh process (``python -m film.bench --case JSON``), so that its peak memory is its own;
    under GLIBC_TUNABLES for the tuned official code. A killed child (the out-of-memory killer, most likely) is a
    row that says so; any other failure is one FilmError with the child's last lines."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if IMPLS[case.impl].tunables:
        env["GLIBC_TUNABLES"] = TUNABLES
    if official_code:  # where run_case finds the official network (its own process, not the caller's environment)
        env["FILM_OFFICIAL_CODE"] = os.path.abspath(official_code)
    if case.recompute is not None:
        env["FILM_SKIP_MEMORY_CHECK"] = "1"
    r = subprocess.run([sys.executable, "-m", "film.bench", "--case", json.dumps(case._asdict())],
                       capture_output=True, text=True, env=env)
    for line in r.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            res = json.loads(line[len(RESULT_TAG):])
            res["_npy"] = case.out_npy
            return res
    if r.returncode < 0:  # killed: the out-of-memory killer, most likely
        return {"impl": case.impl, "size": case.size, "train": case.train, "batch": case.batch,
                "recompute": case.recompute, "heap_reuse": case.heap,
                "failed": f"killed by signal {-r.returncode} (out of memory?)"}
    tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-8:])
    raise FilmError(f"benchmark case {case.impl} {case.size} failed:\n{tail}")


RESULT_TAG = "FILM_BENCH "  # the line of a child's stdout that holds its result


def machine_info(device: str) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d"), "device": device}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    from film.common.precision import cpu_flags

    # the instruction sets that move these timings (oneDNN's kernels, native bf16)
    info["cpu_flags"] = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    if device == "cuda":
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20)
            info["gpu"] = q.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def _repo_root() -> str | None:
    """The source checkout holding benchmarks/ (the package's parent for an editable install, else the cwd)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for root in (here, os.getcwd()):
        if os.path.isfile(os.path.join(root, "benchmarks", "reference_metrics.py")):
            return root
    return None


def bench_metrics(repeats: int = 3) -> dict:
    """film eval's metrics vs the straightforward port (benchmarks/reference_metrics.py) on the shipped samples."""
    root = _repo_root()
    if root is None:
        raise FilmError("film bench --metrics needs the repository's benchmarks/ folder (a source checkout): "
                        "run it from the repository root")
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks import reference_metrics as ref
    from film.common.images import find_ab_folders, find_datasets, match_pairs, read_gray, samples_root
    from film.common.metrics import METRICS, evaluate

    triples = []
    for ds in find_datasets(samples_root()):
        da, db = find_ab_folders(ds)
        for p in match_pairs(da, db):
            a, b = read_gray(p.a), read_gray(p.b)
            f = np.round(np.maximum(a, b) * 0.7 + np.minimum(a, b) * 0.3).astype(np.float32)
            triples.append((f, a, b))
    from concurrent.futures import ThreadPoolExecutor

    def ours():
        with ThreadPoolExecutor(os.cpu_count()) as pool:
            return list(pool.map(lambda x: evaluate(*x), triples))

    def port():
        return [ref.evaluate(*x) for x in triples]

    t_ours, t_port = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r1 = ours()
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        r2 = port()
        t_port.append(time.perf_counter() - t0)
    worst = {m: max(abs(x[m] - y[m]) / max(abs(y[m]), 1e-12) for x, y in zip(r1, r2)) for m in METRICS}
    return {"pairs": len(triples), "ours_s": statistics.median(t_ours), "port_s": statistics.median(t_port),
            "speedup": statistics.median(t_port) / statistics.median(t_ours), "max_rel_diff": worst}


MEMORY_SIZES = ["256x256", "512x512", "768x768"]


def _official_fits(device: str, batch: int, h: int, w: int, heap: bool = False) -> bool:
    """Whether the official-style step (every activation kept, NCHW, glibc's defaults or ``heap`` reuse) fits in
    this machine's memory, by the torch backend's measured constants for that configuration."""
    if device != "cpu":
        return True
    from film.backends.registry import get_backend
    from film.common.memory import available_memory
    from film.common.training import train_memory_need

    need = train_memory_need(*get_backend("torch", device).train_memory("none", heap), batch, h, w, OFFICIAL.token_grid)
    avail = available_memory()
    return avail is None or need <= avail


def _peak_mb(r: dict) -> float:
    """Peak GPU memory on CUDA, peak resident memory of the case's process on CPU."""
    return r["peak_gpu_mb"] if r["peak_gpu_mb"] is not None else r["peak_rss_mb"]


def memory_fit(rows: list[dict]) -> dict:
    """Least-squares line peak_memory = fixed + per_pixel * pixels, per implementation."""
    fits = {}
    for impl in sorted({r["impl"] for r in rows}):
        pts = [r for r in rows if r["impl"] == impl]
        if len(pts) < 2:
            continue
        px = np.array([np.prod([int(v) for v in r["size"].split("x")]) for r in pts], dtype=np.float64)
        mb = np.array([_peak_mb(r) for r in pts])
        slope, fixed = np.polyfit(px, mb * 2**20, 1)
        fits[impl] = {"bytes_per_pixel": float(slope), "mb_per_megapixel": float(slope * 1e6 / 2**20),
                      "fixed_mb": float(fixed / 2**20), "sizes": [r["size"] for r in pts]}
    return fits


def bench(
    device: str = "auto",
    *,
    sizes: list[str] | None = None,
    backends: str | None = None,
    repeats: int = 3,
    warmup: int = 1,
    train: bool = False,
    metrics: bool = False,
    memory: bool = False,
    output: str | None = None,
    train_batches: tuple[int, ...] = (2, 8),
    official_code: str | None = None,
) -> tuple[dict, str]:
    """Time official-style / torch / jittor (each case in its own process) and write the results file;
    returns (results, path). ``backends``: comma list of torch, torch-nchw, torch-nhwc, jittor (official-style
    always runs); ``train``: also a training step at each of ``train_batches`` (film train's Trainer and memory
    plan; official-style where it fits in memory); ``metrics``: film eval vs the straightforward port;
    ``memory``: one cold run per size and a line fit of peak memory per pixel (the constants of each backend's
    ``train_memory`` come from scripts/calibrate_train_memory.py); ``official_code``: a checkout of the official IF-FILM
    repository, timed as it is with glibc's defaults and under GLIBC_TUNABLES (the anchor every ratio is
    also given against)."""
    if device == "auto":
        from film.common.launch import has_nvidia_gpu

        device = "cuda" if has_nvidia_gpu() else "cpu"
    if memory:
        sizes = sizes or MEMORY_SIZES
        repeats, warmup = 1, 0
    if repeats < 1 or warmup < 0:
        raise FilmError("--repeats must be at least 1 and --warmup at least 0")
    size_list = [_parse_size(s) for s in (sizes or DEFAULT_SIZES[device])]
    from film.backends.registry import get_backend

    # the torch layout that "torch" (as shipped) does not use on this device
    other = "torch-nchw" if get_backend(IMPLS["torch"].backend, device).fast_default(device) else "torch-nhwc"
    impls = ["official-style", "official-heap", "torch", "torch-library", other, "jittor", "jittor-library"]
    if _runs_here("torch-library-bf16", device):  # the opt-in bf16 where this device computes it natively
        impls.insert(4, "torch-library-bf16")
    if official_code:
        _official_code_net(official_code)  # refused here, in one line, before any timing
        impls[2:2] = list(OFFICIAL_CODE)
    import importlib.util

    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnxscript"):
        impls.append("onnx")
    if backends:
        names = [ALIASES.get(b, b) for b in backends.split(",") if b]
        bad = [b for b in names if b not in IMPLS or b in BASELINES]
        if bad:
            raise FilmError(f"--backends: unknown {', '.join(bad)} (choose from torch, torch-nchw, torch-nhwc, "
                            "torch-library, torch-library-bf16, jittor, jittor-library, onnx)")
        for name in names:  # a reduced precision this device cannot run: refused here, before any timing
            _check_impl_precision(name, device)
        impls = ["official-style"] + (list(OFFICIAL_CODE) if official_code else []) + list(dict.fromkeys(names))
    kind = "_memory" if memory else ""
    out = output or os.path.join(
        _repo_root() or ".", "benchmarks", "results", f"{time.strftime('%Y-%m-%d')}_{device}{kind}.json"
    )
    check_output_file(out, create_dir=True)  # before minutes of timing, not after
    results = {"machine": machine_info(device), "inference": [], "train_step": [], "metrics": None}
    from tqdm import tqdm

    with tempfile.TemporaryDirectory() as tmp:
        cases = [(i, s, False, 1) for s in size_list for i in impls]
        if train:  # at the training size, 288x384 by default: the official recipe's --small crops
            for bs in train_batches:
                cases += [(i, size_list[0], True, bs) for i in impls
                          if i not in BASELINES + (other, "onnx") and not IMPLS[i].library]
                cases += [(i, size_list[0], True, bs) for i in ("official-style", "official-heap")]
        for impl, size, is_train, bs in tqdm(cases, desc="bench", file=sys.stderr, disable=None):
            if is_train and impl in BASELINES and not _official_fits(device, bs, *size, impl == "official-heap"):
                results["train_step"].append({
                    "impl": impl, "size": f"{size[0]}x{size[1]}", "train": True, "batch": bs,
                    "failed": "not run: the official step at this batch needs more memory than this machine has"})
                continue
            case = Case(impl, *size, device, repeats, warmup, is_train, case_npy(tmp, impl, size, is_train, bs), bs)
            r = run_child(case, official_code)
            (results["train_step"] if is_train else results["inference"]).append(r)
        for group in ("inference", "train_step"):
            for name in BASELINES:
                key = name.replace("-", "_")
                base = {(r["size"], r.get("batch", 1)): r for r in results[group]
                        if r["impl"] == name and "failed" not in r}
                for r in results[group]:
                    b = base.get((r["size"], r.get("batch", 1)))
                    if b is None or "failed" in r:
                        continue
                    if not r["train"]:
                        r[f"max_abs_vs_{key}"] = float(np.abs(np.load(r["_npy"]) - np.load(b["_npy"])).max())
                    r[f"speedup_vs_{key}"] = b["median_s"] / r["median_s"]
                    r[f"memory_vs_{key}"] = _peak_mb(r) / _peak_mb(b)
            for r in results[group]:
                r.pop("_npy", None)
    if memory:
        results["memory_fit"] = memory_fit(results["inference"])
        results["note"] = ("film bench --memory: one cold run per case (no warm-up); the timings are not a "
                           "benchmark, only peak memory is (a fresh process per case).")
    if metrics:
        results["metrics"] = bench_metrics()
    atomic_write_bytes(out, json.dumps(results, indent=2).encode())
    return results, out


def _impl_label(r: dict) -> str:
    """'torch (nhwc)': the as-shipped implementations show the layout they ran in."""
    spec = IMPLS.get(r["impl"])
    shipped = spec is not None and spec.fast is None
    return f"{r['impl']} ({r['layout']})" if shipped and r.get("layout") else r["impl"]


def format_results(res: dict) -> str:
    m = res["machine"]
    isa = f"; {', '.join(m['cpu_flags'])}" if m.get("cpu_flags") and not m.get("gpu") else ""
    lines = [f"device: {m['device']} ({m.get('gpu') or m.get('cpu', '')}{isa}), {m['cpus']} CPUs, {m['date']}", ""]
    rows = res["inference"] + res["train_step"]
    ran = [b for b in BASELINES if any(r["impl"] == b and "failed" not in r for r in rows)]  # columns of run ones
    keys = [b.replace("-", "_") for b in ran]
    lines += ["| what | size | impl | median s | " + "".join(f"vs {b} | " for b in ran) + "peak MB | "
              + "".join(f"memory vs {b} | " for b in ran) + "max abs vs official-style |",
              "|---|---|---|---|" + "---|" * (2 * len(ran) + 2)]

    def ratio(r, k):
        return "" if r.get(k) is None else f"{r[k]:.2f}x"

    for group in ("inference", "train_step"):
        for r in res[group]:
            label = "inference" if group == "inference" else f"train step (bs {r.get('batch', 2)})"
            if "failed" in r:
                lines.append(f"| {label} | {r['size']} | {r['impl']} | {r['failed']} |" + " |" * (2 * len(ran) + 2))
                continue
            d = r.get("max_abs_vs_official_style")
            lines.append(f"| {label} | {r['size']} | {_impl_label(r)} | {r['median_s']:.3f} | "
                         + "".join(f"{ratio(r, f'speedup_vs_{k}')} | " for k in keys) + f"{_peak_mb(r):.0f} | "
                         + "".join(f"{ratio(r, f'memory_vs_{k}')} | " for k in keys)
                         + f"{'' if d is None else f'{d:.1e}'} |")
    plans = [(r["impl"], r.get("batch"), r["plan"]) for r in res["train_step"] if r.get("plan")]
    for impl, bs, plan in plans:
        lines.append(f"\n{impl} train step, bs {bs}: {plan}")
    for impl, f in (res.get("memory_fit") or {}).items():
        lines.append(f"\npeak memory {impl}: {f['mb_per_megapixel']:.0f} MB per megapixel + {f['fixed_mb']:.0f} MB "
                     f"(fit over {', '.join(f['sizes'])})")
    if res.get("note"):
        lines.append(f"\nnote: {res['note']}")
    if res.get("metrics"):
        mm = res["metrics"]
        lines.append(f"\nmetrics on {mm['pairs']} shipped pairs: film eval {mm['ours_s']:.2f}s vs straightforward port "
                     f"{mm['port_s']:.2f}s = {mm['speedup']:.1f}x; max rel diff {max(mm['max_rel_diff'].values()):.1e}")
    return "\n".join(lines)


def _main(argv: list[str] | None = None) -> int:
    """A child of ``run_child``: run one case, print its result on the RESULT_TAG line."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m film.bench", description="one film bench case (film bench runs these)")
    p.add_argument("--case", required=True, help="the Case as JSON")
    case = Case(**json.loads(p.parse_args(argv).case))
    print(RESULT_TAG + json.dumps(run_case(case)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
