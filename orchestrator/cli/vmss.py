"""`orch vmss ...` and `orch controller`: scale sets and their instances, mirroring `az vmss`.

Owned here: the commands' flags, how flags become the use cases' arguments, and how their
records are shown (through ``cli.render``). Every command calls one use case of
``usecases`` (or ``dryrun.plan``) and runs it with ``AppContext.run``.

Called by: cli
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from orchestrator import logs
from orchestrator.cli import render
from orchestrator.cli.app import (
    INSTANCE_COLUMNS,
    OPERATION_COLUMNS,
    SET_COLUMNS,
    AppContext,
    F,
    cli,
    pass_app,
)
from orchestrator.errors import InvalidInput
from orchestrator.model import (
    MAX_INPUT_BYTES,
    SET_NAME_RE,
    ScaleSetSpec,
    check_set_name,
    instance_id_of,
    parse_yaml_documents,
    specs_from_documents,
    validate,
)
from orchestrator.output import render as render_table
from orchestrator.usecases import bootdiag, osupgrades, repairs, rolling, sets, updates, views


def _log_scope(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Progress lines of this command carry the set named by --name (``logs``)."""
    if value is not None and SET_NAME_RE.fullmatch(value):
        logs.set_scope(value)
    return value


# --- scale sets ---------------------------------------------------------------------------
@cli.group()
def vmss() -> None:
    """Scale sets: create, scale, inspect, act on instances (mirrors `az vmss`)."""


def _parse_ids(first: str, more: Sequence[str], *, allow_all: bool = False) -> list[int] | None:
    values = [first, *more]
    if allow_all and values == ["*"]:
        return None
    ids: list[int] = []
    for value in values:
        for part in value.replace(",", " ").split():
            iid = instance_id_of(part)
            if iid is None:
                raise InvalidInput(f"invalid instance id {part!r}: expected a non-negative integer"
                                   + (" or '*'" if allow_all else ""))
            ids.append(iid)
    if not ids:
        raise InvalidInput("no instance ids given")
    return ids


def instance_ids_option(fn: F) -> F:
    """``--instance-ids 1 2 3`` as in az: the first value after the flag, the rest as args."""
    fn = click.argument("more_ids", nargs=-1, metavar="[ID...]")(fn)
    return click.option("--instance-ids", "instance_ids", required=True,
                        help="Instance ids, space or comma separated.")(fn)


def _read_text_file(path: Path, what: str) -> str:
    """A small UTF-8 text file given on the command line; devices, FIFOs and directories are
    refused, and no more than the limit is ever read (a size can lie: /dev/zero says 0)."""
    try:
        if not path.is_file():
            raise InvalidInput(f"{what} file {path} not found or not a regular file")
        with path.open("rb") as fh:
            data = fh.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise InvalidInput(f"{what} file {path} cannot be read: {exc.strerror or exc}") from exc
    if len(data) > MAX_INPUT_BYTES:
        raise InvalidInput(f"{what} file {path} is larger than 64 KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{what} file {path} is not UTF-8 text") from exc


def _disk_sizes(values: Sequence[str]) -> list[dict[str, int]]:
    sizes: list[dict[str, int]] = []
    for value in values:
        for part in value.replace(",", " ").split():
            if not part.isdigit():
                raise InvalidInput(f"invalid data disk size {part!r}: expected GiB as an integer")
            sizes.append({"lun": len(sizes), "sizeGiB": int(part)})
    return sizes


def _rolling_changes(opts: dict[str, Any]) -> dict[str, Any]:
    rolling = {
        "maxSurge": opts.get("max_surge"),
        "maxBatchInstancePercent": opts.get("max_batch_instance_percent"),
        "maxUnhealthyInstancePercent": opts.get("max_unhealthy_instance_percent"),
        "maxUnhealthyUpgradedInstancePercent": opts.get("max_unhealthy_upgraded_instance_percent"),
        "pauseTimeBetweenBatches": opts.get("pause_time_between_batches"),
        "prioritizeUnhealthyInstances": opts.get("prioritize_unhealthy_instances"),
        "rollbackFailedInstancesOnPolicyBreach": opts.get("rollback_on_policy_breach"),
        "enableCrossZoneUpgrade": opts.get("enable_cross_zone_upgrade"),
    }
    return {k: v for k, v in rolling.items() if v is not None}


