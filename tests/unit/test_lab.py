"""The lab's pure parts: network/pool XML, KVM detection, pid files, environment, guards."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from orchestrator import lab
from orchestrator.errors import EnvironmentProblem


class TestNetworkXml:
    def test_is_isolated_on_the_lab_bridge_with_dhcp(self) -> None:
        root = ET.fromstring(lab.network_xml())
        assert root.tag == "network"
        assert root.findtext("name") == "orchlab"
        assert root.find("forward") is None
        bridge = root.find("bridge")
        assert bridge is not None
        assert bridge.attrib == {"name": "orchlab0", "stp": "on", "delay": "0"}
        ip = root.find("ip")
        assert ip is not None
        assert ip.attrib == {"address": "10.213.0.1", "netmask": "255.255.255.0"}
        rng = root.find("ip/dhcp/range")
        assert rng is not None
        assert rng.attrib == {"start": "10.213.0.10", "end": "10.213.0.250"}

    def test_our_definition_has_no_mismatches(self) -> None:
        assert lab.network_mismatches(lab.network_xml()) == []

    def test_dhcp_reservations_are_not_a_mismatch(self) -> None:
        root = ET.fromstring(lab.network_xml())
        dhcp = root.find("ip/dhcp")
        assert dhcp is not None
        ET.SubElement(dhcp, "host", {"mac": "52:54:00:00:00:01", "ip": "10.213.0.20"})
        assert lab.network_mismatches(ET.tostring(root, encoding="unicode")) == []

    def test_forward_and_other_bridge_are_reported(self) -> None:
        root = ET.fromstring(lab.network_xml())
        ET.SubElement(root, "forward", {"mode": "nat"})
        bridge = root.find("bridge")
        assert bridge is not None
        bridge.set("name", "virbr0")
        found = lab.network_mismatches(ET.tostring(root, encoding="unicode"))
        assert any("<forward>" in p for p in found)
        assert any("orchlab0" in p for p in found)

    def test_unparsable_definition_is_reported(self) -> None:
        assert lab.network_mismatches("<network>") != []


class TestPoolXml:
    def test_dir_pool_at_path_with_mode_0711(self) -> None:
        root = ET.fromstring(lab.pool_xml(Path("/var/lib/orchestrator/lab/pool")))
        assert root.tag == "pool"
        assert root.get("type") == "dir"
        assert root.findtext("name") == "orchlab"
        assert root.findtext("target/path") == "/var/lib/orchestrator/lab/pool"
        assert root.findtext("target/permissions/mode") == "0711"

    def test_hostile_path_is_escaped_not_injected(self) -> None:
        hostile = Path("/tmp/a&b<c>'\"/</path><path>/etc")
        text = lab.pool_xml(hostile)
        root = ET.fromstring(text)
        assert len(root.findall("target/path")) == 1
        assert root.findtext("target/path") == str(hostile)
        assert lab.pool_target_path(text) == str(hostile)

    def test_pool_target_path_of_garbage_is_none(self) -> None:
        assert lab.pool_target_path("not xml") is None


class TestDetectDomainType:
    @pytest.mark.parametrize(
        ("modules", "expected"),
        [
            ((), "qemu"),
            (("kvm", "kvm_pvm"), "qemu"),
            (("kvm", "kvm_intel"), "kvm"),
            (("kvm", "kvm_amd"), "kvm"),
        ],
    )
    def test_kvm_only_with_a_real_host_module(
        self, tmp_path: Path, modules: tuple[str, ...], expected: str
    ) -> None:
        (tmp_path / "module").mkdir()
        for name in modules:
            (tmp_path / "module" / name).mkdir()
        assert lab.detect_domain_type(tmp_path) == expected


def _fake_proc(root: Path, pid: int, *, comm: str, state: str = "S") -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "comm").write_text(comm + "\n")
    # A command name with ") " inside must not confuse the state parser.
    (d / "stat").write_text(f"{pid} ({comm} x) y) {state} 1 {pid} {pid} 0 -1\n")


class TestPidFiles:
    def test_live_daemon_with_matching_name(self, tmp_path: Path) -> None:
        proc = tmp_path / "proc"
        _fake_proc(proc, 4242, comm="libvirtd")
        pid_file = tmp_path / "libvirtd.pid"
        pid_file.write_text("4242\n")
        assert lab.live_daemon_pid(pid_file, comm="libvirtd", proc_root=proc) == (4242, None)

    def test_dead_pid_is_reported_not_returned(self, tmp_path: Path) -> None:
        pid_file = tmp_path / "libvirtd.pid"
        pid_file.write_text("4242\n")
        pid, problem = lab.live_daemon_pid(pid_file, comm="libvirtd", proc_root=tmp_path / "proc")
        assert pid is None
        assert problem == "libvirtd pid file names a dead process (4242)"

    def test_really_dead_process(self, tmp_path: Path) -> None:
        finished = subprocess.Popen([sys.executable, "-c", "pass"])
        finished.wait()
        pid_file = tmp_path / "virtlogd.pid"
        pid_file.write_text(f"{finished.pid}\n")
        pid, problem = lab.live_daemon_pid(pid_file, comm="virtlogd")
        assert pid is None
        assert problem is not None and "dead process" in problem

    def test_reused_pid_of_another_program_is_not_our_daemon(self, tmp_path: Path) -> None:
        proc = tmp_path / "proc"
        _fake_proc(proc, 4242, comm="bash")
        assert not lab.process_alive(4242, comm="libvirtd", proc_root=proc)

    def test_zombie_is_dead(self, tmp_path: Path) -> None:
        # PID 1 here does not reap, so killed daemons linger as zombies with their name.
        proc = tmp_path / "proc"
        _fake_proc(proc, 4242, comm="libvirtd", state="Z")
        assert not lab.process_alive(4242, comm="libvirtd", proc_root=proc)

    def test_missing_pid_file_is_no_problem(self, tmp_path: Path) -> None:
        assert lab.live_daemon_pid(tmp_path / "none.pid", comm="virtlogd") == (None, None)

    def test_garbage_pid_file_is_a_problem(self, tmp_path: Path) -> None:
        pid_file = tmp_path / "virtlogd.pid"
        pid_file.write_text("not a pid\n")
        pid, problem = lab.live_daemon_pid(pid_file, comm="virtlogd")
        assert pid is None
        assert problem is not None and "does not hold a pid" in problem


class TestDomainsOnLab:
    def test_selects_domains_on_lab_network_or_bridge(self) -> None:
        def dom(source: dict[str, str], kind: str) -> str:
            root = ET.Element("domain", {"type": "qemu"})
            iface = ET.SubElement(ET.SubElement(root, "devices"), "interface", {"type": kind})
            ET.SubElement(iface, "source", source)
            return ET.tostring(root, encoding="unicode")

        xmls = {
            "a-0": dom({"network": "orchlab"}, "network"),
            "b-0": dom({"network": "default"}, "network"),
            "c-0": dom({"bridge": "orchlab0"}, "bridge"),
            "broken": "<domain",
        }
        assert lab.running_domains_on_lab(xmls) == ["a-0", "c-0"]


class TestLabEnv:
    def test_makes_the_lab_the_default(self, tmp_path: Path) -> None:
        env = lab.lab_env(tmp_path)
        assert env == {
            "ORCH_LIBVIRT_URI": "qemu:///system",
            "ORCH_NETWORK": "orchlab",
            "ORCH_POOL": "orchlab",
            "ORCH_DOMAIN_TYPE": lab.detect_domain_type(),
            "ORCH_STATE_DIR": str(tmp_path),
            "ORCH_IN_LAB": "1",
        }
        assert env["ORCH_DOMAIN_TYPE"] in ("kvm", "qemu")


class TestStatus:
    def _status(self, **changes: object) -> lab.LabStatus:
        base: dict[str, object] = {
            "namespace": True,
            "virtlogd_pid": 10,
            "libvirtd_pid": 11,
            "network_active": True,
            "pool_active": True,
            "pool_path": "/p",
            "domain_type": "qemu",
            "problems": (),
        }
        base.update(changes)
        return lab.LabStatus(**base)  # type: ignore[arg-type]

    def test_up_needs_everything_and_no_problem(self) -> None:
        assert self._status().up
        assert not self._status(network_active=False).up
        assert not self._status(libvirtd_pid=None).up
        assert not self._status(problems=("x",)).up

    def test_as_dict_is_json_shaped(self) -> None:
        d = self._status(problems=("p",)).as_dict()
        assert d["up"] is False
        assert d["libvirtdPid"] == 11
        assert d["namespace"] == "orchlab"
        assert d["problems"] == ["p"]
        assert self._status(namespace=False).as_dict()["namespace"] is None


class TestGuards:
    def test_lab_up_needs_root(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr("orchestrator.labsys.os.geteuid", lambda: 1000)
        with pytest.raises(EnvironmentProblem, match="needs root"):
            lab.lab_up(tmp_path)
        assert not (tmp_path / "lab").exists()

    def test_missing_tools_point_at_make_setup(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr("orchestrator.labsys.os.geteuid", lambda: 0)
        monkeypatch.setattr("orchestrator.labsys.shutil.which", lambda name, path=None: None)
        with pytest.raises(EnvironmentProblem) as info:
            lab.lab_up(tmp_path)
        assert info.value.hint == "run `make setup`"
        assert "libvirtd" in info.value.message
        assert not (tmp_path / "lab").exists()

    def test_exec_without_the_lab_says_run_lab_up(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr("orchestrator.labsys.os.geteuid", lambda: 0)
        with pytest.raises(EnvironmentProblem) as info:
            lab.lab_exec(tmp_path, ["true"])
        assert info.value.hint is not None and "orch lab up" in info.value.hint
