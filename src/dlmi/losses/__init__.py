"""Losses: the built-in segmentation losses."""
