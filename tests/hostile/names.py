"""Odd file and folder names: spaces, unicode, dashes, newlines, long names, clashing stems, hidden files."""

from __future__ import annotations

from collections.abc import Callable

from hostile.harness import Case, Workspace
from hostile.make import grey, predicted, report, rows
from hostile.outcome import HANDLED, RunRecord

GOOD = ["good_0.png", "good_1.png"]


def named(
    label: str, *names: str, check: Callable[[RunRecord], None] | None = None, out: str = "out"
) -> Case:
    """Images named ``names`` (paths under the input folder) beside two good ones: all predicted, exit 0."""

    def run(ws: Workspace) -> list[str]:
        folder = ws.scans()
        for i, name in enumerate(names):
            grey(folder / name, seed=10 + i)
        return ws.predict_args(folder, out=out)

    return Case("names", label, HANDLED, run, check=check or (lambda r: predicted(r, [*GOOD, *names], out)))


def distinct_masks(*names: str) -> Callable[[RunRecord], None]:
    """Each of ``names`` predicted, and each with a mask file of its own."""

    def check(record: RunRecord) -> None:
        table = predicted(record, [*GOOD, *names])
        masks = [table[n]["mask"] for n in names]
        assert len(set(masks)) == len(masks), f"masks shared: {masks}"

    return check


def _long_name(ws: Workspace) -> list[str]:
    folder = ws.scans()
    grey(folder / ("x" * 244 + ".png"))
    return ws.predict_args(folder)


def _csv_round_trip(*names: str) -> Callable[[RunRecord], None]:
    def check(record: RunRecord) -> None:
        table = predicted(record, [*GOOD, *names])
        assert all(table[n]["mask"] for n in names)

    return check


def _evaluate_named(name: str) -> Callable[[Workspace], list[str]]:
    def run(ws: Workspace) -> list[str]:
        import numpy as np

        from hostile.make import disc, mask

        for side in ("pred", "truth"):
            mask(ws.path(side, name), disc())
            mask(ws.path(side, "plain.png"), np.zeros((32, 32)))
        return ["evaluate", "masks", str(ws.path("pred")), str(ws.path("truth")), "--resamples", "20"]

    return run


def _paired(count: int) -> Callable[[RunRecord], None]:
    def check(record: RunRecord) -> None:
        assert f"{count}" in record.stdout and "error" not in record.stderr.lower(), record.stdout[:300]

    return check


def _out_named(name: str) -> Case:
    def run(ws: Workspace) -> list[str]:
        return ws.predict_args(ws.scans(), out=name)

    return Case(
        "names", f"an output folder named {name!r}", HANDLED, run, check=lambda r: predicted(r, GOOD, name)
    )


def _input_named(name: str) -> Case:
    def run(ws: Workspace) -> list[str]:
        return ws.predict_args(ws.scans(name=name))

    return Case("names", f"an input folder named {name!r}", HANDLED, run, check=lambda r: predicted(r, GOOD))


def _with_hidden(name: str) -> Callable[[Workspace], list[str]]:
    """Two good images and a hidden PNG called ``name`` (predicted or left out: either is fine)."""

    def run(ws: Workspace) -> list[str]:
        folder = ws.scans()
        grey(folder / "tmp.png").rename(folder / name)
        return ws.predict_args(folder)

    return run


def _renamed(name: str) -> Callable[[Workspace], list[str]]:
    """Two good images and a PNG renamed to ``name`` (a name PIL cannot save to)."""

    def run(ws: Workspace) -> list[str]:
        folder = ws.scans()
        grey(folder / "tmp.png").rename(folder / name)
        return ws.predict_args(folder)

    return run


def _good_predicted(record: RunRecord) -> None:
    table = rows(record)
    assert set(GOOD) <= set(table), sorted(table)


def _already_done(record: RunRecord) -> None:
    predicted(record, [*GOOD, "über scan (1).png"])
    assert "already" in (record.stdout + record.stderr).lower(), record.stderr[-300:]


def _repeat_twice(ws: Workspace) -> list[str]:
    folder = ws.scans()
    grey(folder / "über scan (1).png")
    from hostile.harness import run_in_process

    run_in_process(ws.predict_args(folder))
    return ws.predict_args(folder)


