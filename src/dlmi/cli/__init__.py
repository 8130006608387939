"""The ``dlmi`` command line: a thin layer over the library API, one module per command group."""
