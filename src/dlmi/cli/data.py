"""``dlmi data``: dataset summaries and synthetic data (audit and splits come with the data issue)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Inspect datasets: summary, audit, split.", no_args_is_help=True)


def _range(low: int | None, high: int | None) -> str:
    if low is None:
        return "-"
    return str(low) if low == high else f"{low}-{high}"


@app.command("summary")
def summary_command(
    dataset: str = typer.Option(..., "--dataset", help="Registered dataset name (see `dlmi plugins`)."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="The dataset's folder (not needed for generated data such as `synthetic`)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Per-class image and mask counts and image size range, read from file headers only.

    Mask files whose size differs from their image and unreadable files are listed as problems
    (exit status 1).

    Example: `dlmi data summary --dataset busi --data-dir ../shared/data/busi --json`
    """
    from dlmi.datasets.summary import summarize
    from dlmi.plugins import get_dataset

    summary = summarize(get_dataset(dataset), data_dir)
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        where = f" in {summary.data_dir}" if summary.data_dir else ""
        table = Table(title=f"dataset {summary.dataset}{where}")
        for column in ("class", "images", "with mask", "mask files", "width", "height"):
            table.add_column(column, justify="left" if column == "class" else "right")
        for row in [*summary.classes, summary.total]:
            name = f"{row.name} (no finding)" if row.name == summary.normal_class else row.name
            masks = (str(row.masks), str(row.mask_files)) if summary.has_masks else ("-", "-")
            table.add_row(name, str(row.images), *masks, _range(row.min_width, row.max_width),
                          _range(row.min_height, row.max_height))
        Console().print(table)
    for problem in summary.problems:
        print(f"dlmi: problem: {problem}", file=sys.stderr)
    if summary.problems:
        raise typer.Exit(1)