def _os_upgrade_changes(opts: dict[str, Any]) -> dict[str, Any]:
    changes = {"enableAutomaticOSUpgrade": opts.get("enable_auto_os_upgrade"),
               "disableAutomaticRollback": opts.get("disable_auto_rollback")}
    return {k: v for k, v in changes.items() if v is not None}


def _repairs_changes(opts: dict[str, Any]) -> dict[str, Any]:
    repairs = {
        "enabled": opts.get("enable_automatic_repairs"),
        "gracePeriod": opts.get("automatic_repairs_grace_period"),
        "repairAction": opts.get("automatic_repairs_action"),
    }
    return {k: v for k, v in repairs.items() if v is not None}


def _model_changes(opts: dict[str, Any], *, current_probe: dict[str, Any] | None = None) -> dict[str, Any]:
    probe = {"command": opts.get("health_probe_command"),
             "gracePeriodSeconds": opts.get("health_probe_grace_period"),
             "failFastAfterProbes": opts.get("health_probe_fail_fast_after_probes")}
    probe = {k: v for k, v in probe.items() if v is not None}
    model: dict[str, Any] = {
        "image": opts.get("image"), "vcpus": opts.get("vcpus"), "memoryMiB": opts.get("memory"),
        "network": opts.get("network"),
    }
    if probe:
        model["healthProbe"] = {**(current_probe or {}), **probe}
    if opts.get("data_disk_sizes_gb"):
        model["dataDisks"] = _disk_sizes(opts["data_disk_sizes_gb"])
    if opts.get("fault_domains"):
        model["faultDomains"] = [fd for value in opts["fault_domains"]
                                 for fd in value.replace(",", " ").split()]
    if opts.get("custom_data") is not None:
        model["customData"] = _read_text_file(opts["custom_data"], "--custom-data")
    if opts.get("ssh_key_value") is not None:
        model["sshPublicKey"] = _read_text_file(opts["ssh_key_value"], "--ssh-key-value").strip()
    return {k: v for k, v in model.items() if v is not None}


def _policy_options(fn: F) -> F:
    """The upgrade-policy flags shared by `create` and `update`."""
    for decl in reversed([
        click.option("--upgrade-policy-mode", type=click.Choice(["Automatic", "Rolling", "Manual"]),
                     help="Automatic, Rolling or Manual [create: Manual]."),
        click.option("--max-surge", type=click.BOOL, default=None,
                     help="Rolling: new instances first, then the old ones go."),
        click.option("--max-batch-instance-percent", type=int, help="Rolling batch size, % [20]."),
        click.option("--max-unhealthy-instance-percent", type=int, help="% unhealthy before a batch [20]."),
        click.option("--max-unhealthy-upgraded-instance-percent", type=int,
                     help="% of upgraded instances unhealthy after a batch [20]."),
        click.option("--pause-time-between-batches", help="ISO 8601 duration, e.g. PT10S [PT0S]."),
        click.option("--prioritize-unhealthy-instances/--no-prioritize-unhealthy-instances",
                     default=None, help="Upgrade unhealthy instances first."),
        click.option("--rollback-on-policy-breach/--no-rollback-on-policy-breach", default=None,
                     help="On Faulted, return failed instances to the previous model."),
        click.option("--vcpus", type=int),
        click.option("--memory", type=int, help="Memory in MiB."),
        click.option("--data-disk-sizes-gb", multiple=True,
                     help="Data disk sizes in GiB (lun 0, 1, ...)."),
        click.option("--health-probe-command", help="Health command run over SSH (exit 0 = healthy)."),
        click.option("--health-probe-grace-period", type=int,
                     help="Seconds a booting instance may take before it counts as Unknown."),
        click.option("--health-probe-fail-fast-after-probes", type=int,
                     help="End the grace period after N failed health probes in a row once "
                          "SSH answers (0 = off: wait it out) [0]."),
        click.option("--custom-data", type=click.Path(path_type=Path), help="cloud-init user-data file."),
        click.option("--ssh-key-value", type=click.Path(path_type=Path), help="Admin public key file."),
        click.option("--scale-in-policy", type=click.Choice(["Default", "OldestVM", "NewestVM"])),
        click.option("--fault-domains", multiple=True,
                     help="Fault domains new instances may go to (space or comma separated; "
                          "default: any)."),
        click.option("--enable-cross-zone-upgrade", type=click.BOOL, default=None,
                     help="Rolling: a batch may hold instances of several fault domains."),
        click.option("--enable-auto-os-upgrade", type=click.BOOL, default=None,
                     help="Follow NAME:latest: the controller rolls out each newer version."),
        click.option("--disable-auto-rollback", type=click.BOOL, default=None,
                     help="Automatic OS upgrades: leave a failed rollout as it is."),
        click.option("--enable-automatic-repairs", type=click.BOOL, default=None,
                     help="While the controller runs, repair instances that stay unhealthy."),
        click.option("--automatic-repairs-grace-period",
                     help="ISO 8601 duration an instance may be unhealthy before it is "
                          "repaired, at least PT30S [PT10M]."),
        click.option("--automatic-repairs-action",
                     type=click.Choice(["Replace", "Restart", "Reimage"]),
                     help="How an instance is repaired [Replace]."),
    ]):
        fn = decl(fn)
    return fn


