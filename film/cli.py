"""``film`` command line: ``main`` and its error handling. Each subcommand is a module of film/commands/
(convert, parity, fuse, eval, prepare, train, text, describe, export, curves, bench, serve).

Every expected problem is a :class:`film.FilmError`: one line (or one block) on stderr, exit code 2,
no traceback. Anything unexpected is reported in one line with exit code 1 (FILM_DEBUG=1 shows the
traceback).
"""

from __future__ import annotations

import argparse
import os
import sys

from film.commands import register_all
from film.errors import FilmError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="film", description="FILM image fusion in PyTorch and Jittor")
    from film import __version__

    p.add_argument("--version", action="version", version=f"film {__version__}")
    p.set_defaults(argv=None)  # main's argv: film train --nproc re-launches the same command
    register_all(p.add_subparsers(dest="command", required=True))
    return p


def _failed(code: int) -> int:
    """A failing rank of torchrun / mpirun ends at once, without the interpreter's exit handlers: Jittor's
    MPI_Finalize at exit waits for ranks that are themselves waiting in an all-reduce for this one, so the job
    would hang; ending without it makes mpirun (and torchrun, on any failure) stop every other rank within
    seconds, and report which one failed."""
    from film.common.launch import in_multiprocess_job

    if code and in_multiprocess_job():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv  # film train --nproc re-launches the same command
    if args.command in ("fuse", "parity", "serve") and argv is None:
        # a process film owns: freed feature maps are kept for reuse, for the whole command (film.common.heap;
        # not when main() is called from a program of its own, argv given: that program's malloc is its own).
        # film train decides in its memory plan (the trainer holds it while it trains, when it fits)
        from film.common.heap import enable_for_process

        enable_for_process()
    try:
        return int(args.func(args) or 0)
    except FilmError as e:
        print(f"film {args.command}: {_rank_prefix()}error: {e}", file=sys.stderr)
        return _failed(2)
    except KeyboardInterrupt:
        print(f"film {args.command}: interrupted", file=sys.stderr)
        return _failed(130)
    except OSError as e:  # an I/O failure no writer anticipated: still one line, still the user's problem
        if os.environ.get("FILM_DEBUG") == "1":
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"film {args.command}: {_rank_prefix()}error: {where}{e.strerror or e}", file=sys.stderr)
        return _failed(2)
    except MemoryError:
        print(
            f"film {args.command}: {_rank_prefix()}error: out of memory (try a smaller image or batch, or a GPU)",
            file=sys.stderr,
        )
        return _failed(2)
    except Exception as e:  # last resort: one line, not a traceback
        if os.environ.get("FILM_DEBUG") == "1":
            raise
        print(
            f"film {args.command}: {_rank_prefix()}internal error: {type(e).__name__}: {e} (set FILM_DEBUG=1 for the "
            "traceback)",
            file=sys.stderr,
        )
        return _failed(1)


def _rank_prefix() -> str:
    from film.common.launch import in_multiprocess_job, rank

    return f"rank {rank()}: " if in_multiprocess_job() else ""


if __name__ == "__main__":
    sys.exit(main())
