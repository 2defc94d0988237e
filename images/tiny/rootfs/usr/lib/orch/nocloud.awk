# nocloud.awk: parses a NoCloud seed (meta-data and user-data) into one file per value.
#
# Owned here: reading the ONE canonical YAML shape orchestrator/cloudinit.py writes (see its
# docstring: JSON scalars, "  - " list items, mapping items with keys indented four spaces,
# sub-mappings indented two spaces, deeper nesting inline as JSON) and JSON string unescaping.
# Called by nocloud.sh ("parse"), with OUT set to an empty directory:
#     awk -v OUT=DIR -f nocloud.awk meta-data user-data
# Output files (values decoded, no added newline unless said):
#     instance-id  local-hostname  hostname
#     authorized_keys                one key per line
#     ssh_keys.<name>                e.g. ssh_keys.ed25519_private
#     wf.<N>.<key>                   write_files item N (1-based): path, content, encoding,
#                                    permissions, append, ...
#     runcmd.<N>                     a shell command (an argv list is shell-quoted)
# Unknown keys are ignored. Strings cannot hold NUL bytes here, so \u0000 is dropped: file
# contents travel base64-encoded anyway.

BEGIN { nfile = 0; ncmd = 0 }

FNR == 1 { top = ""; item = 0 }

{ sub(/\r$/, "") }

/^[ \t]*#/ || /^[ \t]*$/ { next }

/^    / {
    if (top != "" && item > 0 && parse_pair(substr($0, 5))) item_pair()
    next
}

/^  - / {
    if (top == "") next
    item++
    if (top == "write_files") nfile++
    rest = substr($0, 5)
    if (parse_pair(rest)) item_pair()
    else { parse_value(rest); list_scalar() }
    next
}

/^  / {
    if (top != "" && parse_pair(substr($0, 3))) sub_pair()
    next
}

{
    top = ""; item = 0
    if (!parse_pair($0)) next
    if (PT == "block") top = PK
    else top_pair()
}

function emit(name, value,    f) {
    f = OUT "/" name
    printf "%s", value > f
    close(f)
}

function top_pair() {
    if ((PK == "instance-id" || PK == "local-hostname" || PK == "hostname") && PT == "str")
        emit(PK, PV)
}

function sub_pair() {
    if (top == "ssh_keys" && PT == "str" && PK ~ /^[a-z0-9_]+$/) emit("ssh_keys." PK, PV)
}

function item_pair() {
    if (top == "write_files" && PK ~ /^[a-z_]+$/ && nfile > 0) emit("wf." nfile "." PK, PV)
}

function list_scalar(    f) {
    if (top == "ssh_authorized_keys" && PT == "str") {
        f = OUT "/authorized_keys"
        printf "%s\n", PV >> f
        close(f)
    } else if (top == "runcmd") {
        if (PT == "str") { ncmd++; emit("runcmd." ncmd, PV) }
        else if (PT == "list") { ncmd++; emit("runcmd." ncmd, argv_to_shell(PV)) }
    }
}

# "key: value" or "key:" (a block follows). Sets PK, PV, PT; returns 0 when s is no pair.
function parse_pair(s,    p) {
    PK = ""; PV = ""; PT = ""
    if (substr(s, 1, 1) == "\"") {
        PK = jstr(s, 1)
        p = JEND
    } else if (match(s, /^[A-Za-z_][A-Za-z0-9_-]*/)) {
        PK = substr(s, 1, RLENGTH)
        p = RLENGTH + 1
    } else return 0
    if (substr(s, p, 1) != ":") return 0
    if (p == length(s)) { PT = "block"; return 1 }
    if (substr(s, p + 1, 1) != " ") return 0
    parse_value(substr(s, p + 2))
    return 1
}

# A JSON scalar or inline JSON value. Sets PV, PT (str, list, map or raw).
function parse_value(v,    c) {
    c = substr(v, 1, 1)
    if (c == "\"") { PV = jstr(v, 1); PT = "str" }
    else if (c == "[") { PV = v; PT = "list" }
    else if (c == "{") { PV = v; PT = "map" }
    else { PV = v; PT = "raw" }
}

# Decodes the JSON string starting at s[p] (a quote); sets JEND to the index after it.
function jstr(s, p,    out, rest, i, c, cp, lo) {
    out = ""
    p++
    while (1) {
        rest = substr(s, p)
        i = match(rest, /["\\]/)
        if (i == 0) { JEND = length(s) + 1; return out rest }
        out = out substr(rest, 1, i - 1)
        p += i - 1
        if (substr(s, p, 1) == "\"") { JEND = p + 1; return out }
        c = substr(s, p + 1, 1)
        p += 2
        if (c == "n") out = out "\n"
        else if (c == "t") out = out "\t"
        else if (c == "r") out = out "\r"
        else if (c == "b") out = out "\b"
        else if (c == "f") out = out "\f"
        else if (c == "u") {
            cp = hexval(substr(s, p, 4))
            p += 4
            # A UTF-16 surrogate pair is one code point above the BMP.
            if (cp >= 55296 && cp < 56320 && substr(s, p, 2) == "\\u") {
                lo = hexval(substr(s, p + 2, 4))
                if (lo >= 56320 && lo < 57344) {
                    cp = 65536 + (cp - 55296) * 1024 + (lo - 56320)
                    p += 6
                }
            }
            out = out utf8(cp)
        }
        else out = out c
    }
}

function hexval(h,    i, n, d) {
    n = 0
    h = tolower(h)
    for (i = 1; i <= length(h); i++) {
        d = index("0123456789abcdef", substr(h, i, 1))
        if (d == 0) return n
        n = n * 16 + d - 1
    }
    return n
}

function utf8(cp) {
    if (cp == 0) return ""
    if (cp < 128) return sprintf("%c", cp)
    if (cp < 2048) return sprintf("%c%c", 192 + int(cp / 64), 128 + cp % 64)
    if (cp < 65536)
        return sprintf("%c%c%c", 224 + int(cp / 4096), 128 + int(cp / 64) % 64, 128 + cp % 64)
    return sprintf("%c%c%c%c", 240 + int(cp / 262144), 128 + int(cp / 4096) % 64,
                   128 + int(cp / 64) % 64, 128 + cp % 64)
}

# An inline JSON list of strings (cloud-init's argv form of a runcmd item) as one shell command.
function argv_to_shell(v,    p, c, out, tok) {
    out = ""
    p = 2
    while (p <= length(v)) {
        c = substr(v, p, 1)
        if (c == "]") break
        if (c == " " || c == ",") { p++; continue }
        if (c == "\"") { tok = jstr(v, p); p = JEND }
        else {
            match(substr(v, p), /^[^],]*/)
            tok = substr(v, p, RLENGTH)
            p += RLENGTH
        }
        out = out (out == "" ? "" : " ") squote(tok)
    }
    return out
}

function squote(s,    r, i) {
    r = ""
    while ((i = index(s, "'")) > 0) {
        r = r substr(s, 1, i - 1) "'\\''"
        s = substr(s, i + 1)
    }
    return "'" r s "'"
}
