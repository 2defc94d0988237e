"""Images on each host (engine.copies): an image's files are copied once into a host's pool,
verified, recorded, and reused; domains rest on those copies; a copy cut short or deleted by
hand is made again; `image delete` and `host remove` take copies away where nothing needs them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from orchestrator import locks
from orchestrator.engine import copies
from orchestrator.engine.copies import copy_volume, files_of, is_copy
from orchestrator.errors import Conflict
from orchestrator.hypervisor.fake import FakeHypervisor
from orchestrator.model import ScaleSetSpec, validate
from orchestrator.store import ImageRecord
from orchestrator.usecases import images as images_usecase
from tests.world import World, run

from .fakecli import FakeCli


def spec(capacity: int, image: str = "tiny:1") -> ScaleSetSpec:
    return validate(ScaleSetSpec, {"name": "web", "capacity": capacity, "model": {"image": image}})


def copy_names(hv: FakeHypervisor) -> set[str]:
    return {v.name for v in hv.list_volumes("default") if is_copy(v.name)}


def expected_copies(world: World, ref: str) -> set[str]:
    return {copy_volume(f.sha256, f.fmt) for f in files_of(world.registry.get(ref))}


def test_each_file_is_copied_once_and_every_instance_rests_on_the_copy(world: World) -> None:
    world.service.create(spec(3))
    image = world.registry.get("tiny:1")
    # disk, kernel and initrd: one upload each, for three instances
    assert sorted(path for _, path in world.hv.uploads) == sorted(
        str(p) for p in (image.disk, image.kernel, image.initrd))
    assert copy_names(world.hv) == expected_copies(world, "tiny:1")
    pool = world.hv.pool_info("default").path
    for name, domain in world.hv.domains.items():
        assert domain.boot is not None and domain.boot.kernel is not None
        paths = [d.path for d in domain.disks] + [domain.boot.kernel, domain.boot.initrd or ""]
        paths += [d.backing.path for d in domain.disks if d.backing is not None]
        assert all(p.startswith(pool + "/") for p in paths), (name, paths)
    # a later command finds the recorded copies and sends nothing
    world.service.scale("web", 5)
    assert len(world.hv.uploads) == 3
    assert {r.volume for r in world.store.image_copies("local")} == expected_copies(world, "tiny:1")


def test_every_host_gets_its_own_copy(world: World) -> None:
    hosts = [world.add_host(f"h{n}", fault_domain=f"fd-{n}") for n in (1, 2, 3)]
    world.service.create(spec(6))
    for hv in hosts:
        assert copy_names(hv) == expected_copies(world, "tiny:1")
        assert len(hv.uploads) == 3
        for domain in hv.domains.values():
            backing = domain.disks[0].backing
            assert backing is not None and backing.path.startswith(hv.pool_info("default").path)
    assert {r.host for r in world.store.image_copies()} == {"h1", "h2", "h3"}


def test_a_copy_cut_short_is_verified_and_replaced(world: World) -> None:
    """A process killed mid-upload leaves a volume of the copy's name with other content and
    no record: the next copy does not trust it."""
    disk = files_of(world.registry.get("tiny:1"))[0]
    name = copy_volume(disk.sha256, "qcow2")
    world.hv.add_file_volume("default", name=name, source=str(disk.local), sha256="0" * 64,
                             size=1, fmt="qcow2")
    world.service.create(spec(1))
    assert (name, str(disk.local)) in world.hv.uploads
    assert world.store.find_image_copy("local", disk.sha256) is not None
    backing = world.hv.volume_backing("default", "web-0-os0.qcow2")
    assert backing is not None and world.hv.source_of(backing[0]) == str(disk.local)


def test_a_recorded_copy_deleted_by_hand_is_made_again(world: World) -> None:
    world.service.create(spec(1))
    disk = files_of(world.registry.get("tiny:1"))[0]
    world.hv.delete_volume("default", copy_volume(disk.sha256, "qcow2"))  # `virsh vol-delete`
    world.service.scale("web", 2)
    assert [path for _, path in world.hv.uploads].count(str(disk.local)) == 2
    assert copy_volume(disk.sha256, "qcow2") in copy_names(world.hv)
    assert world.store.find_image_copy("local", disk.sha256) is not None


def test_a_copy_another_process_is_making_is_waited_for_then_refused(world: World) -> None:
    disk = files_of(world.registry.get("tiny:1"))[0]
    lock = world.state_dir / "locks" / f"copy-local-{disk.sha256[:16]}.lock"
    held = locks.try_take(lock, purpose="copy in another process")
    assert isinstance(held, int)
    try:
        t0 = world.clock.monotonic()
        with pytest.raises(Conflict, match="being copied to host local by pid"):
            run(copies.ensure(world.service.engine, world.service.engine.at("local"),
                              world.registry.get("tiny:1")))
        assert world.clock.monotonic() - t0 >= copies.COPY_WAIT
        assert world.hv.uploads == []
    finally:
        locks.release(held)


def _twin(world: World, ref: str, version: str) -> str:
    """Another registered version whose files are byte copies of ``ref``'s."""
    rec = world.registry.get(ref).record
    directory = Path(rec.path).parent / version
    shutil.copytree(rec.path, directory)
    world.store.add_image(ImageRecord(rec.name, version, rec.sha256, str(directory),
                                      rec.manifest, rec.created_at))
    return f"{rec.name}:{version}"


