"""The one plugin manager: loads every ``dlmi`` entry point and fills the registries.

Built-in datasets, models and losses are entry points of the ``dlmi`` distribution itself, so they load
through the same path as a third party's. Set ``DLMI_DISABLE_PLUGINS=1`` to load only the built-ins.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from dlmi import hookspecs
from dlmi.errors import DlmiError
from dlmi.registry import BUILTIN_SOURCE, Registry

ENTRY_POINT_GROUP = "dlmi"
DISABLE_ENV = "DLMI_DISABLE_PLUGINS"
OWN_DISTRIBUTION = "dlmi"

REGISTRY_HOOKS = {
    "datasets": "dlmi_register_datasets",
    "models": "dlmi_register_models",
    "losses": "dlmi_register_losses",
}


@dataclass
class Plugins:
    """The loaded plugins and what they registered."""

    manager: pluggy.PluginManager
    datasets: Registry = field(default_factory=lambda: Registry("dataset"))
    models: Registry = field(default_factory=lambda: Registry("model"))
    losses: Registry = field(default_factory=lambda: Registry("loss"))
    sources: dict[int, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def source_of(self, plugin: object) -> str:
        return self.sources.get(id(plugin), getattr(plugin, "__name__", repr(plugin)))

    def registry(self, kind: str) -> Registry:
        return {"datasets": self.datasets, "models": self.models, "losses": self.losses}[kind]


def plugins_disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _distribution_name(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "unknown distribution"


def _warn(plugins: Plugins, message: str) -> None:
    plugins.warnings.append(message)
    print(f"dlmi: warning: {message}", file=sys.stderr)


def load_plugins(
    extra: Iterable[tuple[object, str]] = (),
    *,
    include_entry_points: bool = True,
) -> Plugins:
    """Build a fresh plugin manager.

    ``extra`` is a sequence of ``(plugin_object, source_name)`` registered after the entry points;
    tests and notebooks use it to add a plugin without installing a package.
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    plugins = Plugins(manager=manager)
    disabled = plugins_disabled()

    if include_entry_points:
        seen: set[str] = set()
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = _distribution_name(ep)
            is_builtin = dist == OWN_DISTRIBUTION
            if disabled and not is_builtin:
                continue
            key = f"{dist}:{ep.value}"
            if key in seen:  # the same module listed twice (e.g. an editable and a normal install)
                continue
            seen.add(key)
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not take the CLI down
                if is_builtin:
                    raise
                _warn(plugins, f"plugin {ep.name!r} from {dist} failed to load: {type(exc).__name__}: {exc}")
                continue
            if manager.is_registered(module):
                continue
            manager.register(module, name=f"{dist}:{ep.name}")
            plugins.sources[id(module)] = BUILTIN_SOURCE if is_builtin else dist

    for plugin, source in extra:
        manager.register(plugin, name=source)
        plugins.sources[id(plugin)] = source

    for kind, hook_name in REGISTRY_HOOKS.items():
        registry = plugins.registry(kind)
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            source = plugins.source_of(impl.plugin)
            register = partial(_register, registry, source)
            try:
                impl.function(register=register)
            except DlmiError:
                raise
            except Exception as exc:
                if source == BUILTIN_SOURCE:
                    raise
                _warn(plugins, f"plugin from {source} failed in {hook_name}: {type(exc).__name__}: {exc}")
    return plugins


def _register(registry: Registry, source: str, name: str, factory: Any, **kwargs: Any) -> None:
    registry.register(name, factory, source=source, **kwargs)


_current: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugins, loaded on first use."""
    global _current
    if _current is None:
        _current = load_plugins()
    return _current


def reset_plugins(plugins: Plugins | None = None) -> None:
    """Forget the loaded plugins (or install ``plugins`` as the current set)."""
    global _current
    _current = plugins


def get_dataset(name: str) -> Any:
    """A new instance of the registered dataset source ``name``."""
    return get_plugins().datasets.create(name)


def create_model(name: str, **options: Any) -> Any:
    """A new model from the registered factory ``name``."""
    return get_plugins().models.create(name, **options)


def create_loss(name: str, **options: Any) -> Any:
    """A new loss module from the registered factory ``name``."""
    return get_plugins().losses.create(name, **options)
