"""The torch backend's CPU workspace: feature maps reused inside a forward, without touching malloc.

A FILM forward at 480x640 allocates and frees ~100 feature maps of 20-160 MB. torch's default CPU allocator
hands each to glibc, which serves blocks over 32 MB with a fresh ``mmap`` and unmaps them on ``free``: every
map is faulted in page by page again (3.5 us a page on the 2-core VMs we measure on: over a third of a forward).
The usual cure, glibc's ``M_MMAP_MAX=0`` / ``M_TRIM_THRESHOLD`` or a preloaded jemalloc, changes the malloc of
the whole process, which a library must not do to its host program (``film.common.heap``: the ``film``
command still does it for its own process).

This module installs, once, a small ``c10::Allocator`` as torch's CPU allocator (``workspace.cpp``, built with
the system's C++ compiler against torch's own headers on first use, ~3 s, cached under ``~/.cache/film``):

* outside a forward it passes every block straight through to ``c10::alloc_cpu`` / ``c10::free_cpu``, as
  torch's default allocator does;
* inside ``scope()`` (the torch backend's ``forward_numpy``: ``Fuser.fuse``, ``fuse_folder``, ``film serve``,
  ``film parity``) each block of 1 MiB or more is mapped by the workspace and, when freed, kept for the next
  block of (nearly) the same size; at the end of a forward the kept blocks it used stay for the next forward
  (a folder of same-size pairs faults its maps in once), those it did not use (another size) are unmapped;
* ``release()`` unmaps every kept block (``Fuser.release_memory()``; also when the last Fuser is collected, and
  before the memory check refuses a forward). The host's own allocations never land in the workspace outside a
  forward, and glibc's settings are never changed, so a block the host frees goes back to the system as usual.

Numbers are unchanged (the same kernels run on other addresses). ``FILM_TORCH_WORKSPACE=0`` turns it off; where
it cannot be built (no C++ compiler, no torch headers) torch's default allocator runs, and ``status()`` says why.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import subprocess
import tempfile
import threading

from film.common.atomic import TEMP_PREFIX

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workspace.cpp")
_lock = threading.Lock()
_state: dict = {}  # "lib": ctypes.CDLL or None, "why": reason when None


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "film")


def _build(torch) -> str:
    """Path of the shared library for this torch (built once, atomically; raises OSError / RuntimeError)."""
    root = os.path.dirname(torch.__file__)
    inc, libdir = os.path.join(root, "include"), os.path.join(root, "lib")
    with open(_SRC, "rb") as f:
        src = f.read()
    with open(os.path.join(inc, "c10", "core", "Allocator.h")) as f:
        copy_data = "copy_data(void* dest" in f.read()  # pure virtual since torch 2.3
    abi = int(torch.compiled_with_cxx11_abi())
    key = hashlib.sha256(src + f"{torch.__version__}|{root}|{abi}|{copy_data}".encode()).hexdigest()[:16]
    out = os.path.join(_cache_dir(), f"torch_workspace_{key}.so")
    if os.path.exists(out):
        return out
    os.makedirs(_cache_dir(), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".so", dir=_cache_dir())
    os.close(fd)
    cxx = os.environ.get("CXX", "g++")
    cmd = [cxx, "-O2", "-shared", "-fPIC", "-std=c++17", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-I", inc, _SRC,
           "-o", tmp, "-L", libdir, "-Wl,--no-as-needed", "-lc10", f"-Wl,-rpath,{libdir}"]
    if copy_data:
        cmd.insert(1, "-DFILM_ALLOCATOR_COPY_DATA")
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError((r.stderr or r.stdout).strip().splitlines()[-1:] or ["compiler failed"])
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _lib():
    """The loaded, installed workspace library, or None (``_state['why']`` says why)."""
    if "lib" in _state:
        return _state["lib"]
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        lib, why = None, ""
        if os.environ.get("FILM_TORCH_WORKSPACE", "1") == "0":
            why = "off (FILM_TORCH_WORKSPACE=0)"
        else:
            import torch

            try:
                cand = ctypes.CDLL(_build(torch))
                cand.film_release.restype = ctypes.c_long
                cand.film_stat.restype = ctypes.c_long
                if cand.film_install() == 1:
                    lib = cand
                else:
                    why = "another CPU allocator with a higher priority is installed in torch"
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                why = f"could not be built ({e}); torch's default allocator runs"
        _state.update(lib=lib, why=why)
        return lib


def status() -> str:
    """One line for results files and ``film parity``: whether the workspace runs, and if not, why."""
    lib = _lib()
    return "on" if lib is not None else _state["why"]


@contextlib.contextmanager
def scope():
    """Within the block, torch's big CPU blocks are kept for reuse (nesting- and thread-safe)."""
    lib = _lib()
    if lib is None:
        yield
        return
    lib.film_enter()
    try:
        yield
    finally:
        lib.film_exit()


def release() -> int:
    """Unmap every kept block; returns the bytes given back to the system."""
    lib = _state.get("lib")
    return int(lib.film_release()) if lib is not None else 0


def stats() -> dict:
    """Kept / live / peak mapped bytes, reuses, fresh maps, bytes ever mapped (empty when the workspace is off)."""
    lib = _lib()
    if lib is None:
        return {}
    names = ("kept_bytes", "live_bytes", "peak_bytes", "reuses", "maps", "mapped_total")
    return {n: int(lib.film_stat(i)) for i, n in enumerate(names)}