def test_image_delete_removes_its_copies_but_not_shared_ones(world: World) -> None:
    world.register_image("tiny", "2")
    world.service.create(spec(1, image="tiny:2"))
    twin = _twin(world, "tiny:2", "2b")
    world.service.delete("web")
    assert copy_names(world.hv) == expected_copies(world, "tiny:2")
    # tiny:2b shares every file with tiny:2: deleting it must leave them
    assert run(images_usecase.delete(world.env, twin)) == []
    assert copy_names(world.hv) == expected_copies(world, "tiny:2")
    assert run(images_usecase.delete(world.env, "tiny:2")) == []
    assert copy_names(world.hv) == set()
    assert world.store.image_copies() == []


def test_an_image_kept_for_rollback_is_in_use(world: World) -> None:
    world.register_image("tiny", "2")
    world.service.create(spec(1))
    inst = world.store.find_instance("web", 0)
    assert inst is not None
    world.store.update_instance(inst, prev_image="tiny:2")
    with pytest.raises(Conflict, match="is used by a scale set"):
        run(images_usecase.delete(world.env, "tiny:2"))
    assert world.registry.get("tiny:2").ref == "tiny:2"


def test_copies_on_a_host_that_does_not_answer_stay_for_the_next_delete(world: World) -> None:
    world.register_image("tiny", "2")
    h1 = world.add_host("h1", fault_domain="fd-1")
    world.service.create(spec(1, image="tiny:2"))
    world.service.delete("web")
    copies_before = copy_names(h1)
    assert copies_before == expected_copies(world, "tiny:2")
    h1.set_unavailable()
    problems = run(images_usecase.delete(world.env, "tiny:2"))
    assert problems == [("host h1 does not answer: its image copies stay until the next "
                         "`orch image delete` or `orch host remove`")]
    h1.set_unavailable(False)
    assert copy_names(h1) == copies_before
    assert len(world.store.image_copies("h1")) == 3
    assert run(images_usecase.delete(world.env, "tiny:1")) == []  # any later delete prunes
    assert copy_names(h1) == set() and world.store.image_copies() == []


def test_image_delete_on_the_command_line_warns_of_a_silent_host(cli: FakeCli) -> None:
    world = cli.world
    world.register_image("tiny", "2")
    h1 = world.add_host("h1", fault_domain="fd-1")
    world.service.create(spec(1, image="tiny:2"))
    world.service.delete("web")
    h1.set_unavailable()
    code, _, err = cli.run("image", "delete", "tiny:2")
    assert code == 0
    assert "host h1 does not answer: its image copies stay" in err
    assert "deleted tiny:2" in err


def test_a_copy_a_domain_still_names_is_kept(world: World) -> None:
    """Another state dir's set on the same host rests on the same copy (same file, same
    name): deleting the image here must not take its backing file away."""
    world.register_image("tiny", "2")
    world.service.create(spec(1, image="tiny:2"))
    inst = world.store.find_instance("web", 0)
    assert inst is not None
    disk = copy_volume(files_of(world.registry.get("tiny:2"))[0].sha256, "qcow2")
    world.store.delete_instance("web", 0)  # as if the domain belonged to another controller
    world.store.delete_set("web")
    problems = run(images_usecase.delete(world.env, "tiny:2"))
    assert f"host local: {disk} kept: domain web-0 uses it" in problems
    assert disk in copy_names(world.hv)
    world.hv.destroy("web-0")
    world.hv.undefine("web-0")
    assert run(images_usecase.delete(world.env, "tiny:1")) == []  # the next prune takes it
    assert copy_names(world.hv) == set()

