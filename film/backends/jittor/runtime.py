"""Configure and import Jittor so that users never set Jittor's environment by hand.

Jittor reads its configuration from environment variables at import time, so everything here
happens right before ``import jittor`` and uses ``os.environ.setdefault`` (a user's own setting wins):

* no GPU (or ``device='cpu'``): ``nvcc_path=""`` — otherwise Jittor finds a CUDA toolkit without a
  driver and dies loading libcudart; the build is CPU-only.
* oneDNN without a download: Jittor's ``mkl`` ops (its convolutions, forward and backward) need oneDNN 2.2,
  which Jittor would download. ``pip install 'film-fusion[jittor]'`` brings that exact version from PyPI
  (``onednn-cpu-gomp`` / ``onednn-devel-cpu-gomp`` 2021.2.0, into ``<env>/lib`` and ``<env>/include``); we
  link it where Jittor looks before downloading (``<jittor home>/.cache/jittor/mkl/dnnl_lnx_2.2.0_cpu_gomp``)
  and set ``use_mkl=1``. Where it is missing or does not load, ``use_mkl=0`` (Jittor's own kernels) with a
  one-line note; :func:`onednn_status` says which path runs. docs/jittor_onednn.md has the recipe.
* CUDA 13 (see docs/gpu.md): the cudaDeviceProp fields Jittor reads were removed; a ``-D`` shim and
  C++20 make its headers compile, cutlass/cutt/nccl (downloads) are off, and its own convolution is
  used instead of cuDNN 8 names. Built in a separate cache (``cache_name``).
* ``log_silent=1`` keeps Jittor's info lines off the user's terminal (``FILM_JITTOR_VERBOSE=1`` shows them).
* ``use_parallel_op_compiler=0``: Jittor compiles (and loads from its cache) the operators of a new graph one at
  a time, in the thread that runs it, instead of in up to 16 threads. Its parallel compiler is not thread-safe:
  the main thread takes the cache's file lock for all of them (``jittor::lock_guard`` then skips the lock in
  every worker), and we saw a worker segfault ("Caught segfault ... thread_name: 'C2'", CI, warm cache) and a
  freshly compiled operator fail to load ("Loading symbol ...jit_run... failed: undefined symbol", issue 20).
  Measured cost: a cold compile of the training graph takes 183 s instead of 109 s (2 cores), once per
  machine; a warm cache loads in about the same time. ``use_parallel_op_compiler=16`` brings the old way back.

When its compile flags change Jittor prints "please rerun" and calls ``sys.exit(0)`` in the middle of
the import. We therefore warm Jittor up in a child process first (once per environment, remembered
in a stamp file), and turn any remaining ``SystemExit`` into a clear error.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys

from film.common.launch import MPI_INSTALL_HINT, has_nvidia_gpu, mpi_world_size, mpicc
from film.errors import FilmError

_imported = None


def check_mpi() -> None:
    """Under mpirun, Jittor needs mpicc at import (it compiles its MPI ops with it); without it, Jittor's
    import fails deep inside (``mpi`` is None) or, worse, every rank trains alone. Refuse clearly instead."""
    if "OMPI_COMM_WORLD_SIZE" in os.environ and mpicc() is None:
        raise FilmError(
            f"started by mpirun ({mpi_world_size()} processes), but Jittor's MPI support needs mpicc, "
            f"which is not on PATH: {MPI_INSTALL_HINT}"
        )


def bind_rank_to_gpu() -> None:
    """One GPU per MPI rank: rank r on this machine sees only the r-th visible GPU. (Jittor itself binds
    ranks to GPUs only in its NCCL setup, which the CUDA 13 recipe turns off.) Untested: no GPU here."""
    local = os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK")
    if local is None or mpi_world_size() < 2:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(len(glob.glob("/dev/nvidia[0-9]*")))]
    if ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ids[int(local) % len(ids)]


ONEDNN_DIR = "dnnl_lnx_2.2.0_cpu_gomp"  # the folder Jittor 1.3.11's install_mkl would download and unpack
_onednn_note = ""  # why the fallback runs, for onednn_status()


def jittor_home() -> str:
    """Jittor's home as ``jittor_utils.home()`` computes it (without importing Jittor)."""
    if os.environ.get("JITTOR_HOME"):
        return os.path.abspath(os.environ["JITTOR_HOME"])
    try:
        with open(os.path.join(os.path.expanduser("~"), ".cache", "jittor", "config.json")) as f:
            return os.path.abspath(json.load(f).get("JITTOR_HOME", os.path.expanduser("~")))
    except (OSError, ValueError, AttributeError):
        return os.path.expanduser("~")


