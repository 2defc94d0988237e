"""The tiny image's NoCloud reader (images/tiny/rootfs/usr/lib/orch/nocloud.{sh,awk}) against
seeds rendered by orchestrator.cloudinit: what the controller writes is what the guest applies.

Runs the real scripts under the host's static busybox (the same binary the image ships), with
a PATH holding only busybox applets, so the busybox awk/sh dialect is what is tested. No VM.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.cloudinit import SeedContent, WriteFile

SCRIPT = Path(__file__).resolve().parents[2] / "images/tiny/rootfs/usr/lib/orch/nocloud.sh"
APPLETS = ("sh", "awk", "base64", "gunzip", "cat", "mkdir", "dirname", "chmod", "mv", "rm", "cp",
           "echo", "printf", "touch")  # fmt: skip

HOST_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACD/fake+key/with/slashes==\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
AWKWARD = (
    b'"quoted" \\back\\slash\\ $(touch MARKER) `touch MARKER` ${HOME}\n'
    b"tab\t cr\r\n high bytes \xfe\xff nul \x00 end-without-newline"
)


@pytest.fixture(scope="module")
def busybox_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox is not installed (apt-get install busybox-static; `make setup`)")
    bindir = tmp_path_factory.mktemp("busybox-bin")
    for applet in APPLETS:
        (bindir / applet).symlink_to(busybox)
    return str(bindir)


def nocloud(busybox_path: str, *args: str | Path, cwd: Path | None = None) -> str:
    env = {"PATH": busybox_path, "HOME": "/root"}
    proc = subprocess.run(
        ["sh", str(SCRIPT), *map(str, args)],
        env=env, cwd=cwd, capture_output=True, check=False,
        executable=os.path.join(busybox_path, "sh"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout.decode(errors="replace")


def parse(busybox_path: str, seed: SeedContent, tmp_path: Path) -> Path:
    seed_dir, out = tmp_path / "seed", tmp_path / "parsed"
    seed_dir.mkdir()
    (seed_dir / "user-data").write_text(seed.user_data(), encoding="utf-8")
    (seed_dir / "meta-data").write_text(seed.meta_data(), encoding="utf-8")
    nocloud(busybox_path, "parse", seed_dir, out)
    return out


def make_seed(**overrides: object) -> SeedContent:
    fields: dict[str, object] = {
        "instance_id": "web-7-gen3-abc",
        "hostname": "web-7",
        "authorized_keys": ("ssh-ed25519 AAAAC3Nza/one admin@lab", "ssh-ed25519 AAAAtwo+/= two"),
        "host_key_private": HOST_KEY,
        "host_key_public": "ssh-ed25519 AAAAhostpub",
    }
    fields.update(overrides)
    return SeedContent(**fields)  # type: ignore[arg-type]


class TestParse:
    def test_meta_data_and_identity_keys(self, busybox_path: str, tmp_path: Path) -> None:
        out = parse(busybox_path, make_seed(), tmp_path)
        assert (out / "instance-id").read_text() == "web-7-gen3-abc"
        assert (out / "local-hostname").read_text() == "web-7"
        assert (out / "hostname").read_text() == "web-7"
        assert (out / "authorized_keys").read_text() == (
            "ssh-ed25519 AAAAC3Nza/one admin@lab\nssh-ed25519 AAAAtwo+/= two\n"
        )

    def test_multi_line_host_key_is_exact(self, busybox_path: str, tmp_path: Path) -> None:
        out = parse(busybox_path, make_seed(), tmp_path)
        assert (out / "ssh_keys.ed25519_private").read_text() == HOST_KEY
        assert (out / "ssh_keys.ed25519_public").read_text() == "ssh-ed25519 AAAAhostpub"

    def test_runcmd_strings_are_unescaped_exactly(self, busybox_path: str, tmp_path: Path) -> None:
        cmds = (
            "echo \"double\" 'single' \\back\\slash // \t tab",
            "printf '%s\\n' line1 line2\nsecond line of the same command",
            "echo caf\u00e9 \u2603 \U0001f600 \u0001",
        )
        out = parse(busybox_path, make_seed(runcmd=cmds), tmp_path)
        got = [(out / f"runcmd.{i}").read_bytes() for i in (1, 2, 3)]
        assert got == [c.encode("utf-8") for c in cmds]
        assert not (out / "runcmd.4").exists()

    def test_unknown_keys_and_nested_values_are_ignored(
        self, busybox_path: str, tmp_path: Path
    ) -> None:
        custom = (
            "#cloud-config\n"
            "packages: [curl]\n"
            '"odd key": {"runcmd": ["not a command"]}\n'
            "bootcmd:\n  - echo not run\n"
            "users:\n  - name: runcmd\n    groups: [a, b]\n"
            "runcmd:\n  - echo from custom data\n"
        )
        out = parse(busybox_path, make_seed(runcmd=("echo first",), custom_data=custom), tmp_path)
        assert sorted(p.name for p in out.glob("runcmd.*")) == ["runcmd.1", "runcmd.2"]
        assert (out / "runcmd.1").read_text() == "echo first"
        assert (out / "runcmd.2").read_text() == "echo from custom data"


class TestWriteFiles:
    def test_content_is_byte_exact_and_never_executed(
        self, busybox_path: str, tmp_path: Path
    ) -> None:
        files = (
            WriteFile("/etc/deep/dir with space/a.txt", AWKWARD, "0640"),
            WriteFile("/opt/empty", b"", "0600"),
            WriteFile("/usr/local/bin/tool", b"#!/bin/sh\necho hi\n", "0755"),
        )
        out = parse(busybox_path, make_seed(write_files=files), tmp_path)
        root = tmp_path / "root"
        root.mkdir()
        nocloud(busybox_path, "write-files", out, root, cwd=tmp_path)
        for wf in files:
            target = root / wf.path.lstrip("/")
            assert target.read_bytes() == wf.content, wf.path
            assert stat.S_IMODE(target.stat().st_mode) == int(wf.permissions, 8), wf.path
        assert not (tmp_path / "MARKER").exists()
        assert not list(root.rglob("*.nocloud-tmp"))

    def test_custom_data_script_part(self, busybox_path: str, tmp_path: Path) -> None:
        script = '#!/bin/sh\necho "custom script" > /dev/null\n'
        out = parse(busybox_path, make_seed(custom_data=script), tmp_path)
        root = tmp_path / "root"
        nocloud(busybox_path, "write-files", out, root)
        written = root / "var/lib/orchestrator/custom-data.sh"
        assert written.read_text() == script
        assert stat.S_IMODE(written.stat().st_mode) == 0o755
        assert (out / "runcmd.1").read_text() == "/var/lib/orchestrator/custom-data.sh"

    def test_custom_data_text_content(self, busybox_path: str, tmp_path: Path) -> None:
        text_part = (
            "#cloud-config\nwrite_files:\n"
            '  - path: /etc/motd\n    content: "hello\\n\\"world\\"\\n"\n    owner: root:root\n'
        )
        out = parse(busybox_path, make_seed(custom_data=text_part), tmp_path)
        root = tmp_path / "root"
        nocloud(busybox_path, "write-files", out, root)
        assert (root / "etc/motd").read_bytes() == b'hello\n"world"\n'

    def test_relative_path_is_refused(self, busybox_path: str, tmp_path: Path) -> None:
        out = parse(busybox_path, make_seed(write_files=(WriteFile("x/rel", b"no"),)), tmp_path)
        root = tmp_path / "root"
        root.mkdir()
        said = nocloud(busybox_path, "write-files", out, root, cwd=tmp_path)
        assert "not absolute" in said
        assert not (root / "x").exists() and not (tmp_path / "x").exists()


class TestRunCmds:
    def test_in_order_each_with_sh_c_failures_do_not_stop(
        self, busybox_path: str, tmp_path: Path
    ) -> None:
        log = tmp_path / "log"
        cmds = (
            f"echo one >> {log}",
            "exit 3",
            f'echo "two \\"quoted\\" $((1+1))" >> {log}',
        )
        out = parse(busybox_path, make_seed(runcmd=cmds), tmp_path)
        said = nocloud(busybox_path, "run-cmds", out)
        assert log.read_text() == 'one\ntwo "quoted" 2\n'
        assert "runcmd[2]: exit status 3" in said


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    text=st.text(
        alphabet=st.one_of(
            # What JSON escapes (and shells care about) often; anything else (no NUL) too.
            st.sampled_from(list("\"\\\t\n\r\b\f/'$` \x01\x7f\u00e9\u2028")),
            st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
        ),
        max_size=60,
    )
)
def test_any_string_survives_the_json_round_trip(
    busybox_path: str, tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    tmp = tmp_path_factory.mktemp("prop")
    out = parse(busybox_path, make_seed(hostname="h", runcmd=(text,)), tmp)
    assert (out / "runcmd.1").read_bytes() == text.encode("utf-8")
