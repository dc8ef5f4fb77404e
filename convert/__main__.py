"""``python -m convert SRC -o DST [--keep-optimizer]``: the same as ``film convert``."""

import sys

from film.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
