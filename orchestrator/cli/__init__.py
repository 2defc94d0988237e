"""The ``orch`` command line (click): parse flags, call the service, render the result.

Owned here: the assembly of the command tree. ``app`` holds the group, global options and
error mapping; ``images``, ``vmss`` and ``labcmds`` hold the commands (``orch --help``). No logic
beyond turning flags into specs: that lives in ``service`` and ``upgrades``.
Called by: nobody inside the package (the ``orch`` console script is ``orchestrator.cli:main``;
and the tests)
"""

from orchestrator.cli import images, labcmds, vmss  # noqa: F401 - registers the commands
from orchestrator.cli.app import cli, install_common_options, main

install_common_options()

__all__ = ["cli", "main"]
