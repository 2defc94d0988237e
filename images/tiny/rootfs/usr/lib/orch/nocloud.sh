#!/bin/sh
# nocloud.sh: the orch-tiny image's small stand-in for cloud-init (NoCloud datasource only).
#
# Owned here: finding the seed (an iso9660 filesystem labelled cidata), applying the subset of
# cloud-config the controller writes, and cloud-init's per-instance semantics. Called by
# /etc/init.d/rcS at every boot ("init" early, "final" once SSH and HTTP are up); the
# "parse" and "write-files" steps are also run on the build host by
# tests/unit/test_tiny_nocloud.py.
#
#   nocloud.sh init                   seed → hostname, authorized_keys, SSH host keys (every
#                                     boot); write_files (new instance-id only)
#   nocloud.sh final                  runcmd (new instance-id only), record the instance-id,
#                                     write /var/lib/cloud/instance/boot-finished
#   nocloud.sh parse SEED_DIR OUT     meta-data + user-data → one file per value (nocloud.awk)
#   nocloud.sh write-files OUT ROOT   write the parsed write_files below ROOT ("" = /)
#   nocloud.sh run-cmds OUT           run the parsed runcmd entries in order
#
# Honoured: meta-data instance-id, local-hostname; user-data hostname, ssh_authorized_keys
# (root), ssh_keys.{ed25519,ecdsa,rsa}_private, write_files (path, content, encoding
# b64|base64|text|gz+b64, permissions, append), runcmd. Everything else is ignored.

set -u
# Byte semantics in awk (\uXXXX → UTF-8 bytes). PATH comes from the caller: rcS in the image,
# a directory of busybox links in the unit test.
LC_ALL=C
export LC_ALL

LIB=$(dirname "$0")
STATE=/var/lib/cloud
RUN=/run/orch/nocloud
PARSED=$RUN/parsed

say() { echo "nocloud: $*"; }

parse() {
    seed=$1 out=$2
    mkdir -p "$out"
    meta=$seed/meta-data user=$seed/user-data
    [ -e "$meta" ] || meta=/dev/null
    [ -e "$user" ] || user=/dev/null
    awk -v OUT="$out" -f "$LIB/nocloud.awk" "$meta" "$user"
}

write_files() {
    out=$1 root=$2
    i=1
    while [ -e "$out/wf.$i.path" ]; do
        write_one "$out" "$i" "$root" || say "write_files[$i]: failed"
        i=$((i + 1))
    done
}

