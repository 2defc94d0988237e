"""The API's bearer token: every route but ``GET /healthz`` (and the portal's page) refuses
a request without the token with 401, changing nothing; the token file (made 0600, reused,
refused when others may read it or it holds no token); and `orch serve`'s refusals of where
it may listen (exit 2, one line, the server never started)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Route

from orchestrator.api import auth, routes
from orchestrator.api.serve import ServeConfig
from orchestrator.errors import InvalidInput, SecurityError
from tests.api.conftest import TOKEN, Api, error_of
from tests.api.spec import PORTAL, PUBLIC, ROUTES
from tests.unit.fakecli import FakeCli

BODIES: dict[tuple[str, str], Any] = {
    ("PUT", "/v1/scaleSets/{name}"): {
        "apiVersion": "orchestrator/v1", "kind": "ScaleSet", "metadata": {"name": "web"},
        "spec": {"image": "tiny:1", "capacity": 3}},
    ("PATCH", "/v1/scaleSets/{name}"): {"capacity": 3},
    ("POST", "/v1/scaleSets/{name}/{action}"): {"instanceIds": [0]},
    ("POST", "/v1/scaleSets/{name}/scale"): {"capacity": 3},
    ("POST", "/v1/scaleSets/{name}/virtualMachines/{id}/runCommand"): {"script": "true"},
}


def concrete(method: str, template: str) -> tuple[str, dict[str, Any]]:
    """A request a token holder would have had answered (valid names and bodies)."""
    path = template.format(name="web", id="0" * 32 if "operations" in template else 0,
                           action="restart")
    body = BODIES.get((method, template))
    return path, {} if body is None else {"json": body}


def test_the_app_has_exactly_the_promised_routes(web: Api) -> None:
    app = web.http.app
    found = {(method, route.path_format)
             for route in [*routes.router.routes, *app.router.routes]  # type: ignore[attr-defined]
             if isinstance(route, Route)
             for method in route.methods or () if method != "HEAD"}
    assert found == set(ROUTES) | {("GET", path) for path in PORTAL}


@pytest.mark.parametrize("header", [
    None,
    "Bearer wrong-token",
    f"Bearer {TOKEN}x",
    f"Bearer {TOKEN[:-1]}",
    f"Basic {TOKEN}",
    f"Token {TOKEN}",
    TOKEN,
    "Bearer",
    "Bearer ",
], ids=["none", "wrong", "longer", "shorter", "basic", "token-scheme", "no-scheme",
        "bearer-alone", "bearer-empty"])
def test_every_route_but_healthz_refuses_without_the_token(web: Api, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    before = web.state()
    for method, template in [*ROUTES, ("GET", "/v1/nope"), ("POST", "/v1/scaleSets/web/nope")]:
        if (method, template) in PUBLIC:
            continue
        path, body = concrete(method, template)
        answer = web.anonymous.request(method, path, headers=headers, **body)
        error = error_of(answer, 401)
        assert error["code"] == "Unauthorized", (method, path)
        assert answer.headers["www-authenticate"] == "Bearer"
        assert TOKEN not in answer.text
        assert web.state() == before, (method, path)
    assert web.backend.operations.running() == []


def test_the_token_in_the_query_is_no_token(web: Api) -> None:
    for params in ({"token": TOKEN}, {"access_token": TOKEN}):
        error_of(web.anonymous.get("/v1/scaleSets", params=params), 401)


def test_the_right_token_in_any_case_of_the_scheme_is_taken(web: Api) -> None:
    for scheme in ("Bearer", "bearer", "BEARER"):
        answer = web.anonymous.get("/v1/scaleSets", headers={"Authorization": f"{scheme} {TOKEN}"})
        assert answer.status_code == 200, scheme


@pytest.mark.parametrize("path", ["/healthz", *PORTAL])
def test_the_public_paths_answer_anyone(web: Api, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        assert web.anonymous.get(path, headers=headers).status_code == 200


# --- the token file ---------------------------------------------------------------------------
def test_a_new_token_file_is_made_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "api-token"
    old = os.umask(0)  # even a permissive umask gives nobody else the token
    try:
        token = auth.load_or_create_token(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 40 and token.strip() == token
    assert path.read_text() == token + "\n"
    assert auth.load_or_create_token(path) == token
    assert auth.load_or_create_token(tmp_path / "other") != token


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o700 | 0o004])
def test_a_token_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "api-token"
    path.write_text("a-token\n")
    path.chmod(mode)
    with pytest.raises(SecurityError, match=f"may be read by others \\(mode {mode:04o}\\)"):
        auth.load_or_create_token(path)
    assert path.read_text() == "a-token\n"  # left as it was


@pytest.mark.parametrize("text", ["", "\n", "  \n", "two tokens\n", "a\nb\n", "x" * 5000])
def test_a_token_file_without_one_token_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "api-token"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(InvalidInput, match="must hold one token on one line"):
        auth.load_or_create_token(path)
    assert path.read_text() == text


def test_a_token_path_that_is_no_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(InvalidInput, match="is not a regular file"):
        auth.load_or_create_token(tmp_path / "dir")
    with pytest.raises(InvalidInput, match="cannot be created"):
        auth.load_or_create_token(tmp_path / "missing" / "api-token")


# --- orch serve -------------------------------------------------------------------------------
@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[ServeConfig]:
    """The configs `orch serve` would have served (nothing is served: no test blocks)."""
    configs: list[ServeConfig] = []
    monkeypatch.setattr("orchestrator.api.serve.serve",
                        lambda config, opener, **kw: configs.append(config))
    return configs


def refused_by_serve(cli: FakeCli, *args: str, code: int = 2) -> str:
    exit_code, out, err = cli.run("serve", *args)
    assert exit_code == code, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize(("args", "message"), [
    (["--listen", "0.0.0.0:8717"],
     "--listen 0.0.0.0: only a loopback address may be used without TLS (give --tls-cert"),
    (["--listen", "[::]:8717"], "--listen ::: only a loopback address"),
    (["--listen", "192.168.1.5:8717"], "only a loopback address"),
    (["--listen", "example.com:8717"], "only a loopback address"),
    (["--listen", "127.0.0.1"], "invalid --listen '127.0.0.1': expected HOST:PORT"),
    (["--listen", "127.0.0.1:0"], "invalid --listen"),
    (["--listen", "127.0.0.1:65536"], "invalid --listen"),
    (["--listen", ":8717"], "invalid --listen"),
    (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-key", "key.pem"], "--tls-cert and --tls-key go together"),
    (["--listen", "0.0.0.0:8717", "--tls-cert", "cert.pem"],
     "--tls-cert and --tls-key go together"),
    (["--listen", "0.0.0.0:8717", "--tls-cert", "none.pem", "--tls-key", "key.pem"],
     "TLS file none.pem not found or not a regular file"),
])
def test_serve_refuses_where_it_may_not_listen(cli: FakeCli, started: list[ServeConfig],
                                               monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path, args: list[str],
                                               message: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cert.pem").write_text("cert")
    (tmp_path / "key.pem").write_text("key")
    assert message in refused_by_serve(cli, *args)
    assert started == []
    assert not (cli.state_dir / "api-token").exists()


def test_serve_listens_anywhere_with_tls(cli: FakeCli, started: list[ServeConfig],
                                         tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("cert")
    key.write_text("key")
    code, _, err = cli.run("serve", "--listen", "0.0.0.0:9000", "--tls-cert", str(cert),
                           "--tls-key", str(key))
    assert code == 0, err
    [config] = started
    assert (config.host, config.port, config.tls_cert, config.tls_key) == ("0.0.0.0", 9000,
                                                                           cert, key)


def test_serve_makes_its_token_file_and_reuses_it(cli: FakeCli,
                                                  started: list[ServeConfig]) -> None:
    for _ in range(2):
        code, _, err = cli.run("serve", "--listen", "[::1]:8718")
        assert code == 0, err
    first, second = started
    path = cli.state_dir / "api-token"
    assert first.token_file == second.token_file == path
    assert first.token == second.token == path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (first.host, first.port) == ("::1", 8718)


def test_serve_refuses_a_token_file_others_may_read(cli: FakeCli, started: list[ServeConfig],
                                                    tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("a-token\n")
    path.chmod(0o644)
    line = refused_by_serve(cli, "--token-file", str(path), code=1)
    assert line == (f"error: token file {path} may be read by others (mode 0644) "
                    f"(hint: chmod 600 {path})")
    assert started == []
