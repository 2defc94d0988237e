"""Boot diagnostics: what an instance's serial console printed, read from its host.

Owned here: ``boot_log`` and ``BootLog`` (`orch vmss boot-diagnostics get-boot-log`),
``diagnostics`` and ``BootDiagnostics`` (the ``bootDiagnostics`` of the instance view of an
instance that is not Healthy), ``remember_failures`` (the last console lines of the
instances a health wait left not Healthy, kept in ``Env.console_tails`` for the command's
error) and ``error_details`` (those lines as the error shows them), how console bytes
become text (``console_text``, ``tail_lines``) and the bounds (``DEFAULT_TAIL_BYTES``,
``MAX_TAIL_BYTES``, ``TAIL_LINES``, ``TAIL_BYTES``, ``LINE_CHARS``, ``SHOWN_INSTANCES``).

Where the output is (docs/semantics.md#boot-diagnostics): virtlogd on the instance's host
writes its serial console into the host's storage pool as ``<name>-console.log``, emptied at
each start of the domain, and rotates it there (``.0`` the newest copy, then ``.1``, ...;
libvirt's defaults: 2 MiB a file, 3 copies). It is read through libvirt's storage download
(``Hypervisor.read_volume_tail``), so a remote host needs nothing but its libvirtd and the
controller no file access; only the tail asked for is ever brought over. Everything here
only reads: no lock is taken.

Called by: cli.render, cli.vmss, usecases.rolling, usecases.rollout, usecases.views,
usecases.watch
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from orchestrator.engine.addresses import InstanceNames
from orchestrator.engine.hosts import LOCAL
from orchestrator.errors import Gone, HypervisorUnavailable, InvalidInput, OrchError
from orchestrator.store import InstanceRecord
from orchestrator.usecases.session import Env

MiB = 1024 * 1024
DEFAULT_TAIL_BYTES = 2 * MiB  # virtlogd's default max_size: a whole log file
MAX_TAIL_BYTES = 64 * MiB  # what one get-boot-log may bring over and hold
TAIL_LINES = 10  # non-empty lines shown in an error and in the instance view
TAIL_BYTES = 8 * 1024  # read for those lines: the end of the current log only
LINE_CHARS = 200  # a line longer than this is cut (a guest can print anything)
SHOWN_INSTANCES = 3  # instances whose lines an error shows; the others are counted
ROTATED_MAX = 16  # rotated copies looked for at most (virtlogd keeps max_backups, 3)
_REMEMBERED = 100  # console tails one command keeps at most

# Terminal control sequences (CSI, OSC, other ESC sequences), then the C0/C1 controls but
# newline and tab: a guest's output must not drive the user's terminal.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class BootLog:
    """`get-boot-log`: the console output of one instance, oldest first."""

    name: str
    instance_id: int
    host: str
    log: str


@dataclass(frozen=True)
class BootDiagnostics:
    """The instance view's ``bootDiagnostics``: the last console lines, or why none."""

    console_tail: tuple[str, ...]
    error: str | None = None


def console_text(data: bytes) -> str:
    """Console bytes as text: UTF-8 (invalid bytes replaced), CR LF and lone CRs as newlines,
    terminal control sequences and other control characters removed."""
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROLS.sub("", _ESCAPES.sub("", text))


def tail_lines(text: str, count: int = TAIL_LINES) -> tuple[str, ...]:
    """The last ``count`` non-empty lines of ``text``, each at most ``LINE_CHARS`` long."""
    lines = [line.rstrip() for line in text.split("\n")]
    kept = [line for line in lines if line.strip()][-count:] if count > 0 else []
    return tuple(line if len(line) <= LINE_CHARS else line[:LINE_CHARS - 1] + "…"
                 for line in kept)


async def _read(env: Env, inst: InstanceRecord, names: Sequence[str], *,
                max_bytes: int) -> bytes:
    """The last ``max_bytes`` of the volumes ``names`` (newest first) joined oldest first;
    when earlier output was left out, from the first line boundary on. Empty: no log."""
    w = env.engine.at(inst.host)
    pieces: list[bytes] = []
    left = max_bytes + 1  # one byte more than asked: tells whether anything was left out
    for name in names:
        try:
            data = await env.engine.io(w.hv.read_volume_tail, w.pool, name, max_bytes=left)
        except Gone:
            break  # no log yet, or no older copy: nothing before this one
        pieces.append(data)
        left -= len(data)
        if left <= 0:
            break
    data = b"".join(reversed(pieces))
    if len(data) > max_bytes:
        data = data[len(data) - max_bytes:]
        newline = data.find(b"\n")
        if newline >= 0:  # the first line is cut: start at the next one
            data = data[newline + 1:]
    return data


