"""The hooks a dlmi plugin may implement.

Each ``dlmi_register_*`` hook receives a ``register`` callable bound to the plugin that is
registering, so the registry knows where every name came from::

    from dlmi import hookimpl

    @hookimpl
    def dlmi_register_losses(register):
        register("focal", FocalLoss, task="segmentation", description="Focal loss on logits")

The names are the contract: pluggy passes arguments by name, so a hook taking another argument name
(``def dlmi_register_losses(reg)``) cannot be called, and dlmi leaves such a plugin out with a warning
(:func:`dlmi.plugins.check_plugin`); a ``dlmi_*`` function that is misspelt or lacks ``@hookimpl`` is
never called, and dlmi warns about it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT_NAME = "dlmi"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Callable[..., None]


@hookspec
def dlmi_register_datasets(register: Register) -> None:
    """Register dataset sources: ``register(name, factory, description="")``.

    ``factory()`` returns an object following :class:`dlmi.datasets.base.DatasetSource`.
    """


@hookspec
def dlmi_register_models(register: Register) -> None:
    """Register models: ``register(name, factory, task=TASK, description="")``, TASK one of
    ``"classification"``, ``"segmentation"``, ``"joint"``.

    Classification factories are called as ``factory(num_classes=K, image_size=S, **options)``;
    segmentation factories as ``factory(in_channels=1, out_channels=1, **options)``; joint factories (a mask
    and a class output, ``docs/plugins.md``) as ``factory(num_classes=K, in_channels=1, out_channels=1,
    **options)``.
    """


@hookspec
def dlmi_register_losses(register: Register) -> None:
    """Register losses: ``register(name, factory, task="segmentation", description="")``.

    ``factory(**options)`` returns a module called as ``loss(logits, target)`` giving a scalar.
    """


@hookspec
def dlmi_register_commands(app: Any) -> None:
    """Add sub-commands to the ``dlmi`` Typer app (``app.command()(fn)`` or ``app.add_typer(...)``)."""
