#!/bin/bash
# recipe.sh: what every image recipe's build.sh shares: one-line errors, quiet tools with
# their output in a log, clean-up of the temp dir, and timing. Sourced (not run) by
# images/*/build.sh, which set TMP, LOG and STEP before calling these.
# shellcheck disable=SC2154  # TMP, LOG and STEP belong to the recipe that sources this
# shellcheck disable=SC2034  # OUT, VERSION, TMP, LOG and STEP are set here for the recipe
# A failed build prints one line on stderr, `recipe-error: step <STEP>: ...` (report_error).

# The recipe's stderr as it is when this file is sourced. A step that runs one of the
# recipe's functions under `quiet` has the log as its stderr, and an error trapped inside
# that function must still reach the caller, not the log.
exec {RECIPE_STDERR}>&2

# The one marked line a failed build prints, which orchestrator/images.py puts in its
# error: `recipe-error: step <STEP>: <what went wrong>`. Only the first report of a build is
# printed: a failure inside a command substitution or a subshell trips the ERR trap there,
# then again in the shell around it, which would only repeat it less precisely.
report_error() {
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ -e $TMP/.error-reported ]]; then return 0; fi
        : >"$TMP/.error-reported"
    fi
    echo "recipe-error: step $STEP: $*" >&"$RECIPE_STDERR"
}

die() {
    report_error "$*"
    exit 1
}

# The reason a tool run by `quiet` gave, from what it logged (only that: the log holds every
# earlier tool's output too): its last line that reads like an error, since tools print
# progress and clean-up after it (mmdebstrap "E: ..."), else its last line.
logged_reason() {
    [[ -s $LOG ]] || return 0
    local out line
    out=$(tail -c "+$((QUIET_LOG_START + 1))" -- "$LOG")
    [[ -n $out ]] || return 0
    line=$(grep -aiE '^E: |\b(error|failed|failure|cannot|could not|not found|denied|no such|no space)\b' \
        <<<"$out" | tail -n 1 || true)
    if [[ -z $line ]]; then line=$(tail -n 1 <<<"$out"); fi
    echo ": $line"
}

# ERR trap: the step, the command that failed (as written in the recipe, or the tool `quiet`
# ran) and its status, and, for a tool run by `quiet`, why, from the log (any other command
# printed its complaint on stderr itself).
on_error() {
    local status=$? cmd=${BASH_COMMAND//$'\n'/ } reason=
    # a tool run by `quiet` fails as `"$@" >>"$LOG" 2>&1`: name the tool and its arguments
    if [[ ${FUNCNAME[1]-} == quiet ]]; then cmd=$QUIET_COMMAND; fi
    if ((${#cmd} > 160)); then cmd="${cmd:0:157}..."; fi
    if [[ " ${FUNCNAME[*]} " == *" quiet "* ]]; then reason=$(logged_reason); fi
    report_error "$cmd exited $status (line $1)$reason"
    exit "$status"
}

cleanup() {
    if [[ -n $TMP && -d $TMP ]]; then rm -rf -- "$TMP"; fi
}

# Runs a noisy tool with its output in the log, so a failure prints one line.
quiet() {
    QUIET_COMMAND=$*
    QUIET_LOG_START=$(stat -c %s -- "$LOG")
    "$@" >>"$LOG" 2>&1
}

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