def pip_onednn() -> tuple[str, str] | None:
    """(include, lib) of oneDNN 2.2 installed by pip into this Python environment, or None."""
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        inc, lib = os.path.join(prefix, "include"), os.path.join(prefix, "lib")
        version = os.path.join(inc, "oneapi", "dnnl", "dnnl_version.h")
        try:
            with open(version) as f:
                text = f.read()
        except OSError:
            continue
        if "DNNL_VERSION_MAJOR 2" in text and "DNNL_VERSION_MINOR 2" in text and os.path.isfile(
            os.path.join(lib, "libmkldnn.so")
        ):
            return inc, lib
    return None


def link_onednn(inc: str, lib: str) -> str:
    """Make <jittor home>/.cache/jittor/mkl/dnnl_lnx_2.2.0_cpu_gomp point at this environment's oneDNN
    (links, re-pointed when they lead elsewhere; a real folder from Jittor's own download is left alone)."""
    home = os.path.join(jittor_home(), ".cache", "jittor", "mkl", ONEDNN_DIR)
    libdir = os.path.join(home, "lib")
    os.makedirs(libdir, exist_ok=True)
    links = {os.path.join(home, "include"): inc}
    for name in os.listdir(lib):
        if name.startswith(("libdnnl.so", "libmkldnn.so")):
            links[os.path.join(libdir, name)] = os.path.join(lib, name)
    for dst, src in links.items():
        if os.path.islink(dst) and os.readlink(dst) == src:
            continue
        if os.path.exists(dst) and not os.path.islink(dst):
            continue  # Jittor's own download: keep it
        tmp = f"{dst}.film-{os.getpid()}"
        os.symlink(src, tmp)
        os.replace(tmp, dst)
    return home


def configure_onednn() -> None:
    """use_mkl=1 with pip's oneDNN 2.2 where available (see the module doc), else use_mkl=0; a user's own
    ``use_mkl`` wins."""
    global _onednn_note
    if "use_mkl" in os.environ:
        if os.environ["use_mkl"] == "0":
            _onednn_note = "use_mkl=0 set"
        return
    found = pip_onednn() if platform.system() == "Linux" and platform.machine() == "x86_64" else None
    if found is None:
        _onednn_note = "oneDNN 2.2 not installed (pip install onednn-cpu-gomp==2021.2.0 onednn-devel-cpu-gomp==2021.2.0)"
        os.environ["use_mkl"] = "0"
        return
    try:
        link_onednn(*found)
    except OSError as e:
        _onednn_note = f"cannot link oneDNN into Jittor's cache ({e.strerror or e})"
        os.environ["use_mkl"] = "0"
        return
    os.environ["use_mkl"] = "1"


def onednn_status() -> str:
    """Which convolution path Jittor runs: 'oneDNN 2.2 (...)' or "Jittor's own kernels (why)"."""
    if os.environ.get("use_mkl") == "1":
        found = pip_onednn()
        return f"oneDNN 2.2 ({found[1] if found else 'Jittor cache'})"
    return f"Jittor's own kernels ({_onednn_note or 'use_mkl=0'})"


