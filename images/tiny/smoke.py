"""Boot check of a built tiny image under plain QEMU (TCG), without libvirt.

Owned here: an end-to-end check of what images/tiny/build.sh produced: the NoCloud seed is
honoured, SSH works with a pinned host key, the health command, a data disk, reboot and ACPI
power-off. Called by hand (and by anyone who changes images/tiny/); not part of pytest,
because it boots a VM for about half a minute.

Run from the repository root, as root (qemu, loopback port forwarding only)::

    images/tiny/build.sh /tmp/tiny-1 1
    .venv/bin/python images/tiny/smoke.py /tmp/tiny-1
    images/tiny/build.sh /tmp/tiny-1b 1 --broken
    .venv/bin/python images/tiny/smoke.py /tmp/tiny-1b      # expects the health check to FAIL

It prints one line per check with timings and exits 1 at the first failed check (the guest's
console log is kept then, and its path printed). The image files are never modified: the VM
boots from a qcow2 overlay.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from orchestrator.cloudinit import SeedContent, WriteFile, build_seed_iso
from orchestrator.errors import OperationFailed, SecurityError, Timeout

# Quotes, backslashes, a command substitution that must be written, not run, and bytes that
# are no text at all: the NoCloud parser must carry them untouched.
AWKWARD = (
    b'line "one" with \\backslash\\ and $(touch /tmp/smoke-pwned) `touch /tmp/smoke-pwned`\n'
    b"tab\there\r\nno newline at the end \x00\x01\xfe\xff"
)
AWKWARD_PATH = "/root/smoke dir/awkward file.txt"
HOSTNAME = "smoke-vm-1"


@dataclass(frozen=True)
class Guest:
    port: int
    client_key: asyncssh.SSHKey
    host_public: str


def log(message: str) -> None:
    print(f"smoke: {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def connect(guest: Guest, *, timeout: float = 5.0) -> asyncssh.SSHClientConnection:
    known = asyncssh.import_known_hosts(f"[127.0.0.1]:{guest.port} {guest.host_public}\n")
    return await asyncssh.connect(
        "127.0.0.1",
        guest.port,
        username="root",
        client_keys=[guest.client_key],
        known_hosts=known,
        connect_timeout=timeout,
    )


async def run(
    guest: Guest, command: str, *, connect_timeout: float = 5.0
) -> asyncssh.SSHCompletedProcess:
    conn = await connect(guest, timeout=connect_timeout)
    try:
        return await conn.run(command, check=False, timeout=30)
    finally:
        conn.close()
        await conn.wait_closed()


async def wait_for_ssh(guest: Guest, *, deadline: float) -> asyncssh.SSHCompletedProcess:
    """The first successful `cat boot_id`; a host key mismatch is fatal, not retried."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            # A short connect timeout: before the guest's network is up, QEMU's port
            # forward accepts and then stalls rather than refusing.
            result = await run(guest, "cat /proc/sys/kernel/random/boot_id", connect_timeout=1.0)
            if result.exit_status == 0:
                return result
        except asyncssh.HostKeyNotVerifiable as exc:
            raise SecurityError(f"guest presented another host key: {exc}") from exc
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            last = exc
        await asyncio.sleep(0.2)
    raise Timeout(f"no SSH to the guest before the deadline (last error: {last!r})")


def check(condition: bool, what: str) -> None:
    if not condition:
        raise OperationFailed(f"check failed: {what}")
    log(f"ok   {what}")