async def console_tail(env: Env, inst: InstanceRecord) -> tuple[str, ...]:
    """The last ``TAIL_LINES`` lines of ``inst``'s current console log (one read of at most
    ``TAIL_BYTES``; no rotated copy: they are older). Empty: no output yet."""
    console = InstanceNames(inst.name).console_volume
    return tail_lines(console_text(await _read(env, inst, [console], max_bytes=TAIL_BYTES)))


async def boot_log(env: Env, set_name: str, instance_id: int, *,
                   tail_bytes: int = DEFAULT_TAIL_BYTES) -> BootLog:
    """`get-boot-log`: the last ``tail_bytes`` of the instance's console output, across
    virtlogd's rotated copies. No output yet is an empty log; a host that does not answer is
    ``HypervisorUnavailable`` (exit 4) naming it."""
    if not 1 <= tail_bytes <= MAX_TAIL_BYTES:
        raise InvalidInput(f"--tail-bytes must be 1..{MAX_TAIL_BYTES}, not {tail_bytes}")
    env.store.get_set(set_name)  # NotFound (exit 2) for a set that does not exist
    inst = env.instances(set_name, [instance_id])[0]
    console = InstanceNames(inst.name).console_volume
    names = [console, *(f"{console}.{k}" for k in range(ROTATED_MAX))]
    try:
        data = await _read(env, inst, names, max_bytes=tail_bytes)
        if not data:  # no log at all is fine; a host without its pool is not
            w = env.engine.at(inst.host)
            await env.engine.io(w.hv.pool_info, w.pool)
    except HypervisorUnavailable as exc:
        hint = exc.hint if inst.host == LOCAL else "`orch host list` shows its state"
        raise HypervisorUnavailable(
            f"boot log of {inst.name}: its host {inst.host} does not answer ({exc.message})",
            hint=hint) from exc
    return BootLog(inst.name, inst.instance_id, inst.host, console_text(data))


async def diagnostics(env: Env, inst: InstanceRecord, *, reachable: bool = True
                      ) -> BootDiagnostics:
    """The last console lines of ``inst`` for its instance view; a log that cannot be read
    is said so (the view is shown all the same)."""
    if not reachable:  # its host did not answer just now: do not wait on it again
        return BootDiagnostics((), f"its host {inst.host} does not answer")
    try:
        return BootDiagnostics(await console_tail(env, inst))
    except OrchError as exc:
        return BootDiagnostics((), exc.one_line())


async def remember_failures(env: Env, instances: Sequence[InstanceRecord]) -> None:
    """Keep the last console lines of ``instances`` (just found not Healthy) in
    ``env.console_tails``, as the lines their error shows, read now: a failed surge
    replacement is deleted soon after, and a restart empties the log. Reading never fails
    the command: a log that cannot be read is one line saying so."""
    async def one(inst: InstanceRecord) -> tuple[str, tuple[str, ...]]:
        try:
            tail = await console_tail(env, inst)
        except OrchError as exc:
            return inst.name, (f"{inst.name}: console log not read: {exc.one_line()}",)
        if not tail:
            return inst.name, (f"{inst.name}: no console output",)
        return inst.name, (f"{inst.name}: last {len(tail)} console lines:",
                           *(f"  {line}" for line in tail))

    for name, lines in await asyncio.gather(*(one(i) for i in instances)):
        env.console_tails.pop(name, None)  # the latest at the end
        env.console_tails[name] = lines
        while len(env.console_tails) > _REMEMBERED:
            env.console_tails.pop(next(iter(env.console_tails)))


def error_details(console: Mapping[str, Sequence[str]],
                  names: Iterable[str] | None = None) -> tuple[str, ...]:
    """The lines that follow an error about instances that are not Healthy: those
    ``remember_failures`` kept for each of ``names`` (every one kept: None), for at most
    ``SHOWN_INSTANCES`` of them; the others are counted."""
    chosen = [n for n in (console if names is None else dict.fromkeys(names)) if n in console]
    lines = [line for name in chosen[:SHOWN_INSTANCES] for line in console[name]]
    if len(chosen) > SHOWN_INSTANCES:
        lines.append(f"... and {len(chosen) - SHOWN_INSTANCES} more instances: "
                     "`orch vmss boot-diagnostics get-boot-log` shows each")
    return tuple(lines)
