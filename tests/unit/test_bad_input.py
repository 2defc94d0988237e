"""Bad input (docs/semantics.md#bad-input): a corpus of malformed and hostile input, each
refused the same way.

Every case runs the real command line in-process against a state dir that already holds a
registered image (``tiny:1``, a real qcow2 imported with qemu-img) and a scale set (``web``,
put straight into the store), and asserts: exit code 2, exactly one line on stderr starting
with ``error: `` that names the problem, nothing on stdout, and the state dir byte-for-byte
unchanged (the database compared by its logical content). libvirt is an unreachable socket:
a case that reaches libvirt before refusing exits 4, which shows the validation came too late
(a host that ``host add`` must ask is libvirt's in-process test driver, ``test:///default``).
Cases that could hang or eat memory (YAML bombs, huge or endless files) run in a child
process with a deadline and a memory ceiling.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.images import Registry
from orchestrator.model import ScaleSetSpec, validate
from orchestrator.store import Store
from tests.world import snapshot

UNREACHABLE_LIBVIRT = "qemu+unix:///system?socket=/nonexistent/orch-bad-input.sock"
NOW = "2026-01-01T00:00:00Z"
DROP = object()  # a key to leave out of a generated document


# --- the initialised state every case starts from --------------------------------------------
def _qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def _make_inputs(root: Path) -> Path:
    """Image files, good and bad, that the image-import cases name as ``{inputs}/...``."""
    inputs = root / "inputs"
    inputs.mkdir()
    _qemu_img("create", "-q", "-f", "qcow2", str(inputs / "real.qcow2"), "16M")
    _qemu_img("create", "-q", "-f", "qcow2", "-b", "real.qcow2", "-F", "qcow2",
              str(inputs / "backed.qcow2"))
    _qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={inputs / 'data.raw'}",
              str(inputs / "datafile.qcow2"), "16M")
    _qemu_img("create", "-q", "-f", "vdi", str(inputs / "disk.vdi"), "16M")
    (inputs / "truncated.qcow2").write_bytes((inputs / "real.qcow2").read_bytes()[:512])
    (inputs / "notes.txt").write_text("this is not a disk image\n")
    (inputs / "random.bin").write_bytes(hashlib.sha512(b"seed").digest() * 15 + b"tail")
    # whole 512-byte sectors, so only a look for a disk's signatures can tell it is no disk
    (inputs / "random-sectors.raw").write_bytes(
        b"".join(hashlib.sha512(i.to_bytes(4, "big")).digest() for i in range(1024)))
    (inputs / "blank.raw").write_bytes(bytes(1 << 20))
    (inputs / "swap.raw").write_bytes(bytes(1 << 20))
    subprocess.run(["mkswap", "-q", str(inputs / "swap.raw")], check=True, capture_output=True)
    (inputs / "empty.img").write_bytes(b"")
    (inputs / "vmlinuz").write_bytes(b"\x7fELF not really a kernel")
    (inputs / "initrd.img").write_bytes(b"070701 not really an initrd")
    (inputs / "a-directory").mkdir()
    os.mkfifo(inputs / "fifo")
    (inputs / "link.qcow2").symlink_to("real.qcow2")
    (inputs / "link-kernel").symlink_to("vmlinuz")
    (inputs / "dangling.qcow2").symlink_to("nothing-here.qcow2")
    outside = root / "outside"
    outside.mkdir()
    _qemu_img("create", "-q", "-f", "qcow2", str(outside / "secret.qcow2"), "16M")
    (inputs / "escape.qcow2").symlink_to(Path("..") / "outside" / "secret.qcow2")
    (inputs / "not-cloud-config.txt").write_text("hostname: sneaky\n")
    (inputs / "reserved-keys.yaml").write_text(
        "#cloud-config\nssh_keys:\n  ed25519_private: stolen\n")
    (inputs / "latin1.txt").write_bytes(b"#cloud-config\nwrite_files: caf\xe9\n")
    (inputs / "big-custom-data").write_text("#!/bin/sh\n" + "#" * 70000 + "\n")
    (inputs / "junk.pub").write_text("not a key at all\n")
    return inputs


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(state dir with tiny:1 and set web, inputs dir); built once, copied per test."""
    root = tmp_path_factory.mktemp("bad-input")
    inputs = _make_inputs(root)
    state = root / "state"
    store = Store(state / "orchestrator.db")
    Registry(store, state).import_image("tiny", "1", file=inputs / "real.qcow2", now=NOW)
    spec = validate(ScaleSetSpec, {"name": "web", "model": {"image": "tiny:1"}, "capacity": 2})
    store.add_set("web", spec.to_json_dict(), now=NOW)
    store.close()
    return state, inputs


