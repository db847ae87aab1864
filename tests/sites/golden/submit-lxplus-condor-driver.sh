#!/bin/bash
# Written by `coffea-hpc submit` for site lxplus-condor: the executable of the HTCondor job.
set -euo pipefail
source /cvmfs/sft.cern.ch/lcg/views/LCG_107/x86_64-el9-gcc13-opt/setup.sh
cd WORKDIR
exec PYTHON -m coffea_hpc.cli.app run analysis.py:Proc --fileset /data/fileset.json -o /out/run --site lxplus-condor --inside-allocation
