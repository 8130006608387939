"""Checkpoints that never unpickle code: tensors and plain JSON-able metadata only.

A checkpoint file is ``torch.save({"model": state_dict, "meta": {...}, ...})`` and is always read with
``torch.load(weights_only=True)``; a file that needs a pickle of arbitrary objects is refused.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from dlmi.atomic import write_atomic
from dlmi.errors import DlmiError


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` (tensors, numbers, strings, lists, dicts) atomically."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return write_atomic(path, lambda handle: handle.write(buffer.getvalue()))


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; refuse one that carries a pickle of code."""
    path = Path(path)
    if not path.is_file():
        raise DlmiError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DlmiError(
            f"{path}: refused — the checkpoint carries a pickle payload that is not plain weights ({first})"
        ) from None
    except Exception as exc:  # torch's unpickler fails on junk bytes with any error (IndexError, KeyError, …)
        first = (str(exc).strip().splitlines() or [""])[0]
        raise DlmiError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {first})") from None
    if not isinstance(payload, dict) or "model" not in payload:
        raise DlmiError(f"{path}: not a dlmi checkpoint (no 'model' state dict)")
    return payload
