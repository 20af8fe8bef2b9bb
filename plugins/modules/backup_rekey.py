#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: backup_rekey
short_description: Re-wrap the data keys of existing backups to a new key or to recipients, without re-uploading them
version_added: 0.1.0
description:
  - For each backup whose data key is not wrapped with the active key O(encryption_key) (or, with
    O(encryption=hybrid-pq), not sealed to exactly O(recipients)), opens the data key with the keys given
    (O(encryption_key), O(decryption_keys), O(keyring_file), O(identity_file)), wraps it again for the target
    and rewrites only the backup's metadata object (its C(key_id), C(envelope) and signature). The data objects
    are never read beyond their first bytes and never written.
  - Each backup's metadata signature must verify before it is rewritten; the new metadata is signed with
    O(signing_key), or with the key derived from O(encryption_key).
  - V(aes-256-cbc) backups cannot be rekeyed (their data is encrypted with the passphrase itself) and are
    reported as failed; keep their key in O(decryption_keys) until they expire.
  - Before rewriting a backup's metadata it checks that the data key it opened belongs to that backup's data
    object (the key commitment in the object's header, read with a ranged GET).
  - Fails closed per backup. A backup the keyring cannot open, or whose object is missing, is reported in
    RV(backups) with its error and left as it was; the others are rekeyed, and then the task fails.
  - Re-wrapping is not re-encryption. After a key leak, take new backups and delete the old ones; rotation alone
    does not protect copies of old metadata (see C(docs/KEYS.md) of the collection).
  - This is the same engine as the C(quankey-backup rekey) command.
options:
  host:
    description:
      - The host id whose backups to rekey. Defaults to O(host_id), that is this host's.
    type: str
  all_hosts:
    description:
      - Rekey the backups of every host in the bucket (of O(db) only, when it is set). This needs credentials that
        may write every host's metadata prefix.
    type: bool
    default: false
extends_documentation_fragment:
  - quankey.backup.postgres
  - quankey.backup.s3
  - quankey.backup.encryption
  - quankey.backup.env_file
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - Opens every data key with the keyring and checks it against its object's header, and reports what would
        be rekeyed (RV(would_rekey), each backup's C(status) V(would rekey)); writes nothing.
  diff_mode:
    support: none
  platform:
    platforms: posix
notes:
  - The backups rekeyed are those of O(host) (default O(host_id), this host's short name) and O(db), or without
    O(db) every database of that host. Of the PostgreSQL options only O(db) is used; the others are accepted so
    that C(module_defaults) for C(group/quankey.backup.all) can set them once for every module.
  - Running it again changes nothing once every backup is wrapped with the active key.
seealso:
  - module: quankey.backup.backup_health
  - module: quankey.backup.s3_backup_restore
author:
  - quankey.backup developers (@quankey)
"""

EXAMPLES = r"""
- name: Show what a rotation to the new key would change on this host
  quankey.backup.backup_rekey:
    db: quankey_prod
    bucket: quankey-backups-prod
    host_id: "{{ inventory_hostname_short }}"
    encryption_key: "{{ vault_backup_encryption_key_2026 }}"
    decryption_keys:
      - "{{ vault_backup_encryption_key_2025 }}"
  check_mode: true
  register: rekey_plan

- name: Re-wrap every backup of this host to the new key
  quankey.backup.backup_rekey:
    bucket: quankey-backups-prod
    host_id: "{{ inventory_hostname_short }}"
    encryption_key: "{{ vault_backup_encryption_key_2026 }}"
    keyring_file: /etc/quankey/keyring
  register: rekeyed

- name: Rekey the whole bucket from an administration host
  quankey.backup.backup_rekey:
    bucket: quankey-backups-prod
    all_hosts: true
    encryption_key: "{{ vault_backup_encryption_key_2026 }}"
    decryption_keys: "{{ vault_backup_old_keys }}"
"""

RETURN = r"""
active_key_id:
  description: Id of the active key (of the first recipient with O(encryption=hybrid-pq)), which the rekeyed backups are now wrapped with.
  returned: success
  type: str
  sample: qk1-3f2a9c0d1e4b5a69
encryption:
  description: The target, O(encryption).
  returned: success
  type: str
  sample: aes-256-gcm
signing_key_id:
  description: Id of the key the rewritten metadata is signed with.
  returned: success
  type: str
  sample: qk1-3f2a9c0d1e4b5a69
keyring_key_ids:
  description: Ids of the keys held (master keys, the active key's first, then identities and recipients).
  returned: success
  type: list
  elements: str
  sample: [qk1-3f2a9c0d1e4b5a69, qk1-c8b6e8ab8e8a651d]
backups:
  description: Each backup looked at, newest first.
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: Name of the backup.
      returned: always
      type: str
      sample: quankey_prod_backup_20250809_030000
    host:
      description: Host id of the backup.
      returned: always
      type: str
      sample: db1
    database:
      description: Database of the backup.
      returned: always
      type: str
      sample: quankey_prod
    metadata_key:
      description: Key of the metadata object, the only object rekeying writes.
      returned: always
      type: str
      sample: metadata/db1/quankey_prod/quankey_prod_backup_20250809_030000.meta
    status:
      description: V(rekeyed), V(would rekey) (check mode), V(unchanged) (already wrapped with the active key) or V(failed).
      returned: always
      type: str
      sample: rekeyed
    from_key_id:
      description: Id of the key the data key was wrapped with, null when the metadata could not be read.
      returned: always
      type: str
      sample: qk1-c8b6e8ab8e8a651d
    to_key_id:
      description: Id of the active key.
      returned: always
      type: str
      sample: qk1-3f2a9c0d1e4b5a69
    error:
      description: Why the backup could not be rekeyed (it was left as it was).
      returned: when status is failed
      type: str
      sample: "quankey_prod_backup_20250809_030000: this backup's data key is wrapped with key qk1-c8b6e8ab8e8a651d; ..."
    exit_code:
      description: The exit status the C(quankey-backup) command gives for this backup's failure.
      returned: when status is failed
      type: int
      sample: 6
rekeyed:
  description: Number of backups rekeyed.
  returned: success
  type: int
  sample: 12
would_rekey:
  description: Number of backups that would be rekeyed (check mode).
  returned: success
  type: int
  sample: 0
unchanged:
  description: Number of backups already wrapped with the active key.
  returned: success
  type: int
  sample: 3
failed_backups:
  description: Number of backups that could not be rekeyed.
  returned: success
  type: int
  sample: 0
dry_run:
  description: Whether nothing was written (check mode).
  returned: success
  type: bool
  sample: false
bucket:
  description: The bucket.
  returned: success
  type: str
  sample: quankey-backups-prod
exit_code:
  description: The exit status the C(quankey-backup rekey) command gives, 0 when no backup failed.
  returned: success
  type: int
  sample: 0
error:
  description: What kind of failure stopped the module before any backup was looked at.
  returned: failure
  type: dict
  contains:
    type:
      description: The engine's error class, for example V(ConfigError) for an unreadable keyring file.
      returned: failure
      type: str
      sample: ConfigError
    step:
      description: The step that failed, when known.
      returned: failure
      type: str
      sample: null
    exit_code:
      description: The exit status the C(quankey-backup) command gives for this failure.
      returned: failure
      type: int
      sample: 3
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.quankey.backup.plugins.module_utils import ansible_common
from ansible_collections.quankey.backup.plugins.module_utils.workflows import rekey


def argument_spec():
    """The module's options: the shared groups plus which backups to rekey."""
    return ansible_common.common_argument_spec(
        host=dict(type="str"),
        all_hosts=dict(type="bool", default=False),
    )


def result_of(summary):
    """The module result of a rekey summary (``failed`` is Ansible's, so the count is ``failed_backups``)."""
    result = dict(summary)
    result["failed_backups"] = result.pop("failed")
    changed = result.pop("changed")
    return changed, result


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    ansible_common.require_libraries(module, "boto3", "cryptography")
    params = module.params

    with ansible_common.engine_errors(module, "rekey"):
        settings = ansible_common.module_settings(module)
        summary = rekey.run_rekey(settings, host=params["host"], db=params["db"], everything=params["all_hosts"],
                                  dry_run=module.check_mode)
    changed, result = result_of(summary)
    if result["failed_backups"]:
        errors = [item["error"] for item in result["backups"] if item["status"] == rekey.FAILED]
        module.fail_json(msg="%d of %d backups could not be rekeyed and were left as they were: %s"
                         % (len(errors), len(result["backups"]), "; ".join(errors)), changed=changed, **result)
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
