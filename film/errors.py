"""One exception type for every expected failure; the CLI prints its message and exits non-zero."""


class FilmError(Exception):
    """A problem with the user's input or environment, with a message that says what and where."""
