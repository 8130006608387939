"""The one plugin manager: loads every ``dlmi`` entry point and fills the registries.

Built-in datasets, models and losses are entry points of the ``dlmi`` distribution itself, so they load
through the same path as a third party's. Set ``DLMI_DISABLE_PLUGINS=1`` to load only the built-ins.

A third-party plugin's mistakes never take dlmi down: a module that fails to import, a hook whose arguments
do not match the hook's, or a hook that raises is left out with one warning line naming its distribution.
Hooks that can never be called (a misspelt ``dlmi_register_loss``, a function without ``@hookimpl``) are
warned about, naming the plugin. A :class:`DlmiError` raised while registering is a user error that stops
the command, with the plugin's name in front.
"""

from __future__ import annotations

import difflib
import inspect
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from dlmi import hookspecs
from dlmi.errors import DlmiError, debug_enabled, print_traceback
from dlmi.registry import BUILTIN_SOURCE, DuplicateNameError, Registry

ENTRY_POINT_GROUP = "dlmi"
DISABLE_ENV = "DLMI_DISABLE_PLUGINS"
OWN_DISTRIBUTION = "dlmi"
HOOK_PREFIX = "dlmi_"
COMMANDS_HOOK = "dlmi_register_commands"

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


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _warn(plugins: Plugins, message: str, exc: BaseException | None = None) -> None:
    plugins.warnings.append(message)
    if exc is not None and debug_enabled():
        print_traceback(exc)
    print(f"dlmi: warning: {message}", file=sys.stderr)


# --- checking a plugin before it is registered -----------------------------------------------------------


@dataclass
class PluginCheck:
    """What is wrong with a plugin object: ``errors`` leave it out, ``warnings`` are only reported."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _parameters(function: Callable[..., Any]) -> list[str]:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return []
    return [p.name for p in signature.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY)]


def check_plugin(manager: pluggy.PluginManager, plugin: object) -> PluginCheck:
    """Every ``dlmi_*`` function of ``plugin`` checked against the hook specifications.

    An implementation whose parameters the hook does not pass is an error (pluggy passes arguments by
    name, so ``dlmi_register_losses(reg)`` cannot be called). A marked function that names no hook
    (``dlmi_register_loss``) and a hook-named function without ``@hookimpl`` are warnings: dlmi never
    calls either.
    """
    check = PluginCheck()
    hooks = sorted(name for name in vars(manager.hook) if name.startswith(HOOK_PREFIX))
    for attr in dir(plugin):
        if not attr.startswith(HOOK_PREFIX):
            continue
        try:
            value = getattr(plugin, attr)
        except Exception:  # a property that raises: nothing pluggy would call either
            continue
        if not callable(value) or inspect.isclass(value):
            continue
        marked = manager.parse_hookimpl_opts(plugin, attr) is not None
        if attr not in hooks:
            if marked or inspect.isfunction(value) or inspect.ismethod(value):
                close = difflib.get_close_matches(attr, hooks, n=1)
                hint = f" (did you mean {close[0]}?)" if close else f" (hooks: {', '.join(hooks)})"
                check.warnings.append(f"{attr} is not a dlmi hook{hint}; dlmi never calls it")
            continue
        if not marked:
            check.warnings.append(f"{attr} is not marked @dlmi.hookimpl; dlmi never calls it")
            continue
        spec = getattr(manager.hook, attr).spec
        expected = list(spec.argnames) if spec is not None else []
        unknown = [name for name in _parameters(value) if name not in expected]
        if unknown:
            check.errors.append(
                f"{attr}({', '.join(_parameters(value))}): the hook passes only "
                f"{', '.join(repr(a) for a in expected)} by name, not {', '.join(repr(a) for a in unknown)}"
            )
    return check


def _add_plugin(plugins: Plugins, plugin: object, *, name: str, source: str, builtin: bool) -> bool:
    """Check and register one plugin object; a third party's failure is a warning and leaves it out."""
    check = check_plugin(plugins.manager, plugin)
    if check.errors and builtin:
        raise DlmiError(f"built-in plugin {name}: {check.errors[0]}")
    if check.errors:
        _warn(plugins, f"plugin from {source} left out: {'; '.join(check.errors)}")
        return False
    try:
        plugins.manager.register(plugin, name=name)
    except Exception as exc:  # pluggy's own validation, in words of its own
        if builtin:
            raise
        _warn(plugins, f"plugin from {source} left out: {_one_line(exc)}", exc)
        return False
    plugins.sources[id(plugin)] = source
    for warning in check.warnings:
        _warn(plugins, f"plugin from {source}: {warning}")
    return True


