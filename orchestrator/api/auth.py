"""The API's bearer token and where `orch serve` may listen.

Owned here: the token file (made 0600 on first start, refused if others may read it),
``token_matches`` (constant-time), ``check_listen`` (loopback only unless TLS is configured).

Called by: api.app, cli.serve
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import stat
from pathlib import Path

from orchestrator.errors import InvalidInput, SecurityError

TOKEN_BYTES = 32
MAX_TOKEN_FILE_BYTES = 4096


def load_or_create_token(path: Path) -> str:
    """The token in ``path``; a new random one written there (0600) if the file does not
    exist. A token file that others may read, that is not a regular file or that holds no
    token is refused."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_token(path)
    except OSError as exc:
        raise InvalidInput(f"token file {path} cannot be created: {exc.strerror}") from exc
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(TOKEN_BYTES) + "\n")
    return _read_token(path)


def _read_token(path: Path) -> str:
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"token file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise SecurityError(f"token file {path} may be read by others "
                                f"(mode {stat.S_IMODE(info.st_mode):04o})",
                                hint=f"chmod 600 {path}")
        with path.open("rb") as fh:
            data = fh.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise InvalidInput(f"token file {path} cannot be read: {exc.strerror}") from exc
    token = data.decode("utf-8", errors="replace").strip()
    if len(data) > MAX_TOKEN_FILE_BYTES or not token or any(c.isspace() for c in token):
        raise InvalidInput(f"token file {path} must hold one token on one line")
    return token


def token_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` as a bearer token, compared
    in constant time."""
    if header is None:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as (host, port); InvalidInput otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInput(f"invalid --listen {value!r}: expected HOST:PORT, e.g. "
                           "127.0.0.1:8717")
    return host.strip("[]"), int(port)


def check_listen(host: str, *, tls: bool) -> None:
    if not tls and not is_loopback(host):
        raise InvalidInput(f"--listen {host}: only a loopback address may be used without TLS "
                           "(give --tls-cert and --tls-key)")
