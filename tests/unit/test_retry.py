"""A daemon that goes away for a while: calls are retried with backoff, then give up."""

from __future__ import annotations

import pytest

from orchestrator.clock import FakeClock
from orchestrator.errors import Gone, HypervisorUnavailable
from orchestrator.hypervisor.fake import FakeHypervisor
from orchestrator.hypervisor.retry import Retrying


def make(outage: float, give_up_after: float = 30.0) -> tuple[Retrying, list[float]]:
    clock = FakeClock(start=0.0)
    hv = FakeHypervisor(clock=clock)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)
        if clock.monotonic() >= outage:
            hv.set_unavailable(False)  # libvirtd is back

    retrying = Retrying(hv, give_up_after=give_up_after, sleep=sleep, monotonic=clock.monotonic)
    retrying.list_domains()  # reached once: the daemon was up
    hv.set_unavailable(True)  # ... and now it restarts
    return retrying, slept


def test_calls_succeed_once_the_daemon_is_back() -> None:
    hv, slept = make(outage=5.0)
    assert hv.network_info("default").name == "default"
    assert slept == [0.5, 1.0, 2.0, 4.0]  # exponential backoff until t >= 5


def test_a_long_outage_gives_up_with_the_error() -> None:
    hv, slept = make(outage=1000.0, give_up_after=20.0)
    with pytest.raises(HypervisorUnavailable):
        hv.list_domains()
    assert sum(slept) <= 20.0 and slept[-1] == 8.0


def test_other_errors_are_not_retried() -> None:
    hv, slept = make(outage=0.0)  # down until the first wait
    hv.network_info("default")
    assert slept == [0.5]
    with pytest.raises(Gone):
        hv.network_info("nowhere")
    assert slept == [0.5]  # a permanent error is raised at once


def test_a_daemon_never_reached_fails_at_once() -> None:
    clock = FakeClock(start=0.0)
    hv = FakeHypervisor(clock=clock)
    hv.set_unavailable(True)
    slept: list[float] = []
    with pytest.raises(HypervisorUnavailable):
        Retrying(hv, sleep=slept.append, monotonic=clock.monotonic).list_domains()
    assert slept == []
