#!/bin/bash
# build.sh: builds the `debian-12` VM image: Debian 12 from Debian's packages with real
# cloud-init and openssh-server, booting from its own disk (syslinux), like a cloud image.
#
# Usage: images/debian-12/build.sh OUT_DIR VERSION
#
# Owned here: the recipe (packages, what is changed in the root filesystem, the disk layout and
# the boot loader), the root filesystem cache, and manifest.json. Called by
# orchestrator/images.py (`orch image build debian-12`) and by hand; `make setup` does not
# build it (a cold build takes minutes). OUT_DIR must not exist or be empty; it receives
# disk.qcow2 and manifest.json (no kernel: the image boots from its disk under BIOS).
#
# Disk (MBR, 2 GiB virtual): syslinux's mbr.bin in sector 0; partition 1 (FAT16, bootable,
# 1 MiB..128 MiB) holds syslinux, its syslinux.cfg, the kernel and the initrd; partition 2
# (ext4, label debian-root) is the root filesystem. Nothing is mounted: FAT via mkfs.fat
# --offset, mtools and syslinux --offset; ext4 via mkfs.ext4 -d at an offset.
#
# The root filesystem comes from mmdebstrap (unshare mode: its mounts live in a private
# namespace) as a tarball cached in ${ORCH_CACHE_DIR:-/var/cache/orchestrator}/debian-12/,
# keyed by the bootstrap recipe (suite, packages, dpkg options) and rebuilt when that changes
# or after $CACHE_MAX_DAYS days (security updates). What is changed afterwards (cloud-init
# settings, fstab, no host keys, ...) is applied on every build, so a changed customisation
# needs no new bootstrap. With a warm cache a build takes well under a minute.
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly HERE
# shellcheck source-path=SCRIPTDIR source=../lib/recipe.sh
. "$HERE/../lib/recipe.sh"
readonly SUITE=bookworm
readonly PACKAGES="linux-image-cloud-amd64 openssh-server cloud-init ifupdown isc-dhcp-client
systemd-sysv netbase sudo e2fsprogs iproute2 mtools dbus"
readonly CACHE=${ORCH_CACHE_DIR:-/var/cache/orchestrator}/debian-12
readonly CACHE_MAX_DAYS=7
readonly DISK_MIB=2048
readonly BOOT_START_MIB=1
readonly ROOT_START_MIB=128
readonly ROOT_LABEL=debian-root
readonly BOOT_LABEL=ORCHBOOT
# Fixed so two builds have the same filesystem identities (every instance has its own disk).
readonly ROOT_UUID=6f726368-6465-6269-616e-000000000012
readonly BOOT_VOLID=6f726331
readonly CMDLINE="root=UUID=$ROOT_UUID ro console=tty0 console=ttyS0,115200n8"
readonly SSH_USER=debian
# cloud-init writes result.json into /run when its last stage has finished in this boot.
readonly HEALTH_COMMAND="test -e /run/cloud-init/result.json"
# Debian's stated minimum without a desktop; measured: boots to cloud-init done in the same
# time as with 512 MiB under TCG, 45 MiB used afterwards.
readonly MIN_MEMORY_MIB=256
readonly SYSLINUX_MBR=/usr/lib/syslinux/mbr/mbr.bin

START=$(date +%s.%N)
TMP=
LOG=/dev/null
STEP="starting"
BOOTSTRAP_NOTE="from the cache"

usage() {
    echo "build.sh: error: ${1:-wrong arguments} (usage: $0 OUT_DIR VERSION)" >&2
    exit 2
}


parse_args() {
    local positional=()
    for arg in "$@"; do
        case $arg in
            -h|--help) usage "help requested" ;;
            -*) usage "unknown option $arg" ;;
            *) positional+=("$arg") ;;
        esac
    done
    set_out_and_version "${positional[@]}"
}

check_tools() {
    STEP="checking tools"
    [[ $EUID -eq 0 ]] || die "must run as root (files in the image must be owned by root)"
    local tool
    for tool in mmdebstrap mkfs.ext4 mkfs.fat mcopy syslinux sfdisk qemu-img tar flock sha256sum; do
        command -v "$tool" >/dev/null || die "$tool not found (apt-get install mmdebstrap e2fsprogs dosfstools mtools syslinux syslinux-common fdisk qemu-utils)"
    done
    [[ -r $SYSLINUX_MBR ]] || die "$SYSLINUX_MBR not found (apt-get install syslinux-common)"
}

