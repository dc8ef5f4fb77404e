"""Regenerate requirements/lock.txt: what ``pip install -e ".[all]"`` resolves to, pinned (``make lock``).
``--check`` resolves afresh (as a new user's ``pip install -e ".[all]"`` would, from the index, nothing
installed) and fails unless numpy stays below 2 (CI runs it: Jittor 1.3 gives wrong numbers under numpy 2).

torch is left out (installed on its own, CPU or CUDA build: README, Install); the resolver runs with the
torch build ``make demo`` installs, so torch's own dependencies are pinned as that build needs them.
tests/test_numpy_guard.py checks that the lock keeps numpy<2 and satisfies every extra in pyproject.toml;
``make setup`` installs with it as constraints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = {"torch", "film-fusion"}


def resolve(torch: str) -> list[tuple[str, str]]:
    """(name, version) of everything ``pip install -e ".[all]" TORCH`` would install into an empty environment."""
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
                        "--report", report, "-e", ".[all]", torch], check=True, cwd=ROOT)
        with open(report) as f:
            items = json.load(f)["install"]
    return sorted((i["metadata"]["name"], i["metadata"]["version"]) for i in items)


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--check"]
    torch = args[0] if args else "torch==2.13.0"
    pins = resolve(torch)
    if "--check" in sys.argv:
        numpy = dict((n.lower(), v) for n, v in pins).get("numpy", "?")
        print(f'pip install -e ".[all]" {torch} resolves to numpy {numpy}')
        return 0 if numpy.split(".")[0].isdigit() and int(numpy.split(".")[0]) < 2 else 1
    lines = [f"# pip install -e \".[all]\" resolved with {torch} on Python {sys.version.split()[0]}, "
             "torch itself left out; made by `make lock` (requirements/lock.py)"]
    lines += [f"{n}=={v}" for n, v in sorted(pins, key=lambda p: p[0].lower()) if n.lower() not in SKIP]
    with open(os.path.join(ROOT, "requirements", "lock.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"requirements/lock.txt: {len(lines) - 1} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
