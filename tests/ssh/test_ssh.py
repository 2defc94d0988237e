"""orchestrator.ssh and engine.health.SshProber against a real in-process asyncssh server."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import asyncssh
import pytest
from ssh_test_server import OS_RELEASE, Server, closed_port, silent_server, ssh_server

from orchestrator import errors, ssh
from orchestrator.clock import RealClock
from orchestrator.engine.health import ProbeSettings, ProbeTarget, SshProber

T = TypeVar("T")

CONNECT = 3.0
COMMAND = 3.0


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        # A hang is a failure, not a stuck test run.
        return await asyncio.wait_for(scenario(), timeout=10)

    return asyncio.run(bounded())


async def _run(server: Server, command: str, **kwargs: float) -> ssh.CommandResult:
    options = {"connect_timeout": CONNECT, "command_timeout": COMMAND} | kwargs
    return await ssh.run_command(
        server.endpoint(),
        command,
        connect_timeout=options["connect_timeout"],
        command_timeout=options["command_timeout"],
        max_output=int(options.get("max_output", 65536)),
    )


# --- commands ------------------------------------------------------------------------------------


def test_command_output_and_exit_status() -> None:
    async def scenario() -> ssh.CommandResult:
        async with ssh_server() as server:
            return await _run(server, "echo hello world")

    result = run(scenario)
    assert result.exit_status == 0
    assert result.stdout == "hello world\n"
    assert result.stderr == ""
    assert 0 < result.latency < CONNECT + COMMAND


def test_canned_file_is_returned_verbatim() -> None:
    async def scenario() -> ssh.CommandResult:
        async with ssh_server() as server:
            return await _run(server, "cat /etc/os-release")

    assert run(scenario).stdout == OS_RELEASE


def test_nonzero_exit_status_and_stderr() -> None:
    async def scenario() -> tuple[ssh.CommandResult, ssh.CommandResult]:
        async with ssh_server() as server:
            return await _run(server, "exit 7"), await _run(server, "stderr broken")

    exited, failed = run(scenario)
    assert exited.exit_status == 7
    assert (failed.exit_status, failed.stdout, failed.stderr) == (3, "", "broken\n")


def test_signal_exit_is_128_plus_signal() -> None:
    async def scenario() -> ssh.CommandResult:
        async with ssh_server() as server:
            return await _run(server, "kill")

    assert run(scenario).exit_status == 128 + 9


def test_output_is_truncated_to_max_output() -> None:
    async def scenario() -> ssh.CommandResult:
        async with ssh_server() as server:
            return await _run(server, "yes 300000", max_output=1000)

    result = run(scenario)
    assert result.exit_status == 0
    assert result.stdout == "y" * 1000


def test_invalid_utf8_is_replaced() -> None:
    async def scenario() -> ssh.CommandResult:
        async with ssh_server(binary=True) as server:
            return await _run(server, "anything")

    assert run(scenario).stdout == "ok \ufffd\ufffd end"


# --- failures ------------------------------------------------------------------------------------


def _impostor_host_key() -> dict[str, str]:
    return {"host_key": ssh.generate_keypair("impostor").public_openssh}


def _other_type_host_key() -> dict[str, str]:
    ecdsa = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    return {"host_key": ecdsa.export_public_key("openssh").decode("ascii").strip()}


def _stranger_client_key() -> dict[str, str]:
    return {"client_key": ssh.generate_keypair("stranger").private_openssh}


@pytest.mark.parametrize(
    ("override", "error", "message"),
    [
        (_impostor_host_key, errors.SecurityError, "differs from the pinned"),
        (_other_type_host_key, errors.SecurityError, "differs from the pinned"),
        (_stranger_client_key, errors.OperationFailed, "authentication failed"),
    ],
    ids=["wrong-pinned-host-key", "pinned-key-of-another-type", "wrong-client-key"],
)
def test_refused_connections_run_nothing(
    override: Callable[[], dict[str, str]], error: type[errors.OrchError], message: str
) -> None:
    async def scenario() -> tuple[BaseException, list[str]]:
        async with ssh_server() as server:
            with pytest.raises(error) as caught:
                await ssh.run_command(
                    server.endpoint(**override()),
                    "echo should-not-run",
                    connect_timeout=CONNECT,
                    command_timeout=COMMAND,
                )
            return caught.value, server.ran

    exc, ran = run(scenario)
    assert message in str(exc)
    assert ran == []


def test_connection_refused_is_unreachable() -> None:
    key = ssh.generate_keypair("k")
    endpoint = ssh.Endpoint(
        host="127.0.0.1",
        port=closed_port(),
        client_key=key.private_openssh,
        host_key=key.public_openssh,
    )

    async def scenario() -> None:
        await ssh.run_command(endpoint, "true", connect_timeout=CONNECT, command_timeout=COMMAND)

    with pytest.raises(errors.Unreachable):
        run(scenario)


def test_silent_server_times_out_in_the_connect_phase() -> None:
    key = ssh.generate_keypair("k")

    async def scenario() -> tuple[BaseException, float]:
        async with silent_server() as port:
            endpoint = ssh.Endpoint(
                host="127.0.0.1",
                port=port,
                client_key=key.private_openssh,
                host_key=key.public_openssh,
            )
            started = time.monotonic()
            with pytest.raises(errors.Timeout) as caught:
                await ssh.run_command(endpoint, "true", connect_timeout=0.5, command_timeout=5)
            return caught.value, time.monotonic() - started

    exc, elapsed = run(scenario)
    assert "connect" in str(exc)
    assert 0.5 <= elapsed < 0.5 + 1.0


def test_endless_command_times_out_in_the_command_phase() -> None:
    async def scenario() -> tuple[BaseException, float]:
        async with ssh_server() as server:
            started = time.monotonic()
            with pytest.raises(errors.Timeout) as caught:
                await _run(server, "hang", command_timeout=0.5)
            return caught.value, time.monotonic() - started

    exc, elapsed = run(scenario)
    assert "command did not finish" in str(exc)
    assert 0.5 <= elapsed < 0.5 + 1.0


def test_unparsable_pinned_key_is_invalid_input() -> None:
    key = ssh.generate_keypair("k")
    endpoint = ssh.Endpoint(host="127.0.0.1", client_key=key.private_openssh, host_key="nonsense")

    async def scenario() -> None:
        await ssh.run_command(endpoint, "true", connect_timeout=CONNECT, command_timeout=COMMAND)

    with pytest.raises(errors.InvalidInput):
        run(scenario)


# --- keys ----------------------------------------------------------------------------------------


def test_generated_keypair_is_ed25519_openssh() -> None:
    key = ssh.generate_keypair("set-a")
    assert key.private_openssh.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    algorithm, _blob, comment = key.public_openssh.split()
    assert (algorithm, comment) == ("ssh-ed25519", "set-a")
    assert "PRIVATE" not in repr(key)


def test_known_hosts_line_brackets_non_default_ports() -> None:
    key = ssh.generate_keypair("k")
    algorithm, blob, _ = key.public_openssh.split()
    assert (
        ssh.known_hosts_line("10.0.0.5", 22, key.public_openssh) == f"10.0.0.5 {algorithm} {blob}"
    )
    assert ssh.known_hosts_line("h", 2222, key.public_openssh) == f"[h]:2222 {algorithm} {blob}"


def test_private_key_file_round_trip_is_0600(tmp_path: Path) -> None:
    key = ssh.generate_keypair("k")
    path = tmp_path / "id_ed25519"
    old_umask = os.umask(0)  # the mode must not depend on a permissive umask
    try:
        ssh.write_private_key(path, key)
    finally:
        os.umask(old_umask)
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "id_ed25519.pub").read_text() == key.public_openssh + "\n"
    assert ssh.read_private_key(path) == key.private_openssh
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_rewriting_a_key_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "key"
    ssh.write_private_key(path, ssh.generate_keypair("old"))
    new = ssh.generate_keypair("new")
    ssh.write_private_key(path, new)
    assert ssh.read_private_key(path) == new.private_openssh


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602])
def test_group_or_world_accessible_key_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "key"
    ssh.write_private_key(path, ssh.generate_keypair("k"))
    path.chmod(mode)
    with pytest.raises(errors.SecurityError):
        ssh.read_private_key(path)


def test_symlinked_key_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    ssh.write_private_key(real, ssh.generate_keypair("k"))
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(errors.SecurityError):
        ssh.read_private_key(link)


def test_missing_key_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(errors.NotFound):
        ssh.read_private_key(tmp_path / "absent")


# --- interactive ---------------------------------------------------------------------------------


def test_interactive_command_streams_output_and_returns_status(tmp_path: Path) -> None:
    out_path, err_path = tmp_path / "out", tmp_path / "err"
    with (
        open(os.devnull, "rb") as stdin,
        out_path.open("wb") as out,
        err_path.open("wb") as err,
    ):
        fds = {"stdin": stdin.fileno(), "stdout": out.fileno(), "stderr": err.fileno()}

        async def scenario() -> tuple[int, int]:
            async with ssh_server() as server:
                echoed = await ssh.interactive(
                    server.endpoint(), "echo streamed", connect_timeout=CONNECT, **fds
                )
                failed = await ssh.interactive(
                    server.endpoint(), "stderr oops", connect_timeout=CONNECT, **fds
                )
                return echoed, failed

        assert run(scenario) == (0, 3)
    assert out_path.read_text() == "streamed\n"
    assert err_path.read_text() == "oops\n"


# --- the SSH prober ------------------------------------------------------------------------------


def _settings(server: Server, command: str, **kwargs: float) -> ProbeSettings:
    return ProbeSettings(command=command, port=server.port, **kwargs)  # type: ignore[arg-type]


def test_prober_outcomes_healthy_unhealthy_unreachable() -> None:
    prober = SshProber(clock=RealClock())

    async def scenario() -> list[object]:
        async with ssh_server() as server:
            target = ProbeTarget(name="s-0", endpoint=server.endpoint())
            healthy = await prober.probe(target, _settings(server, "echo fine"))
            unhealthy = await prober.probe(target, _settings(server, "stderr down"))
            hung = await prober.probe(target, _settings(server, "hang", timeout_seconds=0.3))
            no_address = await prober.probe(ProbeTarget("s-1", None), _settings(server, "true"))
        refused = await prober.probe(
            ProbeTarget("s-2", server.endpoint()), ProbeSettings(port=closed_port())
        )
        return [healthy, unhealthy, hung, no_address, refused]

    healthy, unhealthy, hung, no_address, refused = run(scenario)
    assert (healthy.kind, healthy.exit_status, healthy.output) == ("healthy", 0, "fine")  # type: ignore[attr-defined]
    assert healthy.latency is not None and healthy.latency > 0  # type: ignore[attr-defined]
    assert (unhealthy.kind, unhealthy.exit_status, unhealthy.output) == ("unhealthy", 3, "down")  # type: ignore[attr-defined]
    for outcome in (hung, no_address, refused):
        assert outcome.kind == "unreachable"  # type: ignore[attr-defined]
        assert outcome.exit_status is None and outcome.error  # type: ignore[attr-defined]


def test_prober_output_excerpt_is_one_short_line() -> None:
    prober = SshProber(clock=RealClock())

    async def scenario() -> str:
        async with ssh_server() as server:
            target = ProbeTarget(name="s-0", endpoint=server.endpoint())
            outcome = await prober.probe(target, _settings(server, "yes 5000"))
            return outcome.output

    output = run(scenario)
    assert output == "y" * 200


def test_prober_lets_a_host_key_mismatch_propagate() -> None:
    prober = SshProber(clock=RealClock())
    other = ssh.generate_keypair("impostor")

    async def scenario() -> None:
        async with ssh_server() as server:
            target = ProbeTarget(
                name="s-0", endpoint=server.endpoint(host_key=other.public_openssh)
            )
            await prober.probe(target, _settings(server, "true"))

    with pytest.raises(errors.SecurityError):
        run(scenario)


def test_prober_treats_auth_failure_as_unreachable() -> None:
    prober = SshProber(clock=RealClock())
    stranger = ssh.generate_keypair("stranger")

    async def scenario() -> str | None:
        async with ssh_server() as server:
            target = ProbeTarget(
                name="s-0", endpoint=server.endpoint(client_key=stranger.private_openssh)
            )
            outcome = await prober.probe(target, _settings(server, "true"))
            assert outcome.kind == "unreachable"
            return outcome.error

    assert "authentication failed" in (run(scenario) or "")


def test_interactive_shell_uses_a_pty_and_restores_the_terminal() -> None:
    import termios

    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)

        async def scenario() -> tuple[int, list[str]]:
            async with ssh_server() as server:
                status = await ssh.interactive(
                    server.endpoint(),
                    None,
                    connect_timeout=CONNECT,
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                )
                return status, server.ran

        status, ran = run(scenario)
        assert (status, ran) == (127, [""])  # the canned server has no shell: "not found"
        assert termios.tcgetattr(slave) == before
        assert b"not found" in os.read(master, 4096)
    finally:
        os.close(master)
        os.close(slave)
