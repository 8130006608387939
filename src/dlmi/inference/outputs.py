"""What ``dlmi predict`` writes: per image a mask and an overlay PNG, a progress log, and the tables.

Layout of OUT::

    masks/<relative path>.png      lesion mask at the image's original size, a 1-bit PNG (0 / 1 = lesion)
    dicom/<relative path>.dcm      a DICOM input's DICOM Segmentation (``--dicom-seg``; one per file, a
                                   frame per cine frame: :mod:`dlmi.inference.dicom_outputs`)
    dicom-sr/<relative path>.dcm   a DICOM input's Comprehensive SR of the class and probabilities
                                   (``--dicom-sr``)
    overlays/<relative path>.png   the image in grey with the lesion tinted red and outlined (a palette
                                   PNG; not written with ``overlays=False``)
    progress.jsonl                 the settings, then one line per finished image (appended as it finishes)
    predictions.csv / .json        every image's record, rewritten at the end of each run
    predictions-I-of-N.csv / .json, progress-I-of-N.jsonl, .dlmi-predict-I-of-N.lock
                                   a shard's run instead (``--num-shards N --shard-index I``;
                                   :mod:`dlmi.inference.shards`)

``<relative path>`` is the image's path under FOLDER with its full file name (``sub/a.PNG`` →
``masks/sub/a.PNG.png``), so distinct inputs never share an output file; a multi-frame DICOM file has one
output per frame, ``masks/<relative path>/frame-0001.png`` and so on. Classification-only prediction
(a classifier and no segmenter) writes no masks or overlays, only the class and probabilities.

An image counts as done in a re-run only when its record names the same source file (path, size,
modification time), was made with the same models and settings (the progress log's first line, and a digest
of it in every record), and the outputs are still there; a change of models or settings predicts every image
again. The outputs (and records) of inputs that are gone or unreadable now are removed, and named on stderr.

One run at a time: ``.dlmi-predict.lock`` in OUT holds the running ``dlmi predict``'s pid (and host); a second
run into the same OUT is refused in one line naming the holder, and a lock whose process is no longer running
(a killed run) is taken over. An input whose output file name would be longer than the file system allows
is skipped (named, in ``failed``); the other images complete.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import socket
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from dlmi.atomic import write_atomic, write_json_atomic
from dlmi.errors import DlmiError

MASKS = "masks"
OVERLAYS = "overlays"
DICOM_SEG = "dicom"  # one DICOM Segmentation per DICOM input file
DICOM_SR = "dicom-sr"  # one Comprehensive SR per DICOM input file
PROGRESS = "progress.jsonl"
CSV_NAME = "predictions.csv"
JSON_NAME = "predictions.json"
LOCK_NAME = ".dlmi-predict.lock"
LOCK_BEING_WRITTEN_S = 10.0  # an empty lock file younger than this is one being created right now
PRIVATE_FIELDS = ("source", "run")  # record fields kept in progress.jsonl only, not in the tables
LESION_RGB = np.array([255, 40, 40], dtype=np.float32)
TINT = 0.45
PNG_LEVEL = 1
GREY_LEVELS = 128  # overlay palette: 128 grey levels, the same 128 tinted, and the outline's red
OUTLINE_INDEX = 2 * GREY_LEVELS - 1
Z_RLE = 3  # zlib's run-length strategy for overlays: ~40 % less CPU than the default one, files ~30 % larger
CLASSIFY_MODE = "classifier"


class OutputWriteError(DlmiError):
    """An output file could not be written (disk full, permissions, a file where a folder should be)."""


class OutputNameError(OutputWriteError):
    """One image's output name is too long for the file system: that image is skipped, the run goes on."""


