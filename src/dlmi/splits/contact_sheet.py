"""A contact sheet of the audit's duplicate groups, for a human look.

One block per group: a header (group number, labels, ``CROSS-LABEL`` / ``MASK CONFLICT``) and a
thumbnail of each member captioned with its key and class, with its mask's outline drawn in red for sets
with masks. Cross-label groups come first, then groups with mask conflicts, then the rest by size.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dlmi.atomic import write_atomic
from dlmi.datasets.base import DatasetSource, Sample, load_sample
from dlmi.splits.audit import AuditResult

_PER_ROW = 8
_GAP = 6
_CAPTION = 26
_HEADER = 18


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def _outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a boolean mask."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _thumbnail(image: np.ndarray, mask: np.ndarray | None, side: int) -> Image.Image:
    height, width = image.shape
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    picture = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR).convert("RGB")
    if mask is not None and mask.any():
        outline = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
        small = np.asarray(outline) > 0
        pixels = np.array(picture)
        pixels[_outline(small)] = (255, 40, 40)
        picture = Image.fromarray(pixels)
    return picture


def _ordered_groups(result: AuditResult) -> list[tuple[int, list[str]]]:
    crossing = {tuple(g) for g in result.cross_label}
    conflicting = {tuple(g) for g in result.mask_conflicts}
    numbered = list(enumerate(result.groups, start=1))
    return sorted(numbered, key=lambda item: (tuple(item[1]) not in crossing,
                                              tuple(item[1]) not in conflicting, -len(item[1]), item[0]))


def write_contact_sheet(
    result: AuditResult,
    source: DatasetSource,
    samples: Mapping[str, Sample],
    path: str | Path,
    *,
    thumb: int = 128,
    max_groups: int = 300,
) -> Path:
    """Write the sheet of ``result``'s groups (at most ``max_groups``) as a PNG; returns its path."""
    ordered = _ordered_groups(result)[:max_groups]
    crossing = {tuple(g) for g in result.cross_label}
    conflicting = {tuple(g) for g in result.mask_conflicts}
    cell_w, cell_h = thumb + _GAP, thumb + _CAPTION
    width = _PER_ROW * cell_w + _GAP
    heights = [_HEADER + cell_h * -(-len(group) // _PER_ROW) + _GAP for _, group in ordered]
    title_h = 24
    sheet = Image.new("RGB", (width, title_h + max(sum(heights), cell_h)), "white")
    draw = ImageDraw.Draw(sheet)
    small, header_font = _font(10), _font(13)
    title = (f"{result.dataset}: {len(result.groups)} duplicate groups at threshold {result.threshold} "
             f"({len(result.cross_label)} cross-label, {len(result.mask_conflicts)} with mask conflicts)")
    if len(result.groups) > len(ordered):
        title += f"; first {len(ordered)} shown"
    draw.text((_GAP, 4), title, fill="black", font=header_font)
    if not ordered:
        draw.text((_GAP, title_h + 8), "no duplicates found", fill="black", font=header_font)
    top = title_h
    for (number, group), block_h in zip(ordered, heights, strict=True):
        labels = sorted({result.labels[k] for k in group})
        flags = [flag for flag, on in (("CROSS-LABEL", tuple(group) in crossing),
                                       ("MASK CONFLICT", tuple(group) in conflicting)) if on]
        colour = (200, 0, 0) if flags else (0, 0, 0)
        header = f"group {number}: {len(group)} images, {', '.join(labels)}" + (
            "  " + " ".join(flags) if flags else "")
        draw.line([(0, top), (width, top)], fill=(200, 200, 200))
        draw.text((_GAP, top + 2), header, fill=colour, font=header_font)
        for n, key in enumerate(group):
            row, column = divmod(n, _PER_ROW)
            x = _GAP + column * cell_w
            y = top + _HEADER + row * cell_h
            image, mask = load_sample(source, samples[key])
            sheet.paste(_thumbnail(image, mask, thumb), (x, y))
            name = key if len(key) <= 24 else "…" + key[-23:]
            draw.text((x, y + thumb + 1), name, fill="black", font=small)
            draw.text((x, y + thumb + 12), result.labels[key], fill=colour if flags else (90, 90, 90),
                      font=small)
        top += block_h
    return write_atomic(path, lambda handle: sheet.save(handle, format="PNG"))
