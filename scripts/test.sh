#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine, then run it.
#   - Python packages into .venv (created here if missing), with the test extras
#     (mpi4py + the mpich wheel, dask, globus-compute-sdk, the XRootD client, pytest, ruff);
#   - Debian's slurm-wlm and munge when running as root and they are missing (the Slurm
#     tests start a one-node cluster on localhost with scripts/local-slurm.sh and skip,
#     saying why, where Slurm cannot be installed);
#   - Debian's xrootd-server likewise (the XRootD tests serve their data with
#     scripts/local-xrootd.sh, and skip, saying why, where it cannot be installed).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing slurm-wlm and munge for the Slurm tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
  else
    echo "slurm-wlm/munge not installed and cannot install them here: Slurm tests will skip"
  fi
fi

if ! command -v xrootd >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing xrootd-server for the XRootD tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends xrootd-server >/dev/null
  else
    echo "xrootd-server not installed and cannot install it here: XRootD tests will skip"
  fi
fi

.venv/bin/ruff check coffea_hpc tests benchmarks
exec .venv/bin/python -m pytest "$@"
