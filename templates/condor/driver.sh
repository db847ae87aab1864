#!/bin/bash
# Written by `coffea-hpc submit` for site ${site}: the executable of the HTCondor job.
set -euo pipefail
${setup}
cd ${workdir}
exec ${command}