NOT_UTF8 = b"latin1 \xe9chographie.png"  # a Latin-1 name from an old system: not valid UTF-8


def _not_utf8(ws: Workspace) -> list[str]:
    import os

    folder = ws.scans()
    os.rename(grey(folder / "tmp.png"), os.path.join(os.fsencode(folder), NOT_UTF8))
    return ws.predict_args(folder)


def _not_utf8_check(record: RunRecord) -> None:
    """The good images predicted; the Latin-1 one predicted too, its name written readably (escaped)."""
    import os

    table = rows(record)
    assert set(GOOD) <= set(table), sorted(table)
    assert len(table) == 3, f"the non-UTF-8 name is missing: {sorted(table)}"
    assert os.fsdecode(NOT_UTF8) in [p["file"] for p in report(record)["predictions"]], "not in the JSON"


CASES = [
    named("spaces in a name", "scan with spaces.png"),
    named("unicode in a name", "échographie_é_超音波.png"),
    named("a leading dash", "-scan.png"),
    named("a newline in a name", "two\nlines.png", check=_csv_round_trip("two\nlines.png")),
    named("commas and quotes in a name", 'a,"b";c.png', check=_csv_round_trip('a,"b";c.png')),
    named("a backslash in a name", "back\\slash.png"),
    named("percent and braces in a name", "%d {0} $HOME.png"),
    named("uppercase extensions", "A.PNG", "B.JPEG", "C.TIF", "D.Jpg"),
    named(
        "same stem, different extension",
        "a.png",
        "a.jpg",
        "a.tif",
        check=distinct_masks("a.png", "a.jpg", "a.tif"),
    ),
    named(
        "names differing only in case", "Scan.png", "scan.png", check=distinct_masks("Scan.png", "scan.png")
    ),
    named("x.png beside x.png.png", "x.png", "x.png.png", check=distinct_masks("x.png", "x.png.png")),
    named(
        "the same name in two subfolders",
        "left/x.png",
        "right/x.png",
        check=distinct_masks("left/x.png", "right/x.png"),
    ),
    named("a name that looks like a mask", "scan_mask.png"),
    named("a name that looks like an output", "predictions.png", "x.png.png.png"),
    named("deeply nested", "a/b/c/d/e/f/g/h/deep.png"),
    named("a tab in a name", "tab\there.png", check=_csv_round_trip("tab\there.png")),
    named("a carriage return in a name", "cr\rhere.png", check=_csv_round_trip("cr\rhere.png")),
    named("an emoji in a name", "scan \U0001fa7b.png"),
    named(
        "leading and trailing spaces",
        " lead.png",
        "trail .png",
        check=distinct_masks(" lead.png", "trail .png"),
    ),
    named(
        "the same name composed and decomposed (NFC, NFD)",
        "caf\u00e9.png",
        "cafe\u0301.png",
        check=distinct_masks("caf\u00e9.png", "cafe\u0301.png"),
    ),
    named("a folder named like an image", "folder.png/inside.png"),
    named("glob characters in a name", "a[1]*?.png"),
    Case(
        "names",
        "a name that is only dots and an extension",
        HANDLED,
        _renamed("...png"),
        check=lambda r: predicted(r, [*GOOD, "...png"]),
    ),
    Case("names", "a name that is not UTF-8", HANDLED, _not_utf8, check=_not_utf8_check),
    _input_named("scans [1] *"),
    _out_named("out [1] *"),
    Case("names", "a hidden image file", HANDLED, _with_hidden(".hidden.png"), check=_good_predicted),
    Case("names", "a file named only .png", HANDLED, _with_hidden(".png"), check=_good_predicted),
    Case(
        "names",
        "a 244-character name",
        HANDLED,
        _long_name,
        check=_csv_round_trip("x" * 244 + ".png"),
    ),
    _out_named("out put ü"),
    _out_named("-out"),
    _input_named("scans ü (copy)"),
    Case(
        "names", "a re-run over a unicode name is already done", HANDLED, _repeat_twice, check=_already_done
    ),
    Case(
        "names",
        "evaluate masks pairs names with spaces and unicode",
        HANDLED,
        _evaluate_named("bénin (1).png"),
        check=_paired(2),
    ),
]
