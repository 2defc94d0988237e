#!/bin/bash
# recipe.sh: what every image recipe's build.sh shares: one-line errors, quiet tools with
# their output in a log, clean-up of the temp dir, and timing. Sourced (not run) by
# images/*/build.sh, which set TMP, LOG and STEP before calling these.
# shellcheck disable=SC2154  # TMP, LOG and STEP belong to the recipe that sources this
# shellcheck disable=SC2034  # OUT, VERSION, TMP, LOG and STEP are set here for the recipe

die() {
    echo "build.sh: error: $*" >&2
    exit 1
}

# ERR trap: the step that failed, and the last line its tool logged.
on_error() {
    local status=$? detail=
    if [[ -s $LOG ]]; then detail=": $(tail -n 1 "$LOG")"; fi
    echo "build.sh: error: $STEP failed (exit $status, line $1)$detail" >&2
    exit "$status"
}

cleanup() {
    if [[ -n $TMP && -d $TMP ]]; then rm -rf -- "$TMP"; fi
}

# Runs a noisy tool with its output in the log, so a failure prints one line.
quiet() { "$@" >>"$LOG" 2>&1; }

# Seconds (one decimal) since a `date +%s.%N` reading.
seconds_since() {
    awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }'
}

# OUT and VERSION from the recipe's two positional arguments, checked. The version lands in
# JSON and shell-read files unquoted: it must stay a plain token. OUT must not exist or be
# an empty directory.
set_out_and_version() {
    [[ $# -eq 2 ]] || usage "expected OUT_DIR and VERSION"
    OUT=$1
    VERSION=$2
    [[ $VERSION =~ ^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$ ]] \
        || die "version '$VERSION' must match [A-Za-z0-9][A-Za-z0-9._+~-]{0,63}"
    if [[ -e $OUT ]]; then
        [[ -d $OUT ]] || die "$OUT exists and is not a directory"
        [[ -z $(ls -A -- "$OUT") ]] || die "$OUT is not empty"
    fi
}

# The work dir of a build of recipe $1 ($TMP, with $TMP/out and the log), its clean-up on
# exit, and the one-line error of a failed step.
begin_build() {
    trap cleanup EXIT
    trap 'on_error $LINENO' ERR
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/orch-$1-build.XXXXXX")
    LOG=$TMP/log
    : >"$LOG"
    mkdir -p "$TMP/out"
    umask 022
}

# The files named (of $TMP/out) moved into OUT, manifest.json last: a directory with a
# manifest holds a complete image.
publish_image() {
    STEP="moving the image into $OUT"
    mkdir -p -- "$OUT"
    local file
    for file in "$@"; do mv -- "$TMP/out/$file" "$OUT/"; done
    mv -- "$TMP/out/manifest.json" "$OUT/"
}

# The size of file $1 in MiB, one decimal.
size_mib() {
    local kib
    kib=$(du -k --apparent-size "$1" | cut -f1)
    echo "$((kib / 1024)).$(((kib % 1024) * 10 / 1024))"
}
