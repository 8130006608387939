"""Hostile inputs (odd image files) and the checks cases share on a run's outputs."""

from __future__ import annotations

import csv
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hostile.outcome import RunRecord


def grey(path: Path, size: tuple[int, int] = (40, 30), seed: int = 0, mode: str = "L") -> Path:
    """A random-texture image (width, height) saved in ``mode`` at ``path`` (format from its suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    image = Image.fromarray(pixels, "L")
    if mode != "L":
        image = image.convert(mode)
    image.save(path)
    return path


def raw(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def png_with_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims ``width``×``height`` and holds almost no data (a bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunks = [(b"IHDR", ihdr), (b"IDAT", zlib.compress(b"\x00" * 64)), (b"IEND", b"")]
    body = b"".join(
        struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d)) for t, d in chunks
    )
    return raw(path, b"\x89PNG\r\n\x1a\n" + body)


def mask(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8)).save(path)
    return path


def disc(size: int = 32, radius: int = 8, value: int = 255) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (((yy - size // 2) ** 2 + (xx - size // 2) ** 2) <= radius**2) * value


# --- checks ---------------------------------------------------------------------------------------------


def rows(record: RunRecord, out: str = "out") -> dict[str, dict[str, str]]:
    """predictions.csv of ws/OUT: file → row."""
    assert record.workspace is not None
    with (record.workspace / out / "predictions.csv").open(newline="", encoding="utf-8") as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


def report(record: RunRecord, out: str = "out") -> dict[str, Any]:
    assert record.workspace is not None
    return json.loads((record.workspace / out / "predictions.json").read_text(encoding="utf-8"))


def predicted(record: RunRecord, files: list[str], out: str = "out") -> dict[str, dict[str, str]]:
    """Assert that exactly ``files`` are in predictions.csv, each with a mask of its image's size."""
    table = rows(record, out)
    assert sorted(table) == sorted(files), f"rows {sorted(table)} != {sorted(files)}"
    for name, row in table.items():
        if row.get("mask"):
            assert record.workspace is not None
            with Image.open(record.workspace / out / row["mask"]) as written:
                assert written.size == (int(row["width"]), int(row["height"])), name
    return table


def partial(record: RunRecord, good: list[str], bad: str, out: str = "out") -> None:
    """The good files predicted, the bad one named in one stderr line and listed as failed."""
    predicted(record, good, out)
    named = [line for line in record.stderr.splitlines() if bad in line]
    assert len(named) == 1, f"{bad} named on {len(named)} stderr lines"
    assert [Path(f["file"]).name for f in report(record, out)["failed"]] == [Path(bad).name]


def same_prediction(record: RunRecord, a: str, b: str, out: str = "out") -> None:
    """Files a and b got the same class, gate and lesion size."""
    table = rows(record, out)
    for column in ("class", "gated", "lesion_pixels"):
        assert table[a][column] == table[b][column], (
            f"{column}: {a} {table[a][column]} != {b} {table[b][column]}"
        )


def says(record: RunRecord, *words: str) -> None:
    """stdout+stderr mention each of ``words`` (case-insensitively)."""
    text = record.stdout + record.stderr
    if record.workspace is not None:  # the case's own folder names are not what was said
        text = text.replace(str(record.workspace), "WS")
    text = text.lower()
    missing = [w for w in words if w.lower() not in text]
    assert not missing, f"the output does not mention {missing}"
