"""Fixtures of the browser tests: `orch serve`'s app on a fake world that runs in real time,
served by uvicorn on a free port of 127.0.0.1 in a thread, and headless Chromium driven by
Selenium (Debian's chromium and chromedriver, named explicitly so that Selenium Manager never
runs and nothing is downloaded).

The world's guests boot in about a second and shut down in a fraction of one, so the set
``web`` (5 instances, Rolling, 20 % batches, a second's pause between them) rolls a new model
out in about ten seconds: slow enough for the page's one-second polling to show every batch.
A screenshot of the page goes to $ORCH_SCREENSHOT_DIR/portal.png when that is set, and to the
test's tmp dir when a test fails."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.api.app import Backend, create_app
from orchestrator.api.operations import Operations
from orchestrator.clock import RealClock
from orchestrator.model import ScaleSetDocument, validate
from tests.world import Upgrades, World, make_world

TOKEN = "browser-test-token-0123456789"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1366, 768)  # a laptop screen


@dataclass
class Portal:
    world: World
    backend: Backend
    url: str  # http://127.0.0.1:PORT
    token: str = TOKEN


def rolling_set(name: str = "web", *, count: int = 5) -> dict[str, Any]:
    return {"apiVersion": "orchestrator/v1", "kind": "ScaleSet", "metadata": {"name": name},
            "spec": {"image": "tiny:1", "capacity": count,
                     "healthProbe": {"intervalSeconds": 1, "gracePeriodSeconds": 60},
                     "upgradePolicy": {"mode": "Rolling", "rollingUpgradePolicy": {
                         "maxBatchInstancePercent": 20, "maxUnhealthyInstancePercent": 20,
                         "pauseTimeBetweenBatches": "PT1S"}}}}


def real_time_world(tmp_path: Path) -> World:
    """A fake world on the real clock: set ``web`` of 5 healthy instances on tiny:1, its
    model already at tiny:2 (generation 2), not yet rolled out."""
    world = make_world(tmp_path, clock=RealClock(), boot_seconds=1.0, shutdown_seconds=0.3)
    world.register_image("tiny", "2")
    spec = validate(ScaleSetDocument, rolling_set(), where="test").to_spec()
    world.service.create(spec)
    Upgrades(world.service).update("web", {"model": {"image": "tiny:2"}}, wait=False)
    return world


@contextlib.contextmanager
def served(world: World, *, token: str = TOKEN, timeout: float = 30.0) -> Iterator[Portal]:
    """The app on ``world`` under uvicorn on 127.0.0.1 (a port the kernel picks), in a
    thread, until the block ends."""
    import uvicorn

    backend = Backend(opener=world.opened, operations=Operations(world.opened), token=token)
    # IPPROTO_TCP said, as uvicorn's own bind says it: asyncio sets TCP_NODELAY only on the
    # connections of such a socket, and without it each answer waits 40 ms for an ACK
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(backend), log_level="warning",
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        assert thread.is_alive(), "uvicorn ended before it started serving"
        assert time.monotonic() < deadline, f"uvicorn did not start within {timeout:g}s"
        time.sleep(0.05)
    try:
        yield Portal(world, backend, f"http://127.0.0.1:{port}", token)
    finally:
        server.should_exit = True
        thread.join(timeout)
        backend.operations.join(timeout)
        sock.close()


@pytest.fixture
def portal(tmp_path: Path) -> Iterator[Portal]:
    with served(real_time_world(tmp_path / "world")) as running:
        yield running


def chromium(window: tuple[int, int] = WINDOW) -> Any:
    """Headless Chromium through Debian's chromedriver (no Selenium Manager, no download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                "--hide-scrollbars", "--force-device-scale-factor=1",
                f"--window-size={window[0]},{window[1]}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture
def browser(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium window of a laptop's size; on a failed test, a screenshot of
    its page goes to the test's tmp dir."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        # a failure, not a skip: a skipped test must not count as a passed one
        pytest.fail(f"needs Debian's chromium and chromium-driver ({', '.join(missing)} "
                    "missing; `make test-packages` installs them)")
    driver = chromium()
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        if request.node.stash.get(FAILED, False):
            shot = tmp_path / "failure.png"
            with contextlib.suppress(Exception):
                driver.save_screenshot(str(shot))
                print(f"screenshot of the failed page: {shot}")
        driver.quit()
