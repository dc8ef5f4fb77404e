"""Keep freed memory for reuse: glibc malloc settings for processes that run FILM on the CPU.

A FILM forward at 480x640 allocates and frees ~100 feature maps of 20-150 MB, a training step many more. glibc
serves every block over its mmap threshold (at most 32 MB) with a fresh ``mmap`` and gives it back on
``free``, so each map is faulted in page by page, zeroed by the kernel, again and again: on the 2-core VMs we
measure on, over half of a torch forward and of a training step was the kernel handing out pages (``sys``
time above ``user``); the official training step gets 2.3x faster from this alone. PyTorch's CPU guides
preload jemalloc or tcmalloc for the same reason. Here, two settings of glibc's ``mallopt``:
``M_MMAP_MAX = 0`` (big blocks come from the heap) and ``M_TRIM_THRESHOLD = 2 GiB`` (freed memory stays in
the heap for the next block). What it costs: the heap keeps what it once held, so peak resident memory rises
(~20 % for a forward; for a training step the heap also fragments, ~2x its live maps: film train's memory
plan counts it and turns it off when that would not fit).

Who changes it:

* the ``film`` command line, for its own process, once, at start (``enable_for_process``), and leaves it on;
* library code only when asked: ``with film.reuse_freed_memory(): ...`` (this module's context manager),
  ``film.train.train(..., heap_reuse=True)``, or a ``StepConfig(heap_reuse=True)`` given to a backend's
  Trainer (for the trainer's life). ``Fuser.fuse`` and ``fuse_folder`` never change it themselves: a library
  forward of the torch backend gets the same reuse from its own CPU workspace instead, without touching malloc
  (``film/backends/torch/workspace.py``), so the opt-in is no longer needed for speed.

What the context manager does to the process, all threads: on entry the two settings above; on exit glibc's
stock values (``M_MMAP_MAX`` 65536, ``M_TRIM_THRESHOLD`` 128 KiB; glibc offers no way to read a process's
current values, so settings made by the host program with ``mallopt`` are not restored, and glibc's dynamic
mmap threshold stays off, as after any ``mallopt`` of these), then ``malloc_trim(0)`` gives the free heap back.
``GLIBC_TUNABLES`` set at process start are read by glibc into the same settings. A no-op off glibc;
``FILM_HEAP=default`` turns all of it off.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_GLIBC_MMAP_MAX = 65536  # glibc's defaults, set on exit of the context manager
_GLIBC_TRIM_THRESHOLD = 128 * 1024
KEEP_BYTES = 2**31 - 1  # free memory kept at the top of the heap (mallopt takes an int)

_lock = threading.Lock()
_depth = [0]
_libc: list = []


def _glibc():
    if not _libc:
        lib = None
        try:
            name = ctypes.util.find_library("c")
            cand = ctypes.CDLL(name) if name else None
            if cand is not None and hasattr(cand, "mallopt") and hasattr(cand, "malloc_trim") and hasattr(
                cand, "gnu_get_libc_version"
            ):
                lib = cand
        except OSError:
            lib = None
        _libc.append(lib)
    return _libc[0]


def enabled() -> bool:
    return os.environ.get("FILM_HEAP", "reuse") != "default" and _glibc() is not None


_process_wide = [False]


def enable_for_process() -> bool:
    """Turn the reuse on for the rest of this process (the film command line, which owns its process); True if
    it took effect (glibc, and FILM_HEAP not ``default``)."""
    libc = _glibc() if enabled() else None
    if libc is None:
        return False
    with _lock:
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES)
        _process_wide[0] = True
    return True


def is_on() -> bool:
    """Whether freed memory is being kept for reuse now (process-wide or inside the context manager)."""
    return _process_wide[0] or _depth[0] > 0


@contextlib.contextmanager
def reuse_freed_memory():
    """Within the block, big allocations come from glibc's heap and freed ones are reused (nesting-safe; a no-op
    when ``enable_for_process`` already did it). See the module doc for what this changes in the process."""
    libc = _glibc() if enabled() else None
    if libc is None or _process_wide[0]:
        yield
        return
    with _lock:
        if _depth[0] == 0:
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES)
        _depth[0] += 1
    try:
        yield
    finally:
        with _lock:
            _depth[0] -= 1
            if _depth[0] == 0:
                libc.mallopt(M_MMAP_MAX, _GLIBC_MMAP_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, _GLIBC_TRIM_THRESHOLD)
                libc.malloc_trim(0)
