#!/bin/bash
# Written by `coffea-hpc submit` for site generic-condor: the executable of the HTCondor job.
set -euo pipefail

cd WORKDIR
exec PYTHON -m coffea_hpc.cli.app run analysis.py:Proc --fileset /data/fileset.json -o /out/run --site generic-condor --inside-allocation
