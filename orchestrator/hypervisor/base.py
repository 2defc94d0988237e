"""The narrow seam between orchestrator and a hypervisor.

Owned here: the ``Hypervisor`` protocol, our own ``PowerState`` enum, the plain records
that cross the seam (``Ownership``, ``DomainInfo``, ``VolumeInfo``, ``Reservation``,
``NetworkInfo``, ``PoolInfo``, ``HostInfo``), the verb list derived from the protocol
(``VERBS``) with the verbs that change something (``MUTATING_VERBS``), and the rules every
adapter follows, stated once: ``check_volume_name``, ``check_backing_format``,
``UPLOAD_FORMATS`` / ``check_upload_format``, ``check_sha256``, ``upload_file_size``,
``check_tail_bytes``, ``reservation_present`` and ``UNAVAILABLE_HINT`` (the hint of every
``HypervisorUnavailable``). Implemented by ``hypervisor.libvirt`` (the real daemon),
``hypervisor.fake`` (in memory, with fault injection) and ``hypervisor.retry`` (a wrapper);
nothing above this seam imports libvirt.

Called by: cli.app, dryrun.plan, dryrun.simworld, engine.addresses, engine.context,
engine.hosts, engine.steps, hypervisor.fake, hypervisor.libvirt, hypervisor.libvirtxml,
hypervisor.retry, usecases.controller, usecases.placement, usecases.recovery,
usecases.repairs, usecases.session, usecases.sets, usecases.views, usecases.watch

Every method is synchronous and quick (no method waits for a guest): waiting is the
engine's job, done by polling ``domain_state`` against the injected clock.
Errors: ``errors.Gone`` (a ``HypervisorError``, exit 1) for a domain, pool, network or volume
that is not there, ``errors.HypervisorError`` for a refusal, ``errors.HypervisorUnavailable``
when the daemon cannot be reached; ``errors.InvalidInput`` only for arguments the seam refuses
before acting (an unsafe volume name, an unknown upload format). Never ``errors.NotFound``:
that is for names the user gave (sets, instances, images); a use case that checks a
user-named network or pool turns ``Gone`` into ``InvalidInput`` itself.
"""

from __future__ import annotations

import enum
import os
import stat
from dataclasses import dataclass
from typing import Protocol

from orchestrator.errors import HypervisorError, InvalidInput
from orchestrator.hypervisor.domainxml import Domain, Ownership

__all__ = [
    "DOMAIN_TYPES",
    "MUTATING_VERBS",
    "UNAVAILABLE_HINT",
    "UPLOAD_FORMATS",
    "VERBS",
    "DomainInfo",
    "HostInfo",
    "Hypervisor",
    "NetworkInfo",
    "Ownership",
    "PoolInfo",
    "PowerState",
    "Reservation",
    "VolumeInfo",
    "check_backing_format",
    "check_sha256",
    "check_tail_bytes",
    "check_upload_format",
    "check_volume_name",
    "reservation_present",
    "same_mac",
    "upload_file_size",
]

# The hint of every HypervisorUnavailable an adapter raises.
UNAVAILABLE_HINT = "is libvirtd running? try `orch lab up`"

# The formats ``Hypervisor.upload_volume`` and ``Hypervisor.upload_file`` accept.
UPLOAD_FORMATS: tuple[str, ...] = ("raw", "iso", "qcow2")


class PowerState(str, enum.Enum):
    """Our view of a domain's state; each adapter maps its own states onto this one table."""

    RUNNING = "running"
    STOPPED = "stopped"
    PAUSED = "paused"
    SHUTTING_DOWN = "shutting-down"
    CRASHED = "crashed"
    MISSING = "missing"


@dataclass(frozen=True)
class DomainInfo:
    name: str
    state: PowerState
    owner: Ownership | None  # None: not created by orchestrator, never touched
    files: tuple[str, ...] = ()  # every file its definition names (disks, backing, kernel)


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    path: str
    format: str  # "qcow2" | "raw" | "iso"
    capacity_bytes: int
    allocation_bytes: int


@dataclass(frozen=True)
class Reservation:
    """A static DHCP host entry in a network: the MAC always gets this IP."""

    mac: str
    ip: str
    name: str


def check_volume_name(name: str) -> None:
    """InvalidInput unless ``name`` is a safe volume name (no path, not hidden, not empty)."""
    if not name or "/" in name or name.startswith(".") or "\x00" in name:
        raise InvalidInput(f"invalid volume name {name!r}: no '/', no leading '.', not empty")


def check_backing_format(name: str, backing_format: str) -> None:
    """InvalidInput unless an overlay's backing format is given: it is pinned, never probed."""
    if not backing_format:
        raise InvalidInput(f"overlay {name}: the backing format must be given, never probed")


