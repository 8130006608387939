"""Argument types checked where a user's values come in: the Python API's entry points and ``TrainConfig``.

One rule for both: a value must match its parameter's type hint (``int`` is a whole number and not a
``bool``; ``float`` takes an ``int`` too; a path is a ``str`` or an ``os.PathLike``), else one
:class:`~dlmi.errors.DlmiError` line names the function (or settings), the parameter, what it must be and
what it got — instead of a traceback from deep inside training or evaluation. Hints this module cannot read
(a class imported only for type checking) are not checked.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import os
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from dlmi.errors import DlmiError

F = TypeVar("F", bound=Callable[..., Any])
_UNCHECKED = object()  # a hint that could not be resolved


def _union_args(hint: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(hint)
    return typing.get_args(hint) if origin in (typing.Union, types.UnionType) else None


def matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the type hint ``hint`` (containers checked one level deep)."""
    if hint is Any or hint is _UNCHECKED:
        return True
    options = _union_args(hint)
    if options is not None:
        return any(matches(value, option) for option in options)
    if hint is None or hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    origin = typing.get_origin(hint) or hint
    args = typing.get_args(hint)
    if origin is os.PathLike:
        return isinstance(value, os.PathLike)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, collections.abc.Mapping) and (
            not args or all(matches(k, args[0]) for k in value))
    if origin in (list, tuple, collections.abc.Sequence):
        if isinstance(value, str | bytes) or not isinstance(value, collections.abc.Sequence):
            return False
        if not args:
            return True
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(args) == len(value) and all(matches(v, a) for v, a in zip(value, args, strict=True))
        return all(matches(v, args[0]) for v in value)
    if origin is collections.abc.Callable:
        return callable(value)
    if isinstance(origin, type):
        try:
            return isinstance(value, origin)
        except TypeError:  # a protocol that cannot be checked at run time
            return True
    return True


def describe(hint: Any) -> str:
    """``hint`` in words, for an error message (``None`` left out where it only means "the default")."""
    options = _union_args(hint)
    if options is not None:
        kept = [o for o in options if o is not type(None)] or list(options)
        if str in kept and any((typing.get_origin(o) or o) is os.PathLike for o in kept):
            kept = [o for o in kept if o is not str]
        return " or ".join(dict.fromkeys(describe(o) for o in kept))
    if hint is type(None) or hint is None:
        return "None"
    origin = typing.get_origin(hint) or hint
    args = typing.get_args(hint)
    words = {bool: "a bool (True or False)", int: "an int (a whole number)", float: "a float (a number)",
             str: "a str", os.PathLike: "a path (str or pathlib.Path)", dict: "a dict",
             collections.abc.Mapping: "a dict"}
    if origin in words:
        return words[origin]
    if origin in (list, tuple, collections.abc.Sequence):
        return f"a list of {describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    return getattr(origin, "__name__", str(hint))


def check_value(where: str, name: str, value: Any, hint: Any) -> None:
    """One line when ``value`` does not fit ``hint``."""
    if not matches(value, hint):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise DlmiError(f"{where}: {name} must be {describe(hint)}, got {type(value).__name__} {shown}")


def _resolve(annotation: Any, namespace: dict[str, Any]) -> Any:
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, namespace)  # noqa: S307 - the function's own annotation text
    except Exception:  # a name imported only for type checking: leave that parameter unchecked
        return _UNCHECKED


def checked(function: F) -> F:
    """Check every argument of a call to ``function`` against its type hint before it runs."""
    signature = inspect.signature(function)

    @functools.cache
    def hints() -> dict[str, Any]:
        return {name: _resolve(p.annotation, function.__globals__) for name, p in signature.parameters.items()
                if p.annotation is not inspect.Parameter.empty}

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise DlmiError(f"{function.__name__}: {exc}") from None
        for name, value in bound.arguments.items():
            check_value(function.__name__, name, value, hints().get(name, _UNCHECKED))
        return function(*args, **kwargs)

    return typing.cast(F, wrapper)


def check_fields(instance: Any, where: str) -> None:
    """Every field of a dataclass ``instance`` against its type hint."""
    import dataclasses

    hints = typing.get_type_hints(type(instance))
    for field in dataclasses.fields(instance):
        check_value(where, field.name, getattr(instance, field.name), hints.get(field.name, _UNCHECKED))
