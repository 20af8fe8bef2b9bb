#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: backup_drill
short_description: Prove that the newest backups restore - a restore drill into a scratch database
version_added: 0.1.0
description:
  - Restores the newest good backup of a host and database (O(host) and O(db)), or of every host and database in the
    bucket (O(all_hosts=true)), into a scratch database on the PostgreSQL server it logs in to (the drill server), under
    the least-privilege restore role (O(restore_role)), exactly as a restore does - the metadata signature, the
    object's checksum, decryption and the table count are checked on the way.
  - Then checks the row count of every table against the counts recorded at backup time (when the backup recorded
    them, C(BACKUP_COUNT_ROWS)) and runs O(assertions), measures the time the restore took (RTO) and the backup's age
    when the drill started (RPO), always drops the scratch database, and stores a drill report next to the backups
    (C(<prefix>drills/<host>/<db>/...)), signed when O(signing_key) (or the key it derives from) is there.
    C(quankey.backup.backup_health) and C(quankey-backup health) read the newest report.
  - The task fails when a drill failed, with every drill's report and the table in the result.
  - With O(pitr=true), a point-in-time drill of one host's cluster instead (C(quankey-backup drill --pitr)) - its
    newest base backup that reaches O(target_time) (default the end of the archive) restored and recovered from the
    archived WAL into a scratch data directory under O(scratch_dir), promoted, proved consistent and removed again. Its
    report is stored as database V(@cluster) (C(<prefix>drills/<host>/@cluster/...)), which C(quankey.backup.backup_health)
    counts as a drill of a host that archives its WAL.
  - This is the same engine as the C(quankey-backup drill) command.
options:
  host:
    description:
      - Host id whose backups to drill. Defaults to O(host_id), that is this host's.
      - Not with O(all_hosts=true).
    type: str
  all_hosts:
    description:
      - Drill the newest backup of every host and database in the bucket (fleet mode); O(host) and O(db) are then not
        used to choose.
    type: bool
    default: false
  assertions:
    description:
      - SQL checks run in the scratch database as O(restore_role) after the restore, each returning one row whose first
        column is true, for example V(select count(*) > 0 from users). A check that returns false, no row or an error
        fails the drill.
      - Run in addition to those in C(DRILL_ASSERTIONS) of the environment or O(env_file).
    type: list
    elements: str
    default: []
  pitr:
    description:
      - A point-in-time drill of the cluster of O(host) (see above) instead of a database's dump drill. Not with
        O(all_hosts=true) or O(assertions).
      - Needs the PostgreSQL server programs of the cluster's major version on the drill host, and room for the
        cluster under O(scratch_dir). Run as root, the server runs as V(postgres).
    type: bool
    default: false
  target_time:
    description:
      - With O(pitr=true), recover to this time (ISO 8601, for example V(2025-08-09T14:30:00Z); without a zone, UTC)
        instead of the end of the archive.
    type: str
  scratch_dir:
    description:
      - With O(pitr=true), the directory the scratch data directory is made in (removed again afterwards). Default
        C(/var/tmp).
    type: path
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
      - Selects the backups that would be drilled and reports them (RV(plan)) without restoring, checking or storing
        anything; RV(status) is then V(none) and RV(drills) empty.
      - With O(pitr=true), also checks what a real run checks before it writes (the base backup chosen for the target,
        its metadata's trust, the PostgreSQL server programs of its version).
  diff_mode:
    support: none
  platform:
    platforms: posix
requirements:
  - zstandard >= 0.21 (for backups compressed with zstd)
  - PostgreSQL client programs (C(pg_restore), C(psql)) at least as new as the drill server and the backups' servers
notes:
  - The task reports a change when a drill stored its report in the bucket, the only thing a drill leaves behind (the
    scratch database is dropped again, also on failure); check mode never does.
  - The login (O(login_user)) must be allowed to create databases on the drill server; the backup's SQL runs as
    O(restore_role), never as the login.
seealso:
  - module: quankey.backup.s3_backup_restore
  - module: quankey.backup.backup_health
author:
  - quankey.backup developers (@quankey)
"""

EXAMPLES = r"""
- name: Drill the newest backup of quankey_prod taken on db1, with a check of the data
  quankey.backup.backup_drill:
    host: db1
    db: quankey_prod
    assertions:
      - select count(*) > 0 from users
    env_file: /etc/quankey/drill.env
  register: drill

- name: Drill every host and database in the bucket, and report without failing the play
  quankey.backup.backup_drill:
    all_hosts: true
    env_file: /etc/quankey/drill.env
  register: fleet_drill
  ignore_errors: true

- name: Show the fleet table
  ansible.builtin.debug:
    msg: "{{ fleet_drill.table }}"

- name: Point-in-time drill of db1's cluster to a time (health counts it as db1's drill)
  quankey.backup.backup_drill:
    pitr: true
    host: db1
    target_time: "2025-08-09T14:00:00Z"
    scratch_dir: /var/tmp
    env_file: /etc/quankey/drill.env
  become: true
  register: pitr_drill