@app.command("synth")
def synth_command(
    out: Path = typer.Option(..., "--out", help="Folder to write (BUSI layout); must be empty or new."),
    count: int = typer.Option(300, "--count", min=1, help="Number of images (classes interleaved)."),
    size: int = typer.Option(128, "--size", min=16, help="Native image side in pixels."),
    seed: int = typer.Option(0, "--seed", min=0, help="Set seed: the same seed writes the same images."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a folder that is not empty."),
) -> None:
    """Write the `synthetic` dataset to disk in BUSI layout (CLASS/NAME.png + NAME_mask.png).

    The folder then reads back with `--dataset busi` under the same keys as `--dataset synthetic`.

    Example: `dlmi data synth --out demo_data --count 30 --size 128`
    """
    from dlmi.datasets.base import list_samples
    from dlmi.datasets.writer import write_class_folders
    from dlmi.plugins import get_plugins

    source = get_plugins().datasets.create("synthetic", count=count, size=size, seed=seed)
    counts = write_class_folders(
        source, list_samples(source, None), out, overwrite=overwrite,
        provenance={"options": {"count": count, "size": size, "seed": seed}},
    )
    described = ", ".join(f"{name} {n}" for name, n in counts.items())
    typer.echo(f"wrote {sum(counts.values())} images with masks to {out} ({described})")


# --- duplicate audit, leakage-free splits, split checking (dlmi.splits) ---------------------------------


_DATA_DIR_HELP = "The dataset's folder (not for `synthetic`)."


def _hash_progress(label: str):
    """A progress callback that prints one line when hashing starts and one when it ends (stderr)."""
    def report(done: int, total: int) -> None:
        if done == 1:
            print(f"dlmi: {label}: hashing {total} images (cached ones are fast)", file=sys.stderr)
        if done == total:
            print(f"dlmi: {label}: hashed {total} images", file=sys.stderr)
    return report


def _threshold_option() -> typer.models.OptionInfo:
    return typer.Option(
        None, "--threshold", min=0, max=128,
        help="Largest hash distance (bits of 128) that counts as a duplicate; default 11 (see docs/data.md).",
    )


@app.command("audit")
def audit_command(
    dataset: str = typer.Option(..., "--dataset", help="Registered dataset name (see `dlmi plugins`)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help=_DATA_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON (paths relative to DIR)."),
    threshold: int | None = _threshold_option(),
    sheet: Path | None = typer.Option(
        None, "--sheet", help="Contact-sheet PNG of the groups [default: ./DATASET-audit.png]."
    ),
    no_sheet: bool = typer.Option(False, "--no-sheet", help="Do not write the contact sheet."),
) -> None:
    """Find exact and near-duplicate images (re-encodes, rescales, small crops, drawn marks), group them,
    and report groups that cross labels and, for sets with masks, groups whose masks disagree.

    Hashes are cached under $DLMI_CACHE_DIR (default ~/.cache/dlmi), so a second audit is fast.

    Example: `dlmi data audit --dataset busi --data-dir ../shared/data/busi --sheet busi-groups.png`
    """
    from dlmi.datasets.base import list_samples
    from dlmi.plugins import get_dataset
    from dlmi.splits.audit import MASK_IOU_LEVEL, audit_samples, check_threshold
    from dlmi.splits.contact_sheet import write_contact_sheet

    threshold = check_threshold(threshold)
    source = get_dataset(dataset)
    samples = list_samples(source, data_dir)
    result = audit_samples(source, samples, threshold=threshold, data_dir=data_dir,
                           progress=_hash_progress(f"audit {dataset}"))
    sheet_path = None
    if not no_sheet:
        sheet_path = sheet if sheet is not None else Path(f"{dataset}-audit.png")
        write_contact_sheet(result, source, {s.key: s for s in samples}, sheet_path)
    if as_json:
        data = result.to_json()
        data["sheet"] = str(sheet_path) if sheet_path is not None else None
        typer.echo(json.dumps(data, indent=2))
    else:
        counts = result.counts()
        where = f" in {data_dir}" if data_dir is not None else ""
        typer.echo(f"{dataset}{where}: {counts['images']} images, threshold {threshold} (bits of 128)")
        typer.echo(f"{counts['groups']} duplicate groups holding {counts['images_in_groups']} images; "
                   f"{counts['pairs']} pairs ({counts['identical_file_pairs']} byte-identical, "
                   f"{counts['identical_pairs'] - counts['identical_file_pairs']} pixel-identical, "
                   f"{counts['pairs'] - counts['identical_pairs']} near)")

        def show(group: list[str]) -> str:
            return ", ".join(f"{key} [{result.labels[key]}]" for key in group)

        typer.echo(f"{len(result.cross_label)} groups cross labels" + (":" if result.cross_label else ""))
        for group in result.cross_label:
            typer.echo(f"  {show(group)}")
        if result.has_masks:
            typer.echo(f"{len(result.mask_conflicts)} groups with mask conflicts (aligned-mask IoU < "
                       f"{MASK_IOU_LEVEL})" + (":" if result.mask_conflicts else ""))
            for group in result.mask_conflicts:
                typer.echo(f"  {show(group)}")
        if result.groups:
            typer.echo("groups:")
            for number, group in enumerate(result.groups, start=1):
                typer.echo(f"  {number}. {show(group)}")
        if sheet_path is not None:
            typer.echo(f"contact sheet: {sheet_path}")
    print(f"dlmi: audit took {result.seconds:.1f} s ({result.cache_hits} of {len(samples)} hashes cached)",
          file=sys.stderr)


@app.command("split")
def split_command(
    dataset: str = typer.Option(..., "--dataset", help="Registered dataset name (see `dlmi plugins`)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help=_DATA_DIR_HELP),
    out: Path = typer.Option(..., "--out", help="Split file to write (JSON)."),
    val: float = typer.Option(0.15, "--val", min=0.0, max=1.0, help="Validation share (not with --folds)."),
    test: float = typer.Option(0.15, "--test", min=0.0, max=1.0, help="Fraction held out for testing."),
    folds: int | None = typer.Option(None, "--folds", min=2, help="Make K folds of the non-test images."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed and data give the same split."),
    threshold: int | None = _threshold_option(),
) -> None:
    """Split a dataset without leakage: stratified by class, every duplicate group whole on one side,
    groups that cross labels kept in train only.

    Example: `dlmi data split --dataset brain-mri --data-dir ../shared/data/brain_mri --out split.json`
    """
    from dlmi.splits.split import make_split, save_split

    split = make_split(dataset, data_dir, val=val, test=test, folds=folds, seed=seed, threshold=threshold)
    save_split(split, out)
    sides = f"train {len(split.train)}, val {len(split.val)}, test {len(split.test)}"
    if split.folds:
        sides = (f"{len(split.folds)} folds of {', '.join(str(len(f['val'])) for f in split.folds)} "
                 f"(non-test {len(split.train)}), test {len(split.test)}")
    contested = sum(len(g) for g in split.cross_label)
    typer.echo(f"wrote {out}: {dataset}, {sides}; {len(split.groups)} duplicate groups kept whole, "
               f"{contested} cross-label images in train only "
               f"(seed {split.seed}, threshold {split.threshold})")


@app.command("check-split")
def check_split_command(
    split_file: Path = typer.Argument(..., help="The split file (JSON) to verify."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help=_DATA_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    threshold: int | None = typer.Option(
        None, "--threshold", min=0, max=128, help="Override the split's threshold (bits of 128)."
    ),
) -> None:
    """Verify any split, including a hand-made one: list every near-duplicate pair whose images are on
    different sides (exit status 1 if there is one).

    Example: `dlmi data check-split split.json --data-dir ../shared/data/brain_mri`
    """
    from dlmi.splits.check import check_split
    from dlmi.splits.split import load_split

    split = load_split(split_file)
    result = check_split(split, data_dir, threshold=threshold, progress=_hash_progress(f"check {split_file}"))
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        for leak in result.leaks:
            typer.echo(f"leak: {leak.first} ({leak.side_first}) ~ {leak.second} ({leak.side_second}): "
                       f"distance {leak.distance}, {leak.kind}")
        verdict = "no leaks" if result.ok else f"{len(result.leaks)} leaking pairs"
        typer.echo(f"{split_file}: {result.dataset}, {result.images} images checked at threshold "
                   f"{result.threshold}: {verdict}")
    if not result.ok:
        raise typer.Exit(1)
