"""Prediction past one machine: the inputs split into N shards, each run writing into one shared OUT.

Shard I of N (0 ≤ I < N) takes the inputs at positions I, I + N, I + 2N, … of the sorted list of relative
paths (:func:`input_order`; a multi-frame DICOM file is one input, so its frames stay in one shard). Every
shard computes the same list on its own, so no shard talks to another. Each writes its masks and overlays
where the unsharded run would (no two shards share an input, so never the same file) and its own
``predictions-I-of-N.csv`` / ``.json``, ``progress-I-of-N.jsonl`` and lock ``.dlmi-predict-I-of-N.lock``.

:func:`merge_shards` (``dlmi predict merge OUT``) joins the shards' tables into ``predictions.csv`` /
``.json``, byte for byte what one unsharded run writes; :func:`write_ordered_tables` is the one place records
are put in input order, for any engine that predicts the inputs in another order.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from dlmi.errors import DlmiError
from dlmi.inference.outputs import (
    CSV_NAME,
    DICOM_SEG,
    DICOM_SR,
    JSON_NAME,
    LOCK_NAME,
    MASKS,
    OVERLAYS,
    PROGRESS,
    OutputLock,
    read_progress,
    write_tables,
)

SHARD_TABLE = re.compile(r"predictions-(\d+)-of-(\d+)\.json")
SHARD_FILE = re.compile(r"(?:predictions-(\d+)-of-(\d+)\.(?:csv|json)|progress-(\d+)-of-(\d+)\.jsonl)")
SHARD_LOCK = re.compile(r"\.dlmi-predict-(\d+)-of-(\d+)\.lock")
TMP_NAME_KEEP = 48  # dlmi.atomic keeps this many characters of a file's name in its temporary's name


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based)."""

    index: int
    count: int

    @property
    def label(self) -> str:
        return f"{self.index}-of-{self.count}"

    def takes(self, position: int) -> bool:
        """Whether the input at ``position`` of :func:`input_order` is this shard's."""
        return position % self.count == self.index


@dataclass(frozen=True)
class OutputNames:
    """The file names in OUT of one run's tables, progress log and lock."""

    csv: str
    json: str
    progress: str
    lock: str


def check_shard(num_shards: int | None, shard_index: int | None) -> Shard | None:
    """``--num-shards`` / ``--shard-index`` checked: both or neither, N ≥ 1, 0 ≤ I < N; one line if not."""
    if num_shards is None and shard_index is None:
        return None
    if num_shards is None:
        raise DlmiError(f"--shard-index {shard_index} needs --num-shards N (how many shards share the "
                        "inputs)")
    if shard_index is None:
        raise DlmiError(f"--num-shards {num_shards} needs --shard-index I (which shard this run is, 0 to "
                        f"{num_shards - 1})")
    if num_shards < 1:
        raise DlmiError(f"--num-shards must be at least 1, got {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise DlmiError(f"--shard-index must be from 0 to {num_shards - 1} (--num-shards {num_shards}), "
                        f"got {shard_index}")
    return Shard(shard_index, num_shards)


def output_names(shard: Shard | None) -> OutputNames:
    """``predictions.csv`` … for an unsharded run, ``predictions-I-of-N.csv`` … for shard I of N."""
    if shard is None:
        return OutputNames(CSV_NAME, JSON_NAME, PROGRESS, LOCK_NAME)
    return OutputNames(f"predictions-{shard.label}.csv", f"predictions-{shard.label}.json",
                       f"progress-{shard.label}.jsonl", f".dlmi-predict-{shard.label}.lock")


def input_order(files: Iterable[PurePosixPath | str]) -> list[PurePosixPath]:
    """The inputs (POSIX paths relative to the input folder) in the order every run uses: sorted."""
    return sorted(PurePosixPath(f) for f in files)


def shard_inputs(files: Iterable[PurePosixPath | str], shard: Shard | None) -> list[PurePosixPath]:
    """Shard ``shard``'s inputs, in input order (all of them for ``None``)."""
    ordered = input_order(files)
    return ordered if shard is None else [f for i, f in enumerate(ordered) if shard.takes(i)]


def listing_digest(files: Iterable[PurePosixPath | str]) -> str:
    """A digest of the whole input list, so a merge can tell shards that saw different folders."""
    text = "\n".join(str(f) for f in input_order(files))
    return hashlib.sha256(text.encode("utf-8", errors="surrogateescape")).hexdigest()[:16]


