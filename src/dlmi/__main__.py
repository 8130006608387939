"""``python -m dlmi`` — the same as the ``dlmi`` command."""

from dlmi.cli.main import main

if __name__ == "__main__":
    main()
