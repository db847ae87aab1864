"""``coffea-hpc merge``: merge saved partial outputs, serially or with MPI.

Nothing is unpickled unless it is trusted: spill files only if they verify with the key of
the run that wrote them (``--key-from OUTPUT_DIR``), files written by ``coffea.util.save``
only when the analyst says they are their own (``--trust-coffea-files``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coffea_hpc._text import count

__all__ = ["register"]


def merge(
    partials: Annotated[list[Path], typer.Argument(
        help="Partial outputs (.coffea files) or folders of them (a spill directory).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Merged output file.")],
    mpi: Annotated[bool, typer.Option(
        "--mpi", help="Merge with MPI; run this under mpiexec -n P or srun -n P.")] = False,
    ranks: Annotated[int | None, typer.Option(
        "--ranks", min=1, help="Launch the MPI merge with this many ranks (mpiexec).")] = None,
    launcher: Annotated[str, typer.Option(help="MPI launcher for --ranks.")] = "mpiexec",
    key_from: Annotated[Path | None, typer.Option(
        "--key-from", help="Output directory of the run that wrote the spill files (.cspill): "
                           "its key verifies them.")] = None,
    trust_coffea_files: Annotated[bool, typer.Option(
        "--trust-coffea-files", help="Also merge files written by coffea.util.save, which "
                                     "carry no signature: only files you wrote yourself "
                                     "(loading a pickle runs code).")] = False,
) -> None:
    """Merge partial outputs into one; prints wall time, bytes read and peak memory."""
    from rich.console import Console

    from coffea_hpc import output as files
    from coffea_hpc._signing import RunKey, key_path
    from coffea_hpc.reduction.merge import MergeStats, merge_stream
    from coffea_hpc.reduction.mpi import expand_inputs, mpi_merge
    from coffea_hpc.reduction.mpi_job import run_mpi_merge

    console = Console(stderr=True)
    key = RunKey.from_file(key_path(key_from)) if key_from is not None else None
    trust = trust_coffea_files
    if ranks is not None:
        stats = run_mpi_merge(partials, output, ranks=ranks, launcher=launcher, key=key,
                              trust_coffea_files=trust)
    elif mpi:
        _, stats = mpi_merge(partials, output, key=key, trust_coffea_files=trust)
        from mpi4py import MPI

        if MPI.COMM_WORLD.Get_rank() != 0:
            return
    else:
        stats = MergeStats()
        total = merge_stream(expand_inputs(partials), key, stats=stats,
                             trust_coffea_files=trust)
        files.save(total, output)
    console.print(
        f"merged {count(stats.inputs, 'partial')} with {count(stats.ranks, 'rank')} in "
        f"{stats.wall_time_s:.2f} s: {stats.bytes_read / 1e6:.1f} MB read, "
        f"peak memory {stats.peak_rss_bytes / 1e6:.0f} MB -> {output}"
    )


def register(app: typer.Typer) -> None:
    app.command(name="merge")(merge)
