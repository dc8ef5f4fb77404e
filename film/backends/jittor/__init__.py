"""Jittor backend. Import :mod:`film.backends.jittor.runtime` first: it configures Jittor before importing it."""