- name: Show what a drill would restore, without restoring
  quankey.backup.backup_drill:
    all_hosts: true
    bucket: quankey-backups-prod
    encryption_key: "{{ vault_backup_encryption_key }}"
    login_password: "{{ vault_drill_pg_password }}"
  check_mode: true
  register: planned
"""

RETURN = r"""
status:
  description:
    - V(passed) when every drill passed, V(failed) when one failed (the task fails), V(none) when there was nothing to
      drill or in check mode.
  returned: success or when a drill failed
  type: str
  sample: passed
drills:
  description: One report per host and database drilled, as stored in the bucket. Empty in check mode.
  returned: success or when a drill failed
  type: list
  elements: dict
  contains:
    host:
      description: Host id of the backup.
      returned: always
      type: str
      sample: db1
    database:
      description: Database the backup was taken of.
      returned: always
      type: str
      sample: quankey_prod
    backup:
      description: Name of the backup drilled.
      returned: always
      type: str
      sample: quankey_prod_backup_20250809_030000
    backup_timestamp:
      description: Time of the backup (UTC).
      returned: always
      type: str
      sample: '2025-08-09T03:00:00Z'
    started:
      description: When the drill started (UTC).
      returned: always
      type: str
      sample: '2025-08-10T05:12:40Z'
    finished:
      description: When the drill finished (UTC).
      returned: always
      type: str
      sample: '2025-08-10T05:13:02Z'
    rto_seconds:
      description: Seconds the restore took (the recovery time a restore of this backup needs).
      returned: always
      type: float
      sample: 21.4
    rpo_seconds:
      description: Age of the backup in seconds when the drill started (the data a loss then would have lost).
      returned: always
      type: float
      sample: 94360.0
    result:
      description: V(passed) or V(failed).
      returned: always
      type: str
      sample: passed
    checks:
      description: Each check of the drill (checksum, signature, table count, row counts, each assertion).
      returned: always
      type: list
      elements: dict
      contains:
        name:
          description: What was checked.
          returned: always
          type: str
          sample: table_count
        ok:
          description: Whether it passed.
          returned: always
          type: bool
          sample: true
        detail:
          description: What was found.
          returned: always
          type: str
          sample: 42 tables, as recorded
    tables:
      description: Tables in the scratch database; null when the drill failed before counting them.
      returned: always
      type: int
      sample: 42
    rows_checked:
      description:
        - Rows counted in the scratch database and compared with the counts recorded at backup time; null when the
          backup recorded none (taken without C(BACKUP_COUNT_ROWS)) or the drill failed before.
      returned: always
      type: int
      sample: 65500
    scratch_database:
      description: The scratch database the backup was restored into (dropped again).
      returned: always
      type: str
      sample: quankey_drill__drill_260310040000_5f2a
    report_key:
      description: S3 key of the stored drill report, or null when it could not be stored.
      returned: always
      type: str
      sample: drills/db1/quankey_prod/20250810_051302.json
    error:
      description: Why the drill failed, or null.
      returned: always
      type: str
      sample: null
plan:
  description: In check mode, the backups a drill would restore, one per host and database.
  returned: in check mode
  type: list
  elements: dict
  contains:
    host:
      description: Host id of the backup.
      returned: always
      type: str
      sample: db1
    database:
      description: Database the backup was taken of.
      returned: always
      type: str
      sample: quankey_prod
    backup:
      description: Name of the backup that would be drilled.
      returned: always
      type: str
      sample: quankey_prod_backup_20250809_030000
    backup_timestamp:
      description: Time of the backup (UTC).
      returned: always
      type: str
      sample: '2025-08-09T03:00:00Z'
    target:
      description: With O(pitr=true), the recovery target - C(kind) (V(time) or V(latest)), C(value), C(inclusive), C(timeline).
      returned: with O(pitr=true)
      type: dict
      sample: {"kind": "latest", "value": null, "inclusive": true, "timeline": "latest"}
    scratch_parent:
      description: With O(pitr=true), where the scratch data directory would be made.
      returned: with O(pitr=true)
      type: str
      sample: /var/tmp
