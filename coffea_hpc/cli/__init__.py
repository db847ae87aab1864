"""The ``coffea-hpc`` command.

Its entry point is `main` here, not in `coffea_hpc.cli.app`: every worker of a local process
pool imports the parent's main script again (``multiprocessing`` does, so that functions
defined there can be found), and for the command that script is the console-script stub,
which imports what it names. From here that costs nothing; from the app it was typer and
the option models on every worker before its first chunk.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run ``coffea-hpc`` with ``argv`` (default: the command line); return its exit code."""
    if _runs_on_futures(sys.argv[1:] if argv is None else argv):
        # the workers' server imports coffea while this process imports the app (typer,
        # rich, the option models: a third of a second), not after it
        from coffea_hpc.backends._forkserver import start_forkserver

        start_forkserver()
    from coffea_hpc.cli.app import main as run_app

    return run_app(argv)


def _runs_on_futures(args: Sequence[str]) -> bool:
    """Whether the command line asks, in so many words, for a run on the futures backend
    (``run ... --executor futures``, not a quick ``--test``, a site or a help page). Only a
    start-up matter: the app parses the command line as always, and a server started for a
    command that turns out not to run on futures ends with this process, unused."""
    if not args or args[0] != "run":
        return False
    executor = None
    for i, arg in enumerate(args):
        if arg.partition("=")[0] in ("--help", "-h", "--test", "--site", "--inside-allocation"):
            return False
        if arg in ("--executor", "-e") and i + 1 < len(args):
            executor = args[i + 1]
        elif arg.startswith("--executor="):
            executor = arg.partition("=")[2]
        elif arg.startswith("-e") and len(arg) > 2 and not arg.startswith("--"):
            executor = arg[2:]
    return executor == "futures"
