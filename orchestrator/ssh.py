"""SSH to instances: key pairs, pinned-host-key commands, and the interactive session.

Owned here: everything that touches asyncssh (this is the ONLY module importing it), key pair
generation, the private key files' safety rules, and the translation of SSH failures into
``orchestrator.errors``.
Called by: cli.vmss, engine.addresses, engine.health, engine.steps, usecases.session,
usecases.views, usecases.watch

Rules kept here so no caller can get them wrong:

- the server's host key is always pinned to the key the controller injected; a different key is
  a ``SecurityError`` and never retried; host key checking is never turned off;
- no user configuration, agent or other identity is consulted: only the endpoint's key;
- connecting (TCP, banner, key exchange, auth) and running the command are bounded separately,
  so a time-out says which phase ran out;
- output is bounded in memory (``max_output``), whatever the command prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from orchestrator import errors
from orchestrator.clock import Clock, RealClock

__all__ = [
    "CommandResult",
    "Endpoint",
    "KeyPair",
    "generate_keypair",
    "interactive",
    "known_hosts_line",
    "read_private_key",
    "run_command",
    "write_private_key",
]

# Extra time the outer wait_for grants beyond asyncssh's own connect_timeout: asyncssh should
# fire first (its message is clearer); ours only guards against a hang inside asyncssh.
_BELT_SLACK = 0.5
_READ_CHUNK = 65536
# ssh(1) exits 255 when the remote side reported neither a status nor a signal.
_NO_STATUS = 255


@dataclass(frozen=True)
class KeyPair:
    private_openssh: str = field(repr=False)
    public_openssh: str


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int = 22
    user: str = "root"
    client_key: str = field(default="", repr=False)  # OpenSSH private key text
    host_key: str = ""  # the pinned host public key, OpenSSH one-line format


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout: str
    stderr: str
    latency: float  # seconds from connect start to command end


# --- keys --------------------------------------------------------------------------------------


def generate_keypair(comment: str) -> KeyPair:
    """A fresh ed25519 key pair; the private half in OpenSSH format (dropbearconvert reads it)."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    private = key.export_private_key("openssh").decode("ascii")
    public = key.export_public_key("openssh").decode("ascii").strip()
    return KeyPair(private_openssh=private, public_openssh=public)


def _write_atomically(path: Path, data: str, *, mode: int) -> None:
    # The temp file has its final mode from creation (O_EXCL, never group/world-readable for an
    # instant when mode is 0600); rename replaces a symlink at ``path`` instead of following it.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_private_key(path: Path, key: KeyPair) -> None:
    """Write ``path`` (0600) and ``path.pub`` (0644), each atomically."""
    try:
        _write_atomically(path, key.private_openssh, mode=0o600)
        _write_atomically(path.with_name(path.name + ".pub"), key.public_openssh + "\n", mode=0o644)
    except OSError as exc:
        raise errors.OperationFailed(f"cannot write key file {path}: {exc.strerror}") from exc


