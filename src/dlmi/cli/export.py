"""``dlmi export``: trained models to ONNX files for deployment."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Export trained models for deployment (ONNX).", no_args_is_help=True)


@app.callback()
def _export_group() -> None:
    """Export trained models for deployment (ONNX)."""


@app.command("onnx")
def onnx_command(
    classifier: Path | None = typer.Option(
        None, "--classifier", help="Classifier run folder (its best.pt) or checkpoint file."
    ),
    segmenter: Path | None = typer.Option(
        None, "--segmenter", help="Segmenter (U-Net) run folder (its best.pt) or checkpoint file."
    ),
    out: Path = typer.Option(Path("exported"), "--out", help="Folder for the .onnx files and export.json."),
    fp16: bool = typer.Option(
        False, "--fp16", help="Also write *_fp16.onnx (half-precision weights, for GPUs)."
    ),
    tolerance: float = typer.Option(
        1e-4, "--tolerance", min=0.0, help="fp32 parity: largest |onnxruntime − torch| allowed."
    ),
    fp16_tolerance: float = typer.Option(
        1e-2, "--fp16-tolerance", min=0.0, help="fp16 parity: largest probability difference allowed."
    ),
) -> None:
    """Write classifier.onnx, unet.onnx and (with both) two_stage.onnx — classifier, U-Net and gate in one
    graph — each checked with onnx.checker and for parity with PyTorch; metadata in each file.

    Example: `dlmi export onnx --classifier runs/cls --segmenter runs/seg --out exported/`
    """
    from dlmi.api import export_onnx

    report = export_onnx(classifier=classifier, segmenter=segmenter, out=out, fp16=fp16, tolerance=tolerance,
                         fp16_tolerance=fp16_tolerance)
    typer.echo(report.summary())
    typer.echo(f"manifest: {report.out / 'export.json'}")
