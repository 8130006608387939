"""Models: the built-in model plugins and the layer-table summary."""