async def checks_after_first_boot(guest: Guest, *, manifest: dict[str, Any]) -> None:
    version, broken = str(manifest["version"]), bool(manifest["broken"])
    result = await run(guest, "cat /etc/os-release")
    check(f"VERSION_ID={version}" in str(result.stdout).splitlines(), "os-release VERSION_ID")
    check("ID=orch-tiny" in str(result.stdout).splitlines(), "os-release ID=orch-tiny")

    result = await run(guest, str(manifest["healthCommand"]))
    if broken:
        check(
            result.exit_status != 0,
            f"health command fails on a broken image ({result.exit_status})",
        )
    else:
        check(result.exit_status == 0, "health command exits 0")

    result = await run(guest, "hostname")
    check(str(result.stdout).strip() == HOSTNAME, f"hostname is {HOSTNAME}")

    async with await connect(guest) as conn:
        proc = await conn.run(f"cat '{AWKWARD_PATH}'", check=False, encoding=None)
        check(proc.stdout == AWKWARD, "write_files content is byte-exact")
    result = await run(guest, f"stat -c %a '{AWKWARD_PATH}'; test -e /tmp/smoke-pwned; echo $?")
    check(str(result.stdout).split() == ["640", "1"], "write_files mode 0640, $(...) not run")

    deadline = time.monotonic() + 30
    while True:
        result = await run(guest, "cat /root/runcmd.out 2>/dev/null")
        if str(result.stdout) == "runcmd ran\n":
            break
        if time.monotonic() > deadline:
            raise Timeout(f"runcmd output never appeared: {result.stdout!r}")
        await asyncio.sleep(0.2)
    check(True, "runcmd ran once")

    result = await run(
        guest,
        "set -e; mkfs.ext2 -q /dev/vdc >/dev/null 2>&1 || mkfs.ext2 /dev/vdc >/dev/null; "
        "mkdir -p /mnt/data; mount /dev/vdc /mnt/data; echo kept > /mnt/data/f; "
        "cat /mnt/data/f; umount /mnt/data; blkid /dev/vdc",
    )
    check(result.exit_status == 0 and "kept" in str(result.stdout), "data disk: mkfs.ext2, mount")

    result = await run(
        guest, "echo x > /root/on-os-disk && cat /root/on-os-disk; df -k / | tail -n 1"
    )
    check(result.exit_status == 0, f"OS disk writable ({str(result.stdout).splitlines()[-1]})")

    result = await run(guest, "cloud-init status --wait")
    check(str(result.stdout).strip() == "status: done", "cloud-init status --wait says done")


async def reboot_and_check(guest: Guest, *, boot_id: str) -> float:
    try:
        await run(guest, "reboot")
    except (OSError, asyncssh.Error):
        pass  # the connection may drop before the command returns
    started = time.monotonic()
    deadline = started + 90
    while True:
        result = await wait_for_ssh(guest, deadline=deadline)
        if str(result.stdout).strip() != boot_id:
            break
        await asyncio.sleep(0.2)
    elapsed = time.monotonic() - started
    check(True, f"reboot: back with a new boot_id and the same pinned host key in {elapsed:.1f} s")
    result = await run(guest, "cat /root/runcmd.out; hostname; cat /root/on-os-disk")
    check(
        str(result.stdout) == f"runcmd ran\n{HOSTNAME}\nx\n",
        "after reboot: runcmd not run again, hostname kept, OS disk data kept",
    )
    # dmesg, not the console: loglevel=6 keeps ext4's info messages off it.
    result = await run(guest, "dmesg | grep -c 'recovery complete'")
    check(str(result.stdout).strip() == "0", "the reboot left the root filesystem clean")
    return elapsed


def qemu_command(image: Path, work: Path, *, port: int) -> list[str]:
    manifest = json.loads((image / "manifest.json").read_text(encoding="utf-8"))
    return [
        "qemu-system-x86_64", "-accel", "tcg", "-m", str(manifest["minMemoryMiB"]),
        "-nographic", "-nodefaults",
        "-kernel", str(image / manifest["kernel"]),
        "-initrd", str(image / manifest["initrd"]),
        "-append", manifest["cmdline"],
        "-drive", f"file={work / 'overlay.qcow2'},if=virtio,format=qcow2",
        "-drive", f"file={work / 'seed.iso'},if=virtio,format=raw,readonly=on",
        "-drive", f"file={work / 'data.raw'},if=virtio,format=raw",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=n0,romfile=",
        "-device", "virtio-rng-pci",
        "-serial", f"file:{work / 'console.log'}",
        "-monitor", f"unix:{work / 'mon.sock'},server,nowait",
    ]  # fmt: skip


def write_seed(work: Path, *, port: int, hostname: str) -> Guest:
    """A seed with a fresh instance-id, client key and host key; the guest that pins it."""
    client = asyncssh.generate_private_key("ssh-ed25519")
    host = asyncssh.generate_private_key("ssh-ed25519")
    host_public = host.export_public_key("openssh").decode("ascii").strip()
    seed = SeedContent(
        instance_id=f"i-smoke-{uuid.uuid4().hex[:12]}",
        hostname=hostname,
        authorized_keys=(client.export_public_key("openssh").decode("ascii").strip(),),
        host_key_private=host.export_private_key("openssh").decode("ascii"),
        host_key_public=host_public,
        write_files=(WriteFile(AWKWARD_PATH, AWKWARD, "0640"),),
        runcmd=("echo 'runcmd ran' >> /root/runcmd.out",),
    )
    (work / "seed.iso").write_bytes(build_seed_iso(seed))
    return Guest(port=port, client_key=client, host_public=host_public)


