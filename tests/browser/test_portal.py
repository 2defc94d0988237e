"""The portal in a real browser: headless Chromium opens `orch serve`'s page on a fake world
that runs in real time, logs in through the link's ``#token=`` fragment, shows the set and
its instances as the API has them, runs update-instances on a selected instance, starts a
rolling upgrade and watches its batches go by without a reload, cancels it; and a wrong
token brings the log-in form back with a message.

Needs Debian's chromium and chromium-driver (``make test-packages``), no lab. With
ORCH_SCREENSHOT_DIR set, a screenshot of the page in mid-upgrade is saved there as
portal.png (``make nightly`` writes reports/portal.png)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.conftest import Portal

pytestmark = pytest.mark.browser

DEADLINE = 60.0  # seconds for anything the page should show (a loaded 2-core machine)

# What the page shows of set ``web``, read in one go (no stale elements between reads).
SNAPSHOT = """
const set = document.querySelector('section.set[data-set="web"]');
const login = document.getElementById('login');
const base = {url: location.href, token: sessionStorage.getItem('orch.token'),
              login: !login.hidden, loginMessage: document.getElementById('login-message').textContent};
if (!set) return Object.assign(base, {set: false});
const text = (sel) => { const e = set.querySelector(sel); return e ? e.textContent.trim() : null; };
const cells = (tr) => [...tr.querySelectorAll('td')].slice(1).map((td) => td.textContent.trim());
return Object.assign(base, {
  set: true,
  latest: text('.fact-latest'), image: text('.fact-image'), generation: text('.fact-generation'),
  selection: text('.selection'),
  rows: [...set.querySelectorAll('tbody tr')].map(cells),
  inFlightRows: [...set.querySelectorAll('tbody tr.in-flight')].map((tr) => tr.dataset.instanceId),
  code: text('.upgrade-code'), summary: text('.upgrade-summary'), message: text('.upgrade-error'),
  batches: [...set.querySelectorAll('.batches li')].map((li) => [li.dataset.batch || '', li.dataset.status]),
  ops: [...set.querySelectorAll('.ops li')].map((li) => ({status: li.dataset.status, text: li.textContent})),
  cancelDisabled: set.querySelector('.act-cancel').disabled,
  rollingDisabled: set.querySelector('.act-rolling').disabled,
});
"""


def snapshot(driver: Any) -> dict[str, Any]:
    got: dict[str, Any] = driver.execute_script(SNAPSHOT)
    return got


def wait_for(driver: Any, what: str, check: Callable[[dict[str, Any]], bool],
             timeout: float = DEADLINE) -> dict[str, Any]:
    """The first snapshot ``check`` accepts, polled until ``timeout``."""
    seen: list[dict[str, Any]] = []

    def ready(d: Any) -> dict[str, Any] | bool:
        page = snapshot(d)
        seen[:] = [page]
        return page if check(page) else False

    try:
        found: dict[str, Any] = WebDriverWait(driver, timeout, poll_frequency=0.1).until(ready)
    except Exception as exc:
        raise AssertionError(f"the page did not show {what} within {timeout:g}s; last seen: "
                             f"{seen[-1] if seen else None}") from exc
    return found


def click(driver: Any, selector: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f'section.set[data-set="web"] {selector}').click()


def api_rows(portal: Portal) -> list[list[str]]:
    """The instances as ``GET .../virtualMachines?refresh=false`` has them, as the table
    should show them (a dash for nothing)."""
    answer = httpx.get(f"{portal.url}/v1/scaleSets/web/virtualMachines?refresh=false",
                       headers={"Authorization": f"Bearer {portal.token}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    rows = []
    for i in answer.json():
        latest = "yes" if i["latestModelApplied"] else f"no (gen {i['modelGeneration']})"
        rows.append([str(i["instanceId"]), i["name"], i["powerState"], i["healthState"],
                     latest, i["image"] or "–", i["ipAddress"] or "–", i["host"] or "–",
                     "–" if i["faultDomain"] is None else str(i["faultDomain"])])
    return rows


def screenshot(driver: Any, name: str) -> None:
    directory = os.environ.get("ORCH_SCREENSHOT_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(directory) / name))


def script_errors(driver: Any) -> list[str]:
    """The page's JavaScript errors and CSP violations (failed requests are not counted:
    the API's 404 for a set without an upgrade is expected)."""
    return [e["message"] for e in driver.get_log("browser")
            if e.get("source") in ("javascript", "security")
            or "Content Security Policy" in e.get("message", "")]


def done_batches(page: dict[str, Any]) -> int:
    return sum(1 for _, status in page["batches"] if status == "done")