def configure_env(device: str = "auto") -> str:
    """Set Jittor's environment for ``device`` ('auto', 'cpu', 'cuda'); return the resolved device."""
    want_cuda = device.startswith("cuda") or (device == "auto" and has_nvidia_gpu())
    if device.startswith("cuda") and not has_nvidia_gpu():
        raise FilmError(f"device {device!r} requested but no NVIDIA GPU is visible")
    if want_cuda:
        os.environ.setdefault("use_mkl", "0")
    else:
        configure_onednn()
    if os.environ.get("FILM_JITTOR_VERBOSE", "0") != "1":
        os.environ.setdefault("log_silent", "1")
    os.environ.setdefault("use_parallel_op_compiler", "0")  # its threads race (module docstring)
    if not want_cuda:
        os.environ.setdefault("nvcc_path", "")
        return "cpu"
    bind_rank_to_gpu()
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    os.environ.setdefault("nvcc_path", os.path.realpath(nvcc) if os.path.exists(nvcc) else nvcc)
    for k, v in (
        ("use_cutt", "0"),
        ("use_cutlass", "0"),
        ("use_nccl", "0"),
        ("conv_opt", "1"),
        ("cache_name", "film-cuda"),
    ):
        os.environ.setdefault(k, v)
    os.environ.setdefault("cc_flags", "-DclockRate=multiProcessorCount -DcomputeMode=integrated -std=c++20")
    return "cuda"


def _stamp_path() -> str:
    keys = (
        "nvcc_path",
        "use_mkl",
        "cc_flags",
        "cache_name",
        "use_cutt",
        "use_cutlass",
        "use_nccl",
        "conv_opt",
    )
    ident = "|".join([sys.executable, sys.version] + [f"{k}={os.environ.get(k, '')}" for k in keys])
    ident += f"|mpicc={mpicc() or ''}|onednn={pip_onednn()}"  # installing OpenMPI later makes Jittor compile its MPI ops: warm up again
    try:
        from importlib.metadata import version

        ident += "|jittor=" + version("jittor")
    except Exception:  # metadata missing: still stamp on the rest
        pass
    h = hashlib.sha1(ident.encode()).hexdigest()[:16]
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "film-fusion", f"jittor-ready-{h}")


def _write_stamp(stamp: str, text: str) -> None:
    os.makedirs(os.path.dirname(stamp), exist_ok=True)
    with open(stamp, "w") as f:
        f.write(text + "\n")


def _fall_back_to_own_kernels(why: str, quiet: bool) -> None:
    global _onednn_note
    _onednn_note = why
    os.environ["use_mkl"] = "0"
    if not quiet:
        print(f"film: Jittor runs without oneDNN ({why}); its own kernels are slower", file=sys.stderr, flush=True)


def _without_onednn(stamp: str, why: str, quiet: bool) -> None:
    """Remember (in the use_mkl=1 stamp) why oneDNN failed, and prepare Jittor with its own kernels."""
    _write_stamp(stamp, f"no-mkl: {why}")
    _fall_back_to_own_kernels(why, quiet)
    warm_up(quiet)


def warm_up(quiet: bool = False) -> None:
    """Import Jittor in child processes until it imports without asking for a rerun (first use compiles).

    With ``use_mkl=1`` the child also checks that Jittor's oneDNN ops loaded; where they did not, Jittor is
    prepared again with its own kernels (``use_mkl=0``), and the failure is remembered in the stamp."""
    stamp = _stamp_path()
    if os.path.exists(stamp):
        with open(stamp) as f:
            text = f.read().strip()
        if text.startswith("no-mkl:") and os.environ.get("use_mkl") == "1":
            _fall_back_to_own_kernels(text[len("no-mkl:") :].strip(), quiet=True)
            warm_up(quiet)
        return
    if not quiet:
        print(
            "film: preparing Jittor for this machine (the first time compiles its core: a few minutes)...",
            file=sys.stderr,
            flush=True,
        )
    code = (
        "import jittor as jt; v = (jt.ones(2) * 2).sum().item(); print('FILM_JITTOR_OK', v); "
        "from jittor import compile_extern as ce; print('FILM_JITTOR_MKL', ce.mkl_ops is not None)"
    )
    # the child is a plain process even under mpirun (it still compiles the MPI ops when mpicc exists):
    # OpenMPI's variables would make it a second, unexpected MPI process
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}
    want_mkl = os.environ.get("use_mkl") == "1"
    last = ""
    for _ in range(3):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        last = (r.stdout + r.stderr).strip()
        if r.returncode == 0 and "FILM_JITTOR_OK 4.0" in r.stdout:
            if want_mkl and "FILM_JITTOR_MKL True" not in r.stdout:
                return _without_onednn(stamp, "its oneDNN ops did not load", quiet)
            _write_stamp(stamp, "ok")
            return
        if r.returncode != 0:
            break
    tail = "\n".join(last.splitlines()[-15:])
    if want_mkl:  # e.g. oneDNN's headers or library unusable: the build without it may still work
        why = "building its oneDNN ops failed: " + (last.splitlines()[-1][:160] if last else "no output")
        return _without_onednn(stamp, why, quiet)
    raise FilmError(f"Jittor could not be prepared on this machine:\n{tail}")


