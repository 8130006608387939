"""The run folder and what training writes into it: learning curves, progress.

Checkpoints are read by every user of a trained model, so they live in ``dlmi.runtime.checkpoint``.
"""