@pytest.fixture
def env(template: tuple[Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(a private copy of the template state dir, the shared inputs dir), environment set."""
    state = tmp_path / "state"
    shutil.copytree(template[0], state, symlinks=True)
    monkeypatch.setenv("ORCH_STATE_DIR", str(state))
    monkeypatch.setenv("ORCH_LIBVIRT_URI", UNREACHABLE_LIBVIRT)
    for name in ("ORCH_NETWORK", "ORCH_DOMAIN_TYPE", "ORCH_POOL"):
        monkeypatch.delenv(name, raising=False)
    return state, template[1]


def run(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
        raise SystemExit(0)
    out, err = capsys.readouterr()
    code = exc.value.code
    return (code if isinstance(code, int) else 1), out, err


def assert_refused(code: int, out: str, err: str, problem: str) -> None:
    assert code == 2, f"exit {code} (4 means libvirt was contacted first): {err!r}"
    assert err.startswith("error: "), err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert problem.lower() in err.lower(), f"{problem!r} not named in {err!r}"
    assert out == "", out


# --- the corpus -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """A command line; ``{doc}`` is replaced by a file holding ``doc``, ``{inputs}`` by the
    inputs dir. ``problem`` must appear in the error line."""

    args: tuple[str, ...]
    problem: str
    doc: bytes | None = None


def _base_doc(name: Any = "new") -> dict[str, Any]:
    return {"apiVersion": "orchestrator/v1", "kind": "ScaleSet", "metadata": {"name": name},
            "spec": {"image": "tiny:1", "capacity": 1}}


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if value is DROP:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_doc(problem: str, *, spec: dict[str, Any] | None = None,
              top: dict[str, Any] | None = None, name: Any = "new") -> Case:
    """`vmss apply` of the base document with ``spec`` merged into its spec and ``top`` into
    the document itself."""
    doc = _merge(_base_doc(name), {"spec": spec or {}, **(top or {})})
    return apply_text(yaml.safe_dump(doc, sort_keys=False), problem)


def apply_text(text: str | bytes, problem: str) -> Case:
    raw = text.encode() if isinstance(text, str) else text
    return Case(("vmss", "apply", "-f", "{doc}"), problem, doc=raw)


def cli(*args: str, problem: str) -> Case:
    return Case(tuple(args), problem)


def _rolling(**values: Any) -> dict[str, Any]:
    return {"upgradePolicy": {"mode": "Rolling", "rollingUpgradePolicy": values}}


YAML_CASES: dict[str, Case] = {
    # unknown keys, at every level
    "unknown-key/top": apply_doc("unknown key", top={"status": {}}),
    "unknown-key/metadata": apply_doc("metadata.labels: unknown key",
                                      top={"metadata": {"labels": {"a": "b"}}}),
    "unknown-key/spec": apply_doc("spec.colour: unknown key", spec={"colour": "red"}),
    "unknown-key/spec.name": apply_doc("spec.name: unknown key", spec={"name": "other"}),
    "unknown-key/model-as-nested": apply_doc("spec.model: unknown key",
                                             spec={"model": {"image": "tiny:1"}}),
    "unknown-key/healthProbe": apply_doc("spec.healthProbe.path: unknown key",
                                         spec={"healthProbe": {"path": "/healthz"}}),
    "unknown-key/upgradePolicy": apply_doc("spec.upgradePolicy.surge: unknown key",
                                           spec={"upgradePolicy": {"surge": True}}),
    "unknown-key/rollingUpgradePolicy": apply_doc(
        "rollingUpgradePolicy.maxBatch: unknown key", spec=_rolling(maxBatch=20)),
    "unknown-key/dataDisks-item": apply_doc(
        "spec.dataDisks.0.caching: unknown key",
        spec={"dataDisks": [{"lun": 0, "sizeGiB": 1, "caching": "None"}]}),
    "unknown-key/snake-case": apply_doc("unknown key", spec={"memory_mib": 512}),
    "unknown-key/snake-case-nested": apply_doc(
        "unknown key", spec={"healthProbe": {"grace_period_seconds": 5}}),
    "unknown-key/both-spellings": apply_doc(
        "unknown key", spec={"memoryMiB": 512, "memory_mib": 1024}),
    # wrong types
    "type/string-for-int": apply_doc("spec.capacity", spec={"capacity": "three"}),
    "type/bool-for-int": apply_doc("spec.capacity", spec={"capacity": True}),
    "type/fraction-for-int": apply_doc("spec.vcpus", spec={"vcpus": 2.5}),
    "type/list-for-map": apply_doc("spec.tags", spec={"tags": ["a", "b"]}),
    "type/map-for-list": apply_doc("spec.dataDisks", spec={"dataDisks": {"lun": 0, "sizeGiB": 1}}),
    "type/spec-is-list": apply_doc("spec", top={"spec": ["image", "tiny:1"]}),
    "type/metadata-is-string": apply_doc("metadata", top={"metadata": "new"}),
    "type/null-image": apply_doc("spec.image", spec={"image": None}),
    "type/null-capacity": apply_doc("spec.capacity", spec={"capacity": None}),
    "type/null-metadata": apply_doc("metadata", top={"metadata": None}),
    "type/missing-capacity": apply_doc("spec.capacity", spec={"capacity": DROP}),
    "type/missing-apiVersion": apply_doc("apiVersion", top={"apiVersion": DROP}),
    "type/wrong-apiVersion": apply_doc("apiVersion", top={"apiVersion": "orchestrator/v2"}),
    "type/wrong-kind": apply_doc("kind", top={"kind": "Deployment"}),
    "type/tag-value-map": apply_doc("spec.tags", spec={"tags": {"team": {"a": 1}}}),
    "type/mode-lowercase": apply_doc("spec.upgradePolicy.mode",
                                     spec={"upgradePolicy": {"mode": "rolling"}}),
    # huge and out-of-range numbers
    "range/capacity-1e30": apply_doc("spec.capacity", spec={"capacity": 10**30}),
    "range/capacity-negative": apply_doc("spec.capacity", spec={"capacity": -1}),
    "range/capacity-inf": apply_text(
        "apiVersion: orchestrator/v1\nkind: ScaleSet\nmetadata: {name: new}\n"
        "spec: {image: 'tiny:1', capacity: .inf}\n", "spec.capacity"),
    "range/sizeGiB-1e12": apply_doc("sizeGiB",
                                    spec={"dataDisks": [{"lun": 0, "sizeGiB": 10**12}]}),
    "range/sizeGiB-0": apply_doc("sizeGiB", spec={"dataDisks": [{"lun": 0, "sizeGiB": 0}]}),
    "range/lun-duplicate": apply_doc("luns must be unique", spec={
        "dataDisks": [{"lun": 1, "sizeGiB": 1}, {"lun": 1, "sizeGiB": 2}]}),
    "range/lun-negative": apply_doc("lun", spec={"dataDisks": [{"lun": -1, "sizeGiB": 1}]}),
    "range/memoryMiB-negative": apply_doc("spec.memoryMiB", spec={"memoryMiB": -1}),
    "range/vcpus-1e9": apply_doc("spec.vcpus", spec={"vcpus": 10**9}),
    "range/probe-port-0": apply_doc("healthProbe.port", spec={"healthProbe": {"port": 0}}),
    "range/fail-fast-string": apply_doc("healthProbe.failFastAfterProbes",
                                        spec={"healthProbe": {"failFastAfterProbes": "3"}}),
    "range/probe-port-65536": apply_doc("healthProbe.port",
                                        spec={"healthProbe": {"port": 65536}}),
    "range/batch-0": apply_doc("maxBatchInstancePercent",
                               spec=_rolling(maxBatchInstancePercent=0)),
    "range/batch-4": apply_doc("maxBatchInstancePercent",
                               spec=_rolling(maxBatchInstancePercent=4)),
    "range/batch-101": apply_doc("maxBatchInstancePercent",
                                 spec=_rolling(maxBatchInstancePercent=101)),
    "range/unhealthy--1": apply_doc("maxUnhealthyInstancePercent",
                                    spec=_rolling(maxUnhealthyInstancePercent=-1)),
    "range/unhealthy-101": apply_doc("maxUnhealthyInstancePercent",
                                     spec=_rolling(maxUnhealthyInstancePercent=101)),
    "range/unhealthy-upgraded-101": apply_doc(
        "maxUnhealthyUpgradedInstancePercent",
        spec=_rolling(maxUnhealthyUpgradedInstancePercent=101)),
    # durations
    "duration/PT": apply_doc("duration", spec=_rolling(pauseTimeBetweenBatches="PT")),
    "duration/5s": apply_doc("duration", spec=_rolling(pauseTimeBetweenBatches="5s")),
    "duration/P1Y": apply_doc("duration", spec=_rolling(pauseTimeBetweenBatches="P1Y")),
    "duration/PT-5S": apply_doc("duration", spec=_rolling(pauseTimeBetweenBatches="PT-5S")),
    "duration/-PT5S": apply_doc("duration", spec=_rolling(pauseTimeBetweenBatches="-PT5S")),
    "duration/P2D": apply_doc("duration", spec=_rolling(pauseTimeBetweenBatches="P2D")),
    "duration/number": apply_doc("pauseTimeBetweenBatches",
                                 spec=_rolling(pauseTimeBetweenBatches=5)),
    # other model fields
    "model/image-no-version": apply_doc("image reference", spec={"image": "tiny"}),
    "model/image-path": apply_doc("image reference", spec={"image": "../../etc:passwd"}),
    "model/image-unregistered": apply_doc("not registered", spec={"image": "nope:1"}),
    "model/network-path": apply_doc("network", spec={"network": "../default"}),
    "model/ssh-key-junk": apply_doc("sshPublicKey", spec={"sshPublicKey": "ssh-rsa"}),
    "model/ssh-key-two-lines": apply_doc("sshPublicKey", spec={
        "sshPublicKey": "ssh-ed25519 AAAA x\nssh-ed25519 BBBB y"}),
    "model/tag-newline": apply_doc("tag", spec={"tags": {"a b": "c"}}),
    "model/probe-command-empty": apply_doc("healthProbe.command",
                                           spec={"healthProbe": {"command": ""}}),
    "model/scaleInPolicy": apply_doc("scaleInPolicy", spec={"scaleInPolicy": "Random"}),
    # customData
    "customData/not-cloud-config": apply_doc("customData must start with",
                                             spec={"customData": "hostname: sneaky\n"}),
    "customData/ssh_keys": apply_doc("may not set ssh_keys", spec={
        "customData": "#cloud-config\nssh_keys:\n  ed25519_private: stolen\n"}),
    "customData/hostname": apply_doc("may not set hostname",
                                     spec={"customData": "#cloud-config\nhostname: x\n"}),
    "customData/bad-yaml": apply_doc("customData is not valid YAML",
                                     spec={"customData": "#cloud-config\nruncmd: [unclosed\n"}),
    "customData/list": apply_doc("mapping", spec={"customData": "#cloud-config\n- a\n- b\n"}),
    "file/over-64KiB": apply_doc("larger than 64 KiB",
                                 spec={"customData": "#!/bin/sh\n" + "#" * 70000}),
    # the file as a whole
    "file/document-is-list": apply_text("- just\n- a list\n", "[0]"),
    "file/document-is-scalar": apply_text("hello\n", "[0]"),
    "file/empty": apply_text("", "no documents"),
    "file/only-separators": apply_text("---\n---\n...\n", "no documents"),
    "file/tab-indented": apply_text(
        "apiVersion: orchestrator/v1\nkind: ScaleSet\nmetadata:\n\tname: new\n", "YAML"),
    "file/unclosed-flow": apply_text("{unclosed", "YAML"),
    "file/non-utf8": apply_text(b"apiVersion: orchestrator/v1\nkind: Sc\xe9leSet\n", "utf-8"),
    "file/utf16": apply_text("apiVersion: orchestrator/v1\n".encode("utf-16"), "utf-8"),
    "file/nul-byte": apply_text(b"apiVersion: orchestrator/v1\x00\n", "YAML"),
    "file/python-tag": apply_text(
        "!!python/object/apply:os.system ['touch /tmp/orch-pwned']\n", "YAML"),
    "file/duplicate-set-names": apply_text(
        yaml.safe_dump_all([_base_doc("twin"), _base_doc("twin")]), "named twice"),
    "file/second-document-bad": apply_text(
        yaml.safe_dump_all([_base_doc("good"), _merge(_base_doc("bad"),
                                                      {"spec": {"vcpus": 0}})]), "[1]"),
    "file/duplicate-key": apply_text(
        "apiVersion: orchestrator/v1\nkind: ScaleSet\nmetadata: {name: new}\n"
        "spec: {image: 'tiny:1', capacity: 1, capacity: 100}\n", "given twice"),
    "file/deep-nesting": apply_text(
        "[" * 30000 + "]" * 30000, "YAML"),
    # an existing set changed in a way that is refused before anything happens
    "existing/network-change": apply_text(yaml.safe_dump(_merge(
        _base_doc("web"), {"spec": {"capacity": 2, "network": "other"}})), "network"),
    "existing/unregistered-image": apply_text(yaml.safe_dump(_merge(
        _base_doc("web"), {"spec": {"capacity": 2, "image": "nope:7"}})), "not registered"),
}

NAMES = {
    "slash": "a/b", "dotdot": "../x", "markup": "a<b>", "newline": "web\nx", "nul": "web\x00x",
    "lookalike": "w\u0435b", "uppercase": "Web", "leading-digit": "1web", "leading-dash": "-web",
    "41-chars": "a" * 41, "empty": "", "space": "web x",
}
NAME_COMMANDS = {
    "create": ("vmss", "create", "--image", "tiny:1"),
    "show": ("vmss", "show"),
    "scale": ("vmss", "scale", "--new-capacity", "1"),
    "delete": ("vmss", "delete"),
}
NAME_CASES: dict[str, Case] = {
    **{f"name/{cmd}/{nid}": cli(*argv, f"--name={name}", problem="name")
       for cmd, argv in NAME_COMMANDS.items() for nid, name in NAMES.items()},
    **{f"name/metadata/{nid}": apply_doc("name", name=name) for nid, name in NAMES.items()},
    "name/metadata/integer": apply_doc("name", name=12),
    "name/metadata/null": apply_doc("metadata.name", name=None),
}

IMG = ("image", "import", "--name", "good", "--version", "1")
IMAGE_CASES: dict[str, Case] = {
    "image/text-file": cli(*IMG, "--file", "{inputs}/notes.txt", problem="not a disk image"),
    "image/random-bytes": cli(*IMG, "--file", "{inputs}/random.bin", problem="not a disk image"),
    "image/random-sectors": cli(*IMG, "--file", "{inputs}/random-sectors.raw",
                                problem="random-sectors.raw: not a disk image"),
    "image/blank-sectors": cli(*IMG, "--file", "{inputs}/blank.raw",
                               problem="blank.raw: not a disk image"),
    "image/swap-area": cli(*IMG, "--file", "{inputs}/swap.raw", problem="swap"),
    "image/empty-file": cli(*IMG, "--file", "{inputs}/empty.img", problem="empty"),
    "image/vdi": cli(*IMG, "--file", "{inputs}/disk.vdi", problem="format 'vdi' not supported"),
    "image/backing-file": cli(*IMG, "--file", "{inputs}/backed.qcow2", problem="backing file"),
    "image/data-file": cli(*IMG, "--file", "{inputs}/datafile.qcow2", problem="data-file"),
    "image/truncated-qcow2": cli(*IMG, "--file", "{inputs}/truncated.qcow2",
                                 problem="qemu-img check"),
    "image/symlink": cli(*IMG, "--file", "{inputs}/link.qcow2", problem="symbolic link"),
    "image/symlink-out-of-dir": cli(*IMG, "--file", "{inputs}/escape.qcow2",
                                    problem="symbolic link"),
    "image/dangling-symlink": cli(*IMG, "--file", "{inputs}/dangling.qcow2",
                                  problem="symbolic link"),
    "image/missing-file": cli(*IMG, "--file", "{inputs}/missing.qcow2", problem="does not exist"),
    "image/directory": cli(*IMG, "--file", "{inputs}/a-directory", problem="not a regular file"),
    "image/fifo": cli(*IMG, "--file", "{inputs}/fifo", problem="not a regular file"),
    "image/dev-zero": cli(*IMG, "--file", "/dev/zero", problem="not a regular file"),
    "image/kernel-symlink": cli(*IMG, "--file", "{inputs}/real.qcow2", "--kernel",
                                "{inputs}/link-kernel", problem="symbolic link"),
    "image/kernel-missing": cli(*IMG, "--file", "{inputs}/real.qcow2", "--kernel",
                                "{inputs}/nope", problem="kernel file"),
    "image/initrd-without-kernel": cli(*IMG, "--file", "{inputs}/real.qcow2", "--initrd",
                                       "{inputs}/initrd.img", problem="--initrd needs --kernel"),
    "image/cmdline-without-kernel": cli(*IMG, "--file", "{inputs}/real.qcow2", "--cmdline",
                                        "root=/dev/vda", problem="--cmdline needs --kernel"),
    "image/version-slash": cli("image", "import", "--name", "good", "--version", "1/2",
                               "--file", "{inputs}/real.qcow2", problem="image version"),
    "image/version-dotdot": cli("image", "import", "--name", "good", "--version", "..",
                                "--file", "{inputs}/real.qcow2", problem="image version"),
    "image/version-empty": cli("image", "import", "--name", "good", "--version", "",
                               "--file", "{inputs}/real.qcow2", problem="image version"),
    "image/version-newline": cli("image", "import", "--name", "good", "--version", "1\n2",
                                 "--file", "{inputs}/real.qcow2", problem="image version"),
    "image/name-uppercase": cli("image", "import", "--name", "Tiny", "--version", "2",
                                "--file", "{inputs}/real.qcow2", problem="image name"),
    "image/name-path": cli("image", "import", "--name", "../x", "--version", "2",
                           "--file", "{inputs}/real.qcow2", problem="image name"),
    "image/already-registered": cli("image", "import", "--name", "tiny", "--version", "1",
                                    "--file", "{inputs}/real.qcow2", problem="already registered"),
    "image/build-already-registered": cli("image", "build", "tiny", "--version", "1",
                                          problem="already registered"),
    "image/build-unknown-recipe": cli("image", "build", "windows", "--version", "1",
                                      problem="unknown image recipe"),
    "image/build-bad-version": cli("image", "build", "tiny", "--version", "../1",
                                   problem="image version"),
    "image/show-bad-ref": cli("image", "show", "../x", problem="image reference"),
    "image/delete-bad-ref": cli("image", "delete", "a/b:1", problem="image reference"),
    "image/delete-unknown": cli("image", "delete", "nope:1", problem="not registered"),
}

W = ("--name", "web")
CREATE = ("vmss", "create", "--name", "new", "--image", "tiny:1")
FLAG_CASES: dict[str, Case] = {
    "ids/x": cli("vmss", "stop", *W, "--instance-ids", "x", problem="invalid instance id 'x'"),
    "ids/negative": cli("vmss", "restart", *W, "--instance-ids", "-1",
                        problem="invalid instance id '-1'"),
    "ids/fraction": cli("vmss", "delete-instances", *W, "--instance-ids", "1.5",
                        problem="invalid instance id '1.5'"),
    "ids/12-digits": cli("vmss", "deallocate", *W, "--instance-ids", "123456789012",
                         problem="invalid instance id"),
    # digits to str.isdigit, not to int(): the check once let them through to a crash
    "ids/superscript": cli("vmss", "stop", *W, "--instance-ids", "\u00b2",
                           problem="invalid instance id '\u00b2'"),
    "ids/arabic-indic": cli("vmss", "stop", *W, "--instance-ids", "\u0663",
                            problem="invalid instance id '\u0663'"),
    "ids/second-bad": cli("vmss", "start", *W, "--instance-ids", "1", "2x",
                          problem="invalid instance id '2x'"),
    "ids/empty": cli("vmss", "stop", *W, "--instance-ids", " , ", problem="no instance ids"),
    "ids/star-plus-id": cli("vmss", "update-instances", *W, "--instance-ids", "*", "1",
                            problem="invalid instance id '*'"),
    "ids/star-for-stop": cli("vmss", "stop", *W, "--instance-ids", "*",
                             problem="invalid instance id '*'"),
    "ids/reimage-x": cli("vmss", "reimage", *W, "--instance-ids", "x", problem="instance id"),
    "ids/unknown-instance": cli(
        "vmss", "stop", *W, "--instance-ids", "7", problem="has no instance 7"),
    "instance-id/x": cli("vmss", "get-instance-view", *W, "--instance-id", "x",
                         problem="--instance-id"),
    "instance-id/negative": cli("vmss", "get-instance-view", *W, "--instance-id", "-1",
                                problem="--instance-id"),
    "instance-id/12-digits": cli("vmss", "get-instance-view", *W, "--instance-id",
                                 "123456789012", problem="instance"),
    "instance-id/1e30": cli("vmss", "get-instance-view", *W, "--instance-id", str(10**30),
                            problem="instance"),
    "instance-id/run-command": cli("vmss", "run-command", "invoke", *W, "--instance-id", "1.5",
                                   "--scripts", "true", problem="--instance-id"),
    "capacity/negative": cli("vmss", "scale", *W, "--new-capacity", "-1", problem="capacity"),
    "capacity/1001": cli("vmss", "scale", *W, "--new-capacity", "1001", problem="capacity"),
    "capacity/1e30": cli("vmss", "scale", *W, "--new-capacity", str(10**30), problem="capacity"),
    "capacity/word": cli("vmss", "scale", *W, "--new-capacity", "two", problem="--new-capacity"),
    "capacity/unknown-set": cli("vmss", "scale", "--name", "nothere", "--new-capacity", "1",
                                problem="not found"),
    "create/exists": cli("vmss", "create", *W, "--image", "tiny:1", problem="already exists"),
    "create/memory-0": cli(*CREATE, "--memory", "0", problem="memoryMiB"),
    "create/memory-negative": cli(*CREATE, "--memory", "-1", problem="memoryMiB"),
    "create/vcpus-65": cli(*CREATE, "--vcpus", "65", problem="vcpus"),
    "create/instance-count-1e30": cli(*CREATE, "--instance-count", str(10**30),
                                      problem="capacity"),
    "create/disk-size-0": cli(*CREATE, "--data-disk-sizes-gb", "0", problem="sizeGiB"),
    "create/disk-size-2000": cli(*CREATE, "--data-disk-sizes-gb", "2000", problem="sizeGiB"),
    "create/disk-size-fraction": cli(*CREATE, "--data-disk-sizes-gb", "1.5",
                                     problem="data disk size"),
    "create/nine-disks": cli(*CREATE, "--data-disk-sizes-gb", "1 1 1 1 1 1 1 1 1",
                             problem="at most 8 data disks"),
    "create/batch-4": cli(*CREATE, "--max-batch-instance-percent", "4",
                          problem="maxBatchInstancePercent"),
    "create/unhealthy--1": cli(*CREATE, "--max-unhealthy-instance-percent", "-1",
                               problem="maxUnhealthyInstancePercent"),
    "create/pause-PT": cli(*CREATE, "--pause-time-between-batches", "PT", problem="duration"),
    "create/pause-5s": cli(*CREATE, "--pause-time-between-batches", "5s", problem="duration"),
    "create/grace-negative": cli(*CREATE, "--health-probe-grace-period", "-1",
                                 problem="gracePeriodSeconds"),
    "create/fail-fast-negative": cli(*CREATE, "--health-probe-fail-fast-after-probes", "-1",
                                     problem="failFastAfterProbes"),
    "create/fail-fast-too-many": cli(*CREATE, "--health-probe-fail-fast-after-probes", "101",
                                     problem="failFastAfterProbes"),
    "create/mode": cli(*CREATE, "--upgrade-policy-mode", "Sometimes",
                       problem="--upgrade-policy-mode"),
    "create/max-surge-maybe": cli(*CREATE, "--max-surge", "maybe", problem="--max-surge"),
    "create/network-space": cli(*CREATE, "--network", "a b", problem="network"),
    "create/unregistered-image": cli("vmss", "create", "--name", "new", "--image", "nope:1",
                                     problem="not registered"),
    "create/custom-data-not-cloud-config": cli(*CREATE, "--custom-data",
                                               "{inputs}/not-cloud-config.txt",
                                               problem="customData must start with"),
    "create/custom-data-reserved": cli(*CREATE, "--custom-data", "{inputs}/reserved-keys.yaml",
                                       problem="may not set ssh_keys"),
    "create/custom-data-latin1": cli(*CREATE, "--custom-data", "{inputs}/latin1.txt",
                                     problem="not UTF-8"),
    "create/custom-data-too-big": cli(*CREATE, "--custom-data", "{inputs}/big-custom-data",
                                      problem="larger than 64 KiB"),
    "create/custom-data-directory": cli(*CREATE, "--custom-data", "{inputs}/a-directory",
                                        problem="--custom-data"),
    "create/ssh-key-junk": cli(*CREATE, "--ssh-key-value", "{inputs}/junk.pub",
                               problem="sshPublicKey"),
    "update/nothing": cli("vmss", "update", *W, problem="nothing to update"),
    "update/memory-0": cli("vmss", "update", *W, "--memory", "0", problem="memoryMiB"),
    "update/network": cli("vmss", "update", *W, "--network", "other", problem="network"),
    "update/unregistered-image": cli("vmss", "update", *W, "--image", "nope:1",
                                     problem="not registered"),
    "update/protect-without-id": cli("vmss", "update", *W, "--protect-from-scale-in", "true",
                                     problem="--instance-id"),
    "plan/unknown-set": cli("vmss", "plan", "--name", "nothere", problem="not found"),
    "plan/unregistered-image": cli("vmss", "plan", *W, "--image", "nope:1",
                                   problem="not registered"),
    "plan/image-ref": cli("vmss", "plan", *W, "--image", "tiny", problem="tiny"),
    "plan/batch-4": cli("vmss", "plan", *W, "--max-batch-instance-percent", "4",
                        problem="maxBatchInstancePercent"),
    "plan/memory-0": cli("vmss", "plan", *W, "--memory", "0", problem="memoryMiB"),
    "output/unknown-global": cli("-o", "xml", "vmss", "list", problem="xml"),
    "output/unknown-per-command": cli("image", "list", "-o", "xml", problem="xml"),
    "global/domain-type": cli("--domain-type", "xen", "vmss", "list", problem="xen"),
    "global/unknown-option": cli("vmss", "list", "--colour", problem="--colour"),
    "global/unknown-command": cli("vmss", "explode", problem="explode"),
    "host/name": cli("host", "add", "--name", "Lab_1", "--uri", "qemu+tcp://10.250.0.1/system",
                     problem="invalid host name"),
    "host/uri-scheme": cli("host", "add", "--name", "h1", "--uri", "http://h1/",
                           problem="invalid libvirt URI"),
    "host/uri-injection": cli("host", "add", "--name", "h1",
                              "--uri", "qemu+ssh://h1/system;reboot", problem="invalid libvirt URI"),
    "host/fault-domain": cli("host", "add", "--name", "h1", "--uri", "qemu:///system",
                             "--fault-domain", "Rack A", problem="invalid fault domain"),
    "host/network": cli("host", "add", "--name", "h1", "--uri", "qemu:///system",
                        "--network", "../etc", problem="invalid network"),
    # the host answers (libvirt's in-process test driver) but runs no x86_64 guest type
    "host/domain-type": cli("--domain-type", "qemu", "host", "add", "--name", "h1",
                            "--uri", "test:///default", "--pool", "default-pool",
                            problem="host h1: domain type qemu is not offered there (it offers "
                                    "none"),
    "host/unknown": cli("host", "cordon", "--name", "h9", problem="host h9 is not registered"),
    "host/remove-unknown": cli("host", "remove", "--name", "h9", problem="not registered"),
    "host/cordon-local": cli("host", "cordon", "--name", "local",
                             problem="implicit host local cannot be cordoned"),
    "create/fault-domains": cli("vmss", "create", "--name", "new", "--image", "tiny:1",
                                "--fault-domains", "Rack A", problem="fault domain"),
}

ALL_CASES = {**YAML_CASES, **NAME_CASES, **IMAGE_CASES, **FLAG_CASES}


def _expand(arg: str, *, doc: Path, inputs: Path) -> str:
    return arg.replace("{doc}", str(doc)).replace("{inputs}", str(inputs))


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=i) for i, c in ALL_CASES.items()])
def test_bad_input_is_refused_and_changes_nothing(
        capsys: pytest.CaptureFixture[str], env: tuple[Path, Path], tmp_path: Path,
        case: Case) -> None:
    state, inputs = env
    doc = tmp_path / "in.yaml"
    if case.doc is not None:
        doc.write_bytes(case.doc)
    before = snapshot(state)
    code, out, err = run(capsys, [_expand(a, doc=doc, inputs=inputs) for a in case.args])
    assert_refused(code, out, err, case.problem)
    assert snapshot(state) == before


# --- cases that could hang or eat memory: a child process with a deadline -------------------
def _laughs_doc(where: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        # the anchors live under spec.laughs (an unknown key only reached after the bomb)
        text = ("apiVersion: orchestrator/v1\nkind: ScaleSet\nmetadata: {name: new}\n"
                "spec:\n  image: 'tiny:1'\n  capacity: 1\n  laughs:\n")
        text += '    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
        for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
            text += f"    {cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]\n"
        text += f"  {where}: *i\n" if where != "laughs" else ""
        path = tmp / "bomb.yaml"
        path.write_text(text)
        return ["vmss", "apply", "-f", str(path)]
    return build


def _big_file(tmp: Path) -> list[str]:
    path = tmp / "big.yaml"
    with path.open("w") as fh:
        for n in range(10 * 2**20 // 16):
            fh.write(f"k{n:013d}: 1\n")
    return ["vmss", "apply", "-f", str(path)]


BOUNDED_CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "billion-laughs/in-dataDisks": (_laughs_doc("dataDisks"), "dataDisks"),
    "billion-laughs/in-tags": (_laughs_doc("tags"), "spec"),
    "billion-laughs/in-customData": (_laughs_doc("customData"), "spec"),
    "billion-laughs/unknown-key": (_laughs_doc("laughs"), "unknown key"),
    "file/10MB": (_big_file, "larger than 64 KiB"),
    "file/dev-zero": (lambda tmp: ["vmss", "apply", "-f", "/dev/zero"], "-f"),
    "custom-data/dev-urandom": (
        lambda tmp: [*CREATE, "--custom-data", "/dev/urandom"], "--custom-data"),
}
CHILD = "import sys; from orchestrator.cli import main; main(sys.argv[1:])"
DEADLINE_SECONDS = 30.0
MEMORY_CEILING = 2 * 2**30


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CEILING, MEMORY_CEILING))


@pytest.mark.parametrize("case", [
    pytest.param(v, id=k) for k, v in BOUNDED_CASES.items()])
def test_hostile_files_are_refused_quickly_and_boundedly(
        env: tuple[Path, Path], tmp_path: Path,
        case: tuple[Callable[[Path], list[str]], str]) -> None:
    state, _ = env
    build, problem = case
    args = build(tmp_path)
    before = snapshot(state)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, *args],
            capture_output=True, text=True, timeout=DEADLINE_SECONDS, check=False,
            preexec_fn=_limit_memory,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {DEADLINE_SECONDS} s")
    elapsed = time.monotonic() - started
    assert_refused(proc.returncode, proc.stdout, proc.stderr, problem)
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert snapshot(state) == before


# --- the harness itself can fail: valid input gets past validation ---------------------------
@pytest.mark.parametrize("args", [
    ["vmss", "apply", "-f", "{doc}"],
    ["vmss", "scale", "--name", "web", "--new-capacity", "3"],
    ["vmss", "create", "--name", "new", "--image", "tiny:1"],
    ["vmss", "plan", "--name", "web", "--memory", "512"],
], ids=["apply", "scale", "create", "plan"])
def test_valid_input_reaches_libvirt(capsys: pytest.CaptureFixture[str], env: tuple[Path, Path],
                                     tmp_path: Path, args: list[str]) -> None:
    """The same commands with good input get as far as libvirt (exit 4): the corpus's exit 2
    comes from validation, not from a harness that refuses everything."""
    _, inputs = env
    doc = tmp_path / "in.yaml"
    doc.write_text(yaml.safe_dump(_base_doc("new")))
    code, out, err = run(capsys, [_expand(a, doc=doc, inputs=inputs) for a in args])
    assert code == 4, err
    assert out == ""
    last = err.splitlines()[-1]
    assert last.startswith("error: ") and "libvirt" in last, err


def test_valid_import_is_accepted(capsys: pytest.CaptureFixture[str],
                                  env: tuple[Path, Path]) -> None:
    state, inputs = env
    code, _, err = run(capsys, ["image", "import", "--name", "good", "--version", "1",
                                "--file", str(inputs / "real.qcow2"), "--kernel",
                                str(inputs / "vmlinuz"), "--initrd", str(inputs / "initrd.img")])
    assert code == 0, err
    assert (state / "images" / "good" / "1" / "disk.qcow2").is_file()


def test_deleting_an_image_in_use_is_a_conflict_and_changes_nothing(
        capsys: pytest.CaptureFixture[str], env: tuple[Path, Path]) -> None:
    """Not bad input but a state conflict (exit 3); refused all the same."""
    state, _ = env
    before = snapshot(state)
    code, out, err = run(capsys, ["image", "delete", "tiny:1"])
    assert code == 3 and out == "" and err.count("\n") == 1, err
    assert "used by a scale set" in err
    assert snapshot(state) == before


def test_corpus_size() -> None:
    assert len(ALL_CASES) + len(BOUNDED_CASES) >= 40
