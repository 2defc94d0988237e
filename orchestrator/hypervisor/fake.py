"""An in-memory hypervisor: the ``Hypervisor`` protocol simulated against an injected clock.

Owned here: ``FakeHypervisor``. Used by unit tests (with ``clock.FakeClock``) and by
``orch vmss plan`` as the product's simulator, so it models what the engine relies on:

- domains boot and shut down in clock time: ``start`` records the time, ``guest_ready`` turns
  true ``boot_seconds`` later and ``boot_id`` changes at every boot; ``shutdown`` (ACPI) reports
  ``SHUTTING_DOWN`` until ``shutdown_seconds`` have passed, then ``STOPPED``. A guest marked
  ``ignores_acpi`` keeps running, as a real guest without acpid does, until ``destroy``.
- like libvirt, ``define_domain`` checks nothing about disks; ``start`` fails when a disk, a
  backing file, a kernel or initrd is neither a volume of some pool nor a file registered with
  ``add_external_file`` (images), or when a NIC's network is missing.
- volumes take space from their pool (an overlay a small allocation, data disks and uploads
  their full size); creating past the pool's capacity fails with "no space left".
- ``host_info`` reports the ``host`` it was given (``DEFAULT_HOST``; ``set_host``,
  ``set_memory_available``, ``set_domain_types``), its free and available memory less the
  memory of every domain that is up (running, paused, going down), never above the total.
- ``upload_file`` records the file's path and hashes the file in chunks (``sparse``), as the
  real upload streams it: a sha256 other than the one given leaves no volume and names both
  hashes; a volume of the name with that size and content is returned without reading the
  file (``uploads`` lists the files actually read).
- a domain whose definition names a console log in a pool (``console_log``, as virtlogd
  keeps it) gets that log as a volume of the pool, emptied at every ``start`` (``append``
  off) and begun with a few kernel-like lines (``BOOT_LINES``); ``append_console`` adds what
  the guest prints later. ``read_volume_tail`` reads the end of a volume's bytes.
- reservations follow libvirt's matching rules: an identical entry again is a no-op, the same
  MAC, IP or name with a different partner is a conflict.

Fault injection (``fail_next``, ``crash``, ``set_ignores_acpi``, ``set_unavailable``,
``set_pool_capacity``, ``set_memory_available``, ``set_domain_types``), the guest's console
(``append_console``) and introspection (``domains``, ``calls``, ``volume_backing``,
``volume_data``, ``volume_source``, ``uploads``) serve the tests. Everything is synchronous;
time moves only with the clock.

Called by: dryrun.simworld, engine.simulate
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from orchestrator.clock import Clock
from orchestrator.errors import Gone, HypervisorError, HypervisorUnavailable, InvalidInput
from orchestrator.hypervisor.base import (
    UNAVAILABLE_HINT,
    VERBS,
    DomainInfo,
    HostInfo,
    NetworkInfo,
    PoolInfo,
    PowerState,
    Reservation,
    VolumeInfo,
    check_backing_format,
    check_sha256,
    check_tail_bytes,
    check_upload_format,
    check_volume_name,
    reservation_present,
    upload_file_size,
)
from orchestrator.hypervisor.domainxml import Domain, Ownership, domain_files
from orchestrator.hypervisor.sparse import file_sha256

__all__ = ["BOOT_LINES", "DEFAULT_HOST", "DEFAULT_NETWORKS", "DEFAULT_POOLS",
           "OVERLAY_ALLOCATION", "FakeHypervisor"]

GiB = 1024**3
# What a fresh qcow2 overlay occupies on disk (header, L1 table, refcounts), roughly.
OVERLAY_ALLOCATION = 196_608

DEFAULT_NETWORKS: tuple[NetworkInfo, ...] = (
    NetworkInfo("default", "virbr0", "192.168.122.1", 24, "192.168.122.2", "192.168.122.254", True),
    NetworkInfo("orchlab", "orchbr0", "10.213.0.1", 24, "10.213.0.10", "10.213.0.250", True),
)
DEFAULT_POOLS: tuple[PoolInfo, ...] = (
    PoolInfo("default", "/var/lib/libvirt/images", 100 * GiB, 100 * GiB, True),
)

# A host like the 2-core, 24 GiB machines the product is tested on, with software emulation.
DEFAULT_HOST = HostInfo(hostname="fake", memory_bytes_total=24 * GiB, memory_bytes_free=23 * GiB,
                        memory_bytes_available=23 * GiB + 512 * 2**20, cpus=2,
                        domain_types=("qemu",))

# What a fake guest prints on its serial console as it boots ({cmdline}: its kernel's).
BOOT_LINES: tuple[str, ...] = (
    "[    0.000000] Linux version 6.1.0-fake (orchestrator fake hypervisor)",
    "[    0.000000] Command line: {cmdline}",
    "[    0.731337] Run /init as init process",
)

# The methods ``fail_next`` may target: the protocol's verbs but ``close``, which never fails.
_FAILABLE = frozenset(VERBS) - {"close"}


@dataclass
class _DomainRecord:
    definition: Domain
    state: PowerState = PowerState.STOPPED
    started_at: float | None = None
    shutdown_requested_at: float | None = None
    ignores_acpi: bool = False
    boot_id: str | None = None


@dataclass
class _Volume:
    name: str
    path: str
    fmt: str
    capacity: int
    allocation: int
    backing: tuple[str, str] | None = None
    data: bytes | None = None
    source: str | None = None  # the local file upload_file copied
    sha256: str | None = None  # of that file's content

    def info(self) -> VolumeInfo:
        return VolumeInfo(self.name, self.path, self.fmt, self.capacity, self.allocation)

    def content_sha256(self) -> str | None:
        """The sha256 of what the volume holds, or None for one created empty."""
        if self.data is not None:
            return hashlib.sha256(self.data).hexdigest()
        return self.sha256


@dataclass
class _Pool:
    """A pool's volumes, changed only through ``put`` and ``drop``: they keep the allocation
    total and the index by path, so no question about one volume walks all of them."""

    name: str
    path: str
    capacity: int
    active: bool
    volumes: dict[str, _Volume] = field(default_factory=dict)
    _allocated: int = 0
    _by_path: dict[str, _Volume] = field(default_factory=dict)

    @property
    def available(self) -> int:
        return max(0, self.capacity - self._allocated)

    def put(self, vol: _Volume) -> None:
        self.drop(vol.name)
        self.volumes[vol.name] = vol
        self._by_path[vol.path] = vol
        self._allocated += vol.allocation

    def drop(self, name: str) -> None:
        vol = self.volumes.pop(name, None)
        if vol is not None:
            del self._by_path[vol.path]
            self._allocated -= vol.allocation

    def at_path(self, path: str) -> _Volume | None:
        return self._by_path.get(path)


@dataclass
class _Network:
    """A network's DHCP host entries, changed only through ``add`` and ``remove``: they keep
    them indexed by MAC, IP and name, so a new entry is checked against the few that share
    one of those (the only ones ``reservation_present`` can stop at), not against all."""

    info: NetworkInfo
    reservations: list[Reservation] = field(default_factory=list)
    leases: dict[str, str] = field(default_factory=dict)
    _by_key: dict[tuple[str, str], list[Reservation]] = field(default_factory=dict)
    _order: dict[Reservation, int] = field(default_factory=dict)
    _added: int = 0

    @staticmethod
    def _keys(r: Reservation) -> list[tuple[str, str]]:
        # as reservation_present compares: MACs in any case, a name only when there is one
        keys = [("mac", r.mac.strip().lower()), ("ip", r.ip)]
        if r.name:
            keys.append(("name", r.name))
        return keys

    def add(self, reservation: Reservation, *, network: str) -> None:
        near = {r for key in self._keys(reservation) for r in self._by_key.get(key, ())}
        if reservation_present(sorted(near, key=self._order.__getitem__), reservation,
                               network=network):
            return
        self.reservations.append(reservation)
        for key in self._keys(reservation):
            self._by_key.setdefault(key, []).append(reservation)
        self._order[reservation] = self._added
        self._added += 1

    def remove(self, reservation: Reservation) -> None:
        """Every entry of ``reservation``'s MAC and IP."""
        for r in [r for r in self._by_key.get(self._keys(reservation)[0], ())
                  if r.ip == reservation.ip]:
            self.reservations.remove(r)
            for key in self._keys(r):
                self._by_key[key].remove(r)
            del self._order[r]


