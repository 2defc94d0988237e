"""The scale-set model: what a user declares, validated once, then immutable.

Owned here: the pydantic models (``ScaleSetSpec``, ``Model``, ``UpgradePolicy``,
``RollingUpgradePolicy``, ``HealthProbe``, ``DataDisk``), the name rules
(docs/semantics.md#scale-sets), the declarative-file schema (docs/semantics.md#declarative-file,
``ScaleSetDocument``) and the translation of pydantic's
errors into ``errors.InvalidInput`` (one line naming the field).
Called by: api.app, api.routes, cli.images, cli.vmss, dryrun.simworld, engine.addresses,
engine.policy, engine.steps, images, usecases.hosts, usecases.osupgrades,
usecases.placement, usecases.rolling, usecases.session, usecases.sets, usecases.updates,
usecases.views, usecases.watch
The CLI turns flags and files into specs; the use cases store them as JSON and
read them back; the others read models, image references and rolling policies.

Field names are snake_case in Python and camelCase in JSON/YAML (the keys of
docs/semantics.md#model), via aliases.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from orchestrator import cloudinit
from orchestrator.errors import InvalidInput

SET_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
IMAGE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
IMAGE_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
NETWORK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SSH_PUBLIC_KEY_RE = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com) "
    r"[A-Za-z0-9+/]+={0,3}( [^\n\r]*)?$"
)
MAX_CAPACITY = 1000
MAX_INSTANCE_ID = 999_999_999  # nine digits, on the command line and in the API
# a declarative file, custom data or a key file of the CLI; a request body of the API
MAX_INPUT_BYTES = 65536
_DURATION = TypeAdapter(_dt.timedelta)
_V = TypeVar("_V")
# Lax pydantic takes `capacity: true` as 1 and `maxSurge: 1` as true: a YAML slip would
# silently become a real change, so numbers and switches must be given as such.
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]


def check_set_name(name: str) -> str:
    if not isinstance(name, str) or not SET_NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"invalid scale set name {_show(name)}: use 1-40 of a-z, 0-9, '-', starting with a letter"
        )
    return name


def parse_image_ref(ref: str) -> tuple[str, str]:
    """``NAME:VERSION`` → (name, version); InvalidInput if malformed."""
    name, sep, version = ref.partition(":") if isinstance(ref, str) else ("", "", "")
    if not sep or not IMAGE_NAME_RE.fullmatch(name) or not IMAGE_VERSION_RE.fullmatch(version):
        raise InvalidInput(
            f"invalid image reference {_show(ref)}: expected NAME:VERSION "
            "(name a-z0-9- starting with a letter, version A-Za-z0-9._-)"
        )
    return name, version


LATEST = "latest"  # the version that names the highest registered version of an image


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order of image versions: part by part on '.', numerically where a part is digits
    (2 < 10, 20261127 < 20261201), digits before letters otherwise."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in version.split("."))


def parse_duration(text: str) -> float:
    """ISO 8601 duration (``PT0S``, ``PT1M30S``) → seconds; InvalidInput if malformed."""
    if not isinstance(text, str) or not text.startswith("P"):
        raise InvalidInput(f"invalid ISO 8601 duration {_show(text)} (example: PT30S)")
    try:
        seconds = _DURATION.validate_python(text).total_seconds()
    except ValidationError as exc:
        raise InvalidInput(f"invalid ISO 8601 duration {_show(text)} (example: PT30S)") from exc
    if seconds < 0 or seconds > 86400:
        raise InvalidInput(f"duration {text} out of range (0 to 24 hours)")
    return seconds


def _checked(check: Callable[[Any], object], value: _V) -> _V:
    """Run a check that raises InvalidInput as a pydantic validator (which wants ValueError)."""
    try:
        check(value)
    except InvalidInput as exc:
        raise ValueError(exc.message) from exc
    return value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "...'"


class _Base(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        strict=False,
    )

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class DataDisk(_Base):
    lun: Int = Field(ge=0, le=15)
    size_gib: Int = Field(ge=1, le=1024, alias="sizeGiB")


class HealthProbe(_Base):
    command: str | None = Field(default=None, min_length=1, max_length=4096)
    port: Int = Field(default=22, ge=1, le=65535)
    interval_seconds: Int = Field(default=5, ge=1, le=3600)
    timeout_seconds: Int = Field(default=5, ge=1, le=300)
    number_of_probes: Int = Field(default=1, ge=1, le=10)
    grace_period_seconds: Int = Field(default=300, ge=0, le=7200)
    # N health commands failed in a row end the grace period at once (0: off, wait it out)
    fail_fast_after_probes: Int = Field(default=0, ge=0, le=100)


class RollingUpgradePolicy(_Base):
    max_batch_instance_percent: Int = Field(default=20, ge=5, le=100)
    max_unhealthy_instance_percent: Int = Field(default=20, ge=0, le=100)
    max_unhealthy_upgraded_instance_percent: Int = Field(default=20, ge=0, le=100)
    pause_time_between_batches: str = "PT0S"
    prioritize_unhealthy_instances: Bool = False
    rollback_failed_instances_on_policy_breach: Bool = False
    max_surge: Bool = False
    # a batch may hold instances of several fault domains (docs/semantics.md#fault-domains)
    enable_cross_zone_upgrade: Bool = False

    @field_validator("pause_time_between_batches")
    @classmethod
    def _duration(cls, value: str) -> str:
        return _checked(parse_duration, value)

    @property
    def pause_seconds(self) -> float:
        return parse_duration(self.pause_time_between_batches)

    def warnings(self) -> list[str]:
        if self.max_batch_instance_percent > self.max_unhealthy_instance_percent:
            return [(
                f"maxBatchInstancePercent ({self.max_batch_instance_percent}) exceeds "
                f"maxUnhealthyInstancePercent ({self.max_unhealthy_instance_percent}): a batch "
                "in flight may count as a policy breach"
            )]
        return []


UpgradeMode = Literal["Automatic", "Rolling", "Manual"]
RepairAction = Literal["Replace", "Restart", "Reimage"]
# A repair grace period shorter than this would repair instances still booting.
MIN_REPAIR_GRACE_SECONDS = 30


class AutomaticRepairsPolicy(_Base):
    """docs/semantics.md#automatic-repairs"""

    enabled: Bool = False
    grace_period: str = "PT10M"
    repair_action: RepairAction = "Replace"

    @field_validator("grace_period")
    @classmethod
    def _grace(cls, value: str) -> str:
        _checked(parse_duration, value)
        if parse_duration(value) < MIN_REPAIR_GRACE_SECONDS:
            raise ValueError(f"gracePeriod {value} is shorter than PT30S")
        return value

    @property
    def grace_seconds(self) -> float:
        return parse_duration(self.grace_period)
