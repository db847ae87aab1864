#!/bin/bash
# Written by `coffea-hpc submit` for site ${site}: the executable of the HTCondor job.
set -euo pipefail
${setup}
${environment}
cd ${workdir}  # the analysis folder
exec ${command}
