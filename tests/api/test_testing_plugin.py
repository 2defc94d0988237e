"""The pytest plugin ``orchestrator.testing``, run by pytester on inner test files against
the app of `orch serve` on the fake world, served by uvicorn on a free port in a thread:
its sets are made, used and deleted afterwards, also when the inner test fails or its
create fails; its settings come from options, then the environment.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator import ssh
from orchestrator.errors import Conflict
from orchestrator.store import Store

from .conftest import TOKEN, Api
from .inprocess import served

pytest_plugins = ["pytester"]

# the inner runs: the plugin by name (the entry point may not be installed); no cache in the
# temp dir; not hypothesis' plugin (its summary imports hypothesis: 2 s a run)
INNER_ARGS = ("-p", "orchestrator.testing", "-p", "no:cacheprovider",
              "-p", "no:hypothesispytest", "-W", "ignore::pytest.PytestAssertRewriteWarning")


@dataclass
class Served:
    api: Api
    url: str
    token_file: Path

    def args(self, *more: str) -> list[str]:
        return [*INNER_ARGS, "--orch-url", self.url, "--orch-token-file", str(self.token_file),
                "--orch-timeout", "60", *more]

    def defined(self) -> list[str]:
        """Every domain the fake hypervisor was asked to define so far."""
        return [name for verb, name, *_ in self.api.world.hv.calls if verb == "define_domain"]

    def nothing_left(self) -> bool:
        return (self.api.world.store.list_sets() == []
                and self.api.world.resources() == (set(), set(), set()))


@pytest.fixture
def server(api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    for variable in ("ORCH_URL", "ORCH_TOKEN", "ORCH_TOKEN_FILE", "ORCH_TIMEOUT",
                     "ORCH_SET_PREFIX", "ORCH_CA_FILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("ORCH_STATE_DIR", str(tmp_path / "no-state"))  # never the host's token
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    api.world.register_image("tiny", "2")
    with served(api.http.app) as url:
        yield Served(api, url, token_file)


INNER = '''
import pytest

def test_a_set_made_used_and_updated(scale_set):
    web = scale_set(image="tiny:1", capacity=2)
    assert web.name.startswith("pytest-")
    assert [(i.instanceId, i.image) for i in web.instances()] == [(0, "tiny:1"), (1, "tiny:1")]
    result = web.run(1, ". /etc/os-release; echo $VERSION_ID")
    assert (result.exitStatus, result.stdout) == (0, "ran on 1\\n")
    assert web.update(image="tiny:2").image == "tiny:2"
    assert web.client.manual_upgrade(web.name, [0])[0].image == "tiny:2"
    assert web.scale(3).instanceCount == 3
    assert web.get().latestModelInstances == 2

def test_that_fails_after_making_its_set(scale_set):
    scale_set("kept", image="tiny:1", capacity=1)
    assert False, "this inner test fails on purpose"

def test_whose_create_fails(scale_set):
    scale_set("broken", image="tiny:3", capacity=1)

def test_whose_create_is_refused(scale_set):
    scale_set("refused", image="nosuch:1", capacity=1)
'''


def fake_ssh(monkeypatch: pytest.MonkeyPatch, api: Api) -> None:
    """runCommand answers which instance ran the script (the fake world has no SSH)."""
    async def run_command(endpoint: ssh.Endpoint, command: str, **kw: Any) -> ssh.CommandResult:
        store = Store(api.world.store.path)  # an operation's thread: a connection of its own
        try:
            found = [i.instance_id for rec in store.list_sets()
                     for i in store.list_instances(rec.name) if i.ip == endpoint.host]
        finally:
            store.close()
        return ssh.CommandResult(exit_status=0, stdout=f"ran on {found[0]}\n", stderr="",
                                 latency=0.01)

    monkeypatch.setattr(ssh, "run_command", run_command)


class Locks:
    """A plugin of the inner run: its fixture ``held`` takes a set's lock in this world
    (as another command would) and gives it back after every other fixture of the test."""

    def __init__(self, api: Api) -> None:
        self.api = api

    @pytest.fixture
    def held(self) -> Iterator[Callable[[str], None]]:
        with contextlib.ExitStack() as stack:
            yield lambda name: stack.enter_context(self.api.world.service.locked(name, "test"))


def test_sets_are_deleted_after_passing_and_failing_tests(
        pytester: pytest.Pytester, server: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_ssh(monkeypatch, server.api)
    server.api.world.register_image("tiny", "3")
    server.api.world.prober.broken_images.add(
        str(server.api.world.registry.get("tiny:3").disk))
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest(*server.args())
    result.assert_outcomes(passed=1, failed=3)
    result.stdout.fnmatch_lines(["*this inner test fails on purpose*",
                                 "*OperationFailed*broken*", "*InvalidInput*nosuch*"])
    defined = server.defined()
    assert {"kept-0", "broken-0"} <= set(defined)  # made, then deleted
    assert any(name.startswith("pytest-") for name in defined)
    assert "refused-0" not in defined
    assert server.nothing_left()


def test_settings_come_from_the_environment_without_options(
        pytester: pytest.Pytester, server: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_URL", server.url)
    monkeypatch.setenv("ORCH_TOKEN", TOKEN)
    monkeypatch.setenv("ORCH_SET_PREFIX", "envset")
    monkeypatch.setenv("ORCH_TIMEOUT", "45")
    pytester.makepyfile(test_inner='''
def test_env(scale_set, orch_settings):
    assert (orch_settings.timeout, orch_settings.prefix) == (45.0, "envset")
    assert scale_set(image="tiny:1", capacity=1).name.startswith("envset-")
''')
    pytester.runpytest(*INNER_ARGS).assert_outcomes(passed=1)
    assert any(name.startswith("envset-") for name in server.defined())
    assert server.nothing_left()


def test_options_win_over_the_environment(pytester: pytest.Pytester, server: Served,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_URL", "http://127.0.0.1:1")  # nobody listens there
    monkeypatch.setenv("ORCH_TOKEN", "not-the-token")
    monkeypatch.setenv("ORCH_TIMEOUT", "45")
    pytester.makepyfile(test_inner='''
def test_options(orch_settings, orch_client):
    assert orch_settings.timeout == 60.0
    assert orch_client.scale_sets() == []
''')
    pytester.runpytest(*server.args()).assert_outcomes(passed=1)


def test_a_token_that_cannot_be_found_fails_the_test_readably(
        pytester: pytest.Pytester, server: Served) -> None:
    pytester.makepyfile(test_inner='''
def test_needs_a_server(scale_set):
    scale_set(image="tiny:1")
''')
    result = pytester.runpytest(*INNER_ARGS, "--orch-url", server.url)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*orchestrator.testing: token file */no-state/api-token cannot be read*"])


def test_a_wrong_token_is_unauthorized(pytester: pytest.Pytester, server: Served,
                                       tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token\n")
    pytester.makepyfile(test_inner='''
import pytest
from orchestrator.errors import Unauthorized

def test_refused(scale_set):
    with pytest.raises(Unauthorized):
        scale_set("web", image="tiny:1")
''')
    pytester.runpytest(*server.args("--orch-token-file", str(wrong))).assert_outcomes(passed=1)
    assert server.nothing_left()


def test_a_set_the_test_deleted_itself_is_fine(pytester: pytest.Pytester,
                                               server: Served) -> None:
    pytester.makepyfile(test_inner='''
def test_deletes(scale_set):
    web = scale_set(image="tiny:1", capacity=1)
    web.client.delete(web.name)
''')
    pytester.runpytest(*server.args()).assert_outcomes(passed=1)


def test_a_set_that_cannot_be_deleted_fails_the_teardown(pytester: pytest.Pytester,
                                                         server: Served) -> None:
    pytester.makepyfile(test_inner='''
def test_locks_its_set(held, scale_set):
    scale_set("stuck", image="tiny:1", capacity=1)
    scale_set("other", image="tiny:1", capacity=1)
    held("stuck")  # until after the finalizer: the delete meets a 409 until its deadline
''')
    result = pytester.runpytest(*server.args("--orch-timeout", "1"),
                                plugins=[Locks(server.api)])
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*scale sets left behind: stuck (Conflict: *busy*"])
    assert [s.name for s in server.api.world.store.list_sets()] == ["stuck"]  # other: gone


def test_retrying_conflicts_until_the_deadline() -> None:
    # imported here: a module-level import would precede pytest's own import of the plugin
    from orchestrator.testing import retrying_conflicts

    answers: list[Exception | str] = [Conflict("busy"), Conflict("busy"), "done"]

    def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert retrying_conflicts(call, deadline=float("inf"), pause=0.001) == "done"

    def always() -> str:
        raise Conflict("busy")

    with pytest.raises(Conflict):
        retrying_conflicts(always, deadline=0.0, pause=0.001)