@vmss.command("create")
@click.option("--name", required=True, help="Scale set name: a-z, 0-9, '-', up to 40.",
              callback=_log_scope)
@click.option("--image", required=True, help="NAME:VERSION of a registered image.")
@click.option("--instance-count", type=int, default=2, show_default=True)
@click.option("--network", envvar="ORCH_NETWORK", default="default", show_default=True,
              help="libvirt network [env ORCH_NETWORK; the lab sets it].")
@_policy_options
@pass_app
def vmss_create(app: AppContext, /, **opts: Any) -> None:
    """Create a scale set and wait until every instance is Healthy."""
    raw: dict[str, Any] = {
        "name": opts["name"],
        "model": _model_changes(opts),
        "capacity": opts["instance_count"],
        "upgradePolicy": {"mode": opts["upgrade_policy_mode"] or "Manual",
                          "rollingUpgradePolicy": _rolling_changes(opts),
                          "automaticOSUpgradePolicy": _os_upgrade_changes(opts)},
        "automaticRepairsPolicy": _repairs_changes(opts),
    }
    if opts["scale_in_policy"]:
        raw["scaleInPolicy"] = opts["scale_in_policy"]
    spec = validate(ScaleSetSpec, raw)
    env = app.env()
    app.show(render.set_json(app.run(sets.create(env, spec, wait=app.wait))))

def load_documents(path: Path) -> list[ScaleSetSpec]:
    text = (_read_text_file(path, "-f") if str(path) != "-"
            else sys.stdin.read(MAX_INPUT_BYTES + 1))
    if len(text) > MAX_INPUT_BYTES:
        raise InvalidInput("-f: the input is larger than 64 KiB")
    docs = parse_yaml_documents(text, where=str(path))
    if not docs:
        raise InvalidInput(f"{path}: no documents")
    return specs_from_documents(docs, where=str(path),
                                default_network=os.environ.get("ORCH_NETWORK"))


@vmss.command("apply")
@click.option("-f", "--file", "file", required=True, type=click.Path(path_type=Path),
              help="YAML with one or more `kind: ScaleSet` documents (- for stdin).")
@pass_app
def vmss_apply(app: AppContext, file: Path) -> None:
    """Create the scale sets a file declares, or bring existing ones to it: capacity by
    scaling, model changes by the set's upgrade policy."""
    specs = load_documents(file)
    env = app.env()

    async def apply_all() -> list[dict[str, Any]]:
        results = []
        for spec in specs:
            with logs.scope(spec.name):
                results.append(render.set_json(await updates.apply(env, spec, wait=app.wait)))
        return results

    app.show(app.run(apply_all()), columns=SET_COLUMNS)


@vmss.command("list")
@pass_app
def vmss_list(app: AppContext) -> None:
    """List scale sets."""
    app.show([render.set_json(v) for v in views.list_sets(app.env())], columns=SET_COLUMNS)


def _name_option(fn: F) -> F:
    return click.option("--name", required=True, help="Scale set name.",
                        callback=lambda c, p, v: _log_scope(c, p, check_set_name(v)))(fn)