ScaleInPolicy = Literal["Default", "OldestVM", "NewestVM"]


class AutomaticOSUpgradePolicy(_Base):
    """docs/semantics.md#automatic-os-upgrades"""

    enable_automatic_os_upgrade: Bool = Field(default=False, alias="enableAutomaticOSUpgrade")
    disable_automatic_rollback: Bool = False


class UpgradePolicy(_Base):
    mode: UpgradeMode = "Manual"
    rolling_upgrade_policy: RollingUpgradePolicy = RollingUpgradePolicy()
    automatic_os_upgrade_policy: AutomaticOSUpgradePolicy = Field(
        default=AutomaticOSUpgradePolicy(), alias="automaticOSUpgradePolicy")


class Model(_Base):
    image: str
    vcpus: Int = Field(default=1, ge=1, le=64)
    memory_mib: Int = Field(default=256, ge=64, le=262144, alias="memoryMiB")
    data_disks: tuple[DataDisk, ...] = ()
    network: str = "default"
    custom_data: str | None = Field(default=None, max_length=65536)
    ssh_public_key: str | None = None
    health_probe: HealthProbe = HealthProbe()
    tags: dict[str, str] = Field(default_factory=dict)
    # the fault domains new instances may go to (empty: any)
    fault_domains: tuple[str, ...] = ()

    @field_validator("fault_domains")
    @classmethod
    def _fault_domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for fd in value:
            if not SET_NAME_RE.fullmatch(fd):
                raise ValueError(f"invalid fault domain name {_show(fd)}: a-z, 0-9, '-', "
                                 "starting with a letter, up to 40")
        if len(set(value)) != len(value):
            raise ValueError("fault domains must be unique")
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        return _checked(parse_image_ref, value)

    @field_validator("network")
    @classmethod
    def _network(cls, value: str) -> str:
        if not NETWORK_NAME_RE.fullmatch(value):
            raise ValueError(f"invalid network name {_show(value)}")
        return value

    @field_validator("data_disks")
    @classmethod
    def _luns(cls, value: tuple[DataDisk, ...]) -> tuple[DataDisk, ...]:
        luns = [d.lun for d in value]
        if len(set(luns)) != len(luns):
            raise ValueError("data disk luns must be unique")
        if len(value) > 8:
            raise ValueError("at most 8 data disks")
        return tuple(sorted(value, key=lambda d: d.lun))

    @field_validator("custom_data")
    @classmethod
    def _custom_data(cls, value: str | None) -> str | None:
        return value if value is None else _checked(cloudinit.parse_custom_data, value)

    @field_validator("ssh_public_key")
    @classmethod
    def _ssh_key(cls, value: str | None) -> str | None:
        if value is not None:
            value = value.strip()
            if not SSH_PUBLIC_KEY_RE.fullmatch(value):
                raise ValueError("sshPublicKey is not an OpenSSH public key line")
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 50:
            raise ValueError("at most 50 tags")
        for key, val in value.items():
            if not re.fullmatch(r"[A-Za-z0-9_.:/-]{1,128}", key) or len(val) > 256 or "\n" in val:
                raise ValueError(f"invalid tag {_show(key)}")
        return value