def check_upload_format(name: str, fmt: str) -> None:
    """InvalidInput unless ``fmt`` is one of ``UPLOAD_FORMATS``."""
    if fmt not in UPLOAD_FORMATS:
        raise InvalidInput(f"upload {name}: format {fmt!r} not one of {', '.join(UPLOAD_FORMATS)}")


def check_sha256(name: str, sha256: str) -> str:
    """``sha256`` in lower case; InvalidInput unless it is 64 hex digits."""
    digest = sha256.lower()
    if len(digest) != 64 or digest.strip("0123456789abcdef"):
        raise InvalidInput(f"upload {name}: {sha256!r} is not a sha256 (64 hex digits)")
    return digest


def upload_file_size(name: str, path: str) -> int:
    """The size of the local file ``path`` that ``upload_file`` copies; InvalidInput unless it
    is a readable regular file (refused before anything is created)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InvalidInput(f"upload {name}: cannot read {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInput(f"upload {name}: {path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise InvalidInput(f"upload {name}: cannot read {path}: Permission denied")
    return st.st_size


def check_tail_bytes(name: str, max_bytes: int) -> None:
    """InvalidInput unless ``max_bytes`` (how much of a volume ``read_volume_tail`` may
    bring back) is a positive integer."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise InvalidInput(f"read {name}: max_bytes must be a positive integer, not {max_bytes!r}")


