#!/bin/bash
# build.sh: builds the `tiny` VM image (busybox + dropbear, Debian cloud kernel, direct boot).
#
# Usage: images/tiny/build.sh OUT_DIR VERSION [--broken]
#
# Owned here: the recipe (which files go into the root filesystem and the initramfs, from
# where), the kernel cache, and manifest.json. Called by orchestrator/images.py
# (`orch image build tiny`), by `make setup`, and by hand. OUT_DIR must not exist or be empty;
# it receives disk.qcow2, vmlinuz, initrd.img and manifest.json. --broken builds the same image
# without the /health page, so its health command fails while SSH still works.
#
# The kernel package (linux-image-*-cloud-amd64) is downloaded once into
# ${ORCH_CACHE_DIR:-/var/cache/orchestrator}/tiny/ and reused; with a warm cache a build
# takes about a second and needs no network. Static files of the image are under rootfs/ and
# initramfs/ next to this script.
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly HERE
# shellcheck source-path=SCRIPTDIR source=../lib/recipe.sh
. "$HERE/../lib/recipe.sh"
readonly CACHE=${ORCH_CACHE_DIR:-/var/cache/orchestrator}/tiny
readonly META_PACKAGE=linux-image-cloud-amd64
readonly DISK_MIB=64
readonly CMDLINE="console=ttyS0 root=LABEL=orch-root rw loglevel=6"
readonly HEALTH_COMMAND="wget -q -O - http://127.0.0.1/health | grep -qx ok"
readonly MIN_MEMORY_MIB=128
# Fixed so two builds of the same version give the same filesystem identity.
readonly FS_UUID=6f726368-7469-6e79-0000-000000000001
readonly EPOCH=1700000000
# Load order matters: each module after those it depends on (modinfo depends=).
readonly MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
virtio_blk failover net_failover virtio_net cdrom isofs virtio-rng evdev button"
readonly OPTIONAL_MODULES=" virtio-rng "
readonly BINARIES="/usr/sbin/dropbear /usr/bin/dropbearconvert /usr/bin/dropbearkey /sbin/blkid"

START=$(date +%s.%N)
TMP=
LOG=/dev/null
STEP="starting"

usage() {
    echo "build.sh: error: ${1:-wrong arguments} (usage: $0 OUT_DIR VERSION [--broken])" >&2
    exit 2
}

parse_args() {
    BROKEN=false
    local positional=()
    for arg in "$@"; do
        case $arg in
            --broken) BROKEN=true ;;
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
    for tool in busybox mkfs.ext4 qemu-img cpio gzip dpkg-deb apt-get apt-cache flock ldd \
        $BINARIES; do
        command -v "$tool" >/dev/null || die "$tool not found (apt-get install busybox-static dropbear-bin e2fsprogs qemu-utils cpio util-linux)"
    done
    if ldd "$(command -v busybox)" >/dev/null 2>&1; then
        die "busybox is dynamically linked; install busybox-static"
    fi
}

# Prints the name of the versioned kernel package the meta package depends on.
kernel_package_name() {
    apt-cache depends "$META_PACKAGE" 2>>"$LOG" \
        | awk '$1 == "Depends:" && $2 ~ /^linux-image-.*-cloud-amd64$/ { print $2; exit }'
}

