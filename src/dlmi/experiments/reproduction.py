"""Running a reproduction: make the splits, train and evaluate each experiment, skip or resume finished ones.

Each experiment is a run folder under ``out`` (``runs/reproduce-<profile>/<experiment>``). An experiment is
complete when its ``metrics.jsonl`` holds the final epoch and its ``eval-train.json`` / ``eval-test.json``
exist; a complete one is skipped, an interrupted one continues with :func:`dlmi.training.resume_training`.
The results file is rewritten (atomically) after every experiment, so partial results survive a crash.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dlmi.atomic import write_json_atomic
from dlmi.errors import DlmiError
from dlmi.experiments.plan import DATA_FOLDERS, Experiment, plan_experiments
from dlmi.experiments.profiles import Profile, get_profile
from dlmi.experiments.report import ReproductionState, read_json_object, write_results

EVAL_SIDES = ("train", "test")
TIMING_FILE = "reproduce-timing.json"
Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def load_average() -> float | None:
    """The 1-minute load average (``None`` where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    from dlmi import __version__

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "dlmi_version": __version__,
    }


def trained_epochs(run_dir: Path) -> int:
    """The last epoch recorded in the run's ``metrics.jsonl`` (0 when none)."""
    from dlmi.training.folder.run_folder import RunFolder

    rows = RunFolder(run_dir).read_metrics()
    return int(rows[-1]["epoch"]) if rows else 0


def is_complete(run_dir: Path, experiment: Experiment) -> bool:
    """Final epoch trained, best checkpoint written, train and test sides evaluated."""
    return (trained_epochs(run_dir) >= experiment.epochs and (run_dir / "best.pt").is_file()
            and all((run_dir / f"eval-{side}.json").is_file() for side in EVAL_SIDES))


