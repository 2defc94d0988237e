"""A real asyncssh server on 127.0.0.1 for the ssh tests, with canned commands (no shell).

The server understands a handful of commands, answered in-process: ``echo WORDS``,
``exit N``, ``stderr TEXT`` (to stderr, exit 3), ``yes N`` (N bytes of output), ``bytes``
(invalid UTF-8), ``kill`` (ends by SIGKILL), ``hang`` (never ends), ``cat /etc/os-release``.
Every command received is recorded, so a test can tell that a command never ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncssh

from orchestrator import ssh

OS_RELEASE = 'PRETTY_NAME="Tiny Test OS"\nID=tiny\n'


@dataclass
class Server:
    port: int
    host_key: ssh.KeyPair
    client_key: ssh.KeyPair
    ran: list[str] = field(default_factory=list)

    def endpoint(self, **changes: str) -> ssh.Endpoint:
        base = {
            "host": "127.0.0.1",
            "client_key": self.client_key.private_openssh,
            "host_key": self.host_key.public_openssh,
        }
        base.update(changes)
        return ssh.Endpoint(port=self.port, user="root", **base)


async def _handle(process: asyncssh.SSHServerProcess[str], ran: list[str]) -> None:
    command = process.command or ""
    ran.append(command)
    verb, _, rest = command.partition(" ")
    if verb == "echo":
        process.stdout.write(rest + "\n")
        process.exit(0)
    elif verb == "exit":
        process.exit(int(rest))
    elif verb == "stderr":
        process.stderr.write(rest + "\n")
        process.exit(3)
    elif verb == "yes":
        process.stdout.write("y" * int(rest))
        process.exit(0)
    elif verb == "kill":
        process.exit_with_signal("KILL")
    elif verb == "hang":
        await asyncio.Event().wait()
    elif command == "cat /etc/os-release":
        process.stdout.write(OS_RELEASE)
        process.exit(0)
    else:
        process.stderr.write(f"{verb}: not found\n")
        process.exit(127)


async def _handle_bytes(process: asyncssh.SSHServerProcess[bytes], ran: list[str]) -> None:
    command = (process.command or "").strip()
    ran.append(command)
    process.stdout.write(b"ok \xff\xfe end")
    process.exit(0)


@contextlib.asynccontextmanager
async def ssh_server(*, binary: bool = False) -> AsyncIterator[Server]:
    host_key = ssh.generate_keypair("test-host")
    client_key = ssh.generate_keypair("test-client")
    ran: list[str] = []
    authorized = asyncssh.import_authorized_keys(client_key.public_openssh + "\n")

    async def handler(process: asyncssh.SSHServerProcess[str]) -> None:
        if binary:
            await _handle_bytes(process, ran)  # type: ignore[arg-type]
        else:
            await _handle(process, ran)

    acceptor = await asyncssh.create_server(
        asyncssh.SSHServer,
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.import_private_key(host_key.private_openssh)],
        authorized_client_keys=authorized,
        process_factory=handler,
        encoding=None if binary else "utf-8",
    )
    port = acceptor.sockets[0].getsockname()[1]
    try:
        yield Server(port=port, host_key=host_key, client_key=client_key, ran=ran)
    finally:
        acceptor.close()
        await acceptor.wait_closed()


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts and never says a word (no SSH banner)."""
    writers: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
