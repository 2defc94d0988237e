#!/usr/bin/env bash
# The demo behind `make demo`: a scale set of 3 tiny VMs on tiny:1 with a Rolling upgrade
# policy, shown healthy and answering over SSH; then `vmss update --image tiny:2` rolls the
# new image through in batches, and every VM reports VERSION_ID=2 over SSH.
# Run by the Makefile after `make setup` (images tiny:1, tiny:2) and `orch lab up`.
set -euo pipefail
cd "$(dirname "$0")/.."
orch() { .venv/bin/orch lab exec -- .venv/bin/orch "$@"; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
secs() { printf '%d.%03d s' $(($1 / 1000)) $(($1 % 1000)); }
versions() {
    for id in $(orch vmss list-instances --name "$SET" -o json | python3 -c \
            'import json,sys; print(" ".join(str(i["instanceId"]) for i in json.load(sys.stdin)))'); do
        orch vmss run-command invoke --name "$SET" --instance-id "$id" --scripts \
            '. /etc/os-release; echo "  $(hostname): $PRETTY_NAME, VERSION_ID=$VERSION_ID, up $(cut -d" " -f1 /proc/uptime)s"' \
            2>/dev/null
    done
}
SET=demo

echo "== removing the previous demo set, if any"
if orch vmss show --name "$SET" >/dev/null 2>&1; then orch vmss delete --name "$SET"; fi

echo "== orch vmss create --name $SET --image tiny:1 --instance-count 3 --upgrade-policy-mode Rolling --max-batch-instance-percent 34 --max-unhealthy-instance-percent 34 --data-disk-sizes-gb 1"
start=$(date +%s%N)
orch vmss create --name "$SET" --image tiny:1 --instance-count 3 --upgrade-policy-mode Rolling \
    --max-batch-instance-percent 34 --max-unhealthy-instance-percent 34 --data-disk-sizes-gb 1 -o json >/dev/null
echo "== created 3 instances, all Healthy, in $(secs "$(ms_since "$start")")"
orch vmss list-instances --name "$SET"
echo "== inside the VMs (run-command over SSH, host keys pinned):"
versions

echo "== orch vmss update --name $SET --image tiny:2   (Rolling: batches of 1, each must become Healthy)"
start=$(date +%s%N)
orch vmss update --name "$SET" --image tiny:2 -o json >/dev/null
echo "== rolling upgrade done in $(secs "$(ms_since "$start")")"
orch vmss rolling-upgrade get-latest --name "$SET" -o json | python3 -c '
import json, sys
s = json.load(sys.stdin)
print("   status:", s["runningStatus"]["code"], "| progress:", s["progress"])
for b in s["batches"]:
    print("   batch", b["batch"], "instances", b["instances"], "succeeded", b["succeeded"], "failed", b["failed"])
for t in s["thresholds"]:
    print("   ", t)'
orch vmss list-instances --name "$SET"
echo "== inside the VMs after the upgrade:"
versions
echo "== done: the set stays up; remove it with: .venv/bin/orch lab exec -- .venv/bin/orch vmss delete --name $SET"
