"""User-facing errors: one line, naming the file and the cause; the CLI prints them without a traceback."""


class DlmiError(Exception):
    """A mistake in the user's input or environment, reported as one line."""
