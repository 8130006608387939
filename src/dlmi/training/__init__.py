"""Training: the loop, run folders and checkpoints."""