def _unique_name(manager: pluggy.PluginManager, wanted: str) -> str:
    name, n = wanted, 1
    while manager.has_plugin(name):
        n += 1
        name = f"{wanted}#{n}"
    return name


# --- loading -----------------------------------------------------------------------------------------------


def load_plugins(
    extra: Iterable[tuple[object, str]] = (),
    *,
    include_entry_points: bool = True,
) -> Plugins:
    """Build a fresh plugin manager.

    ``extra`` is a sequence of ``(plugin_object, source_name)`` registered after the entry points;
    tests and notebooks use it to add a plugin without installing a package. A plugin object that an
    entry point already loaded (the same package, also installed) is registered once, under its
    distribution's name.
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
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # a broken plugin (even one calling sys.exit) must not stop dlmi
                if is_builtin:
                    raise
                _warn(plugins, f"plugin {ep.name!r} from {dist} failed to load: {_one_line(exc)}", exc)
                continue
            if manager.is_registered(module):
                continue
            _add_plugin(plugins, module, name=_unique_name(manager, f"{dist}:{ep.name}"),
                        source=BUILTIN_SOURCE if is_builtin else dist, builtin=is_builtin)

    for plugin, source in extra:
        if manager.is_registered(plugin):  # also installed: its entry point registered it already
            continue
        _add_plugin(plugins, plugin, name=_unique_name(manager, source), source=source, builtin=False)

    for kind, hook_name in REGISTRY_HOOKS.items():
        registry = plugins.registry(kind)
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            _call_register_hook(plugins, registry, hook_name, impl)
    return plugins


def _call_register_hook(plugins: Plugins, registry: Registry, hook_name: str, impl: Any) -> None:
    """Call one plugin's ``dlmi_register_*``; on failure its names from this call are taken out again."""
    source = plugins.source_of(impl.plugin)
    added: list[str] = []

    def register(name: str, factory: Any, **kwargs: Any) -> None:
        registry.register(name, factory, source=source, **kwargs)
        added.append(name)

    if not _call_hook(plugins, impl, register, source, hook_name, "left out",
                      DuplicateNameError):
        registry.forget(added)
        return
    if not impl.argnames:
        _warn(plugins, f"plugin from {source}: {hook_name}() takes no 'register' argument, so it "
                       "registers nothing")


def _call_hook(plugins: Plugins, impl: Any, argument: Any, source: str, hook_name: str, left_out: str,
               *reraised: type[BaseException]) -> bool:
    """Call one hook implementation with ``argument`` for each of its parameters. A built-in's failure and
    any of ``reraised`` propagate; a third party's ``DlmiError`` is re-raised naming the plugin; any other
    other error of a third party (any ``BaseException`` but ``KeyboardInterrupt``, so ``sys.exit`` too) is
    warned about ("… ``left_out``") and ``False`` returned."""
    try:
        impl.function(**{arg: argument for arg in impl.argnames})
    except reraised:
        raise
    except DlmiError as exc:
        if source == BUILTIN_SOURCE:
            raise
        raise _named(exc, source, hook_name) from exc
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit too: a plugin never ends dlmi while it loads
        if source == BUILTIN_SOURCE:
            raise
        _warn(plugins, f"plugin from {source} failed in {hook_name}: {_one_line(exc)}; {left_out}", exc)
        return False
    return True


