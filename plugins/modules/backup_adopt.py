#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: backup_adopt
short_description: Take the seed's backups of a database over, verified, into this collection's format
version_added: 0.1.0
description:
  - Finds the backups the seed's scripts made of O(db) (the flat layout, C(backups/postgresql/<name>.encrypted) with
    C(metadata/<name>.meta), whose C(.meta) names O(db)) and, oldest first and one at a time, adopts each.
  - Each is downloaded, its SHA-256 checked against its C(.meta), decrypted with O(seed_passphrase) (or the text of
    O(encryption_key); the key derivation is found by trying, O(seed_kdf) first), decompressed and parsed
    (C(pg_restore) for an archive, a plain-SQL reader for a SQL dump) and its tables counted, and in the same pass
    re-encrypted like a new backup (O(encryption), O(compression)) under this host's place,
    C(<prefix>backups/postgresql/<host_id>/<db>/), with its original name and time and signed metadata that records
    where it came from.
  - Each copy is then verified as a restore would (download, checksum, decrypt, parse). Only then, and only with
    O(delete_originals=true), is the original deleted (its C(.meta) first).
  - It is idempotent. A backup already adopted is not copied again (with O(delete_originals=true) its copy is verified
    and its original deleted). An interrupted run leaves no committed copy and is resumed by the next.
  - Fails closed per backup. A backup that fails (checksum mismatch, no passphrase opens it, an archive that does
    not parse) is reported in RV(backups) with its error and its original left as it was; the others are adopted,
    and then the task fails.
  - Adopting is the consent the seed's unsigned backups otherwise need (O(quankey.backup.s3_backup_restore#module:allow_seed)),
    given only to backups that decrypt with the seed's passphrase. Afterwards they restore, verify and count in
    health like any backup of this host, without O(quankey.backup.s3_backup_restore#module:allow_seed).
  - This is the same engine as the C(quankey-backup adopt) command (C(playbooks/adopt_seed_backups.yml) runs that on
    each host). C(docs/MIGRATION.md) of the collection describes the whole migration from the seed.
options:
  delete_originals:
    description:
      - Delete each original seed backup (its C(.meta), then its object) once its adopted copy has verified, never
        before. Originals of backups adopted by earlier runs are deleted too, after their copies verify again.
      - Without it the copies and the originals coexist; the originals stay readable by the seed's own scripts.
    type: bool
    default: false
  compression:
    description:
      - How the adopted copies are compressed before they are encrypted, as for a new backup. Defaults to V(zstd).
      - If not set, the environment variable E(BACKUP_COMPRESSION) is used.
    type: str
    choices: [zstd, gzip, none]
  storage_class:
    description:
      - S3 storage class of the adopted copies. Defaults to V(STANDARD_IA).
      - If not set, the environment variable E(S3_STORAGE_CLASS) is used.
    type: str
    choices: [STANDARD, STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING, GLACIER_IR, REDUCED_REDUNDANCY, GLACIER, DEEP_ARCHIVE]
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
      - Verifies every seed backup not yet adopted end to end (checksum, decryption, archive) and reports it as
        V(would adopt); with O(delete_originals=true) also verifies the copies of those already adopted. Writes and
        deletes nothing. The task is C(changed) when a real run would adopt or delete anything.
  diff_mode:
    support: none
  platform:
    platforms: posix
requirements:
  - zstandard >= 0.21 (when O(compression=zstd), or to read a seed backup compressed with zstd)
  - PostgreSQL client programs (C(pg_restore)) at least as new as the C(pg_dump) that made the seed's backups
notes:
  - The credentials must be allowed to list C(<prefix>metadata/) and C(<prefix>backups/postgresql/) themselves (the
    seed's flat layout), to read the seed's objects there, to write this host's place and, for
    O(delete_originals=true), to delete the seed's objects. The policy the P(quankey.backup.pg_backup#role) role
    renders covers only this host's place; C(docs/MIGRATION.md) of the collection gives the statement to add.
  - Only O(db)'s seed backups are adopted; run it once per database. The copies keep their original names, so
    the seed's C(quankey_backup_<timestamp>) names live on under this host.
  - Retention (C(quankey-backup prune)) treats adopted copies like other backups, by their original time.
seealso:
  - module: quankey.backup.s3_backup_restore
  - module: quankey.backup.backup_info
  - module: quankey.backup.backup_rekey
author:
  - quankey.backup developers (@quankey)
"""

EXAMPLES = r"""
- name: Verify each of the seed's backups of quankey_prod and say what would be adopted
  quankey.backup.backup_adopt:
    db: quankey_prod
    bucket: quankey-backups-prod
    host_id: "{{ inventory_hostname_short }}"
    encryption_key: "{{ vault_backup_encryption_key }}"
    seed_passphrase: "{{ vault_seed_backup_encryption_key }}"
  check_mode: true
  register: adoption_plan

- name: Adopt them (copies and originals coexist)
  quankey.backup.backup_adopt:
    db: quankey_prod
    bucket: quankey-backups-prod
    host_id: "{{ inventory_hostname_short }}"
    encryption_key: "{{ vault_backup_encryption_key }}"
    seed_passphrase: "{{ vault_seed_backup_encryption_key }}"
  register: adopted

- name: Once satisfied, delete the originals whose copies verify
  quankey.backup.backup_adopt:
    db: quankey_prod
    bucket: quankey-backups-prod
    host_id: "{{ inventory_hostname_short }}"
    encryption_key: "{{ vault_backup_encryption_key }}"
    seed_passphrase: "{{ vault_seed_backup_encryption_key }}"
    delete_originals: true

- name: On a host whose environment holds the settings of the quankey-backup command (BACKUP_SEED_PASSPHRASE, ...)
  quankey.backup.backup_adopt:
    bucket: quankey-backups-prod
    seed_kdf: evp-md5
"""

RETURN = r"""
database:
  description: The database whose seed backups were looked at, O(db).
  returned: success
  type: str
  sample: quankey_prod
host:
  description: The host id whose place the copies go to, O(host_id).
  returned: success
  type: str
  sample: db1
bucket:
  description: The bucket.
  returned: success
  type: str
  sample: quankey-backups-prod
dry_run:
  description: Whether nothing was written (check mode).
  returned: success
  type: bool
  sample: false
delete_originals:
  description: Whether originals were to be deleted, O(delete_originals).
  returned: success
  type: bool
  sample: false
backups:
  description: Each seed backup of O(db), oldest first.
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: Its name, kept by the copy.
      returned: always
      type: str
      sample: quankey_backup_20250809_030000
    timestamp:
      description: When the seed took it (UTC), kept by the copy.
      returned: always
      type: str
      sample: "2025-08-09T03:00:00Z"
    seed_object_key:
      description: Key of the original object in the seed's flat layout.
      returned: always
      type: str
      sample: backups/postgresql/quankey_backup_20250809_030000.encrypted
    object_key:
      description: Key of the adopted copy under this host's place.
      returned: always
      type: str
      sample: backups/postgresql/db1/quankey_prod/quankey_backup_20250809_030000.encrypted
    status:
      description:
        - V(adopted) (copied and verified now), V(would adopt) (check mode, verified, nothing written),
          V(already adopted) (by an earlier run) or V(failed).
      returned: always
      type: str
      sample: adopted
    payload:
      description: What the seed encrypted, V(custom) (a C(pg_dump -Fc) archive) or V(sql) (a plain SQL dump).
      returned: when it was decrypted
      type: str
      sample: custom
    kdf:
      description: How its key was derived from which passphrase setting (no secret).
      returned: when it was decrypted or its copy verified
      type: str
      sample: PBKDF2-HMAC-SHA256, 10000 iterations (openssl enc -pbkdf2), passphrase BACKUP_SEED_PASSPHRASE
    table_count:
      description: Tables in the backup (of the copy, once verified).
      returned: when it was decrypted or its copy verified
      type: int
      sample: 12
    size_bytes:
      description: Size of the adopted copy's object.
      returned: when adopted
      type: int
      sample: 15728640
    checksum_sha256:
      description: SHA-256 of the adopted copy's object.
      returned: when adopted
      type: str
      sample: 9f2c0a...
    encryption:
      description: How the copy is encrypted, O(encryption).
      returned: when adopted
      type: str
      sample: aes-256-gcm
    copy_verified:
      description: Whether the adopted copy was verified as a restore would (download, checksum, decrypt, parse).
      returned: when adopted, or already adopted with O(delete_originals=true)
      type: bool
      sample: true
    original_deleted:
      description: Whether the original was deleted (its copy verified first).
      returned: when deleted
      type: bool
      sample: true
    error:
      description: Why it could not be adopted (its original is untouched).
      returned: when status is failed
      type: str
      sample: "quankey_backup_20250809_030000: checksum mismatch ... the object was modified or corrupted"
    exit_code:
      description: The exit status the C(quankey-backup) command gives for this backup's failure.
      returned: when status is failed
      type: int
      sample: 6
adopted:
  description: Number of backups adopted by this run.
  returned: success
  type: int
  sample: 3
would_adopt:
  description: Number of backups a real run would adopt (check mode).
  returned: success
  type: int
  sample: 0
already_adopted:
  description: Number of backups adopted by earlier runs.
  returned: success
  type: int
  sample: 0
failed_backups:
  description: Number of backups that could not be adopted.
  returned: success
  type: int
  sample: 0
originals_deleted:
  description: Number of originals deleted by this run.
  returned: success
  type: int
  sample: 0
would_delete_originals:
  description: Number of originals a real run would delete (check mode with O(delete_originals=true)); their copies verified.
  returned: success
  type: int
  sample: 0
exit_code:
  description: The exit status the C(quankey-backup adopt) command gives, 0 when no backup failed (else the first failure's).
  returned: success
  type: int
  sample: 0
error:
  description: What kind of failure stopped the module before any backup was looked at.
  returned: failure
  type: dict
  contains:
    type:
      description: The engine's error class, for example V(AccessDeniedError) when the seed's layout may not be read.
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
from ansible_collections.quankey.backup.plugins.module_utils.workflows import adopt


def argument_spec():
    """The module's options: the shared groups plus whether to delete the originals and how the copies are stored."""
    return ansible_common.common_argument_spec(
        ansible_common.setting_options("compression", "storage_class"),
        delete_originals=dict(type="bool", default=False),
    )


def result_of(summary):
    """The module result of an adoption summary, and whether it changed (or, in check mode, would change) anything.

    ``failed`` is Ansible's, so the count is ``failed_backups``. A dry run writes nothing, so the engine
    reports no change; what a real run would do is the change check mode reports.
    """
    result = dict(summary)
    result["failed_backups"] = result.pop("failed")
    would_delete = [item for item in result["backups"] if result["dry_run"] and result["delete_originals"]
                    and item.get("copy_verified") and not item.get("original_deleted")]
    result["would_delete_originals"] = len(would_delete)
    changed = bool(result.pop("changed") or result["would_adopt"] or would_delete)
    return changed, result


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    ansible_common.require_libraries(module, "boto3", "cryptography")
    params = module.params

    with ansible_common.engine_errors(module, "adopt"):
        settings = ansible_common.module_settings(module)
        if settings.compression == "zstd":
            ansible_common.require_libraries(module, "zstandard")
        summary = adopt.run_adopt(settings, dry_run=module.check_mode, delete_originals=params["delete_originals"])
    changed, result = result_of(summary)
    if result["exit_code"]:
        errors = [item["error"] for item in result["backups"] if item["status"] == adopt.FAILED]
        module.fail_json(msg="%d of %d seed backups could not be adopted and were left as they were: %s"
                         % (len(errors), len(result["backups"]), "; ".join(errors)), changed=changed, **result)
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
