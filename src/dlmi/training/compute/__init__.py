"""How a run computes: precision (autocast, loss scaling), processes under torchrun, random state."""