download_kernel_deb() {
    local name dl
    name=$(kernel_package_name || true)
    if [[ -z $name ]]; then
        # Package lists missing or stale (fresh machine): refresh once.
        STEP="apt-get update"
        quiet apt-get update
        name=$(kernel_package_name || true)
        [[ -n $name ]] || die "apt-cache knows no $META_PACKAGE (is Debian's main archive configured?)"
    fi
    dl=$(mktemp -d "$CACHE/.download.XXXXXX")
    STEP="apt-get download $name"
    if ! (cd "$dl" && quiet apt-get -o APT::Sandbox::User=root download "$name"); then
        STEP="apt-get update"
        quiet apt-get update
        STEP="apt-get download $name"
        (cd "$dl" && quiet apt-get -o APT::Sandbox::User=root download "$name")
    fi
    mv -- "$dl"/*.deb "$CACHE/"
    rm -rf -- "$dl"
}

# Sets KDIR to the cached extraction (vmlinuz, modules/, release) of the kernel package.
prepare_kernel() {
    STEP="creating the cache directory $CACHE"
    quiet mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    STEP="locking $CACHE"
    flock 9
    local deb
    deb=$(find "$CACHE" -maxdepth 1 -name 'linux-image-*-cloud-amd64_*.deb' | sort -V | tail -n 1)
    if [[ -z $deb ]]; then
        download_kernel_deb
        deb=$(find "$CACHE" -maxdepth 1 -name 'linux-image-*-cloud-amd64_*.deb' | sort -V | tail -n 1)
        [[ -n $deb ]] || die "apt-get download left no kernel package in $CACHE"
    fi
    KDIR=$CACHE/$(basename "$deb" .deb)
    if [[ ! -e $KDIR/.complete ]]; then
        STEP="extracting $(basename "$deb")"
        local x=$TMP/kernel-deb
        rm -rf -- "$KDIR" "$x"
        quiet dpkg-deb -x "$deb" "$x"
        local release
        release=$(basename "$(find "$x/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n 1)")
        [[ -n $release && -e $x/boot/vmlinuz-$release ]] || die "no kernel image in $deb"
        mkdir -p "$KDIR.tmp/modules"
        cp -- "$x/boot/vmlinuz-$release" "$KDIR.tmp/vmlinuz"
        cp -- "$x/lib/modules/$release/modules.builtin" "$KDIR.tmp/"
        echo "$release" >"$KDIR.tmp/release"
        local mod file
        for mod in $MODULES; do
            file=$(find "$x/lib/modules/$release/kernel" -name "$mod.ko" -o -name "$mod.ko.xz" \
                -o -name "$mod.ko.zst" | head -n 1)
            if [[ -z $file ]]; then continue; fi
            case $file in
                *.xz) xz -dc -- "$file" >"$KDIR.tmp/modules/$mod.ko" ;;
                *.zst) zstd -dqc -- "$file" >"$KDIR.tmp/modules/$mod.ko" ;;
                *) cp -- "$file" "$KDIR.tmp/modules/$mod.ko" ;;
            esac
        done
        touch "$KDIR.tmp/.complete"
        mv -- "$KDIR.tmp" "$KDIR"
        rm -rf -- "$x"
    fi
    exec 9>&-
}

build_initramfs() {
    STEP="building the initramfs"
    local dir=$TMP/initramfs mod order=
    mkdir -p "$dir/bin" "$dir/etc" "$dir/lib/modules" "$dir/dev" "$dir/proc" "$dir/sys" \
        "$dir/newroot"
    cp -- "$(command -v busybox)" "$dir/bin/busybox"
    ln -s busybox "$dir/bin/sh"
    cp -- "$HERE/initramfs/init" "$dir/init"
    chmod 755 "$dir/init"
    for mod in $MODULES; do
        if grep -q "/${mod//-/[-_]}\.ko" "$KDIR/modules.builtin"; then continue; fi
        if [[ -e $KDIR/modules/$mod.ko ]]; then
            cp -- "$KDIR/modules/$mod.ko" "$dir/lib/modules/"
            order+="$mod"$'\n'
        elif [[ $OPTIONAL_MODULES != *" $mod "* ]]; then
            die "kernel module $mod is neither built in nor in the kernel package"
        fi
    done
    printf '%s' "$order" >"$dir/etc/modules"
    # Character devices the kernel needs before devtmpfs is mounted.
    mknod -m 600 "$dir/dev/console" c 5 1
    mknod -m 666 "$dir/dev/null" c 1 3
    find "$dir" -exec touch -h -d "@$EPOCH" {} +
    (cd "$dir" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) \
        | gzip -6 -n >"$TMP/out/initrd.img"
}

copy_with_libraries() {
    local root=$1 bin=$2 lib
    install -D -m 755 -- "$bin" "$root$bin"
    for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
        if [[ ! -e $root$lib ]]; then install -D -m 755 -- "$(readlink -f "$lib")" "$root$lib"; fi
    done
}

build_rootfs() {
    STEP="assembling the root filesystem"
    local root=$TMP/rootfs applet bin
    mkdir -p "$root"
    cp -a -- "$HERE/rootfs/." "$root/"
    # Modes from the checkout depend on the umask of whoever cloned; httpd (nobody) must read
    # /srv/www, everyone /etc/passwd. Private files are tightened again below.
    chmod -R u+rwX,go+rX,go-w -- "$root"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,dev,proc,sys,run,tmp,mnt,root,home} \
        "$root"/{etc/dropbear,var/lib/cloud,var/log,var/tmp}
    ln -sfn /run "$root/var/run"
    chmod 700 "$root/root" "$root/etc/dropbear"
    chmod 1777 "$root/tmp" "$root/var/tmp"
    chmod 600 "$root/etc/shadow"
    install -m 755 -- "$(command -v busybox)" "$root/bin/busybox"
    while read -r applet; do
        # busybox --list-full prints paths like usr/bin/awk; skip the bare linuxrc.
        [[ $applet == */* ]] || continue
        [[ -e $root/$applet || -L $root/$applet ]] || ln -s /bin/busybox "$root/$applet"
    done < <(busybox --list-full)
    # Applets Debian's busybox lacks under these names.
    printf '#!/bin/sh\nexec /bin/busybox mke2fs "$@"\n' >"$root/sbin/mkfs.ext2"
    chmod 755 "$root/sbin/mkfs.ext2"
    for bin in $BINARIES; do copy_with_libraries "$root" "$bin"; done

    local pretty="orchestrator tiny $VERSION"
    if $BROKEN; then
        rm -f -- "$root/srv/www/health"
        pretty+=" (broken health endpoint)"
    fi
    {
        echo 'ID=orch-tiny'
        echo 'NAME="orchestrator tiny"'
        echo "VERSION_ID=$VERSION"
        echo "VERSION=\"$VERSION\""
        echo "PRETTY_NAME=\"$pretty\""
        if $BROKEN; then echo 'VARIANT_ID=broken'; fi
    } >"$root/etc/os-release"
    ln -s ../etc/os-release "$root/usr/lib/os-release" 2>/dev/null || true
    find "$root" -exec touch -h -d "@$EPOCH" {} +

    STEP="mkfs.ext4"
    E2FSPROGS_FAKE_TIME=$EPOCH quiet mkfs.ext4 -q -F -L orch-root -U "$FS_UUID" \
        -E "hash_seed=$FS_UUID,root_owner=0:0" -d "$root" "$TMP/disk.raw" "${DISK_MIB}M"
    STEP="qemu-img convert"
    quiet qemu-img convert -f raw -O qcow2 "$TMP/disk.raw" "$TMP/out/disk.qcow2"
}

write_manifest() {
    cat >"$TMP/out/manifest.json" <<EOF
{
  "name": "tiny",
  "version": "$VERSION",
  "format": "qcow2",
  "kernel": "vmlinuz",
  "initrd": "initrd.img",
  "cmdline": "$CMDLINE",
  "sshUser": "root",
  "healthCommand": "$HEALTH_COMMAND",
  "broken": $BROKEN,
  "minMemoryMiB": $MIN_MEMORY_MIB
}
EOF
}

main() {
    parse_args "$@"
    check_tools
    begin_build tiny

    prepare_kernel
    cp -- "$KDIR/vmlinuz" "$TMP/out/vmlinuz"
    build_initramfs
    build_rootfs
    write_manifest

    publish_image vmlinuz initrd.img disk.qcow2
    echo "tiny:$VERSION$($BROKEN && echo ' (broken)') built in $OUT: disk.qcow2 $(size_mib "$OUT/disk.qcow2") MiB, kernel $(cat "$KDIR/release"), $(seconds_since "$START") s"
}

main "$@"
