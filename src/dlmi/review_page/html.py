"""Writing the review page: the pictures beside it, then one HTML file with its script, style and data
inlined (no server, no network: it opens from a shared drive)."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dlmi.atomic import write_atomic
from dlmi.errors import DlmiError
from dlmi.review_page.build import ReviewData, score
from dlmi.review_page.pictures import write_pictures

PROGRESS_EVERY = 500


def files_folder(page: Path) -> Path:
    """The folder of pictures beside ``page``: ``review.html`` → ``review-files/``."""
    return page.with_name(f"{page.stem}-files")


def relative_link(target: str | os.PathLike[str], page: Path) -> str:
    """A link from ``page`` to ``target``: relative where both lie on one drive, else a file: URL."""
    try:
        relative = os.path.relpath(os.path.abspath(target), os.path.abspath(page.parent))
    except ValueError:  # another drive (Windows)
        return Path(os.path.abspath(target)).as_uri()
    return quote(Path(relative).as_posix())


def _static(name: str) -> str:
    return resources.files("dlmi.review_page").joinpath("static", name).read_text(encoding="utf-8")


def page_json(review: ReviewData, page: Path) -> dict[str, Any]:
    """What the page's script reads (rows, classes, provenance and links)."""
    return {
        "title": review.title, "page_id": review.page_id, "classes": review.classes,
        "normal_class": review.normal_class, "provenance": review.provenance,
        "links": [[label, relative_link(path, page)] for label, path in review.links],
        "definitions": review.definitions, "skipped": review.skipped,
        "rows": [item.row for item in review.items],
    }


def render(data: dict[str, Any]) -> str:
    """The page's HTML: the template with the style, the script and the data inlined."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    text = text.replace("<", "\\u003c")  # no "</script>" or "<!--" can close the data block early
    return (_static("template.html").replace("{{TITLE}}", html.escape(str(data.get("title", "dlmi review"))))
            .replace("{{CSS}}", _static("review.css")).replace("{{DATA}}", text)
            .replace("{{JS}}", _static("review.js")))


def write_page(review: ReviewData, page: str | os.PathLike[str],
               log: Callable[[str], None] = print) -> Path:
    """Write each image's thumbnail and detail strip into ``<page stem>-files/``, score it against its
    truth, then the page itself (atomically); the page's path."""
    page = Path(page)
    folder = files_folder(page)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or exc
        raise DlmiError(f"{folder}: cannot create the review's picture folder ({reason})") from None
    total = len(review.items)
    for index, item in enumerate(review.items):
        row = item.row
        row["thumb"] = row["detail"] = None
        row.setdefault("dice", None)
        row.setdefault("iou", None)
        if item.pictures is None:
            continue
        try:
            grey, predicted, truth = item.pictures()
            score(row, predicted, truth)
            thumb, detail = write_pictures(folder, index, grey, predicted, truth)
        except DlmiError as exc:
            row["problem"] = str(exc)
            log(f"review: {exc}")
            continue
        row["panels"] = 4 if truth is not None else 2  # the detail strip: with or without the truth panels
        row["thumb"] = f"{quote(folder.name)}/{thumb}"
        row["detail"] = f"{quote(folder.name)}/{detail}"
        if (index + 1) % PROGRESS_EVERY == 0:
            log(f"review: {index + 1} of {total} images")
    text = render(page_json(review, page)).encode("utf-8")
    try:
        return write_atomic(page, lambda handle: handle.write(text))
    except OSError as exc:
        raise DlmiError(f"{page}: cannot write the review page ({exc.strerror or exc})") from None
