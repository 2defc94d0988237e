"""A prober for the simulated hypervisor: what an SSH probe would see of a fake guest.

Owned here: ``FakeProber``. Used with ``hypervisor.fake.FakeHypervisor`` and
``clock.FakeClock`` by the unit tests and by dry runs, so the same engine and health code
runs in milliseconds. A guest answers once it has been running ``boot_seconds``; its health
command fails when its name is in ``unhealthy`` or its image (the registry's disk file its
host's copy was made from) is in ``broken_images``.
Called by: dryrun.simworld
"""

from __future__ import annotations

from orchestrator.clock import Clock
from orchestrator.engine.health import ProbeOutcome, ProbeSettings, ProbeTarget
from orchestrator.hypervisor.fake import FakeHypervisor


class FakeProber:
    def __init__(self, hv: FakeHypervisor, *, clock: Clock, latency: float = 0.05) -> None:
        self.hv = hv
        self.hosts: list[FakeHypervisor] = []  # further fake hosts whose guests it reaches
        self.clock = clock
        self.latency = latency
        self.unhealthy: set[str] = set()
        self.broken_images: set[str] = set()
        self.probes: list[str] = []

    def _host_of(self, name: str) -> FakeHypervisor:
        for hv in self.hosts:
            if hv.definition(name) is not None:
                return hv
        return self.hv

    def _image_of(self, name: str) -> str | None:
        """The image disk (the registry's file) a domain's OS disk rests on."""
        hv = self._host_of(name)
        domain = hv.definition(name)
        if domain is None:
            return None
        for disk in domain.disks:
            if disk.backing is not None:
                return hv.source_of(disk.backing.path) or disk.backing.path
        return None

    async def probe(self, target: ProbeTarget, settings: ProbeSettings) -> ProbeOutcome:
        self.probes.append(target.name)
        at = self.clock.now()
        if target.endpoint is None or not self._host_of(target.name).guest_ready(target.name):
            await self.clock.sleep(min(settings.timeout_seconds, 1.0))
            return ProbeOutcome(at=at, kind="unreachable", exit_status=None, latency=None,
                                output="", error="connection refused")
        await self.clock.sleep(self.latency)
        failing = target.name in self.unhealthy or self._image_of(target.name) in self.broken_images
        return ProbeOutcome(at=at, kind="unhealthy" if failing else "healthy",
                            exit_status=1 if failing else 0, latency=self.latency,
                            output="unhealthy" if failing else "ok", error=None)
