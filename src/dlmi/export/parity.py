"""Parity: the exported graph in onnxruntime against the PyTorch module on the same inputs.

The measure is the maximum absolute difference over every element of each output. In fp32 every float
output must agree within the tolerance (1e-4 by default). An fp16 file is compared with the fp32 PyTorch
module — the reference users care about — and only its probability outputs are held to the (looser)
tolerance; its logits' differences are reported. A boolean output (the gate) must agree exactly.

An ensemble's logits are the logits of its averaged probabilities, ``log p − log(1 − p)``: where ``p`` is
near 0 or 1 they magnify float rounding by ``1 / (p (1 − p))`` (up to 10⁶ at the clamp), so for an ensemble
the outputs in ``report_only`` (its logits) are reported and its probabilities are held to the tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class ParityResult:
    """How one exported file compares with its PyTorch module."""

    file: str
    precision: str
    provider: str
    tolerance: float
    input_shapes: list[list[int]]
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    checked: list[str] = field(default_factory=list)
    bool_mismatches: dict[str, int] = field(default_factory=dict)

    @property
    def worst(self) -> float:
        """The largest difference among the outputs held to the tolerance."""
        return max((self.max_abs_diff[n] for n in self.checked), default=0.0)

    @property
    def passed(self) -> bool:
        return self.worst <= self.tolerance and not any(self.bool_mismatches.values())

    def describe(self) -> str:
        diffs = ", ".join(
            f"{name} {diff:.2e}{'' if name in self.checked else ' (reported only)'}"
            for name, diff in self.max_abs_diff.items()
        )
        flips = ", ".join(f"{n} differs on {k} of the inputs" for n, k in self.bool_mismatches.items() if k)
        shapes = " and ".join("x".join(map(str, s)) for s in self.input_shapes)
        verdict = "ok" if self.passed else "FAILED"
        return (f"{self.file}: parity {verdict} ({self.precision}, {self.provider}, inputs {shapes}; "
                f"max |onnxruntime - torch|: {diffs}; tolerance {self.tolerance:g}"
                + (f"; {flips}" if flips else "") + ")")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "worst": self.worst, "passed": self.passed}


def check_parity(
    file: str,
    reference: nn.Module,
    model_bytes: bytes,
    inputs: Sequence[np.ndarray],
    *,
    tolerance: float,
    precision: str = "fp32",
    output_names: Sequence[str],
    report_only: Sequence[str] = (),
) -> ParityResult:
    """Run the ONNX model (onnxruntime, CPU) and ``reference`` (PyTorch, fp32) on ``inputs`` and compare."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    result = ParityResult(
        file=file, precision=precision, provider=session.get_providers()[0], tolerance=float(tolerance),
        input_shapes=[list(x.shape) for x in inputs],
    )
    reference = reference.eval()
    for x in inputs:
        onnx_outputs = session.run(list(output_names), {input_name: x})
        with torch.inference_mode():
            torch_outputs = reference(torch.from_numpy(x))
        if isinstance(torch_outputs, torch.Tensor):
            torch_outputs = (torch_outputs,)
        for name, got, want in zip(output_names, onnx_outputs, torch_outputs, strict=True):
            want = want.detach().cpu().numpy()
            if got.shape != want.shape:
                raise AssertionError(f"{file}: output {name} is {got.shape}, PyTorch gives {want.shape}")
            if want.dtype == np.bool_:
                result.bool_mismatches[name] = result.bool_mismatches.get(name, 0) + int((got != want).sum())
                continue
            diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max(initial=0.0))
            result.max_abs_diff[name] = max(result.max_abs_diff.get(name, 0.0), diff)
            held = (precision == "fp32" or "probs" in name) and name not in report_only
            if held and name not in result.checked:
                result.checked.append(name)
    return result
