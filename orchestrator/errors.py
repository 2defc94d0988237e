"""The one exception tree of orchestrator.

Owned here: every error the product raises on purpose, and the exit code each maps to.
Raised across the package; foreign errors (libvirt, asyncssh, sqlite, OSError, subprocess)
are translated at the module that imports the foreign library, with ``raise ... from``.
Turned into output in one place: ``cli.app.main``, which prints ``error: <message>`` on one
line, then the error's ``details`` (evidence such as the console lines of the instances
that failed, each line indented below it), and exits with ``exit_code``
(docs/semantics.md#exit-codes); other modules catch them only to collect, record or
translate them.
Called by: api.app, api.auth, api.operations, api.routes, api.serve, cli.app, client,
cli.controller, cli.serve, cli.vmss, cloudinit, dryrun.plan, dryrun.simworld,
engine.addresses, engine.context, engine.copies, engine.health, engine.hosts, engine.steps,
hypervisor.base, hypervisor.fake, hypervisor.libvirt, hypervisor.retry, images, lab,
labconfig, labhosts, labsys, locks, metrics, model, ssh, store, testing, usecases.bootdiag,
usecases.controller, usecases.hosts, usecases.placement, usecases.recovery,
usecases.removal, usecases.repairs, usecases.rolling, usecases.rollout, usecases.session,
usecases.sets, usecases.updates, usecases.views, usecases.watch

    OrchError                       exit 1   base; "the operation ran and failed"
    ├── InvalidInput                exit 2   bad flags, names, specs, files; nothing was changed
    │   └── NotFound                exit 2   a set, instance or image the user named does not
    │                                        exist (store, registry, use cases)
    ├── Conflict                    exit 3   a lock is held, an operation already runs
    ├── EnvironmentProblem          exit 4   libvirt unreachable, a tool missing; has a hint
    ├── OperationFailed             exit 1   ran and failed (unhealthy after create, ...)
    ├── SecurityError               exit 1   host key mismatch, unsafe file; never retried
    │   └── Unauthorized            exit 1   the HTTP API refused the bearer token (client)
    ├── HypervisorError             exit 1   libvirt refused an action (Permanent)
    │   ├── Gone                    exit 1   a domain, pool, network or volume is not there
    │   │                                    (hypervisor adapters; may vanish mid-operation)
    │   └── HypervisorUnavailable   exit 4   connection lost/refused (Temporary)
    ├── Timeout                     exit 1   a bounded wait ran out (Temporary)
    └── Unreachable                 exit 1   a guest cannot be reached over SSH (Temporary)

``temporary`` tells retry loops whether trying again may help.

``NotFound`` and ``Gone`` are kept apart on purpose: a name the user gave that matches
nothing is bad input, refused before anything changes; a hypervisor object that is not there
(undefined by hand, deleted by another process) is met while acting, so it is a failure of
the operation. A use case that checks a user-named hypervisor object up front (a network, a
pool) turns ``Gone`` into ``InvalidInput`` itself.
"""

from __future__ import annotations

from collections.abc import Sequence


class OrchError(Exception):
    """Base of every error orchestrator raises on purpose."""

    exit_code: int = 1
    temporary: bool = False

    def __init__(self, message: str, *, hint: str | None = None,
                 details: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        # shown after the one line, never in it: the line stays what scripts match on
        self.details = tuple(details)

    def one_line(self) -> str:
        """The message as the CLI prints it: one line, hint appended."""
        text = " ".join(self.message.split())
        if self.hint:
            text = f"{text} (hint: {' '.join(self.hint.split())})"
        return text


class InvalidInput(OrchError):
    exit_code = 2


class NotFound(InvalidInput):
    """A set, instance or image the user named does not exist (never a hypervisor object:
    that is ``Gone``)."""


class Conflict(OrchError):
    exit_code = 3


class EnvironmentProblem(OrchError):
    exit_code = 4


class OperationFailed(OrchError):
    exit_code = 1


class SecurityError(OrchError):
    exit_code = 1


class Unauthorized(SecurityError):
    """`orch serve` answered 401: no token, or not its token (raised by ``client``; the
    server's error code of the same name)."""


class HypervisorError(OrchError):
    exit_code = 1


class Gone(HypervisorError):
    """A hypervisor object (domain, storage pool, network, volume) is not there."""


class HypervisorUnavailable(HypervisorError):
    exit_code = 4
    temporary = True


class Timeout(OrchError):
    exit_code = 1
    temporary = True


class Unreachable(OrchError):
    exit_code = 1
    temporary = True
