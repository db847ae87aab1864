"""The ``coffea-hpc`` command.

Its entry point is `main` here, not in `coffea_hpc.cli.app`: every worker of a local process
pool imports the parent's main script again (``multiprocessing`` does, so that functions
defined there can be found), and for the command that script is the console-script stub,
which imports what it names. From here that costs nothing; from the app it was typer and
the option models on every worker before its first chunk.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run ``coffea-hpc`` with ``argv`` (default: the command line); return its exit code."""
    from coffea_hpc.cli.app import main as run_app

    return run_app(argv)