def _update_options(fn: F) -> F:
    """The model and policy change flags of `update`, shared with `plan` (which simulates
    what `update` would do with them)."""
    for decl in reversed([
        click.option("--image", help="NAME:VERSION: a new image (a new model generation)."),
        _policy_options,
        click.option("--allow-surge-fallback", is_flag=True,
                     help="If the host lacks room for a MaxSurge batch, upgrade in place "
                          "(reported)."),
    ]):
        fn = decl(fn)
    return fn


def _update_changes(opts: dict[str, Any], current: ScaleSetSpec) -> dict[str, Any]:
    """The changes the flags of ``_update_options`` ask for, as ``Upgrades.update`` takes
    them; files named by flags (custom data, keys) are read and checked here."""
    changes: dict[str, Any] = {
        "model": _model_changes(opts, current_probe=current.model.health_probe.to_json_dict()),
        "rollingUpgradePolicy": _rolling_changes(opts),
        "automaticRepairsPolicy": _repairs_changes(opts),
        "automaticOSUpgradePolicy": _os_upgrade_changes(opts),
    }
    if opts["upgrade_policy_mode"]:
        changes["mode"] = opts["upgrade_policy_mode"]
    if opts["scale_in_policy"]:
        changes["scaleInPolicy"] = opts["scale_in_policy"]
    return changes


def _changes_nothing(changes: dict[str, Any]) -> bool:
    return (not changes["model"] and not changes["rollingUpgradePolicy"]
            and not changes["automaticRepairsPolicy"]
            and not changes["automaticOSUpgradePolicy"] and len(changes) == 4)


@vmss.command("update")
@_name_option
@_update_options
@click.option("--instance-id", type=click.IntRange(min=0),
              help="With --protect-*: the instance whose protection changes.")
@click.option("--protect-from-scale-in", type=click.BOOL, default=None)
@click.option("--protect-from-scale-set-actions", type=click.BOOL, default=None)
@pass_app
def vmss_update(app: AppContext, /, **opts: Any) -> None:
    """Change the model or the upgrade policy. A model change makes a new generation, rolled
    out as the policy says: Automatic at once, Rolling in batches, Manual not until
    `update-instances`. OS profile changes (custom data, SSH key) reach instances on reimage.
    `orch vmss plan` with the same flags shows what this would do, changing nothing."""
    protect = (opts["protect_from_scale_in"], opts["protect_from_scale_set_actions"])
    if opts["instance_id"] is not None or protect != (None, None):
        if opts["instance_id"] is None or protect == (None, None):
            raise InvalidInput("--instance-id goes with --protect-from-scale-in and/or "
                               "--protect-from-scale-set-actions")
        view = app.run(sets.protect(app.env(), opts["name"], opts["instance_id"],
                                    scale_in=protect[0], set_actions=protect[1]))
        app.show(render.instance_detail_json(view))
        return
    env = app.env()
    changes = _update_changes(opts, env.spec_of(opts["name"]))
    if _changes_nothing(changes):
        raise InvalidInput("nothing to update: give at least one property to change")
    app.show(render.set_json(app.run(updates.update(
        env, opts["name"], changes, wait=app.wait,
        allow_surge_fallback=opts["allow_surge_fallback"]))))


@vmss.command("plan")
@_name_option
@_update_options
@pass_app
def vmss_plan(app: AppContext, /, **opts: Any) -> None:
    """Dry run: what `update` with the same flags would do, batch by batch, with a predicted
    duration. Without change flags: what `rolling-upgrade start` would do now (an Automatic
    set: the upgrade of every instance at once that `controller run` makes).

    Nothing is changed: the store is only read and libvirt is only asked which domains
    run, the pool's free space and the network's addresses. The real upgrade code runs on
    a copy of the set in a simulated hypervisor with a simulated clock: instances running
    or stopped as now, those unhealthy now staying unhealthy (also once upgraded), guests
    booting in the set's median boot-to-Healthy time (else 6.5 s) and shutting down in
    1.5 s. Outcome: Completed, Faulted (with the reason the real upgrade would give),
    NothingToDo, or Manual (nothing rolls; `update-instances` would). Bad input, and a
    MaxSurge the host has no room for, are refused as `update` refuses them (exit 2); a
    predicted Faulted is a plan made (exit 0). -o json keys: name, mode, maxSurge,
    fromGeneration, toGeneration, batches, predictedSeconds, outcome, error, thresholds,
    assumptions, instances, notes."""
    from orchestrator.dryrun.plan import make_plan

    env = app.env()
    changes = _update_changes(opts, env.spec_of(opts["name"]))
    plan = app.run(make_plan(env, opts["name"],
                             changes=None if _changes_nothing(changes) else changes,
                             allow_surge_fallback=opts["allow_surge_fallback"]))
    if app.output != "table":
        app.show(plan)
        return
    _show_plan_table(plan)