table:
  description:
    - The drills as a table people read - a header, then one line per drill (host, database, backup, its age, the time
      the restore took, the result and, for a failed drill, why). C(playbooks/drill.yml) prints it.
  returned: success or when a drill failed
  type: list
  elements: str
  sample:
    - "HOST  DATABASE      BACKUP                              AGE      RTO   RESULT"
    - "db1   quankey_prod  quankey_prod_backup_20250809_030000 26h 12m  21s   passed"
error:
  description: What kind of failure stopped the module, when it was not a failed drill.
  returned: failure
  type: dict
  contains:
    type:
      description: The engine's error class.
      returned: failure
      type: str
      sample: NotFoundError
    step:
      description: The step that failed, when known.
      returned: failure
      type: str
      sample: null
    exit_code:
      description: The exit status the C(quankey-backup) command gives for this failure.
      returned: failure
      type: int
      sample: 4
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.quankey.backup.plugins.module_utils import ansible_common
from ansible_collections.quankey.backup.plugins.module_utils.workflows import drill, pitr


def argument_spec():
    """The module's options: the shared groups plus what to drill and the checks."""
    return ansible_common.common_argument_spec(
        host=dict(type="str"),
        all_hosts=dict(type="bool", default=False),
        assertions=dict(type="list", elements="str", default=[]),
        pitr=dict(type="bool", default=False),
        target_time=dict(type="str"),
        scratch_dir=dict(type="path"),
    )


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    ansible_common.require_libraries(module, "boto3", "cryptography")
    params = module.params
    if params["all_hosts"] and params["host"]:
        module.fail_json(msg="host=%s and all_hosts: true contradict each other: all_hosts drills every host in the "
                             "bucket; drop one of them" % params["host"])

    if params["pitr"] and (params["all_hosts"] or params["assertions"]):
        module.fail_json(msg="pitr: true drills one host's cluster (host, default this host's): drop %s"
                             % " and ".join(name for name in ("all_hosts", "assertions") if params[name]))
    given = [name for name in ("target_time", "scratch_dir") if params[name]]
    if given and not params["pitr"]:
        module.fail_json(msg="%s %s to a point-in-time drill: add pitr: true, or leave %s out"
                             % (" and ".join(given), "belongs" if len(given) == 1 else "belong",
                                "it" if len(given) == 1 else "them"))

    with ansible_common.engine_errors(module, "drill"):
        settings = ansible_common.module_settings(module)
        selection = dict(host=params["host"], all_hosts=params["all_hosts"])
        if params["pitr"]:
            pitr_selection = dict(host=params["host"], scratch_parent=params["scratch_dir"],
                                  target=pitr.parse_target(params["target_time"]))
            if module.check_mode:
                plan = drill.plan_pitr_drill(settings, **pitr_selection)
                result = dict(status=drill.NONE, drills=[], plan=plan, table=drill.table(plan))
            else:
                outcome = drill.run_pitr_drill(settings, **pitr_selection)
                result = dict(status=outcome["status"], drills=outcome["drills"], table=drill.table(outcome["drills"]))
        elif module.check_mode:
            plan = drill.plan_drill(settings, **selection)
            result = dict(status=drill.NONE, drills=[], plan=plan, table=drill.table(plan))
        else:
            outcome = drill.run_drill(settings, assertions=tuple(params["assertions"]), **selection)
            result = dict(status=outcome["status"], drills=outcome["drills"], table=drill.table(outcome["drills"]))
    changed = any(entry.get("report_key") for entry in result["drills"])
    if result["status"] == drill.FAILED:
        failed = [entry for entry in result["drills"] if entry.get("result") != drill.PASSED]
        module.fail_json(msg="%d of %d restore drill(s) failed: %s" % (
            len(failed), len(result["drills"]), "; ".join("%s/%s %s: %s" % (
                entry.get("host"), entry.get("database"), entry.get("backup"), drill.failure_reason(entry))
                for entry in failed)),
            changed=changed, **result)
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