class Reproduction:
    """One ``dlmi reproduce`` invocation over a profile's experiments."""

    def __init__(self, data_root: Path, profile: Profile, out: Path, results: Path, log: Log = _stderr,
                 quiet: bool = True, cache_dir: Path | None = None) -> None:
        self.data_root = data_root
        from dlmi.experiments.resized import default_copy_dir

        self.cache_dir = cache_dir or default_copy_dir()
        self.train_dirs: dict[str, Path] = {}
        self.profile = profile
        self.out = out
        self.results = results
        self.log = log
        self.quiet = quiet
        self.experiments = plan_experiments(profile)
        self.status: dict[str, str] = {e.name: "pending" for e in self.experiments}
        self.errors: dict[str, str] = {}
        self.skipped: list[str] = []
        self.completed: str | None = None
        self.splits: dict[str, dict[str, Any]] = {}
        self.started = datetime.now(UTC).isoformat(timespec="seconds")
        self.machine = {**machine_info(), "load_before": load_average()}

    # --- layout ------------------------------------------------------------------------------------------
    def data_dir(self, dataset: str) -> Path:
        """The original dataset folder (splits are made from it)."""
        return self.data_root / DATA_FOLDERS[dataset]

    def train_dir(self, dataset: str) -> Path:
        """The folder runs read: the original, or BUSI's resized copy when the profile asks for one."""
        return self.train_dirs.get(dataset, self.data_dir(dataset))

    def run_dir(self, name: str) -> Path:
        return self.out / name

    def split_file(self, dataset: str) -> Path:
        return self.out / "splits" / f"{dataset}.json"

    # --- steps -------------------------------------------------------------------------------------------
    def check_inputs(self) -> None:
        for dataset in dict.fromkeys(e.dataset for e in self.experiments):
            folder = self.data_dir(dataset)
            if not folder.is_dir():
                raise DlmiError(f"{folder}: no such folder; --data-root must hold "
                                f"{', '.join(sorted(DATA_FOLDERS.values()))}/")
        saved = self.out / "profile.json"
        previous = read_json_object(saved)
        if previous is not None and previous != self.profile.to_dict():
            raise DlmiError(f"{saved}: this folder was started with other profile settings; "
                            "use another --out or remove it")
        self.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(saved, self.profile.to_dict())
        state = self.out / "reproduce-state.json"
        first = (read_json_object(state) or {}).get("started")
        if first:
            self.started = first  # a resumed reproduction keeps the time it was first started
        else:
            write_json_atomic(state, {"started": self.started})

    def make_splits(self) -> None:
        """One leakage-free split per dataset (``dlmi.splits.make_split`` defaults), shared by its runs."""
        from dlmi.splits import load_split, make_split, save_split

        for dataset in dict.fromkeys(e.dataset for e in self.experiments):
            path = self.split_file(dataset)
            started = time.perf_counter()
            if path.is_file():
                split = load_split(path)
                made = False
            else:
                self.log(f"[reproduce] splitting {dataset} (auditing near-duplicates) ...")
                split = make_split(dataset, self.data_dir(dataset))
                save_split(split, path)
                made = True
            recorded = self.results / f"reproduce-{self.profile.name}-split-{dataset}.json"
            self.results.mkdir(parents=True, exist_ok=True)
            save_split(split, recorded)
            self.splits[dataset] = {
                "file": str(path), "recorded_as": str(recorded), "seed": split.seed,
                "threshold": split.threshold,
                "hash": split.hash, "train": len(split.train), "val": len(split.val), "test": len(split.test),
                "groups": len(split.groups), "cross_label": len(split.cross_label),
                "grouped_images": sum(len(g) for g in split.groups),
                "seconds": round(time.perf_counter() - started, 1) if made else None,
            }
        if self.profile.busi_copy_size and "busi" in self.splits:
            from dlmi.experiments.resized import resized_copy

            started = time.perf_counter()
            self.log(f"[reproduce] BUSI copy at {self.profile.busi_copy_size} px in {self.cache_dir} ...")
            self.train_dirs["busi"] = resized_copy("busi", self.data_dir("busi"), self.profile.busi_copy_size,
                                                   self.cache_dir)
            self.splits["busi"]["read_from"] = str(self.train_dirs["busi"])
            self.splits["busi"]["copy_seconds"] = round(time.perf_counter() - started, 1)

    def config(self, experiment: Experiment) -> Any:
        from dlmi.training import TrainConfig

        p = self.profile
        aid = str(self.run_dir(experiment.aid).resolve()) if experiment.aid else None
        return TrainConfig(
            task=experiment.task, dataset=experiment.dataset,
            data_dir=str(self.train_dir(experiment.dataset)),
            out=str(self.run_dir(experiment.name)), loss=experiment.loss, aid=aid,
            image_size=experiment.image_size, epochs=experiment.epochs, batch_size=experiment.batch_size,
            base_channels=experiment.base_channels, device=p.device, seed=p.seed,
            split=str(self.split_file(experiment.dataset).resolve()), quiet=self.quiet, **experiment.settings,
        )

    def train(self, experiment: Experiment) -> None:
        from dlmi.training import resume_training, train

        run_dir = self.run_dir(experiment.name)
        if run_dir.is_dir() and not (run_dir / "config.json").is_file():
            shutil.rmtree(run_dir)  # killed before its config was written: nothing to resume
        if not run_dir.is_dir():
            self.log(f"[reproduce] training {experiment.name} ({experiment.epochs} epochs) ...")
            train(self.config(experiment))
        elif trained_epochs(run_dir) < experiment.epochs or not (run_dir / "best.pt").is_file():
            self.log(f"[reproduce] resuming {experiment.name} after epoch {trained_epochs(run_dir)} ...")
            resume_training(run_dir, epochs=experiment.epochs, device=self.profile.device, quiet=self.quiet)

    def evaluate(self, experiment: Experiment) -> None:
        from dlmi.evaluation.evaluator import evaluate_run

        self.log(f"[reproduce] evaluating {experiment.name} (train, val, test sides) ...")
        aid = self.run_dir(experiment.eval_aid) if experiment.eval_aid else None
        evaluate_run(self.run_dir(experiment.name), aid=aid, side="all",
                     data_dir=self.train_dir(experiment.dataset), batch_size=self.profile.eval_batch_size,
                     device=self.profile.device, resamples=self.profile.resamples, panels=True, write=True)

    def run_one(self, experiment: Experiment) -> None:
        run_dir = self.run_dir(experiment.name)
        if is_complete(run_dir, experiment):
            self.status[experiment.name] = "done"
            self.skipped.append(experiment.name)
            self.log(f"[reproduce] {experiment.name}: complete, skipped")
            return
        missing = [n for n in experiment.needs if not self.status[n].startswith("done")]
        if missing:
            self.status[experiment.name] = f"not run: {', '.join(missing)} did not finish"
            return
        timing = read_json_object(run_dir / TIMING_FILE) or {}
        started = time.perf_counter()
        self.train(experiment)
        timing["train_wall_s"] = round(timing.get("train_wall_s", 0.0) + time.perf_counter() - started, 1)
        write_json_atomic(run_dir / TIMING_FILE, timing)
        started = time.perf_counter()
        self.evaluate(experiment)
        timing["eval_wall_s"] = round(time.perf_counter() - started, 1)
        write_json_atomic(run_dir / TIMING_FILE, timing)
        self.status[experiment.name] = "done"

    def state(self) -> ReproductionState:
        """The report's view of this reproduction; the load average is measured now."""
        return ReproductionState(
            profile=self.profile.to_dict(), experiments=list(self.experiments),
            run_dirs={e.name: self.run_dir(e.name) for e in self.experiments}, status=dict(self.status),
            data_root=self.data_root, out=self.out, results=self.results, started=self.started,
            completed=self.completed, machine={**self.machine, "load_after": load_average()},
            splits=self.splits, errors=dict(self.errors), skipped=list(self.skipped),
        )

    def write(self, complete: bool) -> Path:
        return write_results(self.state(), complete=complete)

    def run(self) -> Path:
        self.check_inputs()
        self.make_splits()
        self.write(complete=False)
        for experiment in self.experiments:
            try:
                self.run_one(experiment)
            except KeyboardInterrupt:
                self.status[experiment.name] = "interrupted"
                self.write(complete=False)
                raise
            except Exception as exc:  # one failed experiment must not lose the others' results
                self.status[experiment.name] = "failed"
                self.errors[experiment.name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                self.log(f"[reproduce] {experiment.name} FAILED: {self.errors[experiment.name]}")
                if not isinstance(exc, DlmiError):
                    traceback.print_exc()
            self.write(complete=False)
        state_path = self.out / "reproduce-state.json"
        state = read_json_object(state_path) or {"started": self.started}
        if "completed" not in state and all(s.startswith("done") for s in self.status.values()):
            state["completed"] = datetime.now(UTC).isoformat(timespec="seconds")
            write_json_atomic(state_path, state)
        self.completed = state.get("completed")
        path = self.write(complete=True)
        failed = [name for name, status in self.status.items() if not status.startswith("done")]
        if failed:
            raise DlmiError(f"{path}: {len(failed)} experiment(s) did not finish ({', '.join(failed)}); "
                            "the file holds the rest; re-run the same command to continue")
        return path


def reproduce(
    data_root: str | os.PathLike[str],
    profile: str = "cpu",
    out: str | os.PathLike[str] | None = None,
    results: str | os.PathLike[str] = "benchmarks/results",
    *,
    log: Log = _stderr,
    quiet: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> Path:
    """Run every experiment of ``profile`` on ``data_root`` (holding ``busi/`` and ``brain_mri/``).

    Writes ``<results>/reproduce-<profile>.md`` and ``.json`` and returns the Markdown path. ``overrides``
    replace profile fields (e.g. ``segmenter_epochs=2``); ``cache_dir`` holds BUSI's resized copy
    (default: ``<cache root>/resized-copy``, :mod:`dlmi.cache`).
    """
    chosen = get_profile(profile, **overrides)
    # Import the whole pipeline now, so edits to the source tree during a long run cannot change it midway.
    import dlmi.evaluation.evaluator  # noqa: F401
    import dlmi.splits  # noqa: F401
    import dlmi.training.start  # noqa: F401
    if chosen.threads:
        import torch

        torch.set_num_threads(chosen.threads)
    out_dir = Path(out) if out is not None else Path("runs") / f"reproduce-{chosen.name}"
    return Reproduction(Path(data_root), chosen, out_dir, Path(results), log=log, quiet=quiet,
                        cache_dir=Path(cache_dir) if cache_dir else None).run()