def read_private_key(path: Path) -> str:
    """The private key text at ``path``, refused unless it is a regular file only we can read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise errors.NotFound(f"private key file {path} does not exist") from exc
    except OSError as exc:
        if path.is_symlink():
            raise errors.SecurityError(f"private key file {path} is a symlink; refused") from exc
        raise errors.OperationFailed(f"cannot read private key {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "r", encoding="ascii", errors="strict") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise errors.SecurityError(f"private key file {path} is not a regular file; refused")
        if st.st_mode & 0o077:
            raise errors.SecurityError(
                f"private key file {path} has mode {st.st_mode & 0o777:04o}: it must not be "
                "readable or writable by group or others (expected 0600)"
            )
        if st.st_uid not in (os.geteuid(), 0):
            raise errors.SecurityError(f"private key file {path} is owned by another user")
        try:
            return handle.read()
        except UnicodeDecodeError as exc:
            raise errors.InvalidInput(f"private key file {path} is not OpenSSH text") from exc


def known_hosts_line(host: str, port: int, host_key: str) -> str:
    """The OpenSSH known_hosts line pinning ``host_key`` for ``host:port`` (for ssh(1) users)."""
    key = _import_host_key(host_key)
    name = host if port == 22 else f"[{host}]:{port}"
    algorithm, blob = key.export_public_key("openssh").decode("ascii").split()[:2]
    return f"{name} {algorithm} {blob}"


# --- connecting --------------------------------------------------------------------------------


def _import_host_key(text: str) -> asyncssh.SSHKey:
    try:
        return asyncssh.import_public_key(text.strip())
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise errors.InvalidInput(f"pinned host key cannot be parsed: {exc}") from exc


def _import_client_key(text: str) -> asyncssh.SSHKey:
    try:
        return asyncssh.import_private_key(text)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise errors.InvalidInput(f"client private key cannot be parsed: {exc}") from exc


def _where(endpoint: Endpoint) -> str:
    return f"{endpoint.user}@{endpoint.host}:{endpoint.port}"


async def _connect(endpoint: Endpoint, *, connect_timeout: float) -> asyncssh.SSHClientConnection:
    """An authenticated connection to ``endpoint`` whose host key is the pinned one."""
    host_key = _import_host_key(endpoint.host_key)
    client_key = _import_client_key(endpoint.client_key)
    where = _where(endpoint)
    try:
        return await asyncio.wait_for(
            asyncssh.connect(
                endpoint.host,
                endpoint.port,
                username=endpoint.user,
                # Trusted keys given as lists: pinned regardless of how the host is named.
                known_hosts=([host_key], [], []),
                server_host_key_algs=[alg.decode("ascii") for alg in host_key.sig_algorithms],
                client_keys=[client_key],
                agent_path=None,
                config=None,
                preferred_auth="publickey",
                password=None,
                kbdint_auth=False,
                gss_auth=False,
                gss_kex=False,
                connect_timeout=connect_timeout,
                login_timeout=connect_timeout,
            ),
            timeout=connect_timeout + _BELT_SLACK,
        )
    except asyncssh.HostKeyNotVerifiable as exc:
        raise errors.SecurityError(
            f"ssh {where}: the host key presented differs from the pinned one ({exc.reason}); "
            "refusing to connect"
        ) from exc
    except asyncssh.KeyExchangeFailed as exc:
        if "host key" in exc.reason:
            raise errors.SecurityError(
                f"ssh {where}: the server offers no host key of the pinned key's type "
                f"({host_key.get_algorithm()}): the presented key differs from the pinned one"
            ) from exc
        raise errors.Unreachable(f"ssh {where}: key exchange failed: {exc.reason}") from exc
    except asyncssh.PermissionDenied as exc:
        raise errors.OperationFailed(
            f"ssh authentication failed for {where}: the server refused our key"
        ) from exc
    except TimeoutError as exc:
        raise errors.Timeout(
            f"ssh {where}: connect (TCP, banner, key exchange, auth) did not finish "
            f"within {connect_timeout:g}s"
        ) from exc
    except asyncssh.ConnectionLost as exc:
        if "timeout" in exc.reason.lower():
            raise errors.Timeout(
                f"ssh {where}: login did not finish within {connect_timeout:g}s"
            ) from exc
        raise errors.Unreachable(f"ssh {where}: connection lost: {exc.reason}") from exc
    except asyncssh.Error as exc:
        raise errors.Unreachable(f"ssh {where}: {exc.reason}") from exc
    except OSError as exc:
        # Refused, no route, DNS failure, network unreachable: the guest cannot be reached.
        raise errors.Unreachable(f"ssh {where}: {exc.strerror or exc}") from exc


# --- running a command -------------------------------------------------------------------------


async def _drain(stream: asyncssh.SSHReader[bytes], *, limit: int) -> bytes:
    # Keep reading past the limit so the remote side never blocks on a full window.
    kept = bytearray()
    while True:
        chunk = await stream.read(_READ_CHUNK)
        if not chunk:
            return bytes(kept)
        room = limit - len(kept)
        if room > 0:
            kept += chunk[:room]


def _decode(data: bytes, *, limit: int) -> str:
    return data.decode("utf-8", errors="replace")[:limit]


def _exit_status(returncode: int | None) -> int:
    if returncode is None:
        return _NO_STATUS
    if returncode < 0:
        return 128 - returncode  # killed by a signal: 128+signal, as shells report it
    return returncode


async def run_command(
    endpoint: Endpoint,
    command: str,
    *,
    connect_timeout: float,
    command_timeout: float,
    max_output: int = 65536,
    clock: Clock | None = None,
) -> CommandResult:
    """Run ``command`` on ``endpoint`` (host key pinned) and return its status and output.

    Raises ``SecurityError`` (host key mismatch), ``Unreachable`` (refused, no route, DNS,
    connection lost), ``Timeout`` (which phase in the message), ``OperationFailed`` (auth).
    """
    clk = clock if clock is not None else RealClock()
    started = clk.monotonic()
    conn = await _connect(endpoint, connect_timeout=connect_timeout)
    where = _where(endpoint)
    try:
        async with asyncio.timeout(command_timeout):
            process = await conn.create_process(command, encoding=None, stdin=asyncssh.DEVNULL)
            out, err = await asyncio.gather(
                _drain(process.stdout, limit=max_output),
                _drain(process.stderr, limit=max_output),
            )
            await process.wait_closed()
            returncode = process.returncode
    except TimeoutError as exc:
        raise errors.Timeout(
            f"ssh {where}: command did not finish within {command_timeout:g}s"
        ) from exc
    except asyncssh.ChannelOpenError as exc:
        raise errors.OperationFailed(
            f"ssh {where}: server refused a session: {exc.reason}"
        ) from exc
    except asyncssh.Error as exc:
        raise errors.Unreachable(
            f"ssh {where}: connection lost while running: {exc.reason}"
        ) from exc
    except OSError as exc:
        raise errors.Unreachable(f"ssh {where}: {exc.strerror or exc}") from exc
    finally:
        conn.abort()
    return CommandResult(
        exit_status=_exit_status(returncode),
        stdout=_decode(out, limit=max_output),
        stderr=_decode(err, limit=max_output),
        latency=clk.monotonic() - started,
    )


# --- interactive -------------------------------------------------------------------------------


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _pollable_or_devnull(fd: int) -> int:
    """A duplicate of ``fd`` for asyncssh to read, or DEVNULL for /dev/null-like input.

    asyncssh reads a descriptor through the event loop, and epoll refuses character devices
    such as /dev/null (EPERM): CI and cron run us with such a stdin.
    """
    mode = os.fstat(fd).st_mode
    if stat.S_ISCHR(mode) and not os.isatty(fd):
        return asyncssh.DEVNULL
    return os.dup(fd)


async def interactive(
    endpoint: Endpoint,
    command: str | None,
    *,
    connect_timeout: float,
    stdin: int = 0,
    stdout: int = 1,
    stderr: int = 2,
) -> int:
    """``orch vmss ssh``: run ``command`` streaming its output, or a PTY shell; its exit status.

    The file descriptors are duplicated: asyncssh closes its copies, ours stay open.
    """
    conn = await _connect(endpoint, connect_timeout=connect_timeout)
    use_pty = command is None and os.isatty(stdin)
    try:
        if not use_pty:
            process = await conn.create_process(
                command,
                encoding=None,
                stdin=_pollable_or_devnull(stdin),
                stdout=os.dup(stdout),
                stderr=os.dup(stderr),
            )
            await process.wait_closed()
            return _exit_status(process.returncode)
        size = os.get_terminal_size(stdout if os.isatty(stdout) else stdin)
        with _raw_terminal(stdin):
            process = await conn.create_process(
                None,
                encoding=None,
                term_type=os.environ.get("TERM", "xterm"),
                term_size=(size.columns, size.lines),
                stdin=os.dup(stdin),
                stdout=os.dup(stdout),
                stderr=os.dup(stdout),
            )
            loop = asyncio.get_running_loop()

            def resized() -> None:
                now = os.get_terminal_size(stdin)
                process.change_terminal_size(now.columns, now.lines)

            loop.add_signal_handler(signal.SIGWINCH, resized)
            try:
                await process.wait_closed()
            finally:
                loop.remove_signal_handler(signal.SIGWINCH)
            return _exit_status(process.returncode)
    except asyncssh.Error as exc:
        raise errors.Unreachable(f"ssh {_where(endpoint)}: {exc.reason}") from exc
    except OSError as exc:
        raise errors.Unreachable(f"ssh {_where(endpoint)}: {exc.strerror or exc}") from exc
    finally:
        conn.close()
        sys.stdout.flush()