# The bootstrap: everything the cached tarball depends on is in this function, and its text is
# the cache key (see cache_key).
bootstrap() {
    local out=$1 packages
    packages=$(echo "$PACKAGES" | tr -s ' \n' ',')
    mmdebstrap --mode=unshare --variant=apt --format=tar --include="${packages%,}" \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --aptopt='Acquire::Languages "none"' \
        "$SUITE" "$out"
}

cache_key() {
    { declare -f bootstrap; echo "$SUITE $PACKAGES"; } | sha256sum | cut -c1-16
}

# Sets ROOTFS_TAR to the cached bootstrap tarball, making it when missing or too old.
prepare_rootfs_tar() {
    STEP="creating the cache directory $CACHE"
    quiet mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    STEP="locking $CACHE"
    flock 9
    ROOTFS_TAR=$CACHE/rootfs-$(cache_key).tar
    if [[ -e $ROOTFS_TAR && -n $(find "$ROOTFS_TAR" -mtime "+$CACHE_MAX_DAYS") ]]; then
        rm -f -- "$ROOTFS_TAR"
    fi
    if [[ ! -e $ROOTFS_TAR ]]; then
        local started
        started=$(date +%s.%N)
        STEP="mmdebstrap $SUITE"
        rm -f -- "$ROOTFS_TAR.tmp"
        quiet bootstrap "$ROOTFS_TAR.tmp"
        mv -- "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
        # older keys are of a changed recipe: never used again
        find "$CACHE" -maxdepth 1 -name 'rootfs-*.tar*' ! -path "$ROOTFS_TAR" -delete
        BOOTSTRAP_NOTE="by mmdebstrap in $(seconds_since "$started") s"
    fi
    exec 9>&-
}

# Turns the bootstrapped tree into a cloud image: what Debian's own cloud images differ in,
# plus what this controller needs (NoCloud only, host keys from the seed).
customize() {
    local root=$1
    STEP="customising the root filesystem"
    # Host keys come from the seed (pinned by the controller); an image must not ship any.
    rm -f -- "$root"/etc/ssh/ssh_host_*
    # mmdebstrap copies the build host's files; an instance gets its own from cloud-init/dhcp.
    echo localhost >"$root/etc/hostname"
    rm -f -- "$root/etc/resolv.conf"
    : >"$root/etc/machine-id"
    rm -f -- "$root/var/lib/dbus/machine-id"
    cat >"$root/etc/fstab" <<EOF
# <file system>  <mount point>  <type>  <options>  <dump>  <pass>
UUID=$ROOT_UUID  /  ext4  rw,discard,errors=remount-ro  0  1
EOF
    mkdir -p "$root/etc/cloud/cloud.cfg.d"
    cat >"$root/etc/cloud/cloud.cfg.d/90_orchestrator.cfg" <<'EOF'
# orchestrator: the seed is a NoCloud disk (label cidata); no network metadata services.
datasource_list: [ NoCloud, None ]
# The image has no locales package (C.UTF-8 is built into libc; en_US.UTF-8, cloud-init's
# default, would fail the locale module) and no GRUB (syslinux boots it).
locale: C.UTF-8
grub_dpkg:
  enabled: false
EOF
    # e2scrub_reap only matters for ext4 on LVM (none here); it runs at idle priority inside
    # multi-user.target, which cloud-final waits for: under TCG it delayed "ready" by ~30 s.
    rm -f -- "$root/etc/systemd/system/multi-user.target.wants/e2scrub_reap.service"
    # apt works in an instance that has a route out; the lists are not part of the image.
    rm -rf -- "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
    find "$root/var/log" -type f -exec truncate -s 0 {} +
    rm -f -- "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
    # A kernel or initrd update inside an instance goes onto the boot partition, as on a
    # cloud image whose boot loader reads /boot.
    install -D -m 755 "$HERE/files/zz-orch-bootfs" "$root/etc/kernel/postinst.d/zz-orch-bootfs"
    mkdir -p "$root/etc/initramfs/post-update.d"
    ln -sf ../../kernel/postinst.d/zz-orch-bootfs "$root/etc/initramfs/post-update.d/zz-orch-bootfs"
    cat >"$root/etc/orch-image-release" <<EOF
ORCH_IMAGE=debian-12
ORCH_IMAGE_VERSION=$VERSION
EOF
}