def _named(exc: DlmiError, source: str, hook_name: str) -> DlmiError:
    """A plugin's own one-line error, naming the plugin and its hook."""
    return DlmiError(f"plugin from {source} ({hook_name}): {exc} "
                     f"(set {DISABLE_ENV}=1 to run without plugins)")


def _command_names(info: Any) -> set[str]:
    """The top-level command names a Typer ``CommandInfo`` or ``TyperInfo`` (``add_typer``) adds, as Typer
    names them: a group without a name adds its own commands."""
    from typer.main import get_command_name, solve_typer_info_defaults
    from typer.models import CommandInfo

    if isinstance(info, CommandInfo):
        return {info.name or get_command_name(info.callback.__name__)}
    name = solve_typer_info_defaults(info).name
    if name:
        return {name}
    inner = info.typer_instance
    return set().union(*(_command_names(i) for i in [*inner.registered_commands, *inner.registered_groups]))


def register_commands(app: Any, plugins: Plugins | None = None) -> None:
    """Let every plugin add its sub-commands to ``app``; a plugin whose hook fails is left out, warned.

    Names already taken (the built-in commands, then earlier plugins') keep their command: a plugin's
    command of the same name is left out with a warning naming the plugin.
    """
    import typer

    plugins = plugins or get_plugins()
    lists = (app.registered_commands, app.registered_groups) if isinstance(app, typer.Typer) else ()
    owners = {name: "dlmi" for items in lists for info in items for name in _command_names(info)}
    for impl in getattr(plugins.manager.hook, COMMANDS_HOOK).get_hookimpls():
        source = plugins.source_of(impl.plugin)
        before = [len(items) for items in lists]
        ok = _call_hook(plugins, impl, app, source, COMMANDS_HOOK, "its commands are left out")
        for items, count in zip(lists, before, strict=True):
            added = items[count:]
            del items[count:]
            items.extend(info for info in added if ok and _keep_command(plugins, info, source, owners))


def _keep_command(plugins: Plugins, info: Any, source: str, owners: dict[str, str]) -> bool:
    """Whether a plugin's new command keeps its place: its names must be free; they are then its."""
    try:
        names = _command_names(info)
    except Exception as exc:  # not something Typer can turn into a command
        _warn(plugins, f"plugin from {source}: a command it added is left out: {_one_line(exc)}", exc)
        return False
    for name in sorted(names):
        if name in owners:
            owner = "a built-in command" if owners[name] == "dlmi" else f"a command from {owners[name]}"
            _warn(plugins, f"plugin from {source}: its command {name!r} has the name of {owner}, which "
                           "keeps it; the plugin's is left out (rename it)")
            return False
    owners.update(dict.fromkeys(names, source))
    return True


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
    """A new instance of the registered dataset source ``name``; a factory that fails, or a source without
    class names, is one line naming the dataset and the plugin that registered it."""
    entry = get_plugins().datasets.get(name)
    where = f"dataset {name!r} (from {entry.source})"
    try:
        source = entry.create()
    except DlmiError:
        raise
    except Exception as exc:
        raise DlmiError(f"{where} cannot be created: {_one_line(exc)}") from exc
    classes = getattr(source, "classes", None)
    if (isinstance(classes, str) or not isinstance(classes, tuple | list) or not classes
            or not all(isinstance(c, str) and c for c in classes)):
        raise DlmiError(f"{where}: .classes must be a non-empty tuple of class names, got {classes!r:.80}")
    return source


def create_model(name: str, **options: Any) -> Any:
    """A new model from the registered factory ``name``."""
    return get_plugins().models.create(name, **options)


def create_loss(name: str, **options: Any) -> Any:
    """A new loss module from the registered factory ``name``."""
    return get_plugins().losses.create(name, **options)
