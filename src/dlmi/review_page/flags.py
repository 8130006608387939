"""The flags CSV the review page exports (``file,flag,note``) and ``dlmi review --flags`` reads back.

Format: a header line ``file,flag,note``, then one row per flagged or annotated image. ``file`` is the
image's path relative to the input folder as ``predictions.csv`` names it (a multi-frame DICOM's frame as
``path#N``); ``flag`` is ``yes`` (flagged) or ``no`` (a note without a flag; ``true/false/1/0`` are read as
well); ``note`` is free text. The flagged files, one per line, are the list to re-annotate
(:func:`flagged_files`).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from dlmi.errors import DlmiError

FLAG_COLUMNS = ("file", "flag", "note")
YES = ("yes", "true", "1", "y")
NO = ("no", "false", "0", "n", "")


@dataclass(frozen=True)
class Flag:
    """One image's flag and note."""

    flagged: bool
    note: str = ""


def read_flags(path: str | os.PathLike[str]) -> dict[str, Flag]:
    """The flags of a CSV written by the page, by file; a one-line :class:`DlmiError` naming the file and
    the row on a malformed one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DlmiError(f"{path}: no such flags file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DlmiError(f"{path}: cannot read the flags file ({exc})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name.strip().lower() for name in (reader.fieldnames or [])]
    if header[:2] != ["file", "flag"]:
        raise DlmiError(f"{path}: not a flags CSV: its header is {','.join(header) or '(empty)'}, expected "
                        f"{','.join(FLAG_COLUMNS)}")
    reader.fieldnames = header
    flags: dict[str, Flag] = {}
    for line, row in enumerate(reader, start=2):
        file = (row.get("file") or "").strip()
        value = (row.get("flag") or "").strip().lower()
        if not file:
            raise DlmiError(f"{path}: row {line} has no file")
        if value not in YES + NO:
            raise DlmiError(f"{path}: row {line} ({file}): flag {value!r} is neither yes nor no")
        flags[file] = Flag(value in YES, (row.get("note") or "").strip())
    return flags


def flagged_files(flags: dict[str, Flag]) -> list[str]:
    """The files flagged (the re-annotation list), in the CSV's order."""
    return [file for file, flag in flags.items() if flag.flagged]
