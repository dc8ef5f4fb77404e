"""Atomic writes and output checks: every file film writes goes to a temporary file beside the target and is
renamed over it, so a failure, a full disk or an interrupt leaves the previous file intact and no partial file;
output locations are checked (and folders made) with one clear FilmError before any work."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from film.errors import FilmError


def _target_mode(path: str) -> int:
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


TEMP_PREFIX = ".film-tmp-"  # a file being written; renamed when complete (what a kill leaves behind is only these)


def _make_temp(path: str) -> str:
    """An empty temp file next to ``path``, or one FilmError saying why there can be none."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise FilmError(f"{path}: is a folder; give a file name")
    if not os.path.isdir(directory):
        raise FilmError(f"{path}: output folder {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise FilmError(f"{path}: output folder {directory} is not writable")
    try:  # root passes os.access everywhere, but /sys, /proc or a read-only mount still refuse the file
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=os.path.splitext(path)[1], dir=directory)
        os.close(fd)
    except OSError as e:
        raise FilmError(f"{path}: cannot write in {directory} ({e.strerror or e})") from None
    return tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temp path next to ``path``; on success rename it over ``path``, else delete it.

    A crash or a full disk during the write leaves the previous ``path`` untouched and no partial file.
    """
    path = os.fspath(path)
    tmp = _make_temp(path)
    try:
        yield tmp
        # mkstemp makes the file 0600; give it the mode a plain open() would (or the replaced file's)
        os.chmod(tmp, _target_mode(path))
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise FilmError(f"{path}: could not write ({e.strerror or e}); nothing was changed") from e
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def make_dirs(path: str | os.PathLike, what: str = "output folder") -> str:
    """``os.makedirs(path, exist_ok=True)`` that fails with one clear FilmError (unwritable, a file in the
    way, /proc, ...) instead of an OSError traceback. Every command creates its output folders with this."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise FilmError(f"{path}: cannot use as {what}: a file of that name exists")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise FilmError(f"{path}: cannot create {what} ({e.strerror or e})") from None
    if not os.access(path, os.W_OK):
        raise FilmError(f"{path}: {what} is not writable")
    return path


def check_can_make_dirs(path: str | os.PathLike, what: str = "output folder") -> str:
    """Fail early, with one clear FilmError, when ``make_dirs(path)`` would fail later, without creating anything
    (so that a command failing in between, e.g. on a model that cannot be loaded, leaves no empty folder)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise FilmError(f"{path}: cannot use as {what}: a file of that name exists")
        if not os.access(path, os.W_OK):
            raise FilmError(f"{path}: {what} is not writable")
        return path
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise FilmError(f"{path}: cannot create {what}: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FilmError(f"{path}: cannot create {what}: {parent} is not writable")
    return path


def check_output_file(path: str | os.PathLike, create_dir: bool = False) -> str:
    """Fail early, with one clear FilmError, when ``path`` could not be written later (before minutes of
    work): the folder is missing (or, with ``create_dir``, cannot be made), unwritable, or refuses files."""
    path = os.fspath(path)
    if create_dir:
        make_dirs(os.path.dirname(os.path.abspath(path)))
    tmp = _make_temp(path)
    with contextlib.suppress(OSError):
        os.unlink(tmp)
    return path


@contextlib.contextmanager
def guarded_write(path: str | os.PathLike, what: str = "file") -> Iterator[None]:
    """Turn an OSError raised while writing ``path`` in place (logs appended to, copies) into one FilmError."""
    try:
        yield
    except OSError as e:
        raise FilmError(f"{os.fspath(path)}: could not write {what} ({e.strerror or e})") from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
