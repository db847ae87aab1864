#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine, then run it.
#   - Python packages into .venv (created here if missing), with the test extras
#     (mpi4py + the mpich wheel, dask, globus-compute-sdk, the XRootD client, pytest, ruff);
#   - Debian's slurm-wlm and munge when running as root and they are missing (the Slurm
#     tests start a one-node cluster on localhost with scripts/local-slurm.sh and skip,
#     saying why, where Slurm cannot be installed);
#   - Debian's chromium, likewise: the HTML report is opened in headless Chromium (those
#     tests skip, saying why, without it);
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

# system parts: each missing command names the Debian package that provides it
missing=()
for pair in slurmctld:slurm-wlm munged:munge chromium:chromium xrootd:xrootd-server; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} for the Slurm, XRootD and browser tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "${missing[*]} not installed and cannot be installed here: the tests that need them skip"
  fi
fi

.venv/bin/ruff check coffea_hpc tests benchmarks
exec .venv/bin/python -m pytest "$@"
