"""``dlmi reproduce``: run all of the seed's experiments and write the side-by-side results file."""

from __future__ import annotations

from pathlib import Path

import typer


def reproduce_command(
    data_root: Path = typer.Option(..., "--data-root", help="Folder holding busi/ and brain_mri/ "
                                   "(the layout of ../shared/data)."),
    profile: str = typer.Option("cpu", "--profile", help="gpu (512², U-Net base 64), cpu (sized for one hour "
                                "on 2 cores) or tiny (tests)."),
    out: Path | None = typer.Option(None, "--out", help="Folder for the run folders and split files. "
                                    "[default: runs/reproduce-PROFILE]"),
    results: Path = typer.Option(Path("benchmarks/results"), "--results",
                                 help="Where reproduce-PROFILE.md and .json are written."),
    classifier_epochs: int | None = typer.Option(None, "--classifier-epochs", min=1,
                                                 help="Override the profile's classifier epochs."),
    segmenter_epochs: int | None = typer.Option(None, "--segmenter-epochs", min=1,
                                                help="Override the profile's U-Net epochs."),
    threads: int | None = typer.Option(None, "--threads", min=1,
                                       help="Override the profile's torch threads."),
    improved: bool | None = typer.Option(None, "--improved/--no-improved",
                                         help="Add (or leave out) the 'dlmi improved' variant runs."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Where BUSI's resized copy is kept "
                                          "(profiles that use one). [default: the system temp folder]"),
    verbose: bool = typer.Option(False, "--verbose", help="Show each run's training progress."),
) -> None:
    """Run the seed's experiments (brain MRI + BUSI classifiers, BCE/MSE/Dice U-Nets, aided versions) on
    leakage-free splits and write benchmarks/results/reproduce-PROFILE.md/.json beside the seed's numbers.

    Finished experiments are skipped and an interrupted one resumes, so re-running the same command continues.

    Example: `dlmi reproduce --data-root ../shared/data --profile cpu`
    """
    from dlmi.experiments import reproduce

    overrides = {"classifier_epochs": classifier_epochs, "segmenter_epochs": segmenter_epochs,
                 "threads": threads, "improved": improved}
    path = reproduce(data_root, profile, out, results, quiet=not verbose, cache_dir=cache_dir,
                     **overrides)
    typer.echo(f"results: {path} (and {path.with_suffix('.json')})")
