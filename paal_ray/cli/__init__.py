"""The ``paal`` command line. Each area registers its own commands (data, runs, query)."""
