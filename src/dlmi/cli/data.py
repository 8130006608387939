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
    from dlmi.datasets.writer import write_class_folders
    from dlmi.plugins import get_plugins

    source = get_plugins().datasets.create("synthetic", count=count, size=size, seed=seed)
    counts = write_class_folders(
        source, source.samples(None), out, overwrite=overwrite,
        provenance={"options": {"count": count, "size": size, "seed": seed}},
    )
    described = ", ".join(f"{name} {n}" for name, n in counts.items())
    typer.echo(f"wrote {sum(counts.values())} images with masks to {out} ({described})")
