#!/bin/bash
# Written by `coffea-hpc submit` for site lxplus-condor: the executable of the HTCondor job.
# HTCondor ends the slot after 28800 s (+MaxRuntime / +JobFlavour) with no signal ahead
# of it, so `timeout` sends the driver SIGTERM 120 s before: the driver saves what was
# done and stops its workers, and the job can be resubmitted with --resume.
set -euo pipefail
source /cvmfs/sft.cern.ch/lcg/views/LCG_107/x86_64-el9-gcc13-opt/setup.sh
# the Python environment `coffea-hpc submit` ran from
export VIRTUAL_ENV=/home/me/venv
export PATH=/home/me/venv/bin:"$PATH"
cd /home/me/analysis  # the analysis folder
exec timeout --signal=TERM 28680s PYTHON -m coffea_hpc.cli.app run analysis.py:Proc --fileset /data/fileset.json -o /out/run --site lxplus-condor --inside-allocation
