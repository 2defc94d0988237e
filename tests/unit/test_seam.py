"""The seam's rules live once, in ``hypervisor.base``, and both adapters use them."""

from __future__ import annotations

import pytest

from orchestrator.errors import InvalidInput
from orchestrator.hypervisor import base, fake, libvirt


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