def _order_key(entry: dict[str, Any]) -> tuple[PurePosixPath, int]:
    return PurePosixPath(str(entry["file"])), int(entry.get("frame") or 0)


def order_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records (or failures) in input order: by file (:func:`input_order`), then frame."""
    return sorted(records, key=_order_key)


def write_ordered_tables(out: Path, records: Iterable[dict[str, Any]], *, classes: Sequence[str],
                         settings: dict[str, Any], failed: Iterable[dict[str, Any]],
                         names: OutputNames | None = None, extra: dict[str, Any] | None = None,
                         context: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """The tables of ``records`` and ``failed`` in input order, whatever order they were predicted in: the
    same bytes for the same records (``names``: a shard's table names; default ``predictions.csv/json``)."""
    names = names or output_names(None)
    return write_tables(out, order_records(records), classes=classes, settings=settings,
                        failed=order_records(failed), csv_name=names.csv, json_name=names.json, extra=extra,
                        context=context)


def shard_of(name: str, pattern: re.Pattern[str] = SHARD_FILE) -> Shard | None:
    """The shard a file name of OUT belongs to (``predictions-1-of-3.json`` → 1 of 3), or ``None``."""
    match = pattern.fullmatch(name)
    if match is None:
        return None
    index, count = (int(g) for g in match.groups() if g is not None)
    return Shard(index, count) if 0 <= index < count else None


def shard_files(out: Path) -> dict[Shard, list[Path]]:
    """The shard tables and progress logs in OUT, by shard."""
    found: dict[Shard, list[Path]] = defaultdict(list)
    if out.is_dir():
        for path in sorted(out.iterdir()):
            shard = shard_of(path.name)
            if shard is not None and path.is_file():
                found[shard].append(path)
    return dict(found)


def check_other_runs(out: Path, shard: Shard | None, log: Callable[[str], None]) -> None:
    """Once this run holds its own lock: refuse in one line while a run it could clash with writes into OUT
    (for a shard: an unsharded run or a shard of another count; for an unsharded run: any shard), and
    refuse a shard run into an OUT holding another count's shard files."""
    own = output_names(shard).lock
    for path in sorted(out.glob(".dlmi-predict*.lock")):
        other = shard_of(path.name, SHARD_LOCK)
        if path.name == own or (other is None and path.name != LOCK_NAME):
            continue
        if shard is not None and other is not None and other.count == shard.count:
            continue  # a sibling shard: its inputs are not ours
        OutputLock.check_free(out, path, log)
    if shard is not None:
        others = sorted({s.count for s in shard_files(out)} - {shard.count})
        if others:
            example = next(p for s, paths in shard_files(out).items() if s.count == others[0] for p in paths)
            raise DlmiError(f"{out}: holds the outputs of a run in {others[0]} shards ({example.name}); join "
                            "them first (an unsharded `dlmi predict` into this --out does), or choose "
                            "another --out")


def own_temporaries(out: Path, files: Sequence[PurePosixPath], mine: Iterable[PurePosixPath],
                    names: OutputNames) -> Callable[[Path], bool]:
    """Whether a temporary file in OUT is one a killed run of this shard left: its name can only be that of
    an output of this shard's inputs (``dlmi.atomic`` keeps the start of the name), never another's."""
    mine = set(mine)
    everyone = set(files)
    owners: dict[tuple[str, str], set[bool]] = defaultdict(set)
    for file in files:
        for sub, suffix in ((MASKS, ".png"), (OVERLAYS, ".png"), (DICOM_SEG, ".dcm"), (DICOM_SR, ".dcm")):
            folder = PurePosixPath(sub, *file.parent.parts).as_posix()
            owners[(folder, f"{file.name}{suffix}"[:TMP_NAME_KEEP])].add(file in mine)
    own_top = {name[:TMP_NAME_KEEP] for name in (names.csv, names.json, names.progress)}

    def owned(path: Path) -> bool:
        relative = PurePosixPath(path.relative_to(out).as_posix())
        stem = relative.name[1:].removesuffix(".tmp")
        prefix = stem[:stem.rfind(".")] if "." in stem else stem
        if len(relative.parts) == 1:
            return prefix in own_top
        frames_of = PurePosixPath(*relative.parts[1:-1]) if len(relative.parts) > 2 else None
        if frames_of is not None and frames_of in everyone:  # a multi-frame file's folder of frames
            return frames_of in mine
        return owners.get((relative.parent.as_posix(), prefix)) == {True}

    return owned


def join_shard_logs(progress: Any, out: Path) -> list[str]:
    """An unsharded run into OUT takes in the shards' progress logs (records of the same models and settings
    count as done) and removes the shards' files; the shard labels it joined."""
    found = shard_files(out)
    for paths in found.values():
        for path in paths:
            if path.name.endswith(".jsonl"):
                settings, records, _, _ = read_progress(path)
                progress.adopt(settings, records)
    progress.dirty = progress.dirty or bool(found)
    progress.save()  # the joined records are in progress.jsonl before the shards' files go
    for paths in found.values():
        for path in paths:
            path.unlink(missing_ok=True)
    return [shard.label for shard in sorted(found, key=lambda s: (s.count, s.index))]


@dataclass
class MergeSummary:
    """What :func:`merge_shards` wrote."""

    csv: Path
    json: Path
    shards: int
    predicted: int
    failed: int


def _read_table(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DlmiError(f"{path}: cannot read this shard's table ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("predictions"), list) \
            or not isinstance(data.get("failed"), list):
        raise DlmiError(f"{path}: not a dlmi predict shard table (no 'predictions' and 'failed' lists)")
    return data


def merge_shards(out: str | os.PathLike[str], log: Callable[[str], None] = print) -> MergeSummary:
    """Join the shard tables of OUT (``predictions-I-of-N.json``) into ``predictions.csv`` / ``.json``; one
    line, naming the shard, when one is missing or running, or when two were made with other models or
    settings, or from another list of inputs."""
    out = Path(out)
    if not out.is_dir():
        raise DlmiError(f"{out}: no such output folder")
    tables: dict[int, dict[int, Path]] = defaultdict(dict)
    for path in sorted(out.glob("predictions-*-of-*.json")):
        shard = shard_of(path.name, SHARD_TABLE)
        if shard is not None:
            tables[shard.count][shard.index] = path
    if not tables:
        raise DlmiError(f"{out}: no shard tables (predictions-I-of-N.json) to merge; write them with "
                        "`dlmi predict FOLDER --out OUT --num-shards N --shard-index I`")
    if len(tables) > 1:
        counts = " and ".join(str(c) for c in sorted(tables))
        raise DlmiError(f"{out}: holds shard tables of runs in {counts} shards; delete one run's "
                        "predictions-I-of-N.* files and merge again")
    count, found = next(iter(tables.items()))
    for index in range(count):  # a shard still running: its table is not there yet, or not final
        OutputLock.check_free(out, out / output_names(Shard(index, count)).lock, log)
    missing = [i for i in range(count) if i not in found]
    if missing:
        names = ", ".join(f"predictions-{i}-of-{count}.json" for i in missing)
        raise DlmiError(f"{out}: shard {missing[0]} of {count} is missing ({names} not there); run "
                        f"`dlmi predict FOLDER --out {out} --num-shards {count} --shard-index {missing[0]}` "
                        "and merge again")
    first = _read_table(found[0])
    records: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    seen: dict[tuple[str, int], str] = {}
    for index in range(count):
        path = found[index]
        data = first if index == 0 else _read_table(path)
        for field in ("settings", "classes"):
            if data.get(field) != first.get(field):
                mine, theirs = data.get(field), first.get(field)
                keys = sorted(k for k in set(mine or {}) | set(theirs or {})
                              if (mine or {}).get(k) != (theirs or {}).get(k)) \
                    if isinstance(mine, dict) and isinstance(theirs, dict) else [field]
                raise DlmiError(f"{path}: made with other models or settings than {found[0].name} "
                                f"(differs in: {', '.join(keys)}); re-run that shard with the same ones")
        shard_info = data.get("shard") or {}
        if shard_info.get("inputs") != (first.get("shard") or {}).get("inputs"):
            raise DlmiError(f"{path}: this shard saw another list of inputs than {found[0].name} (files "
                            "added, removed or --exclude changed between the shards' runs); re-run every "
                            "shard")
        for entry in [*data["predictions"], *data["failed"]]:
            key = (str(entry.get("file")), int(entry.get("frame") or 0))
            if key in seen and seen[key] != path.name:
                raise DlmiError(f"{path}: {key[0]} is also in {seen[key]}; shards of one run never share an "
                                "input: re-run every shard")
            seen[key] = path.name
        records += data["predictions"]
        failed += data["failed"]
    csv_path, json_path = write_ordered_tables(out, records, classes=first["classes"],
                                               settings=first["settings"], failed=failed,
                                               context=first.get("context"))
    return MergeSummary(csv_path, json_path, count, len(records), len(failed))
