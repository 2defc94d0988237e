"""pytest plugin: scale sets of a running `orch serve` for tests on real hardware, each
deleted after its test whatever the test did.

Owned here: the ``scale_set`` fixture factory, the ``orch_client`` and ``orch_settings``
fixtures, and the command-line options and environment variables that say which server to
use. It drives the server only through ``orchestrator.client``.

Loading: with orchestrator installed, pytest finds it by its entry point (``pytest11``);
otherwise ``pytest -p orchestrator.testing`` or ``pytest_plugins = ["orchestrator.testing"]``
in the rootdir's ``conftest.py``. It only adds options and fixtures: a session that uses
none of them never talks to a server.

Configuration, each option before its environment variable before the default:

    --orch-url URL            ORCH_URL          http://127.0.0.1:8717
    --orch-token-file PATH    ORCH_TOKEN_FILE   then ORCH_TOKEN (the token itself), then
                                                $ORCH_STATE_DIR/api-token (orch's state
                                                dir: what `orch serve` writes by default)
    --orch-ca-file PATH       ORCH_CA_FILE      the CA that signed an https server's cert
    --orch-timeout SECONDS    ORCH_TIMEOUT      1800: the deadline of each create, update
                                                and delete
    --orch-set-prefix PREFIX  ORCH_SET_PREFIX   pytest: the start of generated set names

Usage::

    def test_upgrade(scale_set):
        web = scale_set(image="tiny:1", capacity=2)         # waits until Healthy
        assert web.run(0, ". /etc/os-release; echo $VERSION_ID").stdout == "1\\n"
        web.update(image="tiny:2")                          # waits for the roll-out
        assert {i.image for i in web.instances()} == {"tiny:2"}

``scale_set(name=None, *, image, capacity=2, **spec)`` applies the declarative document of
a set (``spec``: the other spec keys, camelCase as in ``vmss apply -f``:
``upgradePolicy={"mode": "Rolling"}``) and returns a ``ScaleSetHandle`` (``.name``,
``.client``, ``.get()``, ``.instances()``, ``.run(instance_id, script)`` giving exitStatus,
stdout and stderr, ``.update(**spec_patch)``, ``.scale(capacity)``). Without a name it
makes one that no other run uses (``pytest-1a2b3c``). A set that already exists is brought
to the document, and deleted afterwards all the same.

Afterwards (the fixture's finalizer: also when the test failed, also when the create
itself failed or timed out, leaving a half-made set) every set the test asked for is
deleted and the deletion awaited; a set that is not there is fine. Only a create the server
refused (400, 404, 401, or 409 until the deadline: nothing was made or changed) leaves its
name alone, so a set that was there before is not deleted for it. A 409 (the set's lock
held: a controller pass of the server, or an operation of the test still running) is
retried until the deadline. A set that cannot be deleted fails the test's teardown, naming
it, after the others were deleted.

Called by: nobody inside the package (pytest, by the entry point or ``-p``)
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from orchestrator.client import (
    DEFAULT_URL,
    Client,
    CommandResult,
    Instance,
    Operation,
    ScaleSet,
    document,
    read_token,
)
from orchestrator.errors import Conflict, InvalidInput, NotFound, OrchError, SecurityError

T = TypeVar("T")
DEFAULT_TIMEOUT = 1800.0
DEFAULT_PREFIX = "pytest"
CONFLICT_PAUSE_MAX = 5.0  # seconds between tries while a set's lock is held


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("orchestrator", "scale sets of a running `orch serve`")
    group.addoption("--orch-url", default=None, metavar="URL",
                    help=f"the API of orch serve [env ORCH_URL; {DEFAULT_URL}]")
    group.addoption("--orch-token-file", default=None, metavar="PATH",
                    help="its bearer token [env ORCH_TOKEN_FILE, or ORCH_TOKEN the token "
                         "itself; $ORCH_STATE_DIR/api-token]")
    group.addoption("--orch-ca-file", default=None, metavar="PATH",
                    help="CA of an https server's certificate [env ORCH_CA_FILE]")
    group.addoption("--orch-timeout", default=None, type=float, metavar="SECONDS",
                    help=f"deadline of each create, update and delete [env ORCH_TIMEOUT; "
                         f"{DEFAULT_TIMEOUT:g}]")
    group.addoption("--orch-set-prefix", default=None, metavar="PREFIX",
                    help=f"start of generated set names [env ORCH_SET_PREFIX; {DEFAULT_PREFIX}]")


@dataclass(frozen=True)
class Settings:
    """Which server, and how long to wait for it (from the options and environment)."""

    url: str
    token: str = field(repr=False)
    ca_file: Path | None
    timeout: float
    prefix: str

    def client(self) -> Client:
        return Client(self.url, self.token,
                      verify=self.ca_file if self.ca_file is not None else True)


def _default_token_file(env: Mapping[str, str]) -> Path:
    state = env.get("ORCH_STATE_DIR")
    if state:
        return Path(state) / "api-token"
    from orchestrator.cli.app import default_state_dir  # what orch itself defaults to

    return default_state_dir() / "api-token"


def settings_of(config: pytest.Config, environ: Mapping[str, str] | None = None) -> Settings:
    """The settings the options and ``environ`` (default: the process's) give;
    InvalidInput if the token cannot be read or a number is not one."""
    env = os.environ if environ is None else environ

    def pick(option: str, variable: str) -> Any:
        given = config.getoption(option)
        return given if given is not None else env.get(variable) or None

    token_file = pick("orch_token_file", "ORCH_TOKEN_FILE")
    if token_file is not None:
        token = read_token(Path(token_file))
    elif env.get("ORCH_TOKEN"):
        token = env["ORCH_TOKEN"].strip()
    else:
        token = read_token(_default_token_file(env))
    timeout = pick("orch_timeout", "ORCH_TIMEOUT")
    try:
        seconds = DEFAULT_TIMEOUT if timeout is None else float(timeout)
    except ValueError as exc:
        raise InvalidInput(f"ORCH_TIMEOUT={timeout!r} is not a number of seconds") from exc
    ca_file = pick("orch_ca_file", "ORCH_CA_FILE")
    return Settings(url=pick("orch_url", "ORCH_URL") or DEFAULT_URL, token=token,
                    ca_file=None if ca_file is None else Path(ca_file), timeout=seconds,
                    prefix=pick("orch_set_prefix", "ORCH_SET_PREFIX") or DEFAULT_PREFIX)


@pytest.fixture(scope="session")
def orch_settings(pytestconfig: pytest.Config) -> Settings:
    try:
        return settings_of(pytestconfig)
    except OrchError as exc:
        pytest.fail(f"orchestrator.testing: {exc.one_line()}", pytrace=False)


@pytest.fixture
def orch_client(orch_settings: Settings) -> Iterator[Client]:
    """The client of the configured server, one per test (cheap: no request is sent until
    it is used). A suite that starts its own server overrides ``orch_settings``."""
    with orch_settings.client() as client:
        yield client


def retrying_conflicts(call: Callable[[], T], *, deadline: float, pause: float = 0.2) -> T:
    """``call()``, tried again while it meets a held lock (409) and ``deadline`` (a
    ``time.monotonic()`` value) has not passed; ``pause`` seconds after the first try,
    doubling up to ``CONFLICT_PAUSE_MAX``."""
    while True:
        try:
            return call()
        except Conflict:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            time.sleep(min(pause, left))
            pause = min(pause * 2, CONFLICT_PAUSE_MAX)


@dataclass
class ScaleSetHandle:
    """One set a test made (``scale_set(...)``): its name and the calls tests use most;
    anything else through ``.client``."""

    name: str
    client: Client
    timeout: float

    def get(self) -> ScaleSet:
        return self.client.scale_set(self.name)

    def instances(self, *, refresh: bool = True) -> list[Instance]:
        return self.client.instances(self.name, refresh=refresh)

    def run(self, instance_id: int, script: str, *, timeout: float = 300.0) -> CommandResult:
        """Run ``script`` in the instance (runCommand); a non-zero exit is a result."""
        return self.client.run_command(self.name, instance_id, script, timeout=timeout)

    def update(self, **spec_patch: Any) -> ScaleSet:
        """PATCH the spec (``update(image="tiny:2")``) and wait for what it triggers."""
        deadline = time.monotonic() + self.timeout
        return retrying_conflicts(lambda: self.client.update(
            self.name, spec_patch, timeout=max(1.0, deadline - time.monotonic())),
            deadline=deadline)

    def scale(self, capacity: int) -> ScaleSet:
        deadline = time.monotonic() + self.timeout
        return retrying_conflicts(lambda: self.client.scale(
            self.name, capacity, timeout=max(1.0, deadline - time.monotonic())),
            deadline=deadline)


class ScaleSets:
    """The factory behind the ``scale_set`` fixture, and the sets it must delete."""

    def __init__(self, client: Client, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.made: list[str] = []  # every name asked for, created or not
        self.pending: dict[str, Operation[ScaleSet]] = {}  # a create that may still run

    def __call__(self, name: str | None = None, *, image: str, capacity: int = 2,
                 **spec: Any) -> ScaleSetHandle:
        name = name or f"{self.settings.prefix}-{secrets.token_hex(3)}"
        # recorded before anything is sent: a create that fails half-way (or whose answer
        # is lost) leaves a set
        self.made.append(name)
        deadline = time.monotonic() + self.settings.timeout
        try:
            op = retrying_conflicts(lambda: self.client.apply(
                document(name, image=image, capacity=capacity, **spec), wait=False),
                deadline=deadline)
        except (InvalidInput, Conflict, SecurityError):
            # refused: nothing was made or changed, and a set of that name that was there
            # before is not this test's to delete
            self.made.remove(name)
            raise
        self.pending[name] = op
        self.client.wait(op, timeout=max(1.0, deadline - time.monotonic()))
        del self.pending[name]
        return ScaleSetHandle(name, self.client, self.settings.timeout)

    def delete_all(self) -> list[str]:
        """Delete every set asked for, newest first; what could not be, and why."""
        left = []
        for name in reversed(dict.fromkeys(self.made)):
            try:
                self._delete(name)
            except NotFound:
                pass  # never created (refused), or deleted by the test itself
            except OrchError as exc:
                left.append(f"{name} ({type(exc).__name__}: {exc.one_line()})")
        return left

    def _delete(self, name: str) -> None:
        deadline = time.monotonic() + self.settings.timeout
        op = self.pending.pop(name, None)
        if op is not None:  # its create may still hold the lock: let it end first
            try:
                self.client.wait(op, timeout=max(1.0, deadline - time.monotonic()))
            except OrchError:
                pass  # failed or timed out: the delete below removes what is left
        retrying_conflicts(lambda: self.client.delete(
            name, timeout=max(1.0, deadline - time.monotonic())), deadline=deadline)


@pytest.fixture
def scale_set(orch_client: Client, orch_settings: Settings) -> Iterator[ScaleSets]:
    """Make scale sets on the configured `orch serve`: ``scale_set(name=None, *, image,
    capacity=2, **spec)``; each is deleted after the test (see the module docstring)."""
    sets = ScaleSets(orch_client, orch_settings)
    yield sets
    left = sets.delete_all()
    if left:
        pytest.fail("orchestrator.testing: scale sets left behind: " + "; ".join(left),
                    pytrace=False)