PLAN_COLUMNS = [("batch", "BATCH"), ("faultDomain", "FAULT DOMAIN"), ("instances", "INSTANCES"),
                ("action", "ACTION"),
                ("newInstances", "NEW IDS"), ("startSeconds", "START s"), ("endSeconds", "END s")]


def _show_plan_table(plan: dict[str, Any]) -> None:
    """One row per batch, then the outcome, notes, thresholds and assumptions as lines."""
    def ids(values: Sequence[int]) -> str:
        return ", ".join(str(v) for v in values) or "-"

    title = (f"plan for {plan['name']}: {plan['mode']}"
             + (" with MaxSurge" if plan["mode"] == "Rolling" and plan["maxSurge"] else "")
             + f", generation {plan['fromGeneration']} -> {plan['toGeneration']}")
    rows = [{**b, "instances": ids(b["instances"]), "newInstances": ids(b["newInstances"])}
            for b in plan["batches"]]
    if rows:
        render_table(rows, "table", columns=PLAN_COLUMNS, title=title)
    else:
        click.echo(f"{title}: no batch")
    outcome = plan["outcome"]
    if outcome in ("Completed", "Faulted"):
        click.echo(f"outcome: {outcome} after {plan['predictedSeconds']:.1f} s (predicted)"
                   + (f": {plan['error']}" if plan["error"] else ""))
    else:
        click.echo(f"outcome: {outcome}")
    for line in [*plan["notes"], *plan["thresholds"]]:
        click.echo(f"  {line}")
    for line in [*plan["assumptions"]["health"], plan["assumptions"]["summary"]]:
        click.echo(f"  {line}")


@vmss.command("update-instances")
@_name_option
@instance_ids_option
@pass_app
def vmss_update_instances(app: AppContext, name: str, instance_ids: str,
                          more_ids: tuple[str, ...]) -> None:
    """Apply the latest model to the instances named ('*' for all), in place."""
    ids = _parse_ids(instance_ids, more_ids, allow_all=True)
    done = app.run(updates.update_instances(app.env(), name, ids))
    app.show([render.instance_json(v) for v in done], columns=INSTANCE_COLUMNS)


@vmss.command("reimage")
@_name_option
@click.option("--instance-ids", "instance_ids", default=None,
              help="Instance ids, space or comma separated (default: all).")
@click.argument("more_ids", nargs=-1, metavar="[ID...]")
@click.option("--all-disks", is_flag=True, help="Also recreate the data disks, empty.")
@pass_app
def vmss_reimage(app: AppContext, name: str, instance_ids: str | None, more_ids: tuple[str, ...],
                 all_disks: bool) -> None:
    """Restore OS disks to their image: fresh overlay, new cloud-init instance-id and host key;
    instanceId, name, MAC, IP and data disks are kept (unless --all-disks)."""
    ids = None if instance_ids is None else _parse_ids(instance_ids, more_ids)
    done = app.run(updates.reimage(app.env(), name, ids, all_disks=all_disks, wait=app.wait))
    app.show([render.instance_json(v) for v in done], columns=INSTANCE_COLUMNS)


@vmss.group("rolling-upgrade")
def rolling_upgrade() -> None:
    """Start, cancel and inspect rolling upgrades."""


@rolling_upgrade.command("start")
@_name_option
@click.option("--allow-surge-fallback", is_flag=True,
              help="If the host lacks room for a MaxSurge batch, upgrade in place (reported).")