NUMPY_FIX = 'pip install "numpy>=1.23,<2"'


def check_numpy() -> None:
    """Jittor 1.3.x under numpy 2 returns wrong numbers without an error (measured: fused outputs up to 8.5e14
    and NaN where the sigmoid output lies in [0, 1]). Refuse before Jittor is imported, with the fix. Runs on
    every use of the backend (cheap), so numpy upgraded under a running program is caught too."""
    import numpy

    version = getattr(numpy, "__version__", "0")
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    if major >= 2:
        raise FilmError(
            f"the jittor backend needs numpy<2, but numpy {version} is installed (Jittor 1.3 gives wrong "
            f"numbers under numpy 2, without an error): {NUMPY_FIX}"
        )


def import_jittor(device: str = "auto"):
    """Configure the environment, warm up once, and import Jittor in this process."""
    global _imported
    check_numpy()
    if _imported is not None:
        return _imported
    if "jittor" not in sys.modules:
        try:
            import importlib.util

            if importlib.util.find_spec("jittor") is None:
                raise ImportError
        except ImportError:
            raise FilmError(
                "the jittor backend needs jittor, which is not installed: pip install 'film-fusion[jittor]' "
                "(needs numpy<2 and a C++ compiler)"
            ) from None
        configure_env(device)
        check_mpi()
        warm_up(quiet=mpi_world_size() > 1 and os.environ.get("OMPI_COMM_WORLD_RANK", "0") != "0")
    try:
        import jittor
    except SystemExit:
        raise FilmError("Jittor rebuilt part of itself during import; run the command again") from None
    except ImportError:
        raise FilmError(
            "the jittor backend needs jittor, which is not installed: pip install 'film-fusion[jittor]'"
        ) from None
    _imported = jittor
    restore_signal_handlers()
    return jittor


def restore_signal_handlers() -> None:
    """Undo what Jittor's import does to the process's signals (main thread only; elsewhere Python cannot):

    * SIGINT: Jittor's handler logs "Caught SIGINT, quick exit" and ends the process with code 1 at once, so
      Ctrl-C skipped film's "interrupted" line, exit code 130 and every cleanup (temporary files). Python's own
      handler is back: KeyboardInterrupt, as with the torch backend.
    * SIGCHLD: Jittor quick-exits the whole process, code 1, when *any* child process dies of a signal. A test
      run that times out a subprocess, a launcher whose worker is killed, or a compiler killed for memory then
      ended the parent (pytest itself: exit 1, no summary line). The default (ignore) is back.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)


if __name__ == "__main__":  # python -m film.backends.jittor.runtime: compile/check Jittor once
    try:
        check_numpy()
    except FilmError as e:
        print(f"film: error: {e}", file=sys.stderr)
        sys.exit(2)
    configure_env(sys.argv[1] if len(sys.argv) > 1 else "auto")
    warm_up()
    print(f"film: Jittor ready ({_stamp_path()})")