def same_mac(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


def reservation_present(have: list[Reservation], wanted: Reservation, *, network: str) -> bool:
    """True if ``wanted`` is already among ``have``; HypervisorError if it conflicts with an
    entry (same MAC, IP or name with another partner). Both adapters follow this rule."""
    for entry in have:
        mac = same_mac(entry.mac, wanted.mac)
        if mac and entry.ip == wanted.ip and entry.name == wanted.name:
            return True
        if mac or entry.ip == wanted.ip or (bool(wanted.name) and entry.name == wanted.name):
            raise HypervisorError(
                f"network {network}: reservation {wanted.mac} {wanted.ip} {wanted.name} "
                f"conflicts with existing {entry.mac} {entry.ip} {entry.name}"
            )
    return False


@dataclass(frozen=True)
class NetworkInfo:
    name: str
    bridge: str
    gateway: str  # the host's address on the network
    prefix: int
    dhcp_start: str
    dhcp_end: str
    active: bool


@dataclass(frozen=True)
class PoolInfo:
    name: str
    path: str
    capacity_bytes: int
    available_bytes: int
    active: bool


# The domain types ``HostInfo.domain_types`` reports: hardware virtualisation, emulation (TCG).
DOMAIN_TYPES: tuple[str, ...] = ("kvm", "qemu")


@dataclass(frozen=True)
class HostInfo:
    """What a host offers placement (``host_info``); free <= available <= total."""

    hostname: str  # as the host says; not an identity (copies of one image share it)
    memory_bytes_total: int
    memory_bytes_free: int  # the kernel's free memory now (page cache not counted)
    # what new guests can have now: free memory, buffers and page cache (the kernel gives the
    # cache back on demand; MemFree alone undercounts badly). Placement uses this one.
    memory_bytes_available: int
    cpus: int  # logical CPUs
    domain_types: tuple[str, ...]  # of DOMAIN_TYPES, sorted: what it runs x86_64 guests with


class Hypervisor(Protocol):
    """What the engine needs from a hypervisor, and nothing more.

    A verb that names a domain, pool or network that is not there raises ``errors.Gone``
    (exit 1: met while acting, not bad input), unless its docstring says otherwise ("missing
    already: no error", ``PowerState.MISSING``, None). An object may vanish between two
    verbs, or inside one (undefined by hand): that is ``Gone`` too."""

    @property
    def uri(self) -> str: ...

    # --- domains -----------------------------------------------------------------------
    def define_domain(self, domain: Domain) -> None:
        """Define (or redefine, same name) a persistent domain from its XML object."""
        ...

    def start(self, name: str) -> None:
        """Boot a defined domain; starting a running domain is not an error."""
        ...

    def shutdown(self, name: str) -> None:
        """Ask the guest to power off (ACPI); returns at once. Stopped already: no error."""
        ...

    def destroy(self, name: str) -> None:
        """Power off at once; stopped already: no error."""
        ...

    def undefine(self, name: str) -> None:
        """Remove the definition (must be stopped); missing already: no error."""
        ...

    def domain_state(self, name: str) -> PowerState:
        """The current state; ``PowerState.MISSING`` if no such domain."""
        ...

    def domain_owner(self, name: str) -> Ownership | None:
        """Our metadata on the domain, or None (missing domain or not ours)."""
        ...

    def list_domains(self) -> list[DomainInfo]:
        """All domains (ours and others'); callers filter on ``owner``."""
        ...

    # --- storage -----------------------------------------------------------------------
    def pool_info(self, pool: str) -> PoolInfo: ...

    def create_overlay(
        self, pool: str, *, name: str, backing_path: str, backing_format: str, capacity_bytes: int
    ) -> VolumeInfo:
        """A qcow2 volume whose backing file is ``backing_path`` with its format pinned."""
        ...

    def create_volume(self, pool: str, *, name: str, capacity_bytes: int) -> VolumeInfo:
        """An empty qcow2 volume (data disks)."""
        ...

    def upload_volume(self, pool: str, *, name: str, data: bytes, fmt: str = "raw") -> VolumeInfo:
        """A volume whose content is ``data`` (cloud-init seed ISOs); replaces one of the name."""
        ...

    def upload_file(self, pool: str, *, name: str, path: str, fmt: str, sha256: str) -> VolumeInfo:
        """A volume that is a byte copy of the local file ``path`` (a base image; capacity:
        the file's size), streamed in chunks with its holes skipped (never read whole), then
        read back and hashed: content other than ``sha256`` deletes the volume and raises
        ``HypervisorError`` naming both hashes. A volume of the name with that size and
        content already: returned as it is, nothing uploaded; with other content: replaced.
        InvalidInput, before acting, for a file that is not a readable regular file or a
        ``sha256`` that is not 64 hex digits (and as ``upload_volume`` for name and format)."""
        ...

    def delete_volume(self, pool: str, name: str) -> None:
        """Delete a volume; missing already: no error."""
        ...

    def list_volumes(self, pool: str) -> list[VolumeInfo]: ...

    def read_volume_tail(self, pool: str, name: str, *, max_bytes: int) -> bytes:
        """The last ``max_bytes`` bytes of a volume's file (all of it when smaller), streamed
        down from its host through libvirt: a file on a remote host is read without any file
        access of ours, and never more than ``max_bytes`` of it is held. A file the host
        made in the pool since libvirt last looked (virtlogd's console logs) is found too.
        ``Gone`` for a missing volume or pool; InvalidInput, before acting, for an unsafe
        name or a ``max_bytes`` below 1."""

    def find_volume(self, pool: str, name: str) -> VolumeInfo | None:
        """The volume ``name`` of ``pool`` as ``list_volumes`` would show it, or None if the
        pool has none of that name: one lookup, where a listing costs a call per volume."""
        ...

    # --- network -----------------------------------------------------------------------
    def network_info(self, network: str) -> NetworkInfo: ...

    def list_reservations(self, network: str) -> list[Reservation]: ...

    def leased_addresses(self, network: str) -> dict[str, str]:
        """Addresses the network's DHCP server has leased now: IP → MAC. A lease outlives
        the instance that held it, and blocks its address for any other MAC."""
        ...

    def add_reservation(self, network: str, reservation: Reservation) -> None:
        """Add a static DHCP host (live and persistent); the same entry again: no error."""
        ...

    def remove_reservation(self, network: str, reservation: Reservation) -> None:
        """Remove a static DHCP host; missing already: no error."""
        ...

    # --- host --------------------------------------------------------------------------
    def host_info(self) -> HostInfo:
        """The host's name, memory, CPUs and the domain types it offers for x86_64 guests
        (``kvm`` is offered where ``/dev/kvm`` exists, which does not prove guests boot
        under it). The first call on a freshly started daemon may take seconds (it probes
        its emulators)."""
        ...

    def close(self) -> None:
        """End the connection (the next verb opens a new one); changes no object and never
        fails: clean-up paths call it."""
        ...


def _verbs(protocol: type) -> tuple[str, ...]:
    """The public callables of ``protocol`` (not its properties), in declaration order."""
    return tuple(name for name, member in vars(protocol).items()
                 if not name.startswith("_") and callable(member))


VERBS: tuple[str, ...] = _verbs(Hypervisor)
"""Every verb of the ``Hypervisor`` protocol, read off the class: adding a method to the
protocol adds it here (and to the fake's fault injection, the retry wrapper's checks and the
tests that wrap every verb)."""

MUTATING_VERBS: frozenset[str] = frozenset({
    "define_domain", "start", "shutdown", "destroy", "undefine",
    "create_overlay", "create_volume", "upload_volume", "upload_file", "delete_volume",
    "add_reservation", "remove_reservation",
})  # fmt: skip
"""The verbs that change a hypervisor object; every other verb of ``VERBS`` only reads
(``close`` ends the connection and touches no object). A new verb is a read unless it is
listed here; the contract tests check both directions on both adapters."""