class FakeHypervisor:
    """The ``Hypervisor`` protocol in memory; see the module docstring for its behaviour."""

    def __init__(
        self,
        *,
        clock: Clock,
        boot_seconds: float = 6.5,
        shutdown_seconds: float = 1.5,
        networks: Iterable[NetworkInfo] | None = None,
        pools: Iterable[PoolInfo] | None = None,
        uri: str = "fake:///",
        host: HostInfo = DEFAULT_HOST,
    ) -> None:
        self._clock = clock
        self._host = host
        self.boot_seconds = boot_seconds
        self.shutdown_seconds = shutdown_seconds
        self._uri = uri
        self._records: dict[str, _DomainRecord] = {}
        self._networks = {
            n.name: _Network(n) for n in (DEFAULT_NETWORKS if networks is None else networks)
        }
        self._pools = {
            p.name: _Pool(p.name, p.path, p.capacity_bytes, p.active)
            for p in (DEFAULT_POOLS if pools is None else pools)
        }
        self._external_files: set[str] = set()
        self._failures: dict[str, list[Exception]] = {}
        self._unavailable = False
        self._boot_counter = itertools.count(1)
        self.calls: list[tuple[str, str]] = []
        """Every protocol call in order, as (method, object name), failed ones included."""
        self.uploads: list[tuple[str, str]] = []
        """(volume name, file path) of every file ``upload_file`` read (not the reused)."""

    @property
    def uri(self) -> str:
        return self._uri

    # --- fault injection and introspection -------------------------------------------------
    def fail_next(self, method_name: str, error: Exception, count: int = 1) -> None:
        """Make the next ``count`` calls of ``method_name`` raise ``error`` (before acting)."""
        if method_name not in _FAILABLE:
            raise InvalidInput(f"fail_next: {method_name!r} is not a hypervisor verb that can fail")
        self._failures.setdefault(method_name, []).extend([error] * count)

    def crash(self, name: str) -> None:
        """The guest dies at once: CRASHED (like libvirt's shutoff-with-reason-crashed)."""
        rec = self._record(name)
        if rec.state in (PowerState.RUNNING, PowerState.SHUTTING_DOWN):
            self._power_off(rec, PowerState.CRASHED)

    def set_ignores_acpi(self, name: str, ignores: bool = True) -> None:
        """A guest that ignores the ACPI power button (no acpid): only ``destroy`` stops it."""
        self._record(name).ignores_acpi = ignores

    def set_unavailable(self, unavailable: bool = True) -> None:
        """While set, every protocol call raises ``HypervisorUnavailable`` (daemon down)."""
        self._unavailable = unavailable

    def set_host(self, host: HostInfo) -> None:
        """What ``host_info`` reports from now on (free memory: before the domains' use)."""
        self._host = host

    def set_pool_capacity(self, pool: str, capacity_bytes: int) -> None:
        self._pool(pool).capacity = capacity_bytes

    def add_file_volume(self, pool: str, *, name: str, source: str, sha256: str, size: int,
                        fmt: str) -> None:
        """A volume as ``upload_file`` leaves it, without reading ``source`` (a dry run mirrors
        a host's copies of images this way)."""
        self._add_volume(pool, _Volume(name, self._path_in(pool, name), fmt, size, size,
                                       source=source, sha256=sha256))

    def set_memory_available(self, available_bytes: int) -> None:
        """The memory the host has for new guests from now on (before the domains' use); its
        free memory is at most that."""
        self._host = dataclasses.replace(
            self._host, memory_bytes_available=available_bytes,
            memory_bytes_free=min(self._host.memory_bytes_free, available_bytes))

    def set_domain_types(self, types: Iterable[str]) -> None:
        """The domain types the host offers from now on (``kvm``, ``qemu``; none at all: a
        host that cannot run x86_64 guests)."""
        self._host = dataclasses.replace(self._host, domain_types=tuple(sorted(set(types))))

    def append_console(self, name: str, text: str | bytes) -> None:
        """The guest ``name`` prints ``text`` on its serial console: it goes to the end of
        its console log (made if it is not there), as virtlogd would write it."""
        data = text.encode() if isinstance(text, str) else bytes(text)
        self._write_console(self._record(name).definition, data, truncate=False)

    def add_external_file(self, path: str) -> None:
        """Declare a file outside every pool (an image's disk, kernel, initrd) as present."""
        self._external_files.add(path)

    @property
    def external_files(self) -> frozenset[str]:
        """The host files (images) domains may refer to."""
        return frozenset(self._external_files)

    @property
    def domains(self) -> dict[str, Domain]:
        """The persistent definition of every domain, by name (a copy)."""
        return {name: rec.definition for name, rec in self._records.items()}

    def definition(self, name: str) -> Domain | None:
        """The persistent definition of one domain, or None (no copy of every other one)."""
        rec = self._records.get(name)
        return rec.definition if rec is not None else None

    def volume_backing(self, pool: str, name: str) -> tuple[str, str] | None:
        """(backing path, backing format) of a volume, or None for a volume without one."""
        return self._volume(pool, name).backing

    def volume_data(self, pool: str, name: str) -> bytes | None:
        """The bytes uploaded into a volume, or None for a volume created empty."""
        return self._volume(pool, name).data

    def source_of(self, path: str) -> str | None:
        """The local file behind the volume at ``path`` (a copy ``upload_file`` made), or None."""
        for p in self._pools.values():
            for vol in p.volumes.values():
                if vol.path == path:
                    return vol.source
        return None

    def volume_source(self, pool: str, name: str) -> str | None:
        """The local file ``upload_file`` copied into a volume, or None."""
        return self._volume(pool, name).source

    def guest_ready(self, name: str) -> bool:
        """Whether the guest has been running for ``boot_seconds`` (what a probe would see)."""
        rec = self._records.get(name)
        if rec is None:
            return False
        self._settle(rec)
        return (
            rec.state is PowerState.RUNNING
            and rec.started_at is not None
            # start + boot, as a clock moved on by the boot time reads it: now - start
            # rounds below the boot time about every other time
            and self._clock.monotonic() >= rec.started_at + self.boot_seconds
        )

    def boot_id(self, name: str) -> str | None:
        """An id that changes at every boot (``/proc/sys/kernel/random/boot_id``); None if down."""
        rec = self._records.get(name)
        if rec is None:
            return None
        self._settle(rec)
        if rec.state not in (PowerState.RUNNING, PowerState.SHUTTING_DOWN):
            return None
        return rec.boot_id

    # --- plumbing ---------------------------------------------------------------------------
    def _enter(self, method: str, name: str) -> None:
        self.calls.append((method, name))
        if self._unavailable:
            raise HypervisorUnavailable(f"{method} {name}: hypervisor unavailable", hint=UNAVAILABLE_HINT)
        pending = self._failures.get(method)
        if pending:
            raise pending.pop(0)

    def _record(self, name: str) -> _DomainRecord:
        rec = self._records.get(name)
        if rec is None:
            raise Gone(f"domain {name}: Domain not found")
        return rec

    def _pool(self, pool: str) -> _Pool:
        p = self._pools.get(pool)
        if p is None:
            raise Gone(f"storage pool {pool}: Storage pool not found")
        return p

    def _volume(self, pool: str, name: str) -> _Volume:
        vol = self._pool(pool).volumes.get(name)
        if vol is None:
            raise Gone(f"volume {name} in pool {pool}: Storage volume not found")
        return vol

    def _network(self, network: str) -> _Network:
        net = self._networks.get(network)
        if net is None:
            raise Gone(f"network {network}: Network not found")
        return net

    def _settle(self, rec: _DomainRecord) -> None:
        """Apply what clock time has done since the last look (a finished ACPI shutdown)."""
        if (
            rec.state is PowerState.SHUTTING_DOWN
            and rec.shutdown_requested_at is not None
            and self._clock.monotonic() >= rec.shutdown_requested_at + self.shutdown_seconds
        ):
            self._power_off(rec, PowerState.STOPPED)

    @staticmethod
    def _power_off(rec: _DomainRecord, state: PowerState) -> None:
        rec.state = state
        rec.started_at = None
        rec.shutdown_requested_at = None
        rec.boot_id = None

    def _path_exists(self, path: str) -> bool:
        if path in self._external_files:
            return True
        return any(p.at_path(path) is not None for p in self._pools.values())

    def _write_console(self, dom: Domain, data: bytes, *, truncate: bool) -> None:
        """Write to ``dom``'s console log if it names one in a pool (elsewhere: a file of
        the host's the fake does not model). Not refused for want of space: virtlogd's
        writes are not the pool's to refuse, and a start must not fail on them."""
        if not dom.console_log:
            return
        directory, _, name = dom.console_log.rpartition("/")
        for p in self._pools.values():
            if p.path.rstrip("/") == directory.rstrip("/"):
                old = p.volumes.get(name)
                before = b"" if truncate or old is None else (old.data or b"")
                content = before + data
                # put anew, so that the pool's allocation total follows the log's growth
                p.put(_Volume(name, dom.console_log, "raw", len(content), len(content),
                              data=content))
                return

    def _check_bootable(self, dom: Domain) -> None:
        missing: list[str] = []
        for disk in dom.disks:
            if not self._path_exists(disk.path):
                missing.append(disk.path)
                continue
            for pool in self._pools.values():
                vol = pool.at_path(disk.path)
                if vol is not None and vol.backing and not self._path_exists(vol.backing[0]):
                    missing.append(vol.backing[0])
        if dom.boot is not None:
            for path in (dom.boot.kernel, dom.boot.initrd):
                if path and not self._path_exists(path):
                    missing.append(path)
        if missing:
            raise HypervisorError(
                f"start domain {dom.name}: Cannot access storage file {missing[0]!r}: "
                "No such file or directory"
            )
        for nic in dom.interfaces:
            net = self._networks.get(nic.network)
            if net is None or not net.info.active:
                raise HypervisorError(f"start domain {dom.name}: network {nic.network!r} is not active")

    # --- domains ---------------------------------------------------------------------------
    def define_domain(self, domain: Domain) -> None:
        self._enter("define_domain", domain.name)
        rec = self._records.get(domain.name)
        if rec is None:
            self._records[domain.name] = _DomainRecord(domain)
        else:
            rec.definition = domain  # a running guest sees it at its next boot, as in libvirt

    def start(self, name: str) -> None:
        self._enter("start", name)
        rec = self._record(name)
        self._settle(rec)
        if rec.state in (PowerState.RUNNING, PowerState.SHUTTING_DOWN, PowerState.PAUSED):
            return
        self._check_bootable(rec.definition)
        rec.state = PowerState.RUNNING
        rec.started_at = self._clock.monotonic()
        rec.shutdown_requested_at = None
        rec.boot_id = f"{name}-boot-{next(self._boot_counter)}"
        boot_of = rec.definition.boot
        cmdline = (boot_of.cmdline or "") if boot_of is not None else ""
        boot = "".join(line.format(cmdline=cmdline) + "\n" for line in BOOT_LINES)
        self._write_console(rec.definition, boot.encode(), truncate=True)  # append='off'

    def shutdown(self, name: str) -> None:
        self._enter("shutdown", name)
        rec = self._record(name)
        self._settle(rec)
        if rec.state is not PowerState.RUNNING or rec.ignores_acpi:
            return  # already off or going down, or a guest that never hears the button
        rec.state = PowerState.SHUTTING_DOWN
        rec.shutdown_requested_at = self._clock.monotonic()

    def destroy(self, name: str) -> None:
        self._enter("destroy", name)
        rec = self._record(name)
        if rec.state in (PowerState.RUNNING, PowerState.SHUTTING_DOWN, PowerState.PAUSED):
            self._power_off(rec, PowerState.STOPPED)

    def undefine(self, name: str) -> None:
        self._enter("undefine", name)
        rec = self._records.get(name)
        if rec is None:
            return
        self._settle(rec)
        if rec.state in (PowerState.RUNNING, PowerState.SHUTTING_DOWN, PowerState.PAUSED):
            raise HypervisorError(f"undefine domain {name}: it is running; destroy it first")
        del self._records[name]

    def domain_state(self, name: str) -> PowerState:
        self._enter("domain_state", name)
        rec = self._records.get(name)
        if rec is None:
            return PowerState.MISSING
        self._settle(rec)
        return rec.state

    def domain_owner(self, name: str) -> Ownership | None:
        self._enter("domain_owner", name)
        rec = self._records.get(name)
        return rec.definition.owner if rec is not None else None

    def list_domains(self) -> list[DomainInfo]:
        self._enter("list_domains", "")
        out = []
        for name in sorted(self._records):
            rec = self._records[name]
            self._settle(rec)
            out.append(DomainInfo(name, rec.state, rec.definition.owner,
                                  domain_files(rec.definition)))
        return out

    # --- storage ---------------------------------------------------------------------------
    def pool_info(self, pool: str) -> PoolInfo:
        self._enter("pool_info", pool)
        p = self._pool(pool)
        return PoolInfo(p.name, p.path, p.capacity, p.available, p.active)

    def _add_volume(self, pool: str, vol: _Volume) -> VolumeInfo:
        p = self._pool(pool)
        if vol.name in p.volumes:
            raise HypervisorError(f"create volume {vol.name} in pool {pool}: name already in use")
        if vol.allocation > p.available:
            raise HypervisorError(
                f"create volume {vol.name} in pool {pool}: no space left "
                f"({vol.allocation} bytes wanted, {p.available} available)"
            )
        p.put(vol)
        return vol.info()

    def _path_in(self, pool: str, name: str) -> str:
        return f"{self._pool(pool).path.rstrip('/')}/{name}"

    def create_overlay(
        self, pool: str, *, name: str, backing_path: str, backing_format: str, capacity_bytes: int
    ) -> VolumeInfo:
        self._enter("create_overlay", name)
        check_volume_name(name)
        check_backing_format(name, backing_format)
        path = self._path_in(pool, name)
        vol = _Volume(name, path, "qcow2", capacity_bytes, min(OVERLAY_ALLOCATION, capacity_bytes),
                      backing=(backing_path, backing_format))
        return self._add_volume(pool, vol)

    def create_volume(self, pool: str, *, name: str, capacity_bytes: int) -> VolumeInfo:
        self._enter("create_volume", name)
        check_volume_name(name)
        # Data disks count their full size, so surge planning errs on the safe side.
        vol = _Volume(name, self._path_in(pool, name), "qcow2", capacity_bytes, capacity_bytes)
        return self._add_volume(pool, vol)

    def upload_volume(self, pool: str, *, name: str, data: bytes, fmt: str = "raw") -> VolumeInfo:
        self._enter("upload_volume", name)
        check_volume_name(name)
        check_upload_format(name, fmt)
        self._pool(pool).drop(name)
        vol = _Volume(name, self._path_in(pool, name), fmt, len(data), len(data), data=bytes(data))
        return self._add_volume(pool, vol)

    def upload_file(self, pool: str, *, name: str, path: str, fmt: str, sha256: str) -> VolumeInfo:
        self._enter("upload_file", name)
        check_volume_name(name)
        check_upload_format(name, fmt)
        expected = check_sha256(name, sha256)
        size = upload_file_size(name, path)
        p = self._pool(pool)
        have = p.volumes.get(name)
        if have is not None:
            if have.capacity == size and have.content_sha256() == expected:
                return have.info()  # the image is there already: nothing read, nothing sent
            p.drop(name)  # other content: replaced
        self.uploads.append((name, path))
        arrived = file_sha256(path)
        if arrived != expected:
            raise HypervisorError(
                f"upload {name} to pool {pool}: sha256 {arrived} on arrival, expected "
                f"{expected} ({path} read as {arrived}); the volume was deleted")
        vol = _Volume(name, self._path_in(pool, name), fmt, size, size, source=path,
                      sha256=arrived)
        return self._add_volume(pool, vol)

    def delete_volume(self, pool: str, name: str) -> None:
        self._enter("delete_volume", name)
        check_volume_name(name)
        self._pool(pool).drop(name)

    def list_volumes(self, pool: str) -> list[VolumeInfo]:
        self._enter("list_volumes", pool)
        p = self._pool(pool)
        return [p.volumes[n].info() for n in sorted(p.volumes)]

    def read_volume_tail(self, pool: str, name: str, *, max_bytes: int) -> bytes:
        self._enter("read_volume_tail", name)
        check_volume_name(name)
        check_tail_bytes(name, max_bytes)
        vol = self._volume(pool, name)
        if vol.data is not None:
            return vol.data[-max_bytes:]
        if vol.source is not None:  # a copy of a local file: its last bytes, never all of it
            with open(vol.source, "rb") as f:
                f.seek(max(0, vol.capacity - max_bytes))
                return f.read(max_bytes)
        return b""  # created empty: nothing was written into it here

    def find_volume(self, pool: str, name: str) -> VolumeInfo | None:
        self._enter("find_volume", name)
        check_volume_name(name)
        vol = self._pool(pool).volumes.get(name)
        return vol.info() if vol is not None else None

    # --- network ---------------------------------------------------------------------------
    def network_info(self, network: str) -> NetworkInfo:
        self._enter("network_info", network)
        return self._network(network).info

    def list_reservations(self, network: str) -> list[Reservation]:
        self._enter("list_reservations", network)
        return list(self._network(network).reservations)

    def leased_addresses(self, network: str) -> dict[str, str]:
        self._enter("leased_addresses", network)
        return dict(self._network(network).leases)

    def add_lease(self, network: str, ip: str, mac: str) -> None:
        """A DHCP lease the server still holds (e.g. of a deleted guest), for tests."""
        self._network(network).leases[ip] = mac.lower()

    def add_reservation(self, network: str, reservation: Reservation) -> None:
        self._enter("add_reservation", reservation.name)
        self._network(network).add(reservation, network=network)

    def remove_reservation(self, network: str, reservation: Reservation) -> None:
        self._enter("remove_reservation", reservation.name)
        self._network(network).remove(reservation)

    # --- host ------------------------------------------------------------------------------
    def host_info(self) -> HostInfo:
        self._enter("host_info", "")
        used = 0
        for rec in self._records.values():
            self._settle(rec)
            if rec.state in (PowerState.RUNNING, PowerState.PAUSED, PowerState.SHUTTING_DOWN):
                used += rec.definition.memory_mib * 1024 * 1024
        # capped after the domains' use, so that a host set to "this much left besides the
        # domains defined here" (the dry run's copy of a real host) reports just that
        total = self._host.memory_bytes_total
        available = max(0, min(self._host.memory_bytes_available - used, total))
        free = max(0, min(self._host.memory_bytes_free - used, available))
        return dataclasses.replace(self._host, memory_bytes_free=free,
                                   memory_bytes_available=available)

    def close(self) -> None:
        # Never fails, like closing a dead libvirt connection: cleanup paths call it.
        self.calls.append(("close", ""))
