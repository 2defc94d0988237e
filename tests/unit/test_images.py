"""Image recipes and what an image declares: the recipes `orch image build` knows, the line a
recipe prints about what it built, and the least memory an image needs (manifest
``minMemoryMiB``), refused before anything changes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from orchestrator.errors import InvalidInput
from orchestrator.images import RECIPES, recipes_dir
from orchestrator.model import ScaleSetSpec, validate
from tests.world import Upgrades, World


def spec(image: str, **model: object) -> ScaleSetSpec:
    return validate(ScaleSetSpec, {"name": "web", "capacity": 1,
                                   "model": {"image": image, **model}})


class TestMinimumMemory:
    def test_create_with_less_than_the_image_needs_changes_nothing(self, world: World) -> None:
        world.register_image("debian-12", "1", minMemoryMiB=512)
        with pytest.raises(InvalidInput, match=r"needs at least 512 MiB .*gives it 256 MiB"):
            world.service.create(spec("debian-12:1"))
        assert world.store.list_sets() == []
        assert world.resources() == (set(), set(), set())

    def test_create_with_enough_memory(self, world: World) -> None:
        world.register_image("debian-12", "1", minMemoryMiB=512)
        world.service.create(spec("debian-12:1", memoryMiB=512))
        assert world.hv.domains["web-0"].memory_mib == 512

    def test_an_image_without_a_minimum_takes_any_memory(self, world: World) -> None:
        world.service.create(spec("tiny:1", memoryMiB=64))
        assert world.registry.get("tiny:1").min_memory_mib == 0

    def test_update_to_a_bigger_image_needs_the_memory_in_the_same_update(
            self, world: World) -> None:
        world.register_image("debian-12", "1", minMemoryMiB=512)
        world.service.create(spec("tiny:1"))
        up = Upgrades(world.service)
        before = world.store.get_set("web").generation
        with pytest.raises(InvalidInput, match="needs at least 512 MiB"):
            up.update("web", {"model": {"image": "debian-12:1"}})
        assert world.store.get_set("web").generation == before
        up.update("web", {"model": {"image": "debian-12:1", "memoryMiB": 512}})
        assert world.store.get_set("web").generation == before + 1  # Manual: recorded only


class TestRecipes:
    def test_every_recipe_has_a_build_script(self) -> None:
        assert "debian-12" in RECIPES
        for recipe in RECIPES:
            script = recipes_dir() / recipe / "build.sh"
            assert script.is_file() and os.access(script, os.X_OK), script

    def test_broken_is_only_for_tiny(self, world: World) -> None:
        with pytest.raises(InvalidInput, match="--broken is only for the tiny recipe"):
            world.registry.build("debian-12", "1", broken=True, now="2026-01-01T00:00:00Z")
        assert world.registry.get("tiny:1")  # nothing else registered
        assert [i.ref for i in world.registry.list()] == ["tiny:1"]

    def test_the_recipe_summary_is_shown(self, world: World, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
        # a stand-in recipe with the same conventions: OUT_DIR VERSION, manifest last
        recipes = tmp_path / "recipes"
        script = recipes / "debian-12" / "build.sh"
        script.parent.mkdir(parents=True)
        script.write_text(
            "#!/bin/bash\nset -e\nmkdir -p \"$1\"\n"
            "qemu-img create -q -f qcow2 \"$1/disk.qcow2\" 16M\n"
            "echo '{\"name\": \"debian-12\", \"sshUser\": \"debian\", \"minMemoryMiB\": 256}'"
            " >\"$1/manifest.json\"\n"
            "echo noise\necho \"debian-12:$2 built: disk.qcow2 0.2 MiB, 1.0 s\"\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setenv("ORCH_IMAGES_DIR", str(recipes))
        shown: list[str] = []
        image = world.registry.build("debian-12", "7", progress=shown.append,
                                     now="2026-01-01T00:00:00Z")
        assert shown == ["building debian-12:7", "debian-12:7 built: disk.qcow2 0.2 MiB, 1.0 s"]
        assert image.ssh_user == "debian" and image.min_memory_mib == 256 and image.kernel is None
        manifest = json.loads((image.directory / "manifest.json").read_text())
        assert manifest["virtualSize"] == 16 * 2**20 and "disk" in manifest["sha256"]


def test_recipe_scripts_are_shellcheck_clean() -> None:
    scripts = [str(recipes_dir() / r / "build.sh") for r in RECIPES]
    scripts.append(str(recipes_dir() / "lib" / "recipe.sh"))
    scripts += [str(p) for p in sorted(recipes_dir().glob("*/files/*"))
                if p.read_bytes().startswith(b"#!/bin/sh")]
    try:
        proc = subprocess.run(["shellcheck", "-x", *scripts], capture_output=True, text=True,
                              check=False)
    except FileNotFoundError:
        pytest.fail("shellcheck is not installed: `make test-packages` installs it (as root; "
                    "`make test` and `make test-fast` run it)", pytrace=False)
    assert proc.returncode == 0, proc.stdout
