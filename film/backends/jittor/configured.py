"""``jt``: Jittor, configured and checked before its first import (numpy<2, CPU/oneDNN/CUDA flags, the one-time
compile; film/backends/jittor/runtime.py). Every module of this backend takes Jittor from here, so importing
any of them directly is as safe as going through ``film.backends.registry.get_backend``."""

from film.backends.jittor.runtime import import_jittor

jt = import_jittor()
