"""The seam's rules live once, in ``hypervisor.base``, and both adapters use them."""

from __future__ import annotations

import inspect
from typing import Any, Protocol

import pytest

from orchestrator.clock import FakeClock
from orchestrator.errors import HypervisorError, InvalidInput
from orchestrator.hypervisor import base, fake, libvirt
from orchestrator.hypervisor.base import Hypervisor
from orchestrator.hypervisor.fake import FakeHypervisor
from orchestrator.hypervisor.libvirt import LibvirtHypervisor


@pytest.mark.parametrize("rule", ["check_volume_name", "check_backing_format",
                                  "check_upload_format", "reservation_present",
                                  "UNAVAILABLE_HINT"])
def test_both_adapters_take_the_rule_from_base(rule: str) -> None:
    assert getattr(fake, rule) is getattr(base, rule)
    assert getattr(libvirt, rule) is getattr(base, rule)


@pytest.mark.parametrize("module", [fake, libvirt], ids=["fake", "libvirt"])
def test_no_adapter_keeps_a_copy_of_a_rule(module: object) -> None:
    leftovers = {"_check_volume_name", "_UPLOAD_FORMATS", "_UNAVAILABLE_HINT"} & set(vars(module))
    assert not leftovers
    assert not [name for name, value in vars(module).items()
                if isinstance(value, str) and "libvirtd running" in value
                and value is not base.UNAVAILABLE_HINT]


@pytest.mark.parametrize("bad", ["", "a/b", "../x", ".hidden", "x\x00y"])
def test_unsafe_volume_names_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput, match="invalid volume name"):
        base.check_volume_name(bad)


def test_safe_names_and_formats_pass() -> None:
    base.check_volume_name("web-0-os.qcow2")
    base.check_backing_format("web-0-os.qcow2", "qcow2")
    for fmt in base.UPLOAD_FORMATS:
        base.check_upload_format("web-0-seed.iso", fmt)
    assert set(base.UPLOAD_FORMATS) == {"raw", "iso", "qcow2"}


def test_unknown_upload_format_names_the_accepted_ones() -> None:
    with pytest.raises(InvalidInput, match="format 'vmdk' not one of raw, iso, qcow2"):
        base.check_upload_format("web-0-seed.iso", "vmdk")


# --- the verb list ---------------------------------------------------------------------------
def _shape(fn: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_verbs_are_the_protocols_public_methods_in_order() -> None:
    methods = [name for name, _ in inspect.getmembers(Hypervisor, inspect.isfunction)
               if not name.startswith("_")]
    assert sorted(base.VERBS) == sorted(methods)
    assert len(set(base.VERBS)) == len(base.VERBS)
    assert "uri" not in base.VERBS  # a property, not a verb
    assert base.VERBS[0] == "define_domain" and base.VERBS[-1] == "close"  # declaration order


def test_mutating_verbs_are_verbs() -> None:
    assert base.MUTATING_VERBS <= set(base.VERBS)
    assert "close" not in base.MUTATING_VERBS


def test_a_verb_added_to_a_protocol_is_found() -> None:
    class Probe(Protocol):
        @property
        def uri(self) -> str: ...
        def list_things(self) -> list[str]: ...
        def _private(self) -> None: ...

    assert base._verbs(Probe) == ("list_things",)


@pytest.mark.parametrize("adapter", [FakeHypervisor, LibvirtHypervisor], ids=["fake", "libvirt"])
def test_both_adapters_implement_every_verb_with_its_signature(adapter: type) -> None:
    for verb in base.VERBS:
        implementation = getattr(adapter, verb, None)
        assert callable(implementation), f"{adapter.__name__} lacks {verb}"
        assert _shape(implementation) == _shape(getattr(Hypervisor, verb)), verb


def test_the_fake_injects_faults_into_every_verb_but_close() -> None:
    hv = FakeHypervisor(clock=FakeClock())
    for verb in base.VERBS:
        if verb == "close":
            with pytest.raises(InvalidInput):  # close never fails
                hv.fail_next(verb, HypervisorError("boom"))
        else:
            hv.fail_next(verb, HypervisorError("boom"))