@pass_app
def rolling_upgrade_start(app: AppContext, name: str, allow_surge_fallback: bool) -> None:
    """Roll the latest model out in batches (instances already on it are skipped)."""
    env = app.env()
    upgrade = app.run(rolling.start(env, name, allow_surge_fallback=allow_surge_fallback))
    app.show(render.rolling_json(upgrade))
    rolling.raise_if_faulted(upgrade, console=env.console_tails)


@rolling_upgrade.command("cancel")
@_name_option
@pass_app
def rolling_upgrade_cancel(app: AppContext, name: str) -> None:
    """Stop the running rolling upgrade after its in-flight batch; done batches stay."""
    app.show(render.rolling_json(app.run(rolling.cancel(app.env(), name))))


@rolling_upgrade.command("get-latest")
@_name_option
@pass_app
def rolling_upgrade_get_latest(app: AppContext, name: str) -> None:
    """The status of the latest rolling upgrade."""
    app.show(render.rolling_json(rolling.status(app.env(), name)))


@vmss.command("show")
@_name_option
@pass_app
def vmss_show(app: AppContext, name: str) -> None:
    """Show a scale set: model, generation, upgrade policy."""
    app.show(render.set_json(views.show_set(app.env(), name)))


@vmss.command("get-os-upgrade-history")
@_name_option
@pass_app
def vmss_get_os_upgrade_history(app: AppContext, name: str) -> None:
    """The set's automatic OS upgrade runs, newest first. -o json keys: id, fromVersions,
    targetVersion, startTime, endTime, result (Running, Succeeded, Faulted, RolledBack),
    rollback (toVersion, instanceIds, status), error."""
    app.show([render.os_upgrade_json(u) for u in osupgrades.history(app.env(), name)],
             columns=[("id", "RUN"), ("fromVersions", "FROM"), ("targetVersion", "TO"),
                      ("result", "RESULT"), ("startTime", "STARTED"), ("endTime", "ENDED")])


@vmss.command("set-orchestration-service-state")
@_name_option
@click.option("--service-name", required=True, type=click.Choice(["AutomaticRepairs"]),
              help="The orchestration service.")
@click.option("--action", required=True, type=click.Choice(["Suspend", "Resume"]),
              help="Suspend it, or resume it (which also forgets the failed repairs counted).")
@pass_app
def vmss_set_orchestration_service_state(app: AppContext, name: str, service_name: str,
                                         action: str) -> None:
    """Suspend or resume an orchestration service of the set (automatic repairs). -o json
    keys: name, serviceName, serviceState."""
    state = app.run(repairs.set_service_state(app.env(), name, service=service_name,
                                              action=action))
    app.show({"name": name, "serviceName": service_name, "serviceState": state})


@vmss.command("delete")
@_name_option
@pass_app
def vmss_delete(app: AppContext, name: str) -> None:
    """Delete a scale set and everything it owns (domains, volumes, reservations)."""
    app.run(sets.delete(app.env(), name))
    app.progress(f"deleted scale set {name}")


@vmss.command("scale")
@_name_option
@click.option("--new-capacity", type=int, required=True)
@pass_app
def vmss_scale(app: AppContext, name: str, new_capacity: int) -> None:
    """Change the number of instances (scale-in removes the highest ids first)."""
    app.show(render.set_json(app.run(sets.scale(app.env(), name, new_capacity, wait=app.wait))))


@vmss.command("list-instances")
@_name_option
@pass_app
def vmss_list_instances(app: AppContext, name: str) -> None:
    """List the instances of a scale set with power and health state."""
    listed = app.run(views.list_instances(app.env(), name))
    app.show([render.instance_json(v) for v in listed], columns=INSTANCE_COLUMNS)


@vmss.command("list-operations")
@_name_option
@pass_app
def vmss_list_operations(app: AppContext, name: str) -> None:
    """The journal of a set: every operation, its status (running, succeeded, failed,
    interrupted), the process that ran it and its error."""
    app.show([render.operation_json(op) for op in views.operations(app.env(), name)],
             columns=OPERATION_COLUMNS)


@vmss.command("get-instance-view")
@_name_option
@click.option("--instance-id", type=click.IntRange(min=0), required=True)
@pass_app
def vmss_get_instance_view(app: AppContext, name: str, instance_id: int) -> None:
    """One instance in detail, with its last health probe; one that is not Healthy also
    with the last lines of its serial console (bootDiagnostics.consoleTail)."""
    app.show(render.instance_detail_json(app.run(views.instance_view(app.env(), name,
                                                                   instance_id))))


