"""`orch serve`: the HTTP API, the web portal and the controller loop in one process.

``api.app`` builds the ASGI application (routes in ``api.routes``), ``api.operations`` runs
long work as operations, ``api.auth`` owns the bearer token, ``api.serve`` runs it all.

Called by: (the package of the HTTP API)
"""