def test_portal_shows_a_rolling_upgrade_live(portal: Portal, browser: Any) -> None:
    browser.get(f"{portal.url}/#token={portal.token}")
    page = wait_for(browser, "the set's five instances",
                    lambda p: p["set"] and len(p["rows"]) == 5)
    # logged in from the fragment, which is gone from the address bar
    assert "#" not in page["url"] and portal.token not in page["url"], page["url"]
    assert page["token"] == portal.token and not page["login"]
    assert page["image"] == "tiny:2" and page["generation"] == "2"
    assert page["latest"] == "0 of 5 instances"
    assert page["rows"] == api_rows(portal)
    assert page["rows"][0][2:5] == ["running", "Healthy", "no (gen 1)"]
    assert page["code"] == "none" and page["cancelDisabled"]

    # update-instances on instance 0 alone
    click(browser, 'tbody tr[data-instance-id="0"] input.select')
    assert snapshot(browser)["selection"] == "1 of 5 selected"
    click(browser, ".act-update")
    page = wait_for(browser, "update-instances of instance 0 succeeded",
                    lambda p: bool(p["ops"]) and p["ops"][0]["status"] == "Succeeded")
    assert "update-instances instance 0" in page["ops"][0]["text"]
    page = wait_for(browser, "instance 0 on the latest model",
                    lambda p: p["rows"][0][4:6] == ["yes", "tiny:2"]
                    and p["latest"] == "1 of 5 instances")
    click(browser, 'tbody tr[data-instance-id="0"] input.select')  # unselected again

    # a rolling upgrade of the other four, one instance a batch, watched as it goes
    click(browser, ".act-rolling")
    observed: list[dict[str, Any]] = []
    shot: list[bool] = []

    def two_batches_done(p: dict[str, Any]) -> bool:
        if not observed or (p["batches"], p["code"], p["summary"]) != (
                observed[-1]["batches"], observed[-1]["code"], observed[-1]["summary"]):
            observed.append(p)
        running = any(status == "running" for _, status in p["batches"])
        if running and done_batches(p) >= 1 and not shot:
            screenshot(browser, "portal.png")
            shot.append(True)
        return p["code"] == "RollingForward" and done_batches(p) >= 2 and not p["cancelDisabled"]

    page = wait_for(browser, "two batches of the rolling upgrade done", two_batches_done)
    forward = [p for p in observed if p["code"] == "RollingForward"]
    assert forward, f"never saw the upgrade RollingForward: {observed}"
    assert any(s == "running" for p in forward for _, s in p["batches"]), \
        f"never saw a batch running: {[p['batches'] for p in forward]}"
    counts = [done_batches(p) for p in forward]
    assert counts == sorted(counts) and len(set(counts)) >= 2, \
        f"the batch strip did not grow batch by batch: {[p['batches'] for p in forward]}"
    assert any(p["inFlightRows"] for p in forward), "no instance was shown upgrading"
    assert page["rollingDisabled"], "start rolling upgrade offered while one runs"

    # update-instances while the upgrade holds the set: refused, and the page says why
    click(browser, 'tbody tr[data-instance-id="4"] input.select')
    click(browser, ".act-update")
    page = wait_for(browser, "update-instances refused",
                    lambda p: p["ops"][0]["status"] == "Failed")
    assert "update-instances instance 4" in page["ops"][0]["text"]
    assert "Conflict" in page["ops"][0]["text"] and "busy" in page["ops"][0]["text"], page["ops"]
    click(browser, 'tbody tr[data-instance-id="4"] input.select')

    # cancel: the upgrade stops after its in-flight batch
    click(browser, ".act-cancel")
    page = wait_for(browser, "the upgrade Cancelled",
                    lambda p: p["code"] == "Cancelled" and not p["rollingDisabled"])
    assert page["message"], "no word on how the upgrade was cancelled"
    cancel = next(op for op in page["ops"] if "cancel rolling upgrade" in op["text"])
    assert cancel["status"] == "Succeeded", page["ops"]
    page = wait_for(browser, "the start operation ended",
                    lambda p: any("start rolling upgrade" in op["text"]
                                  and op["status"] == "Succeeded" for op in p["ops"]))
    upgraded = int(page["latest"].split(" of ")[0])
    assert upgraded >= 3, page["latest"]  # instance 0 and two batches at least
    assert page["rows"] == api_rows(portal)
    assert "#" not in browser.current_url
    assert script_errors(browser) == []


def test_a_wrong_token_brings_the_log_in_back(portal: Portal, browser: Any) -> None:
    before = [portal.world.hv.boot_id(f"web-{i}") for i in range(5)]
    browser.get(f"{portal.url}/#token=not-the-token")
    page = wait_for(browser, "the log-in form with a message", lambda p: p["login"]
                    and "refused the token" in p["loginMessage"])
    assert not page["set"] and page["token"] is None
    assert "#" not in page["url"] and "not-the-token" not in page["url"], page["url"]
    assert browser.find_element(By.ID, "login-message").is_displayed()

    # the right token typed in logs in
    field = browser.find_element(By.ID, "token-input")
    field.send_keys(portal.token)
    browser.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
    page = wait_for(browser, "the set", lambda p: p["set"] and len(p["rows"]) == 5)
    assert not page["login"] and page["token"] == portal.token

    # reimage of two selected instances
    for iid in (1, 3):
        click(browser, f'tbody tr[data-instance-id="{iid}"] input.select')
    assert snapshot(browser)["selection"] == "2 of 5 selected"
    click(browser, ".act-reimage")
    page = wait_for(browser, "the reimage succeeded",
                    lambda p: bool(p["ops"]) and p["ops"][0]["status"] == "Succeeded")
    assert "reimage instances 1, 3" in page["ops"][0]["text"]
    reimaged = [portal.world.hv.boot_id(f"web-{i}") for i in range(5)]
    assert reimaged[1] != before[1] and reimaged[3] != before[3], (before, reimaged)
    assert [reimaged[i] for i in (0, 2, 4)] == [before[i] for i in (0, 2, 4)]

    # logging out forgets the token
    browser.find_element(By.ID, "logout").click()
    page = wait_for(browser, "the log-in form again", lambda p: p["login"])
    assert page["loginMessage"] == "Logged out." and page["token"] is None and not page["set"]

    # the portal link opened in this tab again: only the fragment changes, no reload
    browser.get(f"{portal.url}/#token={portal.token}")
    page = wait_for(browser, "the set after the link", lambda p: p["set"] and len(p["rows"]) == 5)
    assert "#" not in page["url"] and page["token"] == portal.token
    assert script_errors(browser) == []
