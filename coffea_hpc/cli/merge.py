"""``coffea-hpc merge``: merge saved partial outputs, serially or with MPI."""

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
) -> None:
    """Merge partial outputs into one; prints wall time, bytes read and peak memory."""
    from rich.console import Console

    from coffea_hpc import output as files
    from coffea_hpc.reduction.merge import MergeStats, merge_stream
    from coffea_hpc.reduction.mpi import expand_inputs, mpi_merge
    from coffea_hpc.reduction.mpi_job import run_mpi_merge

    console = Console(stderr=True)
    if ranks is not None:
        stats = run_mpi_merge(partials, output, ranks=ranks, launcher=launcher)
    elif mpi:
        _, stats = mpi_merge(partials, output)
        from mpi4py import MPI

        if MPI.COMM_WORLD.Get_rank() != 0:
            return
    else:
        stats = MergeStats()
        total = merge_stream(expand_inputs(partials), stats=stats)
        files.save(total, output)
    console.print(
        f"merged {count(stats.inputs, 'partial')} with {count(stats.ranks, 'rank')} in "
        f"{stats.wall_time_s:.2f} s: {stats.bytes_read / 1e6:.1f} MB read, "
        f"peak memory {stats.peak_rss_bytes / 1e6:.0f} MB -> {output}"
    )


def register(app: typer.Typer) -> None:
    app.command(name="merge")(merge)
