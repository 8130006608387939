"""A model's layer table (like torchsummary's), its parameter counts, memory estimate and FLOPs.

The table comes from forward hooks on every leaf module during one forward pass of a dummy batch of one
image. The pass runs on PyTorch's ``meta`` device (shapes only, no arithmetic), so a summary costs
nothing even for a U-Net at 512²; a model that cannot run on ``meta`` is run on the CPU instead.

Definitions (the same as torchsummary's, so the numbers compare with the seed report's table):

- *Input size (MB)*: elements of one input image × 4 bytes / 2²⁰.
- *Forward/backward pass size (MB)*: 2 × (sum of every listed layer's output elements) × 4 bytes / 2²⁰ —
  the activations and their gradients, for one image.
- *Params size (MB)*: parameters × 4 bytes / 2²⁰.
- *Estimated total size (MB)*: the sum of the three.
- *MACs*: multiply-accumulates of the convolution, transposed-convolution and linear layers for one image
  (biases, normalisation, activations and pooling are not counted); *GFLOPs* = 2 × MACs / 10⁹.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from dlmi.errors import DlmiError

MB = 1024.0**2
BYTES_PER_VALUE = 4  # float32, as torchsummary assumes
DEFINITIONS = {
    "input_size_mb": "elements of one input image x 4 bytes / 2^20",
    "forward_backward_size_mb": "2 x sum of the listed layers' output elements (one image) x 4 bytes / 2^20",
    "params_size_mb": "parameters x 4 bytes / 2^20",
    "estimated_total_size_mb": "input + forward/backward + params sizes",
    "macs": "multiply-accumulates of conv, transposed-conv and linear layers for one image (no bias)",
    "gflops": "2 x macs / 1e9",
}


@dataclass
class LayerRow:
    """One call of a leaf module during the dummy forward pass."""

    index: int
    type: str
    name: str
    output_shape: list[int]
    params: int
    trainable_params: int
    macs: int

    @property
    def label(self) -> str:
        """torchsummary's ``Type-index`` label, e.g. ``Conv2d-1``."""
        return f"{self.type}-{self.index}"


@dataclass
class ModelSummary:
    """Everything ``dlmi model summary`` prints."""

    model: str
    task: str | None
    options: dict[str, Any]
    input_shape: list[int]
    output_shape: list[int] = field(default_factory=list)
    layers: list[LayerRow] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    macs: int = 0
    output_elements: int = 0

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    @property
    def input_size_mb(self) -> float:
        return math.prod(abs(s) for s in self.input_shape) * BYTES_PER_VALUE / MB  # batch -1 → one image

    @property
    def forward_backward_size_mb(self) -> float:
        return 2.0 * self.output_elements * BYTES_PER_VALUE / MB

    @property
    def params_size_mb(self) -> float:
        return self.total_params * BYTES_PER_VALUE / MB

    @property
    def estimated_total_size_mb(self) -> float:
        return self.input_size_mb + self.forward_backward_size_mb + self.params_size_mb

    @property
    def gflops(self) -> float:
        return 2.0 * self.macs / 1e9

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "task": self.task,
            "options": self.options,
            "input_shape": self.input_shape,
            "output_shape": self.output_shape,
            "layers": [{"layer": row.label, **asdict(row)} for row in self.layers],
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "non_trainable_params": self.non_trainable_params,
            "input_size_mb": round(self.input_size_mb, 4),
            "forward_backward_size_mb": round(self.forward_backward_size_mb, 4),
            "params_size_mb": round(self.params_size_mb, 4),
            "estimated_total_size_mb": round(self.estimated_total_size_mb, 4),
            "macs": self.macs,
            "gflops": round(self.gflops, 4),
            "definitions": DEFINITIONS,
        }


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (list, tuple)):
        for item in output:
            found = _first_tensor(item)
            if found is not None:
                return found
    if isinstance(output, dict):
        return _first_tensor(list(output.values()))
    return None


