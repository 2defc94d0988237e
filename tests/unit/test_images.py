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

from orchestrator.errors import InvalidInput, OperationFailed
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


# A stand-in for a recipe: the real shared helpers, a named step that runs a tool under
# `quiet` (its output in the log), as images/debian-12/build.sh runs mmdebstrap.
FAILING_RECIPE = r"""#!/bin/bash
set -Eeuo pipefail
. "$REAL_LIB"
TMP=
LOG=/dev/null
STEP="starting"
bootstrap() {
    "$TOOLS/fake-mmdebstrap" --mode=unshare "$1"
}
main() {
    STEP="checking tools"
    [[ ${FAIL:-} != die ]] || die "frobnicate not found (apt-get install frobnicate)"
    begin_build fake
    # an earlier tool's output, in the same log: not the reason of a later failure
    quiet echo "Setting up libgpg-error0; an error that was not"
    STEP="mmdebstrap bookworm"
    [[ ${FAIL:-} != tool ]] || quiet bootstrap "$TMP/rootfs.tar"
    [[ ${FAIL:-} != quiet ]] || quiet "$TOOLS/fake-mmdebstrap" --variant=apt "$TMP/rootfs.tar"
    STEP="measuring the disk"
    local size
    [[ ${FAIL:-} != substitution ]] || size=$(stat -c %s "$TMP/no-such-disk.raw")
    echo "fake: done ${size:-}"
}
main "$@"
"""
# Like mmdebstrap: progress on stdout, the reason on stderr, a status of its own.
FAKE_TOOL = """#!/bin/sh
echo "I: chroot architecture amd64 is equal to the host's architecture"
echo "E: cannot reach deb.debian.org: Temporary failure resolving" >&2
echo "25% done"
exit 25
"""


class TestRecipeErrors:
    """A failing recipe says which step failed and why, from the recipe's own error line."""

    @pytest.fixture
    def recipe(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        recipes = tmp_path / "recipes"
        script = recipes / "debian-12" / "build.sh"
        script.parent.mkdir(parents=True)
        script.write_text(FAILING_RECIPE)
        tools = tmp_path / "tools"
        tools.mkdir()
        (tools / "fake-mmdebstrap").write_text(FAKE_TOOL)
        (tools / "fake-mmdebstrap").chmod(0o755)
        monkeypatch.setenv("ORCH_IMAGES_DIR", str(recipes))
        monkeypatch.setenv("REAL_LIB", str(Path(__file__).parents[2] / "images/lib/recipe.sh"))
        monkeypatch.setenv("TOOLS", str(tools))
        monkeypatch.setenv("TMPDIR", str(tmp_path))
        return script

    def fail(self, world: World, monkeypatch: pytest.MonkeyPatch, how: str) -> str:
        monkeypatch.setenv("FAIL", how)
        with pytest.raises(OperationFailed) as exc:
            world.registry.build("debian-12", "1", now="2026-01-01T00:00:00Z")
        message = exc.value.one_line()
        assert "\n" not in message
        assert [i.ref for i in world.registry.list()] == ["tiny:1"]  # nothing registered
        return message

    def test_a_tool_run_quietly_names_the_step_the_command_and_the_tool_s_reason(
            self, world: World, recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        message = self.fail(world, monkeypatch, "tool")
        assert message.startswith("image recipe debian-12 failed: step mmdebstrap bookworm: ")
        # the command as the recipe writes it
        assert '"$TOOLS/fake-mmdebstrap" --mode=unshare "$1" exited 25' in message
        # why, from the tool's log: its last error line, not the progress printed after it
        assert message.endswith(": E: cannot reach deb.debian.org: Temporary failure resolving")

    def test_a_tool_run_by_quiet_itself_is_named_with_its_arguments(
            self, world: World, recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        message = self.fail(world, monkeypatch, "quiet")
        assert message.startswith("image recipe debian-12 failed: step mmdebstrap bookworm: "
                                  f"{os.environ['TOOLS']}/fake-mmdebstrap --variant=apt ")
        assert "exited 25" in message and '"$@"' not in message
        assert message.endswith(": E: cannot reach deb.debian.org: Temporary failure resolving")

    def test_a_failed_command_substitution_is_reported_once_by_its_command(
            self, world: World, recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        message = self.fail(world, monkeypatch, "substitution")
        assert message.startswith("image recipe debian-12 failed: step measuring the disk: stat")
        assert "exited 1" in message and "size=" not in message
        assert "libgpg" not in message  # stat said why on stderr; the log is other tools'

    def test_die_names_the_step_and_the_reason(
            self, world: World, recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        message = self.fail(world, monkeypatch, "die")
        assert message == ("image recipe debian-12 failed: step checking tools: frobnicate "
                           "not found (apt-get install frobnicate)")

    def test_the_recipe_s_line_wins_over_what_is_printed_after_it(
            self, world: World, recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        recipe.write_text(FAILING_RECIPE.replace(
            'main "$@"', 'trap \'cleanup; echo "rm: cannot remove x" >&2\' EXIT\nmain "$@"'))
        message = self.fail(world, monkeypatch, "tool")
        assert "step mmdebstrap bookworm" in message and "rm: cannot remove" not in message

    @pytest.mark.parametrize(("body", "expected"), [
        ('echo "one"; echo "the last word" >&2; exit 3', "the last word"),
        ("exit 3", "exit 3"),
    ], ids=["last-stderr-line", "nothing-said"])
    def test_without_the_recipe_s_line_the_last_stderr_line_or_the_status(
            self, world: World, recipe: Path, monkeypatch: pytest.MonkeyPatch,
            body: str, expected: str) -> None:
        recipe.write_text(f"#!/bin/bash\n{body}\n")
        assert self.fail(world, monkeypatch, "") == f"image recipe debian-12 failed: {expected}"


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
