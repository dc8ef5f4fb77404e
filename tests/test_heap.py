"""film.common.heap: within the scope, big blocks come from glibc's heap (no mmap) and stay for reuse; outside
it glibc's defaults hold. Judged by glibc's own accounting (mallinfo2), not by the module's code."""

import ctypes
import ctypes.util
import os

import numpy as np
import pytest

from film.common import heap


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _libc():
    name = ctypes.util.find_library("c")
    lib = ctypes.CDLL(name) if name else None
    if lib is None or not hasattr(lib, "mallinfo2"):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    lib.mallinfo2.restype = _MallInfo2
    return lib


BIG = 96 << 20  # above glibc's largest dynamic mmap threshold (32 MiB): mmapped by default


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _mmapped_growth(lib) -> int:
    """mmapped bytes added by one block larger than the whole heap (so no free chunk left in the heap by
    earlier forwards can serve it: by default it must be mmapped), untouched."""
    before = lib.mallinfo2().hblkhd
    x = np.empty((lib.mallinfo2().arena + BIG) // 8)
    grown = lib.mallinfo2().hblkhd - before
    del x
    return grown


def test_scope_serves_big_blocks_from_the_heap_and_restores_defaults(monkeypatch):
    lib = _libc()
    monkeypatch.delenv("FILM_HEAP", raising=False)
    assert _mmapped_growth(lib) >= BIG  # glibc's default: a fresh mmap
    with heap.reuse_freed_memory():
        assert _mmapped_growth(lib) == 0
        with heap.reuse_freed_memory():  # nested: still on
            assert _mmapped_growth(lib) == 0
        assert _mmapped_growth(lib) == 0  # the inner exit does not end the outer scope
        x = np.ones(BIG // 8)  # touched: resident
        del x
        assert lib.mallinfo2().fordblks >= BIG  # the freed block stays in the heap for the next map...
        kept = _rss()
        assert kept >= BIG  # ...still resident
    assert _rss() <= kept - BIG // 2  # malloc_trim on exit gave its pages back
    assert _mmapped_growth(lib) >= BIG  # defaults again


def test_opt_out(monkeypatch):
    lib = _libc()
    monkeypatch.setenv("FILM_HEAP", "default")
    with heap.reuse_freed_memory():
        assert _mmapped_growth(lib) >= BIG


_PROBE = """
import ctypes, numpy as np
class M(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                  "fsmblks", "uordblks", "fordblks", "keepcost")]
lib = ctypes.CDLL("libc.so.6"); lib.mallinfo2.restype = M
def grown():
    before = lib.mallinfo2().hblkhd
    x = np.empty((lib.mallinfo2().arena + (96 << 20)) // 8)
    g = lib.mallinfo2().hblkhd - before
    del x
    return g
"""

# a probe process's resident memory, and how much of the host program's own 200 MB block (malloc'ed, touched,
# freed) stays resident after its free: all of it leaves with glibc's defaults
HOST_BLOCK = """
import os, numpy as np
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def host_block():
    x = np.ones(200 * 2**20 // 8); held = rss(); del x
    return held - rss()
"""


def test_library_use_leaves_malloc_alone_and_the_cli_owns_its_process(tb):
    """Fuser.fuse (library use) changes no malloc setting of the host process; enable_for_process (what the film
    command does for fuse and parity) turns the reuse on for good, and a context manager's exit keeps it on."""
    import subprocess
    import sys

    _libc()
    code = _PROBE + (
        "import film, numpy as np\n"
        "f = film.load_fuser('random', backend='torch', device='cpu')\n"
        "f.fuse(np.random.rand(40, 48).astype('float32'), np.random.rand(40, 48).astype('float32'),"
        " np.random.rand(9, 768).astype('float32'))\n"
        "print('library', grown())\n"
        "from film.common import heap\n"
        "heap.enable_for_process()\n"
        "with heap.reuse_freed_memory():\n    pass\n"
        "print('cli', grown())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "FILM_HEAP"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    got = dict(line.split() for line in r.stdout.splitlines() if line.split()[0] in ("library", "cli"))
    assert int(got["library"]) >= BIG, r.stdout + r.stderr  # glibc's default after a library fuse
    assert int(got["cli"]) == 0, r.stdout + r.stderr


def test_public_opt_in_name():
    """The README and the heap docstring point library users at film.reuse_freed_memory."""
    import film

    assert film.reuse_freed_memory is heap.reuse_freed_memory and "reuse_freed_memory" in film.__all__
