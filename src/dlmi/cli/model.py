"""``dlmi model``: model summaries."""

from __future__ import annotations

import json

import typer

app = typer.Typer(help="Inspect models: layer tables and parameter counts.", no_args_is_help=True)


@app.command("summary")
def summary_command(
    name: str = typer.Argument(..., help="A registered model (see `dlmi plugins`), e.g. seed-cnn or unet."),
    num_classes: int | None = typer.Option(
        None, "--num-classes", min=1, help="Classes of a classification model (default 3)."
    ),
    image_size: int = typer.Option(512, "--image-size", min=1, help="Side S of the dummy S×S input image."),
    base_channels: int | None = typer.Option(
        None, "--base-channels", min=1, help="Channels of the first level (U-Net; default 64)."
    ),
    bilinear: bool | None = typer.Option(
        None, "--bilinear/--transposed",
        help="U-Net upsampling: bilinear interpolation or transposed convolution (the default).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of the table."),
) -> None:
    """Layer table (output shapes, parameters), totals, memory estimate and GFLOPs of a registered model.

    The shapes come from one forward pass of a dummy 1×1×S×S batch (on PyTorch's meta device: instant).

    Example: `dlmi model summary seed-cnn --num-classes 3 --image-size 512`
    """
    from dlmi.models.summary import format_summary, summarize_registered

    summary = summarize_registered(
        name, num_classes=num_classes, image_size=image_size, base_channels=base_channels, bilinear=bilinear
    )
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        typer.echo(format_summary(summary))
