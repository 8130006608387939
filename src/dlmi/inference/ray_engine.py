"""``dlmi predict --engine ray``: the same outputs as the local engine, computed on a Ray cluster (Ray Data).

The driver lists the inputs (a folder, as the local engine does, or a text file naming one path or URI a
line), and builds a Ray Dataset of files. Ray tasks read and decode them (the local engine's reader: DICOM
files become one row per frame) and an actor pool runs the models: each actor opens its own predictor once,
onnxruntime's CUDA provider only where Ray gave the actor a GPU. Each actor writes its images' mask and
overlay straight into OUT (atomic writes, so a batch Ray retries after an actor died rewrites the same
bytes) and returns the records; the driver, the only writer of ``progress.jsonl`` and the tables, keeps
the first record of each image (a retried batch's duplicates are dropped) and writes ``predictions.csv/json``
as the local engine does. OUT, the inputs and the model files must therefore be reachable at the same paths
from every node (shared storage); inputs may also be URIs that ``pyarrow.fs`` reads (``s3://``, ``gs://``,
``file://``).

A re-run skips the images done (by either engine) and the run holds OUT's lock, as the local engine does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, unquote

import numpy as np

from dlmi.discovery import matches, scan_images
from dlmi.errors import DlmiError
from dlmi.imageio import is_image_file
from dlmi.inference.folder import (
    CLASSIFY_MODE,
    PredictSettings,
    PredictSummary,
    ProgressCallback,
    Skipped,
    Unit,
    _check,
    _FolderPrediction,
    _load,
    _plain_progress,
    _units_of,
    choose_mode,
    prepare_output,
)
from dlmi.inference.outputs import (
    OutputLock,
    OutputWriteError,
    ProgressLog,
    check_unique_outputs,
    frame_stem,
    name_limit,
    output_name_problem,
    remove_orphan_temporaries,
    source_identity,
    write_tables,
)
from dlmi.inference.predictor import Predictor, open_predictor
from dlmi.machine import machine_cpus

RAY_EXTRA = "pip install 'dlmi[ray]'"
READY_DIR_ENV = "DLMI_RAY_READY_DIR"  # each actor writes <pid>.pid here once its models are open
ACTOR_RESTARTS = 3  # an actor that dies is restarted (and its batch retried) up to this many times
READ_CPUS = 0.5  # a reading task's share of a CPU: decoding is short and waits on storage
PREDICT, DONE, FAILED, WRITE_ERROR = "predict", "done", "failed", "write-error"


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or one line saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise DlmiError(f"--engine ray needs Ray, which is not installed here ({exc.name or exc}): "
                        f"{RAY_EXTRA}") from None
    return ray


@dataclass
class RaySettings:
    """Where and how wide: a running cluster's ``address`` (None: start a local Ray), the actors in the pool
    (None: one per CPU of a local Ray less one for reading, else 2), and GPUs per actor (a fraction shares
    a GPU)."""

    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float = 0.0

    def pool_size(self) -> int:
        return self.actors if self.actors else (max(1, machine_cpus() - 1) if self.address is None else 2)


# --- inputs ----------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    """The files to predict: relative paths under ``root`` (a folder, or a URI prefix), in a fixed order."""

    root: str
    files: list[PurePosixPath]
    broken_links: list[PurePosixPath] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def location(self, file: PurePosixPath) -> str:
        if is_uri(self.root):
            return f"{self.root.rstrip('/')}/{quote(str(file), safe='/')}"
        return str(Path(self.root) / file)


def is_uri(text: str) -> bool:
    """Whether an input names a file system by scheme (``s3://``, ``file://``) rather than a local path."""
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isalnum() and len(scheme) > 1


def list_inputs(source: Path, out: Path, patterns: Sequence[str]) -> Inputs:
    """A folder's images (as the local engine finds them), or the paths a text file lists one a line
    (blank lines and ``#`` comments left out; a relative path is relative to the list's folder). The swap
    point for a shared listing (sorted relative paths) when shards come in."""
    if source.is_dir():
        listing = scan_images(source, exclude=out, patterns=patterns)
        notes = [f"left out {source / f}: it holds an earlier dlmi predict output"
                 for f in listing.output_folders]
        if not listing.files and not listing.broken_links:
            left = f" (--exclude left out all {listing.excluded})" if listing.excluded else ""
            raise DlmiError(f"{source}: no images (png, jpg, jpeg, bmp, tif, dcm) under this folder{left}")
        return Inputs(str(source), listing.files, listing.broken_links, notes)
    if is_image_file(source):
        raise DlmiError(f"{source}: is an image; give a folder of images or a text file listing them "
                        "(one path or URI a line)")
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DlmiError(f"{source}: cannot read the list of inputs ({exc})") from None
    entries = []
    for line in text.splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            entries.append(entry if is_uri(entry) else os.path.normpath(source.parent.absolute() / entry))
    entries = [e for e in dict.fromkeys(entries) if not matches(PurePosixPath(e), patterns)]
    if not entries:
        raise DlmiError(f"{source}: lists no input paths (one path or URI a line)")
    kinds = {e.partition("://")[0] if is_uri(e) else "" for e in entries}
    if len(kinds) > 1:
        raise DlmiError(f"{source}: mixes local paths and URIs of schemes {sorted(kinds)}; list one kind")
    parents = [e.rsplit("/", 1)[0] for e in entries]
    root = os.path.commonpath(parents) if not is_uri(entries[0]) else _common_prefix(parents)
    relative = [e[len(root):].lstrip("/") for e in entries]
    if is_uri(root):
        relative = [unquote(r) for r in relative]  # a URI's name as a path: percent escapes decoded
    files = sorted(PurePosixPath(r) for r in relative)
    return Inputs(root, files)


def _common_prefix(parents: Sequence[str]) -> str:
    parts = [p.split("/") for p in parents]
    common = []
    for column in zip(*parts, strict=False):
        if len(set(column)) != 1:
            break
        common.append(column[0])
    return "/".join(common)


def _remote_source(uri: str) -> tuple[Any, str, dict[str, Any]]:
    """(pyarrow file system, its path, the source identity: URI, size, mtime) of a URI input."""
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(uri)
    info = filesystem.get_file_info(path)
    if info.type != fs.FileType.File:
        raise FileNotFoundError(f"{uri}: no such file")
    return filesystem, path, {"path": uri, "size": info.size, "mtime_ns": info.mtime_ns}


def input_source(inputs: Inputs, file: PurePosixPath) -> dict[str, Any] | None:
    """What identifies an input's content now (None: gone or unreadable)."""
    where = inputs.location(file)
    try:
        return _remote_source(where)[2] if is_uri(where) else source_identity(Path(where))
    except (OSError, ValueError):
        return None


# --- the Ray stages --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadContext:
    """What a reading task needs: where the files are, OUT, the model's input size, the mode."""

    inputs_root: str
    out: str
    size: int | None
    mode: str
    name_limit: int


def _row(order: int, frame: int | None, payload: Any) -> dict[str, Any]:
    return {"order": order, "frame": -1 if frame is None else frame, "payload": pickle.dumps(payload)}


def read_file(row: dict[str, Any], context: ReadContext) -> list[dict[str, Any]]:
    """One input file's rows: a decoded image per unit to predict (a DICOM file: per frame), or why not."""
    file, order = PurePosixPath(row["file"]), int(row["order"])
    done = set(pickle.loads(row["done"]))
    inputs = Inputs(context.inputs_root, [file])
    where = inputs.location(file)
    with contextlib.ExitStack() as stack:
        if is_uri(where):
            try:
                filesystem, path, source = _remote_source(where)
                folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dlmi-ray-")))
                local = folder / file.name
                with filesystem.open_input_stream(path) as remote, local.open("wb") as handle:
                    shutil.copyfileobj(remote, handle)
            except Exception as exc:
                reason = f"{where}: cannot read ({type(exc).__name__}: {exc})"
                return [_row(order, None, (FAILED, file, reason))]
            name = PurePosixPath(file.name)
        else:
            folder, name, source = Path(context.inputs_root), file, None
        units = _units_of(folder, name)
        if isinstance(units, str):
            return [_row(order, None, (FAILED, file, units.replace(str(folder / name), where)))]
        rows = []
        for local_unit in units:
            unit = dataclasses.replace(local_unit, file=file)
            if context.mode != CLASSIFY_MODE:
                problem = output_name_problem(Path(context.out), unit.stem, context.name_limit)
                if problem is not None:
                    rows.append(_row(order, unit.frame, (FAILED, unit, f"{where}: {problem}")))
                    continue
            if unit.key in done:
                rows.append(_row(order, unit.frame, (DONE, unit)))
                continue
            loaded = _load(folder, local_unit, context.size)
            loaded = dataclasses.replace(loaded, unit=unit, source=source or loaded.source)
            if loaded.error is not None:
                rows.append(_row(order, unit.frame, (FAILED, unit, loaded.error.replace(str(folder / name),
                                                                                        where))))
            else:
                rows.append(_row(order, unit.frame, (PREDICT, loaded)))
        return rows


class PredictActor:
    """One actor of the pool: its own predictor, opened once; predicts a batch of rows, writes their images'
    outputs into OUT and returns their records."""

    def __init__(self, opener: dict[str, Any], folder: str, out: str, settings: PredictSettings,
                 mode: str) -> None:
        import ray

        opener = dict(opener)
        if not ray.get_gpu_ids():
            opener["provider"] = "cpu"  # a GPU of the node that Ray did not give this actor is not its own
        if not opener.get("threads"):
            assigned = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
            opener["threads"] = max(1, int(assigned))
        predictor = open_predictor(**opener)
        self.prediction = _FolderPrediction(Path(folder), Path(out), predictor, settings, mode,
                                            lambda _: None)
        ready = os.environ.get(READY_DIR_ENV)
        if ready:
            Path(ready, f"{os.getpid()}.pid").write_text(predictor.running_on)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results: list[Any] = [pickle.loads(p) for p in batch["payload"]]
        positions = [i for i, r in enumerate(results) if r[0] == PREDICT]
        if positions:
            items = [results[i][1] for i in positions]
            try:
                finished = [job() for job in self.prediction.infer(items)]
            except OutputWriteError as exc:  # OUT cannot take the outputs: the driver stops the run
                finished = [(WRITE_ERROR, item.unit, str(exc)) for item in items]
            for i, item, result in zip(positions, items, finished, strict=True):
                if isinstance(result, Skipped):
                    results[i] = (FAILED, result.unit, result.error)
                elif isinstance(result, tuple):
                    results[i] = result
                else:
                    results[i] = (PREDICT, item.unit, result, item.note)
        return {"order": batch["order"], "frame": batch["frame"],
                "payload": np.array([pickle.dumps(r) for r in results], dtype=object)}


# --- the driver ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def ray_session(ray_settings: RaySettings, log: Callable[[str], None]) -> Iterator[Any]:
    """Ray, connected: the running cluster at ``address``, the Ray this process already started, or a local
    one started here (and shut down at the end)."""
    ray = require_ray()
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                               "log_to_driver": True}
    if ray_settings.address is None:
        options["num_cpus"] = max(machine_cpus(), ray_settings.pool_size() + 1)  # a CPU left for reading
    try:
        ray.init(address=ray_settings.address, **options)
    except Exception as exc:  # a wrong address, a cluster of another Ray version
        where = ray_settings.address or "a local cluster"
        raise DlmiError(f"--address {where}: cannot connect to Ray ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    started = ray_settings.address is None
    log(f"ray: {'started a local Ray' if started else 'connected to ' + ray_settings.address}")
    try:
        yield ray
    finally:
        ray.shutdown()


def _done_keys(prediction: _FolderPrediction, inputs: Inputs) -> dict[PurePosixPath, list[str]]:
    """Per input file, the keys of its images already done in OUT (same source, models and outputs)."""
    progress = prediction.progress
    assert progress is not None
    by_file: dict[str, list[dict[str, Any]]] = {}
    for key, record in progress.records.items():
        by_file.setdefault(record["file"], []).append({**record, "key": key})
    done: dict[PurePosixPath, list[str]] = {}
    for file in inputs.files:
        records = by_file.get(str(file))
        if not records:
            continue
        source = input_source(inputs, file)
        if source is None:
            continue
        keys = []
        for record in records:
            stem = None if prediction.mode == CLASSIFY_MODE else frame_stem(
                file, record.get("frame"), int(record.get("frames") or 1))
            if progress.is_done(record["key"], prediction.out, source=source, stem=stem,
                                overlays=prediction.settings.overlays):
                keys.append(record["key"])
        done[file] = keys
    return done


def predict_with_ray(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    predictor: Predictor,
    opener: dict[str, Any],
    settings: PredictSettings | None = None,
    ray_settings: RaySettings | None = None,
    *,
    log: Callable[[str], None] = print,
    progress: ProgressCallback | None = None,
) -> PredictSummary:
    """Predict every image of ``source`` (a folder, or a text file listing paths or URIs) into ``out`` on Ray.

    ``predictor`` (opened here, on the driver) gives the mode, classes and the models' fingerprint;
    ``opener`` holds :func:`open_predictor`'s arguments, with which each actor opens its own."""
    settings = settings or PredictSettings()
    ray_settings = ray_settings or RaySettings()
    source, out = Path(source), Path(out)
    _check_ray_settings(ray_settings, opener)
    _check(settings, source, out)
    if settings.dicom_seg or settings.dicom_sr:
        raise DlmiError("--dicom-seg / --dicom-sr with --engine ray: the DICOM outputs are written by the "
                        "local engine only; leave out --engine ray")
    if settings.num_shards is not None:
        raise DlmiError("--num-shards with --engine ray: Ray spreads the inputs over its actors itself; "
                        "use one or the other")
    mode = choose_mode(predictor, settings)
    inputs = list_inputs(source, out, settings.exclude)
    for note in inputs.notes:
        log(note)
    prepare_output(out)
    with OutputLock.acquire(out, log):
        return _predict_locked(inputs, out, predictor, opener, settings, ray_settings, mode, log, progress)


def _check_ray_settings(ray_settings: RaySettings, opener: dict[str, Any]) -> None:
    if ray_settings.actors is not None and ray_settings.actors < 1:
        raise DlmiError(f"--actors must be at least 1, got {ray_settings.actors}")
    if not ray_settings.gpus_per_actor >= 0:  # NaN too
        raise DlmiError(f"--gpus-per-actor must be 0 or more, got {ray_settings.gpus_per_actor}")
    if opener.get("provider") == "cuda" and not ray_settings.gpus_per_actor:
        raise DlmiError("--provider cuda with --engine ray needs --gpus-per-actor (a GPU for each actor)")


def _predict_locked(inputs: Inputs, out: Path, predictor: Predictor, opener: dict[str, Any],
                    settings: PredictSettings, ray_settings: RaySettings, mode: str,
                    log: Callable[[str], None], progress: ProgressCallback | None) -> PredictSummary:
    removed = remove_orphan_temporaries(out)
    if removed:
        log(f"removed {removed} temporary file(s) left in {out} by an interrupted run")
    check_unique_outputs(inputs.files, out)
    folder = Path(inputs.root) if not is_uri(inputs.root) else out  # where the driver names files from
    prediction = _FolderPrediction(folder, out, predictor, settings, mode, log)
    for link in inputs.broken_links:
        prediction.fail(link, f"{inputs.location(link)}: a symbolic link to a file that does not exist")
    prediction.progress = ProgressLog(out, prediction.output_settings(), overwrite=settings.overwrite)
    if prediction.progress.changed:
        log(f"{prediction.progress.path}: the earlier predictions in {out} were made with other settings "
            f"(changed: {', '.join(prediction.progress.changed)}); predicting every image again")
    done = _done_keys(prediction, inputs)
    already = sum(len(keys) for keys in done.values())
    if already:
        log(f"{already} images already done in {out} (use --overwrite to redo them)")
    context = ReadContext(inputs.root, str(out), None if (settings.tile or mode == CLASSIFY_MODE)
                          else predictor.info.segmenter_size, mode, name_limit(out))
    report = progress or _plain_progress(log)
    keys: dict[str, tuple[int, int]] = {}  # every current image's key → its place in the tables
    failures: list[tuple[int, int, dict[str, str]]] = []
    predicted = skipped = 0
    write_error: str | None = None
    with ray_session(ray_settings, log) as ray:
        dataset = _dataset(ray, inputs, done, context, opener, settings, ray_settings, mode, out)
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                finished = []
                columns = zip(batch["order"], batch["frame"], batch["payload"], strict=True)
                for order, frame, payload in columns:
                    result = pickle.loads(payload)
                    status, unit = result[0], result[1]
                    key = unit.key if isinstance(unit, Unit) else f"{unit}\0file"
                    if key in keys:
                        continue  # a batch Ray ran again after an actor died
                    keys[key] = (int(order), int(frame))
                    if status == PREDICT:
                        if result[3] is not None:
                            log(result[3])
                        finished.append(result[2])
                    elif status == DONE:
                        skipped += 1
                    elif status == WRITE_ERROR:
                        write_error = write_error or result[2]
                    else:
                        before = len(prediction.failed)
                        prediction.fail(unit, result[2])
                        failures += [(int(order), int(frame), f) for f in prediction.failed[before:]]
                if finished:
                    prediction.progress.append(finished)
                    predicted += len(finished)
                report(predicted, len(failures), len(inputs.files) - already)
                if write_error:
                    break
        except Exception as exc:
            if isinstance(exc, DlmiError):
                raise
            first = str(exc).strip().splitlines()
            raise DlmiError(f"--engine ray: the run failed on the cluster ({type(exc).__name__}: "
                            f"{first[-1] if first else ''}); the images done are in {out}; re-run to "
                            "continue") from None
    orphans = 0 if write_error else remove_orphan_temporaries(out)  # the pool is done: an actor's that died
    if orphans:
        log(f"removed {orphans} temporary file(s) left in {out} by an actor that died (its batch was redone)")
    current = [k for k in keys if not k.endswith("\0file")]
    ordered = sorted(current, key=lambda k: keys[k])
    records = [prediction.progress.records[k] for k in ordered if k in prediction.progress.records]
    failed = prediction.failed[:len(inputs.broken_links)] + [f for *_, f in sorted(failures,
                                                                                  key=lambda t: t[:2])]
    if write_error is None:
        stems = {k: prediction.stem(_unit_of(prediction.progress.records.get(k), k)) for k in current}
        prediction.removed += prediction.progress.remove_stale(out, stems)
    prediction.report_removed()
    csv_path, json_path = write_tables(out, records, classes=prediction.classes,
                                       settings=prediction.output_settings(), failed=failed,
                                       context=prediction.context())
    if write_error is not None:
        raise DlmiError(f"{write_error}; stopped: the {len(records)} images done are in {csv_path}; fix the "
                        "cause and re-run to continue")
    return PredictSummary(out=out, total=len(keys) + len(inputs.broken_links), predicted=predicted,
                          skipped=skipped, failed=failed, csv=csv_path, json=json_path,
                          running_on=f"ray ({ray_settings.pool_size()} actors), {predictor.running_on}",
                          mode=mode)


def _unit_of(record: dict[str, Any] | None, key: str) -> Unit:
    """The unit a key names (for its output stem), from its record where there is one."""
    file, _, frame = key.partition("#")
    frames = int(record.get("frames") or 1) if record else (2 if frame else 1)
    return Unit(PurePosixPath(file), int(frame) if frame else None, frames)


def _dataset(ray: Any, inputs: Inputs, done: dict[PurePosixPath, list[str]], context: ReadContext,
             opener: dict[str, Any], settings: PredictSettings, ray_settings: RaySettings, mode: str,
             out: Path) -> Any:
    """The Ray Dataset: files → (tasks) decoded images → (actor pool) records."""
    context_data = ray.data.DataContext.get_current()
    context_data.enable_progress_bars = False
    with contextlib.suppress(AttributeError):
        context_data.print_on_execution_start = False
    rows = [{"order": i, "file": str(f), "done": pickle.dumps(done.get(f, []))}
            for i, f in enumerate(inputs.files)]
    files_per_block = max(1, settings.batch_size)
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // files_per_block)))
    decoded = dataset.flat_map(read_file, fn_kwargs={"context": context}, num_cpus=READ_CPUS)
    options = {"batch_size": settings.batch_size, "batch_format": "numpy", "num_cpus": 1,
               "num_gpus": ray_settings.gpus_per_actor or None,
               "compute": ray.data.ActorPoolStrategy(size=ray_settings.pool_size()),
               "fn_constructor_kwargs": {"opener": opener, "folder": inputs.root, "out": str(out),
                                         "settings": settings, "mode": mode}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Ray 2.5x deprecates remote args, keeps them
        try:
            return decoded.map_batches(PredictActor, **options, max_restarts=ACTOR_RESTARTS,
                                       max_task_retries=ACTOR_RESTARTS)
        except TypeError:  # a Ray without them: its own default (restart and retry without limit)
            return decoded.map_batches(PredictActor, **options)


def engine_runner(engine: str, source: str | os.PathLike[str], *, address: str | None, actors: int | None,
                  gpus_per_actor: float, opener: dict[str, Any]) -> Callable[..., PredictSummary] | None:
    """``None`` for the local engine; for ``ray``, :func:`predict_with_ray` bound to the cluster settings and
    ``opener`` (called as :func:`~dlmi.inference.folder.predict_folder` is), Ray's presence checked first.
    Ray's options without ``engine="ray"`` are refused in one line."""
    if engine == "local":
        given = [name for name, value in (("--address", address), ("--actors", actors),
                                          ("--gpus-per-actor", gpus_per_actor)) if value]
        if given:
            raise DlmiError(f"{', '.join(given)}: only with --engine ray")
        if Path(source).is_file():
            raise DlmiError(f"{source}: a list of inputs is read by --engine ray; the local engine predicts "
                            "a folder")
        return None
    if engine != "ray":
        raise DlmiError(f"--engine {engine}: expected local or ray")
    require_ray()
    ray_settings = RaySettings(address=address, actors=actors, gpus_per_actor=gpus_per_actor)
    _check_ray_settings(ray_settings, opener)

    def run(source: str | os.PathLike[str], out: str | os.PathLike[str], predictor: Predictor,
            settings: PredictSettings | None = None, **kwargs: Any) -> PredictSummary:
        return predict_with_ray(source, out, predictor, opener, settings, ray_settings, **kwargs)

    return run
