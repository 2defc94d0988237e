"""The pure parts of the lab's simulated hosts: the address plan, their network XML and
libvirtd.conf, the command that starts their daemons, the parsers of `ip -j`, the records."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from orchestrator import lab, labconfig, labhosts
from orchestrator.cli import main
from orchestrator.labconfig import HostPlan, LabHost, LabStatus


class TestAddressPlan:
    def test_host_n_is_named_and_addressed_by_its_number(self) -> None:
        plan = HostPlan(2)
        assert plan.name == "lab-2"
        assert plan.fault_domain == "fd-2"
        assert plan.namespace == "orchlab-lab-2"
        assert plan.veth == "veth-lab-2"
        assert plan.address == "10.214.0.2"
        assert plan.uri == "qemu+tcp://10.214.0.2/system"
        assert (plan.network, plan.pool, plan.bridge) == ("lab-2", "lab-2", "lab-2-br")
        assert str(plan.subnet) == "10.214.2.0/24"
        assert plan.gateway == "10.214.2.1"
        assert plan.dhcp_range == ("10.214.2.10", "10.214.2.250")

    def test_plans_are_numbered_from_one_and_zero_is_the_single_host_lab(self) -> None:
        assert [p.name for p in labconfig.host_plans(4)] == ["lab-1", "lab-2", "lab-3", "lab-4"]
        assert labconfig.host_plans(0) == []

    @pytest.mark.parametrize("count", [-1, 5])
    def test_counts_beyond_the_range_are_refused(self, count: int) -> None:
        with pytest.raises(ValueError, match="0..4"):
            labconfig.host_plans(count)

    @pytest.mark.parametrize("index", [0, 5])
    def test_host_numbers_beyond_the_range_are_refused(self, index: int) -> None:
        with pytest.raises(ValueError):
            HostPlan(index)

    def test_nothing_overlaps(self) -> None:
        plans = labconfig.host_plans(labconfig.HOSTS_MAX)
        backbone = labconfig.HOSTS_BACKBONE
        lab_net = ipaddress.IPv4Network(f"{labconfig.LAB_GATEWAY}/{labconfig.LAB_PREFIX}",
                                        strict=False)
        subnets = [p.subnet for p in plans] + [backbone, lab_net]
        for i, a in enumerate(subnets):
            for b in subnets[i + 1:]:
                assert not a.overlaps(b), (a, b)
        addresses = [p.address for p in plans] + [labconfig.HOSTS_LAB_ADDRESS]
        assert len(set(addresses)) == len(addresses)
        assert all(ipaddress.IPv4Address(a) in backbone for a in addresses)
        for p in plans:
            assert ipaddress.IPv4Address(p.gateway) in p.subnet
            assert all(ipaddress.IPv4Address(a) in p.subnet for a in p.dhcp_range)

    def test_device_names_fit_the_kernels_15_characters(self) -> None:
        for p in labconfig.host_plans(labconfig.HOSTS_MAX):
            for name in (p.veth, p.bridge, labconfig.HOSTS_BRIDGE, labconfig.HOST_IFACE):
                assert len(name) <= 15, name

    def test_host_uuids_differ_and_stay(self) -> None:
        uuids = [p.host_uuid for p in labconfig.host_plans(labconfig.HOSTS_MAX)]
        assert len(set(uuids)) == len(uuids)
        assert uuids == [p.host_uuid for p in labconfig.host_plans(labconfig.HOSTS_MAX)]
        assert all(str(uuid.UUID(u)) == u for u in uuids)

    def test_the_lab_manages_a_host_on_its_unix_socket(self) -> None:
        assert HostPlan(3).management_uri() == (
            "qemu:///system?socket=/run/orchlab/lab-3/libvirt-sock")


class TestHostNetworkXml:
    def test_is_routed_on_its_own_subnet_with_dhcp(self) -> None:
        root = ET.fromstring(labconfig.host_network_xml(HostPlan(3)))
        assert root.findtext("name") == "lab-3"
        forward = root.find("forward")
        assert forward is not None and forward.attrib == {"mode": "route"}
        bridge = root.find("bridge")
        assert bridge is not None and bridge.get("name") == "lab-3-br"
        ip = root.find("ip")
        assert ip is not None
        assert ip.attrib == {"address": "10.214.3.1", "netmask": "255.255.255.0"}
        rng = root.find("ip/dhcp/range")
        assert rng is not None
        assert rng.attrib == {"start": "10.214.3.10", "end": "10.214.3.250"}

    def test_our_definition_has_no_mismatches(self) -> None:
        plan = HostPlan(1)
        assert labconfig.host_network_mismatches(labconfig.host_network_xml(plan), plan) == []

    def test_nat_or_isolated_or_another_hosts_network_is_reported(self) -> None:
        plan = HostPlan(1)
        root = ET.fromstring(labconfig.host_network_xml(plan))
        forward = root.find("forward")
        assert forward is not None
        forward.set("mode", "nat")
        assert any("not routed" in p for p in labconfig.host_network_mismatches(
            ET.tostring(root, encoding="unicode"), plan))
        root.remove(forward)
        assert any("not routed" in p for p in labconfig.host_network_mismatches(
            ET.tostring(root, encoding="unicode"), plan))
        other = labconfig.host_network_xml(HostPlan(2))
        found = labconfig.host_network_mismatches(other, plan)
        assert any("lab-1-br" in p for p in found)
        assert any("10.214.1.1" in p for p in found)
        assert labconfig.host_network_mismatches("<network", plan) != []

    def test_pool_of_a_host_is_named_after_it(self) -> None:
        root = ET.fromstring(labconfig.pool_xml(Path("/p"), name="lab-2"))
        assert root.findtext("name") == "lab-2"
        assert root.findtext("target/path") == "/p"


class TestHostLibvirtdConf:
    def test_listens_on_tcp_without_tls_or_auth_on_its_address_only(self) -> None:
        plan = HostPlan(4)
        lines = labconfig.host_libvirtd_conf(plan).splitlines()
        settings = dict(line.split(" = ", 1) for line in lines if not line.startswith("#"))
        assert settings == {
            "listen_tls": "0",
            "listen_tcp": "1",
            "listen_addr": '"10.214.0.4"',
            "auth_tcp": '"none"',
            "host_uuid": f'"{plan.host_uuid}"',
        }


class TestPrivateDirectories:
    def test_every_libvirt_directory_is_hidden_by_a_copy_of_the_host(self, tmp_path: Path) -> None:
        binds = labconfig.host_binds(tmp_path, HostPlan(1))
        assert [str(dst) for _, dst in binds] == [
            "/etc/libvirt", "/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt",
            "/var/log/libvirt"]
        host = tmp_path / "lab" / "hosts" / "lab-1"
        assert [src for src, _ in binds] == [
            host / "etc", Path("/run/orchlab/lab-1"), host / "lib", host / "cache", host / "log"]

    def test_no_two_hosts_share_a_directory(self, tmp_path: Path) -> None:
        sources = [src for p in labconfig.host_plans(labconfig.HOSTS_MAX)
                   for src, _ in labconfig.host_binds(tmp_path, p)]
        assert len(set(sources)) == len(sources)

    def test_the_skeleton_starts_with_no_definitions_and_covers_every_bind(self) -> None:
        subs = [sub for sub, _mode, _owner in labconfig.HOST_SKELETON]
        assert {"etc/qemu", "etc/qemu/networks", "etc/storage"} <= set(subs)
        assert {sub for sub, _ in labconfig.HOST_LIBVIRT_DIRS} <= set(subs)
        # parents come before children, so they can be made in order
        assert all(sub.rsplit("/", 1)[0] in subs[:i] for i, sub in enumerate(subs) if "/" in sub)
        assert ("lib/qemu", 0o750, "libvirt-qemu") in labconfig.HOST_SKELETON
        assert "libvirtd.conf" not in labconfig.HOST_ETC_COPIED


class TestDaemonArgv:
    def test_new_mount_and_uts_namespace_with_slave_propagation(self) -> None:
        argv = labconfig.host_daemon_argv(unshare="/usr/bin/unshare", sh="/bin/sh", binds=[],
                                          hostname="lab-1", argv=["libvirtd", "-d"])
        assert argv[:6] == ["/usr/bin/unshare", "--mount", "--uts", "--propagation",
                            "slave", "--"]
        assert argv[-2:] == ["libvirtd", "-d"]

    def test_the_script_binds_names_and_execs_with_hostile_paths_quoted(
        self, tmp_path: Path
    ) -> None:
        # Stand-ins for mount and hostname record their arguments; the daemon is printf.
        stubs, log = tmp_path / "bin", tmp_path / "log"
        stubs.mkdir()
        for name in ("mount", "hostname"):
            stub = stubs / name
            stub.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "{name}:%s\\n" "$a"; done'
                            f' >> {log}\n')
            stub.chmod(0o755)
        hostile = tmp_path / "a b'c;$(touch pwned)"
        argv = labconfig.host_daemon_argv(
            unshare="unused", sh="/bin/sh", binds=[(hostile, Path("/etc/libvirt"))],
            hostname="lab-1", argv=["printf", "%s|", "x y", "$HOME"])
        script = argv[argv.index("--") + 1:]
        env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"}
        out = subprocess.run(script, capture_output=True, text=True, env=env, check=True,
                             cwd=tmp_path).stdout
        assert out == "x y|$HOME|"
        assert log.read_text().splitlines() == [
            "mount:--bind", f"mount:{hostile}", "mount:/etc/libvirt", "hostname:lab-1"]
        assert not (tmp_path / "pwned").exists()

    def test_a_failed_bind_stops_before_the_daemon(self, tmp_path: Path) -> None:
        stubs = tmp_path / "bin"
        stubs.mkdir()
        (stubs / "mount").write_text("#!/bin/sh\nexit 32\n")
        (stubs / "mount").chmod(0o755)
        argv = labconfig.host_daemon_argv(
            unshare="unused", sh="/bin/sh", binds=[(tmp_path, Path("/etc/libvirt"))],
            hostname="lab-1", argv=["echo", "started"])
        script = argv[argv.index("--") + 1:]
        env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"}
        proc = subprocess.run(script, capture_output=True, text=True, env=env, check=False)
        assert proc.returncode == 32
        assert "started" not in proc.stdout


# `ip -j addr show` and `ip -j route show` of a lab with one host, as iproute2 6.1 prints them
LAB_ADDR = """[
 {"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],
  "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
 {"ifindex":3,"ifname":"orchhosts0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],
  "addr_info":[{"family":"inet","local":"10.214.0.254","prefixlen":24},
               {"family":"inet6","local":"fe80::1","prefixlen":64}]},
 {"ifindex":4,"link_index":2,"ifname":"veth-lab-1","flags":["BROADCAST","MULTICAST","UP"],
  "master":"orchhosts0","link_netnsid":0,"addr_info":[]},
 {"ifindex":5,"ifname":"veth-lab-2","flags":["BROADCAST","MULTICAST"],"addr_info":[]}
]"""
HOST_ADDR = """[{"ifindex":2,"link_index":4,"ifname":"eth0","flags":["BROADCAST","UP"],
 "link_netnsid":0,"addr_info":[{"family":"inet","local":"10.214.0.1","prefixlen":24}]}]"""
LAB_ROUTES = """[{"dst":"10.214.0.0/24","dev":"orchhosts0","protocol":"kernel","scope":"link"},
 {"dst":"10.214.1.0/24","gateway":"10.214.0.1","dev":"orchhosts0","flags":[]}]"""


class TestIpParsers:
    def test_links_with_master_state_and_peer(self) -> None:
        links = labconfig.ip_links(LAB_ADDR)
        assert links["veth-lab-1"] == labconfig.IpLink(
            name="veth-lab-1", ifindex=4, up=True, master="orchhosts0", peer_ifindex=2)
        assert links["veth-lab-2"].up is False
        assert links["veth-lab-2"].master is None
        assert links["veth-lab-2"].peer_ifindex is None
        host = labconfig.ip_links(HOST_ADDR)["eth0"]
        # a pair: each names the other's index
        assert (host.peer_ifindex, links["veth-lab-1"].peer_ifindex) == (4, host.ifindex)

    def test_ipv4_addresses_only(self) -> None:
        found = labconfig.ip_addresses(LAB_ADDR)
        assert found["orchhosts0"] == {"10.214.0.254/24"}
        assert found["veth-lab-1"] == set()

    def test_routes_with_a_gateway(self) -> None:
        assert labconfig.route_gateways(LAB_ROUTES) == {"10.214.1.0/24": "10.214.0.1"}

    @pytest.mark.parametrize("garbage", ["", "not json", "{}", "[1, null]"])
    def test_garbage_is_nothing(self, garbage: str) -> None:
        assert labconfig.ip_links(garbage) == {}
        assert labconfig.ip_addresses(garbage) == {}
        assert labconfig.route_gateways(garbage) == {}


class TestHostsCount:
    @pytest.mark.parametrize(("text", "count"), [
        ("2\n", 2), ("0", 0), ("4", 4), ("5", None), ("-1", None), ("two", None), ("", None)])
    def test_parse(self, text: str, count: int | None) -> None:
        assert labconfig.parse_hosts_count(text) == count


def _host(**changes: object) -> LabHost:
    base: dict[str, object] = {
        "plan": HostPlan(1), "namespace": True, "virtlogd_pid": 20, "libvirtd_pid": 21,
        "answers": True, "network_active": True, "pool_active": True, "route": True,
    }
    base.update(changes)
    return LabHost(**base)  # type: ignore[arg-type]


class TestLabHostRecord:
    def test_up_needs_everything_and_no_problem(self) -> None:
        assert _host().up
        for change in ({"answers": False}, {"route": False}, {"libvirtd_pid": None},
                       {"network_active": False}, {"problems": ("x",)}):
            assert not _host(**change).up, change

    def test_as_dict_has_what_registering_a_host_needs(self) -> None:
        d = _host().as_dict()
        assert {k: d[k] for k in ("name", "uri", "faultDomain", "network", "pool", "answers")} == {
            "name": "lab-1", "uri": "qemu+tcp://10.214.0.1/system", "faultDomain": "fd-1",
            "network": "lab-1", "pool": "lab-1", "answers": True}
        assert d["namespace"] == "orchlab-lab-1"
        assert _host(namespace=False).as_dict()["namespace"] is None

    def test_a_host_down_means_the_lab_is_not_up(self) -> None:
        def status(*hosts: LabHost) -> LabStatus:
            return LabStatus(namespace=True, virtlogd_pid=10, libvirtd_pid=11,
                             network_active=True, pool_active=True, pool_path="/p",
                             domain_type="qemu", problems=(), hosts=hosts)

        assert status().up and status(_host()).up
        both = status(_host(), _host(plan=HostPlan(2), answers=False))
        assert not both.up
        listed = both.as_dict()["hosts"]
        assert isinstance(listed, list) and [h["name"] for h in listed] == ["lab-1", "lab-2"]
        assert status().as_dict()["hosts"] == []


class TestGuards:
    def test_more_hosts_than_the_lab_has_is_refused_before_anything(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr("orchestrator.labsys.os.geteuid", lambda: 0)
        with pytest.raises(ValueError, match="0..4"):
            lab.lab_up(tmp_path, hosts=5)
        assert not (tmp_path / "lab").exists()

    @pytest.mark.parametrize("count", ["5", "-1", "two"])
    def test_cli_refuses_a_count_out_of_range_with_exit_2(
        self, count: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as exc:
            main(["--state-dir", str(tmp_path / "s"), "lab", "up", "--hosts", count])
        assert exc.value.code == 2
        assert "--hosts" in capsys.readouterr().err
        assert not (tmp_path / "s").exists()

    def test_no_count_recorded_is_the_single_host_lab(self, tmp_path: Path) -> None:
        assert labhosts.wanted_count(tmp_path) == 0
        labconfig.hosts_count_file(tmp_path).parent.mkdir(parents=True)
        labconfig.hosts_count_file(tmp_path).write_text("garbage")
        assert labhosts.wanted_count(tmp_path) == 0
        labconfig.hosts_count_file(tmp_path).write_text("3\n")
        assert labhosts.wanted_count(tmp_path) == 3