def _macs(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> int:
    """Multiply-accumulates of one call, for a batch of one image."""
    batch = max(int(output.shape[0]), 1) if output.dim() > 0 else 1
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        source = _first_tensor(inputs)
        if source is None:
            return 0
        kernel = math.prod(module.kernel_size)
        return source.numel() * (module.out_channels // module.groups) * kernel // batch
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = math.prod(module.kernel_size)
        return output.numel() * (module.in_channels // module.groups) * kernel // batch
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features // batch
    return 0


def _leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    leaves = [(name, m) for name, m in model.named_modules() if not any(True for _ in m.children())]
    return leaves or [("", model)]


def _batch_shape(tensor: torch.Tensor | None) -> list[int]:
    """``[-1, C, H, W]``: the shape with the batch dimension written as -1, as torchsummary does."""
    if tensor is None or tensor.dim() == 0:
        return []
    return [-1, *(int(s) for s in tensor.shape[1:])]


def _trace(model: nn.Module, dummy: torch.Tensor) -> tuple[list[LayerRow], list[int], int, int]:
    rows: list[LayerRow] = []
    output_elements = 0
    macs = 0

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            nonlocal output_elements, macs
            tensor = _first_tensor(output)
            shape = _batch_shape(tensor)
            per_image = tensor.numel() // max(int(tensor.shape[0]), 1) if tensor is not None and shape else 0
            own = list(module.parameters(recurse=False))
            row_macs = _macs(module, inputs, tensor) if tensor is not None else 0
            rows.append(LayerRow(
                index=len(rows) + 1,
                type=type(module).__name__,
                name=name,
                output_shape=shape,
                params=sum(p.numel() for p in own),
                trainable_params=sum(p.numel() for p in own if p.requires_grad),
                macs=row_macs,
            ))
            output_elements += per_image
            macs += row_macs

        return hook

    handles = [m.register_forward_hook(make_hook(name)) for name, m in _leaf_modules(model)]
    try:
        with torch.no_grad():
            output = model(dummy)
    finally:
        for handle in handles:
            handle.remove()
    return rows, _batch_shape(_first_tensor(output)), output_elements, macs


def summarize_module(
    model: nn.Module, input_shape: tuple[int, ...], *, name: str = "", task: str | None = None,
    options: dict[str, Any] | None = None,
) -> ModelSummary:
    """Summarise ``model`` for an input of ``input_shape`` (batch included, e.g. ``(1, 1, 512, 512)``).

    The forward pass runs on the device of the model's parameters (``meta`` makes it free) in eval mode.
    """
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        rows, output_shape, output_elements, macs = _trace(model, torch.zeros(input_shape, device=device))
    finally:
        model.train(was_training)
    return ModelSummary(
        model=name or type(model).__name__,
        task=task,
        options=dict(options or {}),
        input_shape=[-1, *input_shape[1:]],
        output_shape=output_shape,
        layers=rows,
        total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        macs=macs,
        output_elements=output_elements,
    )


def _accepted_options(factory: Any) -> set[str] | None:
    """The keyword names ``factory`` accepts, or ``None`` when it takes ``**kwargs``."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL}


def summarize_registered(
    name: str,
    *,
    num_classes: int | None = None,
    image_size: int = 512,
    base_channels: int | None = None,
    bilinear: bool | None = None,
    in_channels: int = 1,
) -> ModelSummary:
    """Build the registered model ``name`` and summarise it on one ``in_channels``×S×S image.

    A classification model gets ``num_classes`` (3 when not given) and ``image_size``; a segmentation model
    ``in_channels`` and ``out_channels=1``; the other options are passed only when given, and an option the
    factory does not take is a :class:`DlmiError`.
    """
    from dlmi.plugins import get_plugins

    if image_size < 1:
        raise DlmiError(f"image size must be a positive integer, got {image_size}")
    entry = get_plugins().models.get(name)
    accepted = _accepted_options(entry.factory)

    def takes(option: str) -> bool:
        return accepted is None or option in accepted

    requested = {"num_classes": num_classes, "base_channels": base_channels, "bilinear": bilinear}
    for option, value in requested.items():
        if value is not None and not takes(option):
            known = ", ".join(sorted(accepted or ())) or "none"
            raise DlmiError(f"model {name!r} takes no option {option} (its options: {known})")
    options: dict[str, Any] = {k: v for k, v in requested.items() if v is not None}
    task = entry.meta.get("task")
    # The hookspec's calling conventions: classification factory(num_classes=K, image_size=S, ...),
    # segmentation factory(in_channels=1, out_channels=1, ...).
    if task == "classification" or (accepted is not None and "num_classes" in accepted):
        options.setdefault("num_classes", 3)
    if task == "classification" or (accepted is not None and "image_size" in accepted):
        options["image_size"] = image_size
    if task == "segmentation":
        options.setdefault("out_channels", 1)
    if task == "segmentation" or in_channels != 1 or (accepted is not None and "in_channels" in accepted):
        options["in_channels"] = in_channels
    input_shape = (1, in_channels, image_size, image_size)

    try:
        with torch.device("meta"):
            model = entry.create(**options)
        return summarize_module(model, input_shape, name=name, task=task, options=options)
    except DlmiError:
        raise
    except Exception:  # a model that cannot run on the meta device: build and run it for real
        pass
    try:
        model = entry.create(**options)
        return summarize_module(model, input_shape, name=name, task=task, options=options)
    except DlmiError:
        raise
    except Exception as exc:
        shape = "x".join(str(s) for s in input_shape)
        raise DlmiError(
            f"model {name!r} ({entry.source}) failed on a dummy input of shape {shape}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None


def _format_shape(shape: list[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def format_summary(summary: ModelSummary) -> str:
    """The torchsummary-style text table plus totals, memory estimate and GFLOPs."""
    rows = [(r.label, _format_shape(r.output_shape), f"{r.params:,}", r.name) for r in summary.layers]
    headers = ("Layer (type)", "Output Shape", "Param #", "Module")
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join([cells[0].rjust(widths[0]), cells[1].rjust(widths[1]),
                          cells[2].rjust(widths[2]), cells[3].ljust(widths[3])]).rstrip()

    rule_width = sum(widths) + 6
    options = ", ".join(f"{k}={v}" for k, v in summary.options.items()) or "defaults"
    out = [
        f"{summary.model} ({summary.task or 'task not declared'}; {options}); "
        f"input {_format_shape(summary.input_shape)} -> output {_format_shape(summary.output_shape)}",
        "-" * rule_width,
        line(headers),
        "=" * rule_width,
        *(line(row) for row in rows),
        "=" * rule_width,
        f"Total params: {summary.total_params:,}",
        f"Trainable params: {summary.trainable_params:,}",
        f"Non-trainable params: {summary.non_trainable_params:,}",
        "-" * rule_width,
        f"Input size (MB): {summary.input_size_mb:.2f}",
        f"Forward/backward pass size (MB): {summary.forward_backward_size_mb:.2f}",
        f"Params size (MB): {summary.params_size_mb:.2f}",
        f"Estimated Total Size (MB): {summary.estimated_total_size_mb:.2f}",
        f"GFLOPs (2 x conv/linear MACs, one image): {summary.gflops:.3f}",
        "-" * rule_width,
        "Sizes: float32, one image; forward/backward = 2 x the layers' outputs (torchsummary's estimate).",
    ]
    return "\n".join(out)
