"""``python -m film`` = the ``film`` command."""

import sys

from film.cli import main

sys.exit(main())
