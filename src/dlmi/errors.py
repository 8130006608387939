"""User-facing errors: one line, naming the file and the cause; the CLI prints them without a traceback.

``DLMI_DEBUG=1`` (or ``dlmi --traceback``) shows the full traceback behind any such line.
"""

from __future__ import annotations

import os
import sys
import traceback

DEBUG_ENV = "DLMI_DEBUG"


class DlmiError(Exception):
    """A mistake in the user's input or environment, reported as one line."""


def debug_enabled() -> bool:
    """Whether ``DLMI_DEBUG`` asks for full tracebacks behind one-line errors and warnings."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def print_traceback(exc: BaseException) -> None:
    """The full traceback of ``exc`` on stderr, including the cause a ``raise ... from None`` hides."""
    hidden = exc.__suppress_context__
    exc.__suppress_context__ = False
    try:
        traceback.print_exception(exc, file=sys.stderr)
    finally:
        exc.__suppress_context__ = hidden


def warn(message: str) -> None:
    """A warning the user should see but that does not stop the command: one line on stderr."""
    print(f"dlmi: warning: {message}", file=sys.stderr)
