"""``dlmi train classifier|segmenter|joint``: a thin layer over :mod:`dlmi.api`.

The options are made from :class:`~dlmi.training.config.TrainConfig`'s fields (their ``setting`` metadata:
flags, help, the tasks that take them), so a setting is declared once; each command adds only ``--resume``
and, where a task has fold ensembles, ``--folds``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from dlmi.errors import DlmiError
from dlmi.training.config import (
    CLASSIFICATION,
    JOINT,
    PATH_FIELDS,
    SEGMENTATION,
    TASK_DEFAULTS,
    TrainConfig,
    setting_flags,
    task_settings,
)

app = typer.Typer(help="Train a classifier, a (classifier-aided) segmenter or a joint model.",
                  no_args_is_help=True)

H_RESUME = "Continue the interrupted run in this folder (other settings come from its config.json)."
H_FOLDS = {
    CLASSIFICATION: "Train an ensemble: K classifiers on K cross-validation folds of the split's train+val "
                    "images (test side unchanged) into OUT/fold-k, then OUT/ensemble.json with the "
                    "out-of-fold accuracy. Resumable.",
    JOINT: "Train an ensemble: K joint models on K cross-validation folds of the split's train+val images "
           "(test side unchanged) into OUT/fold-k, then OUT/ensemble.json with the threshold, lesion-size "
           "rule and gate rule chosen on out-of-fold predictions. Resumable: run the same command again.",
}
_HINTS = typing.get_type_hints(TrainConfig)


def _cli_type(setting: dataclasses.Field[Any]) -> Any:
    """The type Typer parses a setting's option as: a Path for files, KEY=VALUE strings for model options."""
    if setting.name in PATH_FIELDS:
        return Path
    if setting.name == "model_options":
        return list[str]
    types = [t for t in typing.get_args(_HINTS[setting.name]) if t is not type(None)]
    return types[0] if types else _HINTS[setting.name]


def _help(setting: dataclasses.Field[Any], task: str) -> str:
    """The option's help for ``task``, with the default it gets when not given."""
    text = setting.metadata["help"]
    text = text[task] if isinstance(text, dict) else text
    default = TASK_DEFAULTS[task].get(setting.name, setting.default)
    if "[default:" in text or default is None or default is dataclasses.MISSING or default is False:
        return text
    return f"{text} [default: {'on' if default is True else default}]"


def _option(setting: dataclasses.Field[Any], task: str) -> inspect.Parameter:
    """A setting as a keyword parameter whose default is its Typer option (None: not given)."""
    on_off = "/" in setting_flags(setting)[0]
    plain_flag = _cli_type(setting) is bool and not on_off  # --augment, --quiet: off means not given
    option = typer.Option(False if plain_flag else None, *setting_flags(setting), help=_help(setting, task))
    return inspect.Parameter(setting.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                             annotation=_cli_type(setting))


def _parse_options(pairs: list[str] | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DlmiError(f"--model-option {pair!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _settings(values: dict[str, Any]) -> dict[str, Any]:
    """A command's option values as the keyword arguments of :mod:`dlmi.api` (None: not given)."""
    settings = dict(values)
    for key in PATH_FIELDS:
        if key in settings:
            settings[key] = str(settings[key]) if settings[key] else None
    for key, value in values.items():
        if value is False and _cli_type(TrainConfig.__dataclass_fields__[key]) is bool and \
                "/" not in setting_flags(TrainConfig.__dataclass_fields__[key])[0]:
            settings[key] = None  # a plain flag left off: the default, so a resumed run keeps its own
    settings["model_options"] = _parse_options(settings.pop("model_options")) or None
    return settings


def _train_command(task: str, doc: str) -> Callable[..., None]:
    """The ``dlmi train`` command of ``task``: an option per setting of the task, ``--folds`` where the task
    has fold ensembles, and ``--resume``."""
    params = [_option(setting, task) for setting in task_settings(task)]
    if task in H_FOLDS:
        params.append(inspect.Parameter("folds", inspect.Parameter.KEYWORD_ONLY, annotation=int,
                                        default=typer.Option(None, "--folds", help=H_FOLDS[task])))
    params.append(inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
                                    default=typer.Option(None, "--resume", help=H_RESUME)))

    def command(**values: Any) -> None:
        from dlmi import api

        train = {CLASSIFICATION: api.train_classifier, SEGMENTATION: api.train_segmenter,
                 JOINT: api.train_joint}[task]
        resume, folds = values.pop("resume"), values.pop("folds", None)
        settings = _settings(values)
        if folds is not None:
            typer.echo(f"ensemble folder: {train(**settings, folds=folds, resume=resume)}")
            return
        _report(train(**settings, resume=resume))

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = doc
    command.__name__ = f"{task}_command"
    return command


def _report(run_dir: Path) -> None:
    from dlmi.training.compute.distributed import launch_context
    from dlmi.training.folder.run_folder import RunFolder

    if not launch_context().is_main:
        return  # under torchrun, rank 0 speaks for the run

    rows = RunFolder(run_dir).read_metrics()
    best = [r for r in rows if r.get("best")]
    line = f"run folder: {run_dir}"
    if best:
        b = best[-1]
        score = next((f"{k} {b[k]:.4f}" for k in ("val_score", "val_iou", "val_accuracy") if k in b), "")
        line += f"  best.pt: epoch {b['epoch']} ({score}, val_loss {b['val_loss']:.4f})"
    typer.echo(line)


app.command("classifier")(_train_command(CLASSIFICATION, """Train a classifier (the seed's CNN by default: AdamW, lr 1e-3, weight decay 1e-5, grad-norm clip 5).

Example: `dlmi train classifier --dataset synthetic --image-size 128 --epochs 5 --out runs/cls`
"""))  # noqa: E501

app.command("segmenter")(_train_command(SEGMENTATION, """Train a segmenter (U-Net by default: Adam, lr 1e-3, weight decay 0, grad-norm clip 5), optionally aided.

Example: `dlmi train segmenter --dataset synthetic --image-size 128 --base-channels 16 --loss dice --aid runs/cls --out runs/seg`

On 4 GPUs of one machine (docs/distributed.md): `torchrun --nproc-per-node 4 -m dlmi train segmenter --dataset busi --data-dir data/busi --batch-size 16 --out runs/seg`
"""))  # noqa: E501

app.command("joint")(_train_command(JOINT, """Train a joint model (``unet-mt``: one encoder, mask decoder + class head, its head the gate).

Example: `dlmi train joint --dataset busi --data-dir data/busi --image-size 128 --epochs 40 --augment --augment-recipe ultrasound --ema 0.995 --warmup-epochs 2 --folds 5 --out runs/joint`
"""))  # noqa: E501
