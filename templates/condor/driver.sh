#!/bin/bash
# Written by `coffea-hpc submit` for site ${site}: the executable of the HTCondor job.
# HTCondor ends the slot after ${runtime} s (+MaxRuntime / +JobFlavour) with no signal ahead
# of it, so `timeout` sends the driver SIGTERM ${signal_lead} s before: the driver saves what was
# done and stops its workers, and the job can be resubmitted with --resume.
set -euo pipefail
${setup}
${environment}
cd ${workdir}  # the analysis folder
exec timeout --signal=TERM ${stop_after} ${command}
