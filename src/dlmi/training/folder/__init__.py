"""The run folder and what training writes into it: checkpoints, learning curves, progress."""
