# stop-all.sh: ends every process and leaves the filesystems clean (data disks unmounted, the
# root read-only), so the next boot needs no journal recovery. SOURCED (". stop-all.sh") by
# /etc/init.d/rcK (reboot, poweroff) and /etc/acpi/power.sh (ACPI power button) just before
# the power goes: "kill -1" spares only the calling shell, so a child script would kill its
# caller.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
sync
kill -TERM -1 2>/dev/null
# The condition that matters is "nothing holds a file open for writing": retry the read-only
# remount for up to 2 s, then KILL whatever is left and try once more.
tries=0
until umount -a -r -t noproc,nosysfs,nodevtmpfs,nodevpts,notmpfs 2>/dev/null; mount -o remount,ro / 2>/dev/null; do
    tries=$((tries + 1))
    if [ $tries -eq 20 ]; then
        kill -KILL -1 2>/dev/null
        sync
    elif [ $tries -gt 20 ]; then
        echo "stop-all: / stays read-write; the next boot replays the journal"
        break
    fi
    usleep 100000
done
sync