@vmss.group("boot-diagnostics")
def boot_diagnostics() -> None:
    """The serial console output of instances, as their hosts' virtlogd keeps it."""


@boot_diagnostics.command("get-boot-log")
@_name_option
@click.option("--instance-id", type=click.IntRange(min=0), required=True)
@click.option("--tail-bytes", type=click.IntRange(1, bootdiag.MAX_TAIL_BYTES),
              default=bootdiag.DEFAULT_TAIL_BYTES, show_default=True,
              help="At most this many of the last bytes (across the rotated copies).")
@pass_app
def boot_diagnostics_get_boot_log(app: AppContext, name: str, instance_id: int,
                                  tail_bytes: int) -> None:
    """Print the serial console output of one instance, oldest first, read from its host
    through libvirt (any host, remote ones too). Nothing yet: an empty log. -o json keys:
    name, instanceId, host, log."""
    found = app.run(bootdiag.boot_log(app.env(), name, instance_id, tail_bytes=tail_bytes))
    if app.output != "table":
        app.show(render.boot_log_json(found))
        return
    if not found.log:
        app.progress(f"{found.name}: no console output yet")
    sys.stdout.write(found.log if not found.log or found.log.endswith("\n")
                     else found.log + "\n")


def _power_command(action: str, doc: str) -> None:
    @vmss.command(action, help=doc)
    @_name_option
    @instance_ids_option
    @pass_app
    def command(app: AppContext, name: str, instance_ids: str, more_ids: tuple[str, ...]) -> None:
        ids = _parse_ids(instance_ids, more_ids)
        assert ids is not None
        done = app.run(sets.power(app.env(), name, ids, action, wait=app.wait))
        app.show([render.instance_json(v) for v in done], columns=INSTANCE_COLUMNS)


_power_command("start", "Start instances and wait until they are Healthy.")
_power_command("stop", "Stop instances gracefully (ACPI, then power off after a timeout).")
_power_command("restart", "Stop and start instances, then wait until they are Healthy.")
_power_command("deallocate", "Stop instances and release their memory (kept disks and address).")


@vmss.command("delete-instances")
@_name_option
@instance_ids_option
@pass_app
def vmss_delete_instances(app: AppContext, name: str, instance_ids: str,
                          more_ids: tuple[str, ...]) -> None:
    """Delete instances (the capacity shrinks accordingly)."""
    ids = _parse_ids(instance_ids, more_ids)
    assert ids is not None
    app.show(render.set_json(app.run(sets.delete_instances(app.env(), name, ids))))


@vmss.group("run-command")
def run_command() -> None:
    """Run scripts inside instances over SSH."""


@run_command.command("invoke")
@_name_option
@click.option("--instance-id", type=click.IntRange(min=0), required=True)
@click.option("--scripts", required=True, help="Shell script to run in the guest.")
@click.option("--timeout", type=click.FloatRange(min=1, max=86400), default=300, show_default=True)
@pass_app
def run_command_invoke(app: AppContext, name: str, instance_id: int, scripts: str,
                       timeout: float) -> None:
    """Run --scripts in one instance; shows exitStatus, stdout and stderr."""
    result = app.run(views.run_command(app.env(), name, instance_id, scripts, timeout=timeout))
    if app.output == "table":
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        app.progress(f"exit status {result.exit_status}")
    else:
        app.show(render.command_json(result))


@vmss.command("ssh", context_settings={"ignore_unknown_options": True})
@_name_option
@click.option("--instance-id", type=click.IntRange(min=0), required=True)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_app
def vmss_ssh(app: AppContext, name: str, instance_id: int, command: tuple[str, ...]) -> None:
    """Open a shell in an instance, or run `-- CMD` (host key pinned)."""
    from orchestrator import ssh

    async def session() -> int:
        endpoint = await views.endpoint(app.env(), name, instance_id)
        return await ssh.interactive(endpoint, " ".join(command) if command else None,
                                     connect_timeout=15.0)

    sys.exit(app.run(session()))