write_one() {
    out=$1 n=$2 root=$3
    path=$(cat "$out/wf.$n.path")
    case $path in
        /*) ;;
        *) say "write_files[$n]: path '$path' is not absolute, skipped"; return 1 ;;
    esac
    enc=text perms=0644 append=false
    [ -e "$out/wf.$n.encoding" ] && enc=$(cat "$out/wf.$n.encoding")
    [ -e "$out/wf.$n.permissions" ] && perms=$(cat "$out/wf.$n.permissions")
    [ -e "$out/wf.$n.append" ] && append=$(cat "$out/wf.$n.append")
    case $perms in
        [0-7][0-7][0-7]|[0-7][0-7][0-7][0-7]) ;;
        *) say "write_files[$n]: bad permissions '$perms', using 0644"; perms=0644 ;;
    esac
    content=$out/wf.$n.content
    [ -e "$content" ] || content=/dev/null
    dest=$root$path
    mkdir -p "$(dirname "$dest")" || return 1
    tmp=$dest.nocloud-tmp
    # Decode to a temporary file first, so a bad payload never leaves half a file behind.
    case $enc in
        b64|base64) base64 -d <"$content" >"$tmp" ;;
        gz+b64|gzip+base64|gz+base64) base64 -d <"$content" | gunzip -c >"$tmp" ;;
        text) cat "$content" >"$tmp" ;;
        *) say "write_files[$n]: encoding '$enc' not supported, skipped"; return 1 ;;
    esac || { rm -f "$tmp"; return 1; }
    if [ "$append" = true ]; then
        cat "$tmp" >>"$dest" && rm -f "$tmp"
    else
        chmod "$perms" "$tmp" && mv -f "$tmp" "$dest"
    fi
}

run_cmds() {
    out=$1
    i=1
    while [ -e "$out/runcmd.$i" ]; do
        cmd=$(cat "$out/runcmd.$i"; echo x)
        cmd=${cmd%x}
        say "runcmd[$i]: start"
        (cd / && HOME=/root sh -c "$cmd")
        say "runcmd[$i]: exit status $?"
        i=$((i + 1))
    done
}

# Prints the device holding the seed, or nothing.
find_seed() {
    for label in cidata CIDATA; do
        dev=$(findfs "LABEL=$label" 2>/dev/null) && [ -n "$dev" ] && { echo "$dev"; return 0; }
    done
    # findfs misses some ISO layouts; fall back to probing each virtio/SCSI CD disk.
    mnt=$RUN/probe
    mkdir -p "$mnt"
    for dev in /dev/vd? /dev/sr?; do
        [ -b "$dev" ] || continue
        if mount -t iso9660 -o ro "$dev" "$mnt" 2>/dev/null; then
            found=false
            [ -e "$mnt/meta-data" ] && found=true
            umount "$mnt"
            if $found; then echo "$dev"; return 0; fi
        fi
    done
    return 1
}

fetch_seed() {
    dev=$(find_seed) || return 1
    mnt=$RUN/seed-mnt
    mkdir -p "$mnt" "$RUN/seed"
    mount -t iso9660 -o ro "$dev" "$mnt" || return 1
    for f in meta-data user-data; do
        [ -e "$mnt/$f" ] && cp "$mnt/$f" "$RUN/seed/$f"
    done
    umount "$mnt"
    say "seed found on $dev"
}

apply_hostname() {
    name=
    [ -e "$PARSED/local-hostname" ] && name=$(cat "$PARSED/local-hostname")
    [ -e "$PARSED/hostname" ] && name=$(cat "$PARSED/hostname")
    [ -n "$name" ] || return 0
    case $name in
        *[!A-Za-z0-9.-]*|-*) say "hostname '$name' is not a valid host name, ignored"; return 0 ;;
    esac
    short=${name%%.*}
    echo "$name" >/etc/hostname
    hostname "$name"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s %s\n::1\tlocalhost\n' "$name" "$short" >/etc/hosts
}

apply_keys() {
    if [ -e "$PARSED/authorized_keys" ]; then
        mkdir -p /root/.ssh
        chmod 700 /root/.ssh
        cp "$PARSED/authorized_keys" /root/.ssh/authorized_keys.tmp
        chmod 600 /root/.ssh/authorized_keys.tmp
        mv -f /root/.ssh/authorized_keys.tmp /root/.ssh/authorized_keys
    fi
    mkdir -p /etc/dropbear
    for type in ed25519 ecdsa rsa; do
        src=$PARSED/ssh_keys.${type}_private
        [ -e "$src" ] || continue
        dst=/etc/dropbear/dropbear_${type}_host_key
        rm -f "$dst.tmp"
        # umask: the converted key must never be readable by others, not even briefly.
        if (umask 077 && dropbearconvert openssh dropbear "$src" "$dst.tmp" >/dev/null 2>&1); then
            mv -f "$dst.tmp" "$dst"
        else
            rm -f "$dst.tmp"
            say "ERROR: ssh_keys.${type}_private could not be converted; host key unchanged"
        fi
    done
    # The private keys are no longer needed in clear on the tmpfs.
    rm -f "$PARSED"/ssh_keys.*_private "$RUN/seed/user-data"
}

instance_id() { [ -e "$1" ] && cat "$1"; }

init() {
    rm -rf "$RUN"
    mkdir -p "$RUN" "$STATE"
    chmod 700 "$RUN"
    rm -f "$STATE/instance/boot-finished"
    if ! fetch_seed; then
        say "no seed (iso9660 labelled cidata) found; keeping the previous configuration"
        return 0
    fi
    parse "$RUN/seed" "$PARSED"
    apply_hostname
    apply_keys
    new=$(instance_id "$PARSED/instance-id") || new=
    old=$(instance_id "$STATE/instance-id") || old=
    if [ -n "$new" ] && [ "$new" != "$old" ]; then
        say "new instance $new (was ${old:-none}): write_files and runcmd run on this boot"
        : >"$RUN/new-instance"
        write_files "$PARSED" ""
    fi
}

final() {
    if [ -e "$RUN/new-instance" ]; then
        run_cmds "$PARSED"
        cp "$PARSED/instance-id" "$STATE/instance-id.tmp" && mv -f "$STATE/instance-id.tmp" "$STATE/instance-id"
    fi
    mkdir -p "$STATE/instance"
    date >"$STATE/instance/boot-finished"
    sync
}

case ${1:-} in
    init) init ;;
    final) final ;;
    parse) [ $# -eq 3 ] || { echo "usage: $0 parse SEED_DIR OUT" >&2; exit 2; }; parse "$2" "$3" ;;
    write-files) [ $# -eq 3 ] || { echo "usage: $0 write-files OUT ROOT" >&2; exit 2; }; write_files "$2" "$3" ;;
    run-cmds) [ $# -eq 2 ] || { echo "usage: $0 run-cmds OUT" >&2; exit 2; }; run_cmds "$2" ;;
    *) echo "usage: $0 init|final|parse SEED OUT|write-files OUT ROOT|run-cmds OUT" >&2; exit 2 ;;
esac
