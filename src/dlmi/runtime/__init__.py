"""What every consumer of a trained model shares: loading it back, the gate, and the two-stage pipeline.

Training (aided runs), evaluation, export and prediction all import from here, so each of them runs the
same preprocessing, gate, resize and threshold.
"""
