"""The cloud-init NoCloud seed of an instance: user-data, meta-data, and the ISO holding them.

Owned here: the seed's content (``SeedContent``), merging a user's ``customData`` into what the
controller generates, and packing the seed into an ISO 9660 image labelled ``cidata``
(``genisoimage``, the tool cloud-localds uses).
Called by: engine.steps, model

The user-data is ``#cloud-config`` YAML in one canonical shape, so that real cloud-init
(debian-12) and the tiny image's small init (images/tiny/rootfs/usr/lib/orch/nocloud.sh)
read the same seed:

- one top-level key per line at column 0, in the order given;
- every scalar is a JSON string/number/boolean (JSON scalars are valid YAML scalars);
- a list value is a block list (``  - <item>``); an item is a scalar, or a mapping whose first
  key follows the dash and whose other keys are indented four spaces (``    key: <json>``);
- a mapping value is a block mapping indented two spaces (``  key: <json>``);
- anything nested deeper is written inline as JSON (flow style).
- ``write_files`` content is always base64 with ``encoding: "b64"``.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import EnvironmentProblem, InvalidInput, OperationFailed

# Keys the controller owns: a user's customData may not set them (host keys are pinned).
_RESERVED_KEYS = frozenset({"ssh_keys", "hostname", "fqdn", "ssh_genkeytypes", "ssh_deletekeys"})
_MERGED_LISTS = ("ssh_authorized_keys", "write_files", "runcmd")
_SIMPLE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
CUSTOM_SCRIPT_PATH = "/var/lib/orchestrator/custom-data.sh"


@dataclass(frozen=True)
class WriteFile:
    path: str
    content: bytes
    permissions: str = "0644"

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "encoding": "b64",
            "content": base64.b64encode(self.content).decode("ascii"),
            "permissions": self.permissions,
        }


@dataclass(frozen=True)
class SeedContent:
    """Everything an instance's seed says; ``custom_data`` is the user's raw text or None."""

    instance_id: str
    hostname: str
    authorized_keys: tuple[str, ...]
    host_key_private: str  # OpenSSH format, ed25519
    host_key_public: str
    write_files: tuple[WriteFile, ...] = ()
    runcmd: tuple[str, ...] = ()
    custom_data: str | None = None

    def cloud_config(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "hostname": self.hostname,
            "ssh_authorized_keys": list(self.authorized_keys),
            "ssh_keys": {
                "ed25519_private": self.host_key_private,
                "ed25519_public": self.host_key_public,
            },
            # cloud-init generates only the listed types whose key file is missing: ed25519
            # comes from ssh_keys, so nothing is generated. (An empty list means the same to
            # cloud-init 22.4 but fails its schema, "[] is too short", logged as a WARNING.)
            "ssh_genkeytypes": ["ed25519"],
            "ssh_deletekeys": True,
            "disable_root": False,
            "write_files": [wf.as_dict() for wf in self.write_files],
            "runcmd": list(self.runcmd),
        }
        if self.custom_data is not None:
            merge_custom_data(doc, parse_custom_data(self.custom_data))
        return doc

    def user_data(self) -> str:
        return render_cloud_config(self.cloud_config())

    def meta_data(self) -> str:
        return render_mapping({"instance-id": self.instance_id, "local-hostname": self.hostname})


def parse_custom_data(text: str) -> dict[str, Any]:
    """The user's customData as cloud-config keys; raises InvalidInput when unusable.

    ``#cloud-config`` YAML is merged key by key; a ``#!`` script is written to
    ``CUSTOM_SCRIPT_PATH`` and run from ``runcmd`` (what cloud-init does with a script part).
    """
    if text.startswith("#!"):
        script = WriteFile(CUSTOM_SCRIPT_PATH, text.encode("utf-8"), permissions="0755")
        return {"write_files": [script.as_dict()], "runcmd": [CUSTOM_SCRIPT_PATH]}
    if not text.startswith("#cloud-config"):
        raise InvalidInput("customData must start with '#cloud-config' or '#!' (a script)")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"customData is not valid YAML: {_first_line(str(exc))}") from exc
    except RecursionError as exc:
        raise InvalidInput("customData YAML is nested too deeply") from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict) or not all(isinstance(k, str) for k in doc):
        raise InvalidInput("customData cloud-config must be a mapping with string keys")
    reserved = sorted(_RESERVED_KEYS.intersection(doc))
    if reserved:
        raise InvalidInput(
            f"customData may not set {', '.join(reserved)}: the controller manages host names and keys"
        )
    for key in _MERGED_LISTS:
        if key in doc and not isinstance(doc[key], list):
            raise InvalidInput(f"customData key {key} must be a list")
    files = []
    for item in doc.get("write_files", []):
        files.append(_normalise_write_file(item))
    if files:
        doc["write_files"] = files
    for cmd in doc.get("runcmd", []):
        if not isinstance(cmd, str):
            raise InvalidInput("customData runcmd entries must be strings")
    return doc


def _normalise_write_file(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict) or not isinstance(item.get("path"), str):
        raise InvalidInput("customData write_files entries need a string 'path'")
    encoding = str(item.get("encoding", "text")).lower()
    content = item.get("content", "")
    if not isinstance(content, str):
        raise InvalidInput(f"customData write_files {item['path']}: content must be a string")
    if encoding in ("b64", "base64"):
        try:
            raw = base64.b64decode(content, validate=True)
        except ValueError as exc:
            raise InvalidInput(f"customData write_files {item['path']}: bad base64") from exc
    elif encoding == "text":
        raw = content.encode("utf-8")
    else:
        raise InvalidInput(
            f"customData write_files {item['path']}: encoding {encoding!r} not supported (text, b64)"
        )
    raw_perms = item.get("permissions", "0644")
    # YAML reads an unquoted 0644 as the octal integer 420, as cloud-init does
    permissions = f"{raw_perms:04o}" if isinstance(raw_perms, int) else str(raw_perms)
    if not re.fullmatch(r"0?[0-7]{3,4}", permissions):
        raise InvalidInput(f"customData write_files {item['path']}: bad permissions {permissions!r}")
    out = dict(item)
    out.update(WriteFile(item["path"], raw, permissions).as_dict())
    return out


def merge_custom_data(doc: dict[str, Any], custom: dict[str, Any]) -> None:
    for key, value in custom.items():
        if key in _MERGED_LISTS:
            doc[key] = list(doc.get(key, [])) + list(value)
        else:
            doc[key] = value


def render_cloud_config(doc: dict[str, Any]) -> str:
    return "#cloud-config\n" + render_mapping(doc)


def render_mapping(doc: dict[str, Any]) -> str:
    """Top-level mapping in the canonical shape described in the module docstring."""
    lines: list[str] = []
    for key, value in doc.items():
        k = _key(key)
        if isinstance(value, list) and value:
            lines.append(f"{k}:")
            for item in value:
                lines.extend(_list_item(item))
        elif isinstance(value, dict) and value:
            lines.append(f"{k}:")
            lines.extend(f"  {_key(sk)}: {_json(sv)}" for sk, sv in value.items())
        else:
            lines.append(f"{k}: {_json(value)}")
    return "\n".join(lines) + "\n"


def _list_item(item: Any) -> list[str]:
    if isinstance(item, dict) and item:
        pairs = [f"{_key(k)}: {_json(v)}" for k, v in item.items()]
        return [f"  - {pairs[0]}"] + [f"    {p}" for p in pairs[1:]]
    return [f"  - {_json(item)}"]


def _key(key: str) -> str:
    return key if _SIMPLE_KEY.match(key) else _json(key)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True, separators=(", ", ": "))


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def build_seed_iso(content: SeedContent) -> bytes:
    """The NoCloud ISO (volume label ``cidata``) holding ``user-data`` and ``meta-data``."""
    tool = shutil.which("genisoimage") or shutil.which("mkisofs")
    if tool is None:
        raise EnvironmentProblem(
            "genisoimage not found", hint="apt-get install genisoimage (or run `make setup`)"
        )
    with tempfile.TemporaryDirectory(prefix="orch-seed-") as tmp:
        root = Path(tmp)
        (root / "user-data").write_text(content.user_data(), encoding="utf-8")
        (root / "meta-data").write_text(content.meta_data(), encoding="utf-8")
        out = root / "seed.iso"
        cmd = [tool, "-quiet", "-output", str(out), "-volid", "cidata", "-joliet", "-rock",
               str(root / "user-data"), str(root / "meta-data")]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise OperationFailed(f"genisoimage failed: {_first_line(proc.stderr)}")
        return out.read_bytes()
