#!/bin/sh
# ACPI power button (libvirt "shutdown", qemu system_powerdown): clean filesystems, then off
# at once. busybox init's graceful path would add two fixed one-second pauses.
# acpid hands us its log file as stderr: an open file would keep / from going read-only.
exec >/dev/console 2>&1
echo "orch-tiny: ACPI power button: powering off"
# shellcheck source=../../usr/lib/orch/stop-all.sh
. /usr/lib/orch/stop-all.sh
/bin/busybox poweroff -f
