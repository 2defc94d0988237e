"""Every storage verb of the libvirt adapter holds its storage lock while it touches a pool:
libvirt refuses pool work ("pool ... has asynchronous jobs running") while another thread's
volume creation or upload is in flight, and a pool refresh (``list_volumes``,
``find_volume``, ``read_volume_tail``, ``pool_info``) is such work. Checked on
``test:///default`` by recording, each time a verb gets hold of a pool, whether the lock is
held; the verbs are read off the Protocol, so a new one is checked too."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import OrchError
from orchestrator.hypervisor.base import VERBS, Hypervisor
from orchestrator.hypervisor.libvirt import LibvirtHypervisor

POOL = "default-pool"


def storage_verbs() -> list[str]:
    """The verbs whose first parameter is a pool."""
    out = []
    for verb in VERBS:
        params = list(inspect.signature(getattr(Hypervisor, verb)).parameters)
        if len(params) > 1 and params[1] == "pool":
            out.append(verb)
    return sorted(out)


def arguments(verb: str, tmp_path: Path) -> dict[str, Any]:
    image = tmp_path / "image.raw"
    image.write_bytes(b"\0" * 4096)
    return {
        "create_overlay": {"name": "v.qcow2", "backing_path": str(image),
                           "backing_format": "raw", "capacity_bytes": 4096},
        "create_volume": {"name": "v.qcow2", "capacity_bytes": 4096},
        "upload_volume": {"name": "v.iso", "data": b"x", "fmt": "iso"},
        "upload_file": {"name": "v.raw", "path": str(image), "fmt": "raw",
                        "sha256": "0" * 64},
        "delete_volume": {"name": "v.qcow2"},
        "find_volume": {"name": "v.qcow2"},
        "read_volume_tail": {"name": "v.qcow2", "max_bytes": 16},
    }.get(verb, {})


def test_the_storage_verbs_are_the_expected_ones() -> None:
    assert {"list_volumes", "find_volume", "pool_info", "create_volume"} <= set(storage_verbs())


@pytest.mark.parametrize("verb", storage_verbs())
def test_a_storage_verb_holds_the_storage_lock_when_it_touches_a_pool(
        verb: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hv = LibvirtHypervisor("test:///default")
    seen: list[bool] = []
    original = hv._pool

    def pool(name: str) -> Any:
        seen.append(hv._storage_lock._is_owned())  # type: ignore[attr-defined]
        return original(name)

    monkeypatch.setattr(hv, "_pool", pool)
    kwargs = arguments(verb, tmp_path)
    name = kwargs.pop("name", None)
    call = getattr(hv, verb)
    try:
        if verb in ("delete_volume", "find_volume", "read_volume_tail"):
            call(POOL, name, **kwargs)
        elif name is not None:
            call(POOL, name=name, **kwargs)
        else:
            call(POOL, **kwargs)
    except OrchError:
        pass  # what the test driver cannot do (download) still went through the lock
    assert seen and all(seen), (verb, seen)
    hv.close()