def _pid_running(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (one we may not signal counts as running)."""
    if sys.platform == "win32":  # os.kill would end it there; keep the lock, the message says how to clear it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class OutputLock:
    """OUT's lock: ``.dlmi-predict.lock``, created exclusively, holding the run's pid, host and a token.

    :meth:`acquire` refuses in one line while the holder runs (or runs on another host, where it cannot be
    checked); a lock whose process has ended is taken over, with a line through ``log``.
    """

    def __init__(self, path: Path, token: str) -> None:
        self.path, self.token = path, token

    @classmethod
    def acquire(cls, out: Path, log: Callable[[str], None] = print, name: str = LOCK_NAME) -> OutputLock:
        """Take OUT's lock ``name`` (a shard's run takes its own: :mod:`dlmi.inference.shards`)."""
        path = out / name
        token = uuid.uuid4().hex
        mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": token}).encode()
        for _ in range(5):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                cls._clear_if_stale(out, path, log)
                continue
            except OSError as exc:
                reason = exc.strerror or exc
                raise DlmiError(f"{path}: cannot create the output folder's lock ({reason})") from None
            with os.fdopen(fd, "wb") as handle:
                handle.write(mine)
                handle.flush()
                os.fsync(handle.fileno())
            return cls(path, token)
        raise DlmiError(f"{out}: another dlmi predict keeps taking this folder's lock ({path}); wait for it "
                        "to end or choose another --out")

    @classmethod
    def check_free(cls, out: Path, path: Path, log: Callable[[str], None] = print) -> None:
        """Refuse in one line while the lock ``path`` (another run's) is held by a running process; a dead
        holder's lock is set aside."""
        if path.exists():
            cls._clear_if_stale(out, path, log)

    @staticmethod
    def _clear_if_stale(out: Path, path: Path, log: Callable[[str], None]) -> None:
        """Refuse while the lock's holder runs; set a dead holder's lock aside."""
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return  # released meanwhile: try again
        try:
            holder = json.loads(text)
            pid, host = int(holder["pid"]), str(holder["host"])
        except (ValueError, KeyError, TypeError):
            if age < LOCK_BEING_WRITTEN_S:
                raise DlmiError(f"{out}: another dlmi predict is starting in this folder (its lock {path} is "
                                "being written); wait for it to end or choose another --out") from None
            log(f"{path}: took over an unreadable lock file")
        else:
            if host != socket.gethostname() or _pid_running(pid):
                where = "" if host == socket.gethostname() else f" on host {host}"
                raise DlmiError(f"{out}: another dlmi predict (pid {pid}{where}) is writing into this "
                                "folder; wait for it to end or choose another --out (if no such run is "
                                f"going on, delete {path})")
            log(f"{path}: took over the lock of pid {pid}, which is no longer running (an interrupted run)")
        aside = path.with_name(f"{path.name}.{os.getpid()}.stale")
        try:
            os.replace(path, aside)
        except FileNotFoundError:
            return
        if aside.read_text(encoding="utf-8", errors="replace") != text:  # a fresh lock, taken meanwhile
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if it is still this run's."""
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if isinstance(holder, dict) and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def source_identity(path: Path) -> dict[str, Any]:
    """What identifies an input file's content for a re-run: its resolved path, size and mtime (ns)."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def output_stems(files: Sequence[PurePosixPath]) -> dict[PurePosixPath, str]:
    """Each input's output path stem (POSIX, relative): its relative path with the full file name, so two
    distinct inputs (``a.png`` and ``a.PNG``, ``b.png`` and ``b_png.png``) never share one."""
    return {f: str(f) for f in files}


def frame_stem(file: PurePosixPath, frame: int | None, frames: int) -> str:
    """The output stem of one frame: the file's own stem, or ``<file>/frame-0007`` in a multi-frame file
    (no input can have that path: ``<file>`` is a file, not a folder)."""
    return str(file) if frame is None or frames <= 1 else f"{file}/frame-{frame:04d}"


def record_key(file: str, frame: int | None) -> str:
    """How a record is found again in a re-run: the file, and the frame of a multi-frame DICOM."""
    return file if frame is None else f"{file}#{frame}"


def _is_case_insensitive(folder: Path) -> bool:
    """Whether the file system under ``folder`` treats ``A`` and ``a`` as one name."""
    fd, probe = tempfile.mkstemp(prefix=".dlmi-case-probe-", dir=folder)
    os.close(fd)
    try:
        return os.path.exists(os.path.join(folder, os.path.basename(probe).upper()))
    finally:
        os.unlink(probe)


def check_unique_outputs(files: Sequence[PurePosixPath | str], out: Path) -> None:
    """Refuse a run whose outputs would overwrite each other: inputs that differ only in letter case
    (``a.png``, ``a.PNG``) when OUT lies on a file system that ignores case."""
    groups: dict[str, list[PurePosixPath | str]] = defaultdict(list)
    for f in files:
        groups[str(f).lower()].append(f)
    clashes = [g for g in groups.values() if len(g) > 1]
    if clashes and _is_case_insensitive(out):
        first = clashes[0]
        raise DlmiError(
            f"{out}: this folder ignores letter case, so the outputs of {first[0]} and {first[1]} would "
            f"overwrite each other ({len(clashes)} such pair(s)); choose an --out on another disk or "
            "--exclude one of them"
        )


def mask_path(stem: str) -> str:
    return f"{MASKS}/{stem}.png"


def overlay_path(stem: str) -> str:
    return f"{OVERLAYS}/{stem}.png"


def dicom_seg_path(file: str) -> str:
    """Where a DICOM input file's Segmentation goes (one per file, whatever its frames)."""
    return f"{DICOM_SEG}/{file}.dcm"


def dicom_sr_path(file: str) -> str:
    """Where a DICOM input file's structured report goes."""
    return f"{DICOM_SR}/{file}.dcm"


def name_limit(out: Path) -> int:
    """The longest file name (bytes) the file system under ``out`` allows."""
    try:
        return int(os.pathconf(out, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def output_name_problem(out: Path, stem: str, limit: int) -> str | None:
    """Why ``stem``'s mask or overlay cannot be written under ``out`` (a name part over ``limit`` bytes)."""
    for part in PurePosixPath(mask_path(stem)).parts[1:]:
        if len(os.fsencode(part)) > limit:
            return (f"output file name too long ({len(os.fsencode(part))} bytes; the file system of {out} "
                    f"allows {limit}): rename the input")
    return None


def delete_outputs(out: Path, record: dict[str, Any]) -> bool:
    """Delete a record's mask and overlay (only files under OUT's masks/ and overlays/), and the folders
    that leaves empty; whether any file was there. A DICOM input's record (one with ``frame``) takes its
    file's DICOM SEG and SR with it: they hold every frame, so one frame gone makes them stale."""
    found = False
    outputs = [(record.get("mask"), MASKS), (record.get("overlay"), OVERLAYS)]
    if record.get("frame") is not None and isinstance(record.get("file"), str):
        outputs += [(dicom_seg_path(record["file"]), DICOM_SEG), (dicom_sr_path(record["file"]), DICOM_SR)]
    for relative, sub in outputs:
        if not isinstance(relative, str):
            continue
        parts = PurePosixPath(relative).parts
        if len(parts) < 2 or parts[0] != sub or ".." in parts:
            continue  # not an output path this module writes: leave it alone
        path = out.joinpath(*parts)
        if path.is_file() and not path.is_symlink():
            path.unlink()
            found = True
        for parent in path.parents:
            if parent == out / sub or out not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break
    return found


def remove_orphan_temporaries(out: Path, owned: Callable[[Path], bool] | None = None) -> int:
    """Delete the temporary files (``.NAME.XXXX.tmp``) a killed run left in OUT; how many there were.
    ``owned`` (a shard's run) limits this to the temporaries of its own outputs: another shard may be
    writing the others right now."""
    removed = 0
    candidates = [p for p in out.glob(".*.tmp")]
    for sub in (MASKS, OVERLAYS, DICOM_SEG, DICOM_SR):
        if (out / sub).is_dir():
            candidates += [p for p in (out / sub).rglob(".*.tmp")]
    for path in candidates:
        if path.is_file() and not path.is_symlink() and (owned is None or owned(path)):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def outline(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels (lesion pixels with a non-lesion 4-neighbour; beyond the image's edge
    counts as the edge pixel itself)."""
    interior = mask.copy()
    interior[1:] &= mask[:-1]
    interior[:-1] &= mask[1:]
    interior[:, 1:] &= mask[:, :-1]
    interior[:, :-1] &= mask[:, 1:]
    return mask & ~interior


def _overlay_palette() -> list[int]:
    levels = np.rint(np.arange(GREY_LEVELS) * (255.0 / (GREY_LEVELS - 1)))
    grey = np.repeat(levels[:, None], 3, axis=1)
    tinted = np.rint(grey * (1 - TINT) + LESION_RGB * TINT)
    palette = np.concatenate([grey, tinted[:-1], LESION_RGB[None]]).clip(0, 255).astype(np.uint8)
    return palette.ravel().tolist()


OVERLAY_PALETTE = _overlay_palette()


def overlay_indices(grey: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The overlay as palette indices (H, W) uint8: the grey level in 128 steps, +128 where the mask is set
    (the tinted copy of that grey), and the outline's red on the lesion's boundary."""
    indices = grey >> 1  # 0..127, the nearest of the palette's grey levels to within one step of 255/127
    if mask.any():
        indices = indices + (mask.astype(np.uint8) << 7)
        indices[outline(mask)] = OUTLINE_INDEX
    return indices


def overlay(grey: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3): what the overlay PNG shows (its palette applied)."""
    palette = np.asarray(OVERLAY_PALETTE, dtype=np.uint8).reshape(-1, 3)
    return palette[overlay_indices(grey, mask)]


def _save(image: Image.Image, path: Path, strategy: int = -1) -> Path:
    try:
        return write_atomic(path, lambda handle: image.save(handle, format="PNG", compress_level=PNG_LEVEL,
                                                            compress_type=strategy))
    except OSError as exc:
        error = OutputNameError if exc.errno == errno.ENAMETOOLONG else OutputWriteError
        raise error(f"{path}: cannot write ({exc.strerror or exc})") from exc


def write_png(array: np.ndarray, path: Path) -> Path:
    """An atomic PNG write at zlib level 1 (about 4× faster than the default level, files ~14 % larger); a
    bool array becomes a 1-bit PNG."""
    return _save(Image.fromarray(array), path)


def write_mask(mask: np.ndarray, path: Path) -> Path:
    """A bool mask as a 1-bit PNG at zlib level 1 (1/8 of the bytes of an 8-bit mask to compress)."""
    return _save(Image.fromarray(np.ascontiguousarray(mask, dtype=bool), mode=None), path)


def write_overlay(grey: np.ndarray, mask: np.ndarray, path: Path) -> Path:
    """The overlay as an 8-bit palette PNG: a third of the bytes of an RGB PNG to build and compress."""
    image = Image.fromarray(overlay_indices(grey, mask), mode=None)
    image.putpalette(OVERLAY_PALETTE)
    return _save(image, path, strategy=Z_RLE)


def write_image_outputs(out: Path, stem: str, grey: np.ndarray, mask: np.ndarray,
                        overlays: bool = True) -> tuple[str, str | None]:
    """Write the mask (and, with ``overlays``, the overlay) atomically; their paths relative to ``out``."""
    masks = mask_path(stem)
    write_mask(mask, out / masks)
    if not overlays:
        return masks, None
    overlay_file = overlay_path(stem)
    write_overlay(grey, mask, out / overlay_file)
    return masks, overlay_file


class ProgressLog:
    """``progress.jsonl``: the run's settings on the first line, then one finished image's record a line.

    A last line cut short by a crash is dropped when the log is opened (that image is predicted again), so
    the next record starts on a line of its own. A log written with other settings (models, threshold,
    mode) is started afresh, and so is every log with ``overwrite``; its records are kept in ``earlier``,
    so that the outputs of inputs gone since can still be found and removed. Every record carries ``run``,
    a digest of the settings, so a record appended by a run with other models never counts as done.
    """

    def __init__(self, out: Path, settings: dict[str, Any], *, overwrite: bool, name: str = PROGRESS) -> None:
        self.path = out / name
        self.settings = settings
        self.overwrite = overwrite
        self.run = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        self.records: dict[str, dict[str, Any]] = {}
        self.earlier: dict[str, dict[str, Any]] = {}
        self.changed: list[str] = []
        self.dirty = False  # records were discarded since the log on disk was written
        if self.path.is_file():
            self._read(settings, overwrite)
        else:
            self._start(settings)

    def _start(self, settings: dict[str, Any], records: Iterable[dict[str, Any]] = ()) -> None:
        text = "".join(json.dumps(line) + "\n" for line in [{"settings": settings}, *records]).encode()
        try:
            write_atomic(self.path, lambda f: f.write(text))
        except OSError as exc:
            raise OutputWriteError(f"{self.path}: cannot write ({exc.strerror or exc})") from exc

    def _read(self, settings: dict[str, Any], overwrite: bool) -> None:
        previous, records, lines, torn = read_progress(self.path)
        if overwrite or previous != settings:
            if previous != settings:
                previous = previous if isinstance(previous, dict) else {}
                self.changed = sorted(k for k in set(settings) | set(previous)
                                      if previous.get(k) != settings.get(k))
            self.earlier = records
            self._start(settings)
            return
        self.records = records
        if torn:
            kept = "".join(line + "\n" for line in lines)
            write_atomic(self.path, lambda f: f.write(kept.encode("utf-8")))

    def is_done(self, key: str, out: Path, *, source: dict[str, Any], stem: str | None,
                overlays: bool = True) -> bool:
        """Whether ``key`` (a file, or a file's frame: :func:`record_key`) was predicted from this very source
        file with these settings, and its outputs are still there (the overlay too, when ``overlays``)."""
        record = self.records.get(key)
        if record is None or record.get("source") != source or record.get("run") != self.run:
            return False
        if stem is None:  # classification only: no image outputs
            return record.get("mask") is None
        if record.get("mask") != mask_path(stem) or not (out / record["mask"]).is_file():
            return False
        return not overlays or (record.get("overlay") == overlay_path(stem)
                                and (out / record["overlay"]).is_file())

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append finished records (each marked with this run's settings digest) and flush them to disk."""
        records = [{**record, "run": self.run} for record in records]
        if not records:
            return
        try:
            with self.path.open("a", encoding="utf-8") as handle:
                for record in records:
                    handle.write(json.dumps(record) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise OutputWriteError(f"{self.path}: cannot write ({exc.strerror or exc})") from exc
        for record in records:
            self.records[record_key(record["file"], record.get("frame"))] = record

    def discard(self, out: Path, key: str) -> bool:
        """Forget ``key``'s records (this log's and the earlier one's) and delete their outputs; whether an
        output file was there. The log on disk is rewritten by :meth:`save`."""
        found = False
        for records in (self.records, self.earlier):
            record = records.pop(key, None)
            if record is not None:
                self.dirty = True
                found = delete_outputs(out, record) or found
        return found

    def adopt(self, settings: Any, records: dict[str, dict[str, Any]]) -> int:
        """Take in the records of another log of OUT (a shard's): made with these settings (and no
        ``overwrite``), those of images this log has no record of count as this log's; the others are kept in
        ``earlier`` (their outputs may need removing). The log on disk is rewritten by :meth:`save`; how many
        records were taken in as this log's."""
        taken = 0
        for key, record in records.items():
            if settings == self.settings and not self.overwrite and record.get("run") == self.run:
                if key not in self.records:
                    self.records[key] = record
                    taken += 1
            else:
                self.earlier.setdefault(key, record)
        self.dirty = self.dirty or taken > 0
        return taken

    def remove_stale(self, out: Path, current: dict[str, str | None],
                     elsewhere: AbstractSet[str] = frozenset()) -> list[str]:
        """Delete the outputs of every record whose input is not among ``current`` (key → output stem) any
        more, forget those records and save the log; the inputs whose outputs were removed. An earlier
        record's outputs under another name than the input gets now are deleted too. A record whose file is
        in ``elsewhere`` (another shard's input now) is forgotten, its outputs left to that shard."""
        removed = []
        for key in sorted({*self.records, *self.earlier} - set(current)):
            record = self.records.get(key) or self.earlier[key]
            if record.get("file") in elsewhere:
                self.records.pop(key, None)
                self.earlier.pop(key, None)
                self.dirty = True
                continue
            if self.discard(out, key):
                removed.append(record_label(record))
        for key, record in [*self.records.items(), *self.earlier.items()]:
            stem = current.get(key)
            wanted = {mask_path(stem), overlay_path(stem)} if stem is not None else set()
            delete_outputs(out, {k: v for k, v in record.items() if k in ("mask", "overlay")
                                 and v not in wanted})
        self.save()
        return removed

    def save(self) -> None:
        """Rewrite the log without the records discarded (the settings, then the records kept)."""
        if self.dirty:
            self._start(self.settings, self.records.values())
            self.dirty = False


def read_progress(path: Path) -> tuple[Any, dict[str, dict[str, Any]], list[str], str]:
    """A progress log's settings (``None`` when its first line is not a settings line), its records by
    :func:`record_key`, its whole lines, and the last line when it was cut short (else ``""``)."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    torn = lines.pop()  # "" when the file ends with a newline, else a line cut short
    try:
        header = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        header = None
    records: dict[str, dict[str, Any]] = {}
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("file"), str):
            records[record_key(record["file"], record.get("frame"))] = record
    return (header.get("settings") if isinstance(header, dict) else None), records, lines, torn


def record_label(record: dict[str, Any]) -> str:
    """A record's input as a user names it: the file, and the frame of a multi-frame DICOM."""
    frame, frames = record.get("frame"), record.get("frames") or 1
    return str(record["file"]) if frame is None or frames <= 1 else f"{record['file']} frame {frame}"


DICOM_COLUMNS = ("frame", "sop_instance_uid", "series_instance_uid")


UNCERTAINTY_COLUMNS = ("uncertainty", "mask_disagreement")  # dlmi.runtime.uncertainty; last, added later


def csv_columns(classes: Sequence[str], mode: str = "aided", dicom: bool = False) -> list[str]:
    """The table's columns; ``dicom`` (some input was DICOM) adds the frame number and the UIDs after
    ``file``; the per-image uncertainty columns come last (empty where the model gives none)."""
    head = ["file", *(DICOM_COLUMNS if dicom else ()), "class", *[f"prob_{c}" for c in classes]]
    if mode == CLASSIFY_MODE:
        return [*head, *UNCERTAINTY_COLUMNS]
    return [*head, "gated", "lesion_pixels", "lesion_fraction", "width", "height", "mask", "overlay",
            *UNCERTAINTY_COLUMNS]


def _csv_row(record: dict[str, Any], classes: Sequence[str], mode: str, dicom: bool) -> list[Any]:
    probs = record.get("probabilities") or {}
    extra = [record.get(c) if record.get(c) is not None else "" for c in DICOM_COLUMNS] if dicom else []
    row = [record["file"], *extra, record.get("class") or "",
           *[f"{probs[c]:.6f}" if c in probs else "" for c in classes]]
    spread = [f"{record[c]:.6f}" if record.get(c) is not None else "" for c in UNCERTAINTY_COLUMNS]
    if mode == CLASSIFY_MODE:
        return [*row, *spread]
    gated = record.get("gated")
    return [*row, "" if gated is None else str(bool(gated)).lower(),
            record["lesion_pixels"], f"{record['lesion_fraction']:.6f}",
            record["width"], record["height"], record["mask"], record.get("overlay") or "", *spread]


def write_tables(out: Path, records: Sequence[dict[str, Any]], *, classes: Sequence[str],
                 settings: dict[str, Any], failed: Sequence[dict[str, str]], csv_name: str = CSV_NAME,
                 json_name: str = JSON_NAME, extra: dict[str, Any] | None = None,
                 context: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """``predictions.csv`` and ``predictions.json`` (records in input order, the failures, the settings);
    a shard's run names its own (``csv_name``, ``json_name``) and adds what identifies it (``extra``).
    ``context`` (the input folder, the model files, the gate: what ``dlmi review`` shows as provenance) is
    kept in the JSON only; it is not part of the settings, so it never makes a re-run predict again."""
    mode = str(settings.get("mode", "aided"))
    text = io.StringIO()
    # RFC 4180 line ends: csv quotes a field holding any character of the line terminator, so with CRLF a
    # name with a carriage return (not only a newline) is quoted and reads back whole.
    writer = csv.writer(text, lineterminator="\r\n")
    dicom = any(record.get("frame") is not None for record in records)
    writer.writerow(csv_columns(classes, mode, dicom))
    for record in records:
        writer.writerow(_csv_row(record, classes, mode, dicom))
    public = [{k: v for k, v in r.items() if k not in PRIVATE_FIELDS} for r in records]
    try:
        # A file name that is not UTF-8 (held as surrogate escapes) is written \udcXX, as the JSON has it.
        csv_bytes = text.getvalue().encode("utf-8", errors="backslashreplace")
        csv_path = write_atomic(out / csv_name, lambda f: f.write(csv_bytes))
        json_path = write_json_atomic(out / json_name, {
            "settings": settings, **({"context": context} if context is not None else {}), **(extra or {}),
            "classes": list(classes), "predictions": public,
            "failed": list(failed),
        })
    except OSError as exc:
        raise OutputWriteError(f"{out}: cannot write the prediction tables ({exc.strerror or exc})") from exc
    return csv_path, json_path
