#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: backup_replicate
short_description: Copy to the replica bucket every good backup it lacks or holds wrong, and check it there
version_added: 0.1.0
description:
  - Backfills the replica (E(S3_REPLICA_BUCKET) and the other E(S3_REPLICA_*) settings, read from O(env_file) or the
    environment). For each good backup of O(db) of this host on the primary bucket (or with O(all_databases) of every
    database of this host), the replica's copy is compared with the primary's - its metadata byte for byte, each
    object it names present with the size the signed metadata records, and with O(verify) each object downloaded and
    its SHA-256 checked against the signed metadata.
  - What is missing or wrong is copied as a backup's own copy is (server-side, or streamed still encrypted), checked,
    its metadata last. A wrong object is deleted first, the replica's metadata of that backup before it, which needs
    C(s3:DeleteObject) on the replica; without it the backup is reported failed, naming the objects to delete.
  - A backup that is not good on the primary (its object missing or of another size, its metadata signature not
    verifying) is skipped; metadata on the replica that differs from the primary's is reported, never overwritten.
  - Fails when the replica does not hold every good backup after the run, listing why in RV(backups).
  - This is the same engine as the C(quankey-backup replicate) command.
options:
  all_databases:
    description:
      - Every database of this host (O(host_id)), not only O(db).
    type: bool
    default: false
  verify:
    description:
      - Also download each object the replica holds and check its SHA-256 against the signed metadata (a copy of
        the right size but other bytes is only found so).
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
      - Compares and reports what would be copied (RV(would_copy), each backup's C(status) V(would-copy)); writes
        and deletes nothing, and does not fail for a replica that lacks something.
  diff_mode:
    support: none
  platform:
    platforms: posix
notes:
  - The replica's settings are variables only (E(S3_REPLICA_BUCKET), E(S3_REPLICA_ENDPOINT_URL), E(S3_REPLICA_REGION),
    E(S3_REPLICA_ACCESS_KEY_ID), E(S3_REPLICA_SECRET_ACCESS_KEY)), set in the host's env file (O(env_file)) as the
    C(quankey.backup.pg_backup) role writes it. See docs/CLI.md, "Replica".
  - Of the PostgreSQL options only O(db) is used; the others are accepted so that C(module_defaults) for
    C(group/quankey.backup.all) can set them once for every module.
  - Running it again changes nothing once the replica holds every good backup.
seealso:
  - module: quankey.backup.pg_encrypted_backup
  - module: quankey.backup.backup_health
author:
  - quankey.backup developers (@quankey)
"""

EXAMPLES = r"""
- name: Copy to the replica what it lacks, with the host's own settings
  quankey.backup.backup_replicate:
    env_file: /etc/quankey/backup.env
    db: quankey_prod

- name: Check every copy of every database of this host by SHA-256, copying what is wrong
  quankey.backup.backup_replicate:
    env_file: /etc/quankey/backup.env
    all_databases: true
    verify: true
  register: replicated

- name: Say what the replica lacks, change nothing
  quankey.backup.backup_replicate:
    env_file: /etc/quankey/backup.env
  check_mode: true
"""

RETURN = r"""
bucket:
  description: The primary bucket.
  returned: success
  type: str
  sample: quankey-backups-prod
replica_bucket:
  description: The replica bucket.
  returned: success
  type: str
  sample: quankey-backups-replica
database:
  description: The database whose backups were looked at, null with O(all_databases).
  returned: success
  type: str
  sample: quankey_prod
backups:
  description: Each backup of the primary looked at, newest first.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Name of the backup.
      returned: always
      type: str
      sample: quankey_prod_backup_20250809_030000
    status:
      description:
        - V(present) (on the replica as on the primary), V(copied), V(would-copy) (check mode), V(skipped) (not good on
          the primary) or V(failed).
      returned: always
      type: str
      sample: copied
    metadata:
      description: The replica's metadata of the backup - V(identical), V(missing) or V(differs); null when skipped.
      returned: always
      type: str
      sample: missing
    problems:
      description: The objects the replica lacks or holds wrong, each C(key) and C(problem).
      returned: always
      type: list
      elements: dict
      sample: [{"key": "backups/postgresql/db1/quankey_prod/quankey_prod_backup_20250809_030000.encrypted",
                "problem": "missing"}]
    method:
      description: How it was copied, V(server-side) or V(streamed); null when it was not.
      returned: always
      type: str
      sample: streamed
    error:
      description: Why it failed or was skipped; null otherwise.
      returned: always
      type: str
      sample: null
present:
  description: Number of backups the replica already held.
  returned: success
  type: int
  sample: 11
copied:
  description: Number of backups copied.
  returned: success
  type: int
  sample: 1
would_copy:
  description: Number of backups that would be copied (check mode).
  returned: success
  type: int
  sample: 0
failed_backups:
  description: Number of backups that could not be copied.
  returned: success
  type: int
  sample: 0
skipped_backups:
  description: Number of backups not good on the primary, not copied.
  returned: success
  type: int
  sample: 0
complete:
  description: Whether the replica holds every good backup.
  returned: success
  type: bool
  sample: true
exit_code:
  description: The exit status the C(quankey-backup replicate) command gives.
  returned: success
  type: int
  sample: 0
error:
  description: What kind of failure stopped the module before any backup was looked at.
  returned: failure
  type: dict
  contains:
    type:
      description: The engine's error class, for example V(ConfigError) without E(S3_REPLICA_BUCKET).
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
from ansible_collections.quankey.backup.plugins.module_utils.workflows import replica


def argument_spec():
    """The module's options: the shared groups plus which backups and how closely."""
    return ansible_common.common_argument_spec(
        all_databases=dict(type="bool", default=False),
        verify=dict(type="bool", default=False),
    )


def result_of(summary):
    """The module result of a replicate summary (``failed`` and ``skipped`` are Ansible's, so the counts are
    ``failed_backups`` and ``skipped_backups``)."""
    result = dict(summary)
    result["failed_backups"] = result.pop("failed")
    result["skipped_backups"] = result.pop("skipped")
    changed = result.pop("changed")
    return changed, result


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    ansible_common.require_libraries(module, "boto3", "cryptography")
    params = module.params

    with ansible_common.engine_errors(module, "replicate"):
        settings = ansible_common.module_settings(module)
        summary = replica.run_replicate(settings, all_databases=params["all_databases"], verify=params["verify"],
                                        dry_run=module.check_mode)
    changed, result = result_of(summary)
    if result["failed_backups"]:
        errors = [item["error"] for item in result["backups"] if item["status"] == replica.FAILED]
        module.fail_json(msg="the replica s3://%s does not hold every good backup: %d of %d could not be copied: %s"
                         % (result["replica_bucket"], len(errors), len(result["backups"]), "; ".join(errors)),
                         changed=changed, **result)
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
