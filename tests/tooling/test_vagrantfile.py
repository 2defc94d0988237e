"""The top-level Vagrantfile (the test bed VM) is checked with Debian's `vagrant validate`.

`make test` and `make test-fast` install Debian's ``vagrant`` and ``vagrant-libvirt``
(``make test-packages``), so a missing ``vagrant`` fails these tests instead of skipping them.
Validation is offline and takes under a second: it loads the Vagrantfile, the libvirt
provider plugin, and checks every setting (unknown ones are errors). Vagrant's own state
(``VAGRANT_HOME``, the ``.vagrant`` dot dir) goes to a temporary directory, never the checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VAGRANTFILE = ROOT / "Vagrantfile"


def vagrant_validate(project_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.fail("vagrant is not installed: `make test-packages` installs Debian's "
                    "vagrant and vagrant-libvirt")
    env = dict(os.environ, VAGRANT_HOME=str(tmp_path / "vagrant-home"),
               VAGRANT_DOTFILE_PATH=str(tmp_path / "dot-vagrant"),
               VAGRANT_DEFAULT_PROVIDER="libvirt", VAGRANT_CHECKPOINT_DISABLE="1",
               VAGRANT_NO_COLOR="1")
    env.pop("VAGRANT_VAGRANTFILE", None)
    env.pop("VAGRANT_CWD", None)
    return subprocess.run([vagrant, "validate"], cwd=project_dir, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def broken_copy(tmp_path: Path, old: str, new: str) -> Path:
    """A directory holding the Vagrantfile with ``old`` replaced by ``new``."""
    text = VAGRANTFILE.read_text()
    assert old in text, f"{old!r} not in the Vagrantfile: the test needs updating"
    project = tmp_path / "project"
    project.mkdir()
    (project / "Vagrantfile").write_text(text.replace(old, new, 1))
    return project


def test_vagrantfile_validates(tmp_path: Path) -> None:
    dot_dir_before = (ROOT / ".vagrant").exists()
    proc = vagrant_validate(ROOT, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout
    assert (ROOT / ".vagrant").exists() == dot_dir_before  # its state went to tmp_path


@pytest.mark.parametrize(("old", "new", "expected"), [
    # an unknown libvirt provider setting: proves the vagrant-libvirt plugin checked it
    ("libvirt.nested = true", "libvirt.nested = true\n    libvirt.no_such_option = 1",
     "no_such_option"),
    # an unknown core setting
    ("config.vm.box = ", "config.vm.boxx = ", "boxx"),
    # a Ruby syntax error
    ('Vagrant.configure("2") do |config|', 'Vagrant.configure("2") do |config| do',
     "syntax error"),
], ids=["provider-setting", "core-setting", "ruby-syntax"])
def test_broken_vagrantfile_fails_validation(tmp_path: Path, old: str, new: str,
                                             expected: str) -> None:
    proc = vagrant_validate(broken_copy(tmp_path, old, new), tmp_path)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert expected in proc.stdout + proc.stderr


def test_vagrantfile_describes_the_test_bed() -> None:
    """What `vagrant validate` cannot see: the box, the provider's sizes and nesting, the
    synced project and a provisioner that runs `make setup`."""
    text = VAGRANTFILE.read_text()
    settings = {m[1]: m[2]
                for m in re.finditer(r"^\s*(\S+)\s*=\s*(.+?)\s*$", text, re.MULTILINE)}
    assert settings["config.vm.box"] == '"debian/bookworm64"'
    assert settings["libvirt.nested"] == "true"
    assert settings["libvirt.cpu_mode"] == '"host-passthrough"'
    assert settings["libvirt.cpus"] == "TESTBED_CPUS"
    assert settings["libvirt.memory"] == "TESTBED_MEMORY"
    assert 'ENV.fetch("ORCH_TESTBED_CPUS", "4")' in text
    assert 'ENV.fetch("ORCH_TESTBED_MEMORY", "8192")' in text
    assert re.search(r'synced_folder "\.", "/vagrant", type: "rsync"', text)
    assert re.search(r"^\s*make setup$", text, re.MULTILINE)
