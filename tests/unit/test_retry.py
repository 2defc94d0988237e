"""A daemon that goes away for a while: calls are retried with backoff, then give up."""

from __future__ import annotations

import inspect
import time
from typing import Any

import pytest

from orchestrator.clock import FakeClock
from orchestrator.errors import Gone, HypervisorUnavailable
from orchestrator.hypervisor.base import VERBS, Hypervisor
from orchestrator.hypervisor.fake import FakeHypervisor
from orchestrator.hypervisor.retry import Retrying


class OutageClock(FakeClock):
    """A FakeClock that records each pause; the daemon is back once ``outage`` has passed."""

    def __init__(self, outage: float) -> None:
        super().__init__(start=0.0)
        self.outage = outage
        self.paused: list[float] = []
        self.hv: FakeHypervisor | None = None

    def pause(self, seconds: float) -> None:
        self.paused.append(seconds)
        super().pause(seconds)
        if self.hv is not None and self.monotonic() >= self.outage:
            self.hv.set_unavailable(False)  # libvirtd is back


@pytest.fixture(autouse=True)
def no_real_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(seconds: float) -> None:
        raise AssertionError(f"time.sleep({seconds}): back-off must go through the clock")

    monkeypatch.setattr(time, "sleep", refuse)


def make(outage: float, give_up_after: float = 30.0) -> tuple[Retrying, list[float]]:
    clock = OutageClock(outage)
    hv = FakeHypervisor(clock=clock)
    clock.hv = hv
    retrying = Retrying(hv, clock=clock, give_up_after=give_up_after)
    retrying.list_domains()  # reached once: the daemon was up
    hv.set_unavailable(True)  # ... and now it restarts
    return retrying, clock.paused


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
    with pytest.raises(HypervisorUnavailable):
        Retrying(hv, clock=clock).list_domains()
    assert clock.monotonic() == 0.0  # no pause at all


def test_retries_are_logged() -> None:
    clock = OutageClock(outage=1.0)
    hv = FakeHypervisor(clock=clock)
    clock.hv = hv
    lines: list[str] = []
    retrying = Retrying(hv, clock=clock, log=lines.append)
    retrying.list_domains()
    hv.set_unavailable(True)
    retrying.domain_state("web-0")
    assert len(lines) == 2 and "retrying domain_state in 0.5s" in lines[0], lines


# --- a typed Hypervisor: every verb explicit, each forwarded to the same verb ---------------
def test_every_verb_is_defined_explicitly_on_the_class() -> None:
    assert "__getattr__" not in vars(Retrying)
    assert set(VERBS) <= set(vars(Retrying)), set(VERBS) - set(vars(Retrying))
    for verb in VERBS:
        ours = inspect.signature(getattr(Retrying, verb)).parameters.values()
        theirs = inspect.signature(getattr(Hypervisor, verb)).parameters.values()
        assert [(p.name, p.kind, p.default) for p in ours] == \
            [(p.name, p.kind, p.default) for p in theirs], verb


class Recorder:
    """Stands in for a Hypervisor: records each call (verb, args, kwargs), returns a token."""

    uri = "recorder:///"

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, verb: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((verb, args, kwargs))
            return f"result of {verb}"
        return call


@pytest.mark.parametrize("verb", VERBS)
def test_each_verb_forwards_its_arguments_to_the_same_verb(verb: str) -> None:
    inner = Recorder()
    retrying = Retrying(inner, clock=FakeClock())  # type: ignore[arg-type]
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for p in list(inspect.signature(getattr(Hypervisor, verb)).parameters.values())[1:]:
        if p.kind is p.KEYWORD_ONLY:
            kwargs[p.name] = f"<{p.name}>"
        else:
            args.append(f"<{p.name}>")
    assert getattr(retrying, verb)(*args, **kwargs) == f"result of {verb}"
    assert inner.calls == [(verb, tuple(args), kwargs)]
    assert retrying.uri == "recorder:///"
