"""Seeding, and RNG states as tensors and plain values (safe for weights-only checkpoints)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, numpy and torch (CPU and every GPU).

    ``deterministic``: cuDNN uses deterministic kernels and no autotuning; otherwise it may autotune
    (faster on a GPU, not reproducible there). CPU runs are reproducible either way.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every RNG state a training epoch draws from, as tensors, numbers and lists."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    captured: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": [int(x) for x in state], "gauss": gauss},
    }
    if torch.cuda.is_available():
        captured["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    if generator is not None:
        captured["loader"] = generator.get_state()
    return captured


def restore_rng(captured: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Put back the states :func:`capture_rng` took."""
    torch.set_rng_state(captured["torch"])
    numpy_state = captured["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = captured["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss"]))
    cuda_states = captured.get("cuda")
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    if generator is not None and "loader" in captured:
        generator.set_state(captured["loader"])
