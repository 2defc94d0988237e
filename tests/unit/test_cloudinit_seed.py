"""The seed as real cloud-init reads it (debian-12 runs cloud-init 22.4): the keys the
controller sets for SSH host keys and the default user, in the shapes cloud-init's schema
accepts. (The tiny image's reader of the same seed is tested in test_tiny_nocloud.py; the
schema itself is checked inside a real VM by tests/vm/test_debian.py.)"""

from __future__ import annotations

from typing import Any

import yaml

from orchestrator.cloudinit import SeedContent


def seed(**overrides: Any) -> SeedContent:
    fields: dict[str, Any] = {
        "instance_id": "web-0-gen1-abc", "hostname": "web-0",
        "authorized_keys": ("ssh-ed25519 AAAAadmin orchestrator web",),
        "host_key_private": "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n"
                            "-----END OPENSSH PRIVATE KEY-----\n",
        "host_key_public": "ssh-ed25519 AAAAhost web-0 host key",
    }
    fields.update(overrides)
    return SeedContent(**fields)


def user_data(content: SeedContent) -> dict[str, Any]:
    text = content.user_data()
    assert text.startswith("#cloud-config\n")
    doc: dict[str, Any] = yaml.safe_load(text)
    return doc


def test_host_key_is_the_only_one_and_none_is_generated() -> None:
    doc = user_data(seed())
    assert doc["ssh_keys"] == {"ed25519_private": seed().host_key_private,
                               "ed25519_public": "ssh-ed25519 AAAAhost web-0 host key"}
    assert doc["ssh_deletekeys"] is True  # keys baked into an image are removed
    # schema: a non-empty list of key types; cloud-init generates only those whose file is
    # missing, and every listed type is supplied by ssh_keys
    types = doc["ssh_genkeytypes"]
    assert isinstance(types, list) and types
    assert {f"{t}_private" for t in types} <= set(doc["ssh_keys"])


def test_admin_keys_go_to_the_default_user_and_root() -> None:
    doc = user_data(seed(authorized_keys=("ssh-ed25519 AAAAone a", "ssh-ed25519 AAAAtwo b")))
    assert doc["ssh_authorized_keys"] == ["ssh-ed25519 AAAAone a", "ssh-ed25519 AAAAtwo b"]
    assert doc["disable_root"] is False  # images whose ssh user is root (tiny) keep working
    assert "users" not in doc  # cloud-init's default: the image's default user (debian)


def test_custom_data_lists_are_appended_after_the_controllers() -> None:
    custom = ("#cloud-config\nwrite_files:\n  - path: /etc/x\n    content: hi\n"
              "runcmd:\n  - echo one\npackages: [htop]\n")
    doc = user_data(seed(custom_data=custom))
    assert doc["runcmd"] == ["echo one"]
    assert doc["write_files"] == [{"path": "/etc/x", "content": "aGk=", "encoding": "b64",
                                   "permissions": "0644"}]
    assert doc["packages"] == ["htop"]
    assert doc["ssh_genkeytypes"] == ["ed25519"]  # reserved keys stay the controller's