class ScaleSetSpec(_Base):
    name: str
    model: Model
    capacity: Int = Field(ge=0, le=MAX_CAPACITY)
    upgrade_policy: UpgradePolicy = UpgradePolicy()
    scale_in_policy: ScaleInPolicy = "Default"
    automatic_repairs_policy: AutomaticRepairsPolicy = AutomaticRepairsPolicy()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _checked(check_set_name, value)

    @model_validator(mode="after")
    def _os_upgrades_need_latest(self) -> ScaleSetSpec:
        if (self.upgrade_policy.automatic_os_upgrade_policy.enable_automatic_os_upgrade
                and parse_image_ref(self.model.image)[1] != LATEST):
            raise ValueError(f"automatic OS upgrades follow NAME:{LATEST}; the model's image "
                             f"is {self.model.image}")
        return self


class _Metadata(_Base):
    name: str


class _DocumentSpec(Model):
    capacity: Int = Field(ge=0, le=MAX_CAPACITY)
    upgrade_policy: UpgradePolicy = UpgradePolicy()
    scale_in_policy: ScaleInPolicy = "Default"
    automatic_repairs_policy: AutomaticRepairsPolicy = AutomaticRepairsPolicy()


class ScaleSetDocument(_Base):
    """One YAML document of ``orch vmss apply -f`` (docs/semantics.md#declarative-file)."""

    api_version: Literal["orchestrator/v1"]
    kind: Literal["ScaleSet"]
    metadata: _Metadata
    spec: _DocumentSpec

    @model_validator(mode="after")
    def _check_name(self) -> ScaleSetDocument:
        check_set_name(self.metadata.name)
        return self

    @classmethod
    def of(cls, spec: ScaleSetSpec) -> dict[str, Any]:
        """``spec`` as the document that declares it (the JSON of ``vmss apply -f``)."""
        data = spec.to_json_dict()
        return {"apiVersion": "orchestrator/v1", "kind": "ScaleSet",
                "metadata": {"name": spec.name},
                "spec": {**data["model"], "capacity": data["capacity"],
                         "upgradePolicy": data["upgradePolicy"],
                         "scaleInPolicy": data["scaleInPolicy"],
                         "automaticRepairsPolicy": data["automaticRepairsPolicy"]}}

    def to_spec(self) -> ScaleSetSpec:
        model_fields = {k: getattr(self.spec, k) for k in Model.model_fields}
        return ScaleSetSpec(
            name=self.metadata.name,
            model=Model(**model_fields),
            capacity=self.spec.capacity,
            upgrade_policy=self.spec.upgrade_policy,
            scale_in_policy=self.spec.scale_in_policy,
            automatic_repairs_policy=self.spec.automatic_repairs_policy,
        )


_M = TypeVar("_M", bound=BaseModel)


def validate(cls: type[_M], data: Any, *, where: str = "") -> _M:
    """Validate ``data`` as ``cls``; pydantic's error becomes one InvalidInput line."""
    try:
        # by alias only: the file's keys are camelCase, and `memory_mib` next to
        # `memoryMiB` would be two spellings of one field with a silent winner
        return cls.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc, where=where)) from exc
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc.message}" if where else exc.message) from exc


def validation_message(exc: ValidationError, *, where: str = "") -> str:
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"])
    path = ".".join(p for p in (where, loc) if p)
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{path}: {msg}{more}" if path else f"{msg}{more}"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError as exc:
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key that is not a plain value", key_node.start_mark
                ) from exc
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark)
        return super().construct_mapping(node, deep)


def parse_yaml_documents(text: str, *, where: str) -> list[Any]:
    """Every non-empty YAML document of ``text``; InvalidInput (one line) if it is not
    plain, valid YAML: duplicate keys and absurd nesting are refused too."""
    try:
        return [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{where}: not valid YAML: {' '.join(str(exc).split())}") from exc
    except RecursionError as exc:
        raise InvalidInput(f"{where}: YAML nested too deeply") from exc


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, ``null`` removes a key, anything
    else replaces (the HTTP API's PATCH of a set's spec)."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def instance_id_of(text: str) -> int | None:
    """The instance id ``text`` spells (0 to ``MAX_INSTANCE_ID``, ASCII digits only), else
    None. ``str.isdigit`` alone also takes digits ``int`` refuses (``²``) or reads (``٣``)."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_INSTANCE_ID)):
        return None
    return int(text)


def with_default_network(doc: Any, network: str | None) -> Any:
    """A declarative document that names no network gets ``network`` (the lab's, from
    ORCH_NETWORK); anything else is left as it is, for validation to judge."""
    if network and isinstance(doc, dict) and isinstance(doc.get("spec"), dict):
        doc["spec"].setdefault("network", network)
    return doc


def specs_from_documents(docs: list[Any], *, where: str,
                         default_network: str | None) -> list[ScaleSetSpec]:
    """The specs the declarative documents ``docs`` declare (``vmss apply -f``), each
    ``with_default_network``; a set named twice is refused."""
    for doc in docs:
        with_default_network(doc, default_network)
    specs = [validate(ScaleSetDocument, d, where=f"{where}[{n}]").to_spec()
             for n, d in enumerate(docs)]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InvalidInput(f"{where}: a scale set is named twice")
    return specs