build_disk() {
    local root=$TMP/rootfs disk=$TMP/disk.raw
    STEP="extracting $(basename "$ROOTFS_TAR")"
    mkdir -p "$root"
    quiet tar -C "$root" --numeric-owner --xattrs --xattrs-include='*' -xpf "$ROOTFS_TAR"
    customize "$root"
    RELEASE=$(basename "$(readlink -f "$root/vmlinuz")")
    RELEASE=${RELEASE#vmlinuz-}
    [[ -e $root/boot/vmlinuz-$RELEASE && -e $root/boot/initrd.img-$RELEASE ]] \
        || die "no kernel and initrd in the bootstrapped tree"

    STEP="partitioning"
    truncate -s "${DISK_MIB}M" "$disk"
    local sector=$((1024 * 1024 / 512))
    quiet sfdisk --no-reread --no-tell-kernel "$disk" <<EOF
label: dos
label-id: 0x6f726368
start=$((BOOT_START_MIB * sector)), size=$(((ROOT_START_MIB - BOOT_START_MIB) * sector)), type=e, bootable
start=$((ROOT_START_MIB * sector)), type=83
EOF
    # Boot code only: the first 440 bytes, before the disk signature and partition table.
    quiet dd if="$SYSLINUX_MBR" of="$disk" bs=440 count=1 conv=notrunc

    STEP="making the boot partition"
    local boot_offset=$((BOOT_START_MIB * 1024 * 1024))
    quiet mkfs.fat -F 16 -n "$BOOT_LABEL" -i "$BOOT_VOLID" --offset "$((BOOT_START_MIB * sector))" \
        "$disk" "$(((ROOT_START_MIB - BOOT_START_MIB) * 1024))"
    cat >"$TMP/syslinux.cfg" <<EOF
SERIAL 0 115200
DEFAULT debian
PROMPT 0
TIMEOUT 0
LABEL debian
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND $CMDLINE
EOF
    export MTOOLS_SKIP_CHECK=1
    quiet mcopy -i "$disk@@$boot_offset" "$root/boot/vmlinuz-$RELEASE" ::/vmlinuz
    quiet mcopy -i "$disk@@$boot_offset" "$root/boot/initrd.img-$RELEASE" ::/initrd.img
    quiet mcopy -i "$disk@@$boot_offset" "$TMP/syslinux.cfg" ::/syslinux.cfg
    STEP="syslinux --install"
    quiet syslinux --offset "$boot_offset" --install "$disk"

    STEP="mkfs.ext4 of the root partition"
    quiet mkfs.ext4 -q -F -L "$ROOT_LABEL" -U "$ROOT_UUID" \
        -E "offset=$((ROOT_START_MIB * 1024 * 1024)),root_owner=0:0" -d "$root" \
        "$disk" "$((DISK_MIB - ROOT_START_MIB))M"
    rm -rf -- "$root"

    STEP="qemu-img convert"
    quiet qemu-img convert -f raw -O qcow2 "$disk" "$TMP/out/disk.qcow2"
    rm -f -- "$disk"
}

write_manifest() {
    cat >"$TMP/out/manifest.json" <<EOF
{
  "name": "debian-12",
  "version": "$VERSION",
  "format": "qcow2",
  "sshUser": "$SSH_USER",
  "healthCommand": "$HEALTH_COMMAND",
  "minMemoryMiB": $MIN_MEMORY_MIB,
  "kernelRelease": "$RELEASE",
  "bootLoader": "syslinux"
}
EOF
}

main() {
    parse_args "$@"
    check_tools
    begin_build debian

    prepare_rootfs_tar
    build_disk
    write_manifest

    publish_image disk.qcow2
    echo "debian-12:$VERSION built in $(seconds_since "$START") s: disk.qcow2 $(size_mib "$OUT/disk.qcow2") MiB (virtual $DISK_MIB MiB), kernel $RELEASE, root filesystem $BOOTSTRAP_NOTE"
}

main "$@"
