"""The outcome of one hostile case, classified from what its run left behind (no pytest needed)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HANDLED, REFUSED = "handled", "refused"
SILENT_WRONG, LOST, TRACEBACK, HANG, UNCLEAR = "silent-wrong", "lost", "traceback", "hang", "unclear"
OUTCOMES = (HANDLED, REFUSED, SILENT_WRONG, LOST, TRACEBACK, HANG, UNCLEAR)

TRACEBACK_TEXT = "Traceback (most recent call last)"
WARNING_PREFIX = "dlmi: warning:"
_BOX_EDGE = re.compile(r"^[╭╰─]")  # rich's box around a click usage error


@dataclass
class RunRecord:
    """What one run of a case left: exit status, output, files before and after, time, any escape."""

    code: int | None
    stdout: str = ""
    stderr: str = ""
    before: dict[str, str] = field(default_factory=dict)  # path (relative) -> sha256, before the run
    after: dict[str, str] = field(default_factory=dict)
    elapsed: float = 0.0
    timed_out: bool = False
    exception: str | None = None  # an exception that escaped the command (in this process)
    value: Any = None  # what a Python API call returned
    workspace: Path | None = None


@dataclass
class Verdict:
    outcome: str
    reason: str


def message_lines(stderr: str) -> list[str]:
    """The error message's lines: stderr without blank lines and warnings; a click usage error is read as
    the text inside its box (rich wraps it at the terminal's width: one message)."""
    lines = [line.rstrip() for line in stderr.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(WARNING_PREFIX)]
    if lines and lines[0].lstrip().startswith("Usage:") and any(_BOX_EDGE.match(x) for x in lines):
        inside = [x.strip("│ ").strip() for x in lines if x.startswith("│")]
        return [" ".join(inside)] if inside else lines
    return lines


def _words(text: str) -> str:
    """Lower case, with dashes, underscores and spaces alike: ``--batch-size`` names ``batch_size``."""
    return re.sub(r"[-_\s]+", " ", text.lower()).strip()


def lost_files(record: RunRecord, mutable: tuple[str, ...] = ()) -> list[str]:
    """Files that existed before the run and are gone or changed after it (``mutable`` globs excepted)."""
    lost = []
    for path, digest in record.before.items():
        if any(Path(path).match(pattern) for pattern in mutable):
            continue
        if record.after.get(path) != digest:
            lost.append(path)
    return sorted(lost)


def classify(
    record: RunRecord,
    *,
    expect: str,
    check_error: str | None,
    names: tuple[str, ...],
    handled_codes: tuple[int, ...] = (0,),
    mutable: tuple[str, ...] = (),
) -> Verdict:
    """One of OUTCOMES for ``record``.

    ``check_error``: None when the case's check of the output passed, else why it failed (only looked at for
    an exit status in ``handled_codes``). A case that ``expect``s a refusal and finishes with a handled
    status has accepted a wrong input without a word: silent-wrong. ``names``: what a refusal must
    name (each, case-insensitively).
    """
    if record.timed_out:
        return Verdict(HANG, f"still running after {record.elapsed:.0f} s")
    if record.exception is not None:
        return Verdict(TRACEBACK, f"uncaught {record.exception}")
    if TRACEBACK_TEXT in record.stdout or TRACEBACK_TEXT in record.stderr:
        return Verdict(TRACEBACK, "a Python traceback in the output")
    lost = lost_files(record, mutable)
    if lost:
        return Verdict(LOST, f"gone or changed: {', '.join(lost[:3])}")
    if record.code in handled_codes:
        if expect == REFUSED:
            return Verdict(SILENT_WRONG, f"exit {record.code}: accepted what must be refused")
        if check_error is None:
            return Verdict(HANDLED, f"exit {record.code}, check passed")
        return Verdict(SILENT_WRONG, f"exit {record.code}, but {check_error}")
    lines = message_lines(record.stderr)
    if record.code == 0:  # exit 0 is not a refusal, even when the case's handled_codes leave it out
        return Verdict(SILENT_WRONG, f"exit 0 where {handled_codes} was the handled status")
    if len(lines) != 1:
        return Verdict(
            UNCLEAR, f"exit {record.code} with {len(lines)} message lines: {' | '.join(lines)[:200]!r}"
        )
    message = lines[0].replace(str(record.workspace), "WS") if record.workspace else lines[0]
    missing = [n for n in names if _words(n) not in _words(message)]  # not satisfied by the case's own path
    if missing:
        return Verdict(
            UNCLEAR, f"exit {record.code}, the message does not name {missing}: {lines[0][:200]!r}"
        )
    return Verdict(REFUSED, f"exit {record.code}: {lines[0][:200]}")
