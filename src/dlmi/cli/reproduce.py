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
                                          "(profiles that use one). [default: $DLMI_CACHE_DIR/resized-copy, "
                                          "$DLMI_CACHE_DIR defaulting to ~/.cache/dlmi]"),
    verbose: bool = typer.Option(False, "--verbose", help="Show each run's training progress."),
    only: str | None = typer.Option(None, "--only", help="seed (the seed's experiments) or best (dlmi's "
                                    "best configuration: fold ensembles, ablation, exported ONNX). "
                                    "[default: both]"),
) -> None:
    """Run the seed's experiments (brain MRI + BUSI classifiers, BCE/MSE/Dice U-Nets, aided versions) on
    leakage-free splits and write benchmarks/results/reproduce-PROFILE.md/.json beside the seed's numbers.

    Finished experiments are skipped and an interrupted one resumes, so re-running the same command continues.

    `--only best` trains dlmi's best configuration instead (BUSI: a 5-fold ensemble of joint models; brain
    MRI: a 5-fold classifier ensemble), exports it to DIR/busi-best/exported and writes best-PROFILE.md/.json.

    Example: `dlmi reproduce --data-root ../shared/data --profile cpu`

    Example: `dlmi reproduce --data-root ../shared/data --profile cpu --only best --out runs/best`
    """
    from dlmi.errors import DlmiError
    from dlmi.experiments import reproduce

    if only not in (None, "seed", "best"):
        raise DlmiError(f"--only {only}: expected seed or best")
    if only in (None, "seed"):
        overrides = {"classifier_epochs": classifier_epochs, "segmenter_epochs": segmenter_epochs,
                     "threads": threads, "improved": improved}
        path = reproduce(data_root, profile, out, results, quiet=not verbose, cache_dir=cache_dir,
                         **overrides)
        typer.echo(f"results: {path} (and {path.with_suffix('.json')})")
    if only in (None, "best"):
        from dlmi.experiments.best import run_best

        best_out = out / "best" if (out is not None and only is None) else out
        path = run_best(data_root, profile, best_out, results, quiet=not verbose, log=typer.echo)
        typer.echo(f"dlmi best: {path} (and {path.with_suffix('.json')})")
