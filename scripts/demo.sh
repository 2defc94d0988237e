#!/usr/bin/env bash
# The demo behind `make demo`: a scale set of 3 tiny VMs in the lab, shown healthy and
# answering over SSH. Run by the Makefile after `make setup` and `orch lab up`.
set -euo pipefail
cd "$(dirname "$0")/.."
orch() { .venv/bin/orch lab exec -- .venv/bin/orch "$@"; }
SET=demo

echo "== removing the previous demo set, if any"
orch vmss show --name "$SET" >/dev/null 2>&1 && orch vmss delete --name "$SET"

echo "== orch vmss create --name $SET --image tiny:1 --instance-count 3 --upgrade-policy-mode Rolling"
start=$(date +%s%N)
orch vmss create --name "$SET" --image tiny:1 --instance-count 3 --upgrade-policy-mode Rolling \
    --data-disk-sizes-gb 1
end=$(date +%s%N)
ms=$(( (end - start) / 1000000 ))
printf '== created 3 instances, all Healthy, in %d.%03d s\n' $((ms / 1000)) $((ms % 1000))

echo "== orch vmss list-instances --name $SET"
orch vmss list-instances --name "$SET"

for id in 0 1 2; do
    echo "== orch vmss run-command invoke --name $SET --instance-id $id"
    orch vmss run-command invoke --name "$SET" --instance-id "$id" \
        --scripts '. /etc/os-release; echo "$(hostname): $PRETTY_NAME (VERSION_ID=$VERSION_ID), up $(cut -d" " -f1 /proc/uptime)s"'
done
echo "== done: the set stays up; remove it with: .venv/bin/orch lab exec -- .venv/bin/orch vmss delete --name $SET"