def prepare(image: Path, work: Path) -> Guest:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image / "disk.qcow2"),
         "-F", "qcow2", str(work / "overlay.qcow2")],
        check=True,
    )  # fmt: skip
    with open(work / "data.raw", "wb") as data:
        data.truncate(32 * 1024 * 1024)
    return write_seed(work, port=free_port(), hostname=HOSTNAME)


def power_button(work: Path) -> None:
    """`system_powerdown` on the human monitor, waiting for its prompt around the command:
    closing the socket right after sending can make QEMU drop the unread command."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(work / "mon.sock"))
        _read_until_prompt(sock)
        sock.sendall(b"system_powerdown\n")
        _read_until_prompt(sock)


def _read_until_prompt(sock: socket.socket) -> None:
    seen = b""
    while not seen.rstrip().endswith(b"(qemu)"):
        chunk = sock.recv(4096)
        if not chunk:
            return  # QEMU may already be exiting
        seen += chunk


async def power_off(qemu: asyncio.subprocess.Process, work: Path) -> None:
    pressed = time.monotonic()
    power_button(work)
    try:
        await asyncio.wait_for(qemu.wait(), timeout=20)
    except TimeoutError as exc:
        raise Timeout("the guest ignored the ACPI power button for 20 s") from exc
    check(True, f"ACPI power button: qemu exited {time.monotonic() - pressed:.1f} s later")


async def new_seed_on_same_disk(image: Path, work: Path, old: Guest) -> None:
    """What a changed seed does to a kept OS disk: the new host key replaces the old one
    (which must now be refused), and write_files/runcmd run again for the new instance-id."""
    guest = write_seed(work, port=old.port, hostname="smoke-vm-2")
    started = time.monotonic()
    qemu = await asyncio.create_subprocess_exec(
        *qemu_command(image, work, port=guest.port), stdin=subprocess.DEVNULL
    )
    try:
        await wait_for_ssh(guest, deadline=started + 120)
        log(f"new seed: first SSH command {time.monotonic() - started:.1f} s after qemu started")
        try:
            await run(old, "true")
        except asyncssh.HostKeyNotVerifiable:
            check(True, "new seed: the old pinned host key is refused")
        else:
            check(False, "new seed: the old pinned host key is refused")
        result = await run(guest, "hostname; cat /root/runcmd.out")
        check(
            str(result.stdout) == "smoke-vm-2\nruncmd ran\nruncmd ran\n",
            "new seed: new hostname, runcmd ran again for the new instance-id",
        )
        result = await run(guest, "dmesg | grep -c 'recovery complete'")
        check(str(result.stdout).strip() == "0", "the ACPI power-off left the filesystem clean")
        await power_off(qemu, work)
    finally:
        if qemu.returncode is None:
            qemu.kill()
            await qemu.wait()


async def smoke(image: Path, work: Path, guest: Guest) -> None:
    manifest = json.loads((image / "manifest.json").read_text(encoding="utf-8"))
    started = time.monotonic()
    qemu = await asyncio.create_subprocess_exec(
        *qemu_command(image, work, port=guest.port), stdin=subprocess.DEVNULL
    )
    try:
        first = await wait_for_ssh(guest, deadline=started + 120)
        log(f"first SSH command succeeded {time.monotonic() - started:.1f} s after qemu started")
        await checks_after_first_boot(guest, manifest=manifest)
        await reboot_and_check(guest, boot_id=str(first.stdout).strip())
        await power_off(qemu, work)
    finally:
        if qemu.returncode is None:
            qemu.kill()
            await qemu.wait()
    await new_seed_on_same_disk(image, work, guest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path, help="directory made by images/tiny/build.sh")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    image = args.image.resolve()
    work = Path(tempfile.mkdtemp(prefix="orch-tiny-smoke-"))
    ok = False
    try:
        guest = prepare(image, work)
        asyncio.run(smoke(image, work, guest))
        ok = True
    except (OperationFailed, Timeout, SecurityError) as exc:
        log(f"FAIL {exc.one_line()}")
        log(f"console log: {work / 'console.log'}")
    finally:
        if ok and not args.keep:
            shutil.rmtree(work)
    if ok:
        log("all checks passed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
