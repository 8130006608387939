"""Names a package exports but imports only when first used (PEP 562 module ``__getattr__``).

So ``import dlmi.evaluation`` or ``import dlmi.inference`` stays light: torch, torch.onnx or onnxruntime load
when a function that needs them is first looked up.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``exports[name]`` (a module path) imported on first use."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
