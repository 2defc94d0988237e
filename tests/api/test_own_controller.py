"""A write that meets the set's lock held by this server's own controller pass waits for the
pass to let go (a pass is seconds; a 409 for it would be the server refusing itself), while
a lock held for anything else is still 409 at once; an osRollingUpgrade of a set whose mode
is not Rolling is refused before any operation starts."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from orchestrator import locks
from orchestrator.api import routes
from orchestrator.usecases.session import Env

from .conftest import Api


def test_a_write_waits_for_the_servers_own_controller_pass(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    api.create("web")
    asked = threading.Event()
    real = routes.lock_is_free

    def lock_is_free(env: Env, name: str) -> bool:
        asked.set()
        return real(env, name)

    monkeypatch.setattr(routes, "lock_is_free", lock_is_free)
    answers: list[Any] = []
    # the controller's pass holds the lock as it does: this process, purpose "resume"
    fd = locks.try_take(api.world.env.lock_path("web"), purpose="resume")
    assert isinstance(fd, int)
    try:
        request = threading.Thread(target=lambda: answers.append(api.http.post(
            "/v1/scaleSets/web/restart", json={"instanceIds": [0]})))
        request.start()
        assert asked.wait(30), "the route never looked at the lock"
    finally:
        locks.release(fd)  # the pass ends
    request.join(60)
    assert answers and answers[0].status_code == 202, answers and answers[0].text
    assert api.wait(answers[0])["status"] == "Succeeded"


def test_a_lock_held_for_other_work_is_409_at_once(api: Api) -> None:
    api.create("web")
    fd = locks.try_take(api.world.env.lock_path("web"), purpose="update-instances")
    assert isinstance(fd, int)
    try:
        answer = api.http.post("/v1/scaleSets/web/restart", json={"instanceIds": [0]})
    finally:
        locks.release(fd)
    assert answer.status_code == 409, answer.text


def test_os_rolling_upgrade_of_a_manual_set_is_400_before_any_operation(api: Api) -> None:
    api.create("web", upgradePolicy={"mode": "Manual"})
    before = api.state()
    answer = api.http.post("/v1/scaleSets/web/osRollingUpgrade")
    assert answer.status_code == 400, answer.text
    assert "rolling upgrades need mode Rolling" in answer.json()["error"]["message"]
    assert api.state() == before
    assert api.backend.operations.running() == []
