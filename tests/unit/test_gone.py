"""A hypervisor object that vanishes mid-operation is ``errors.Gone``: the operation ran and
failed (exit 1), not bad input (exit 2). "A thing the user named does not exist" stays
``NotFound`` (exit 2, nothing changed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator import errors

from .fakecli import FakeCli


def test_gone_is_a_hypervisor_error_not_bad_input() -> None:
    assert issubclass(errors.Gone, errors.HypervisorError)
    assert not issubclass(errors.Gone, errors.InvalidInput)
    assert errors.Gone("domain web-0: Domain not found").exit_code == 1
    assert not errors.Gone("x").temporary
    assert errors.NotFound("scale set web not found").exit_code == 2


def test_a_domain_undefined_during_an_apply_exits_1(cli: FakeCli, tmp_path: Path) -> None:
    hv = cli.world.hv
    real_start = hv.start

    def start_after_someone_undefined_it(name: str) -> None:
        hv.undefine(name)  # `virsh undefine` between our define and our start
        real_start(name)

    hv.start = start_after_someone_undefined_it  # type: ignore[method-assign]
    path = tmp_path / "web.yaml"
    path.write_text("apiVersion: orchestrator/v1\nkind: ScaleSet\nmetadata: {name: web}\n"
                    "spec: {image: tiny:1, capacity: 1}\n")
    code, _, err = cli.run("vmss", "apply", "-f", str(path))
    assert code == 1, err
    assert err.splitlines()[-1] == "error: domain web-0: Domain not found", err
    assert cli.world.resources() == (set(), set(), set())  # what was made is removed


def test_missing_network_or_pool_is_still_bad_input(cli: FakeCli) -> None:
    """The use case turns the hypervisor's Gone into InvalidInput: the user named them."""
    before: Any = cli.world.resources()
    code, _, err = cli.run("vmss", "create", "--name", "web", "--image", "tiny:1",
                           "--network", "nowhere")
    assert code == 2, err
    assert "network nowhere does not exist" in err
    assert cli.world.resources() == before
