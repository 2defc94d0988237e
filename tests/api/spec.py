"""The routes the HTTP API promises (`orch serve`: these names are fixed), as (method,
path template), shared by the tests that check every route (the token, the OpenAPI
document)."""

from __future__ import annotations

ACTIONS = ("manualupgrade", "reimage", "reimageall", "start", "poweroff", "restart",
           "deallocate", "delete")

ROUTES = (
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/v1/images"),
    ("GET", "/v1/hosts"),
    ("GET", "/v1/scaleSets"),
    ("GET", "/v1/scaleSets/{name}"),
    ("PUT", "/v1/scaleSets/{name}"),
    ("PATCH", "/v1/scaleSets/{name}"),
    ("DELETE", "/v1/scaleSets/{name}"),
    ("GET", "/v1/scaleSets/{name}/virtualMachines"),
    ("GET", "/v1/scaleSets/{name}/virtualMachines/{id}"),
    ("POST", "/v1/scaleSets/{name}/virtualMachines/{id}/runCommand"),
    ("POST", "/v1/scaleSets/{name}/{action}"),
    ("POST", "/v1/scaleSets/{name}/scale"),
    ("POST", "/v1/scaleSets/{name}/osRollingUpgrade"),
    ("POST", "/v1/scaleSets/{name}/rollingUpgrades/cancel"),
    ("GET", "/v1/scaleSets/{name}/rollingUpgrades/latest"),
    ("GET", "/v1/operations/{id}"),
)

PUBLIC = {("GET", "/healthz")}
# the portal's page and files: public, not API routes, not in the OpenAPI document
PORTAL = ("/", "/portal.js", "/portal.css", "/favicon.svg")
