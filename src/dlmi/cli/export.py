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
        None, "--classifier",
        help="Classifier run folder (its best.pt), fold-ensemble folder or checkpoint file.",
    ),
    segmenter: Path | None = typer.Option(
        None, "--segmenter",
        help="Segmenter (U-Net or joint) run folder (its best.pt), fold-ensemble folder or checkpoint file.",
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
    int8: bool = typer.Option(
        False, "--int8", help="Also write *_int8.onnx (statically quantized, for CPUs), checked against fp32."
    ),
    calibration_dir: Path | None = typer.Option(
        None, "--calibration-dir", help="int8: images to calibrate on (default: the run's train side)."
    ),
    check_dir: Path | None = typer.Option(
        None, "--check-dir", help="int8: images to compare int8 with fp32 on (default: the run's val side)."
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="int8: the run's dataset folder, where it has moved since training."
    ),
) -> None:
    """Write classifier.onnx, unet.onnx and (with both) two_stage.onnx — classifier, U-Net and gate in one
    graph — each checked with onnx.checker and for parity with PyTorch; metadata in each file. With --int8,
    also *_int8.onnx, written only if they agree with fp32 on held-out images (mask Dice ≥ 0.98, same class
    on ≥ 99 %).

    Example: `dlmi export onnx --classifier runs/cls --segmenter runs/seg --out exported/ --int8`
    """
    from dlmi.api import export_onnx

    report = export_onnx(classifier=classifier, segmenter=segmenter, out=out, fp16=fp16, tolerance=tolerance,
                         fp16_tolerance=fp16_tolerance)
    typer.echo(report.summary())
    for warning in report.warnings:
        typer.echo(f"dlmi: warning: {warning}", err=True)
    if int8:
        from dlmi.export.quantize import quantize_export

        typer.echo(quantize_export(report.out, calibration_dir=calibration_dir, check_dir=check_dir,
                                   data_dir=data_dir).summary())
    typer.echo(f"manifest: {report.out / 'export.json'}")
