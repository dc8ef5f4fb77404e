"""Backends: one folder per framework, same file and class names. Chosen in :mod:`film.backends.registry`."""
