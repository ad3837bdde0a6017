"""The ``contime`` command's entry point: turns on torch's huge pages for large CPU tensors, then runs the CLI.

This module sits outside the ``contime`` package because importing the package imports torch, and torch reads
THP_MEM_ALLOC_ENABLE once, at its first allocation (``contime.host_memory`` gives the measurements). A value
already in the environment is kept, so ``THP_MEM_ALLOC_ENABLE=0 contime ...`` runs without huge pages.
"""

import os


def main() -> None:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    from contime.cli import app
    app()
