"""The ``orch`` command line (click): parse flags, call a use case, render the result.

Owned here: the assembly of the command tree. ``app`` holds the group, global options,
the wiring of the use cases' collaborators and the error mapping; ``images``, ``vmss`` and
``labcmds`` hold the commands; ``render`` the output form of records. No logic beyond
turning flags into specs: that lives in ``usecases``.

Called by: nobody inside the package (the ``orch`` console script)
"""

from orchestrator.cli import (  # noqa: F401 - registers the commands
    controller,
    hosts,
    images,
    labcmds,
    serve,
    vmss,
)
from orchestrator.cli.app import cli, install_common_options, main

install_common_options()

__all__ = ["cli", "main"]
