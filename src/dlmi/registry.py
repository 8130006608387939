"""A name → factory table that remembers which plugin registered each name."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dlmi.errors import DlmiError

BUILTIN_SOURCE = "built-in"


@dataclass(frozen=True)
class Entry:
    """One registered name."""

    name: str
    factory: Callable[..., Any]
    source: str
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def create(self, **options: Any) -> Any:
        return self.factory(**options)

    @property
    def task(self) -> str | None:
        """The task the plugin registered this name for (``task=`` metadata); ``None`` if it did not say."""
        task = self.meta.get("task")
        return str(task) if task is not None else None


class DuplicateNameError(DlmiError):
    """Two plugins registered the same name."""


class Registry:
    """Registered datasets, models or losses of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(
        self,
        name: str,
        factory: Callable[..., Any],
        *,
        source: str,
        description: str = "",
        **meta: Any,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise DlmiError(f"{source}: a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries:
            first = self._entries[name].source
            raise DuplicateNameError(
                f"{self.kind} {name!r} is registered twice: by {first} and by {source}"
            )
        if not description:
            doc = (getattr(factory, "__doc__", None) or "").strip()
            description = doc.splitlines()[0] if doc else ""
        self._entries[name] = Entry(name, factory, source, description, dict(meta))

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise DlmiError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def create(self, name: str, **options: Any) -> Any:
        return self.get(name).create(**options)

    def forget(self, names: list[str]) -> None:
        """Take registered names out again (a plugin whose hook failed half-way is left out whole)."""
        for name in names:
            self._entries.pop(name, None)

    def names(self, **meta: Any) -> list[str]:
        """Registered names, optionally only those whose metadata matches (e.g. ``task="segmentation"``)."""
        return sorted(
            n for n, e in self._entries.items() if all(e.meta.get(k) == v for k, v in meta.items())
        )

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)
