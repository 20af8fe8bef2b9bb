# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_backup_kind (physical, both): the env file wal-push reads (no database password), WAL_ARCHIVING in the host's
own, the IAM policy's WAL prefix and the archive_command the role sets. tests/functional/test_wal_archiving.py runs
the role's tasks against a real cluster."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import shlex

import yaml

from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.tests.unit.roles.test_env_file_template import NASTY, _render

ROLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "roles", "pg_backup")


def _yaml(*parts):
    with open(os.path.join(ROLE, *parts)) as handle:
        return yaml.safe_load(handle)


def _wal_vars(**more):
    values = {"pg_backup_kind": "physical", "pg_backup_wal_env_file": "/etc/quankey/wal.env",
              "pg_backup_wal_max_lag_minutes": 45, "pg_backup_postgres_os_user": "postgres",
              "pg_backup_base_max_age_days": 5, "pg_backup_postgres_socket_dir": "/var/run/postgresql"}
    values.update(more)
    return values


def test_a_host_that_archives_wal_says_so_to_health_and_logical_hosts_do_not():
    values = config.parse_env_text(_render(**_wal_vars()))
    settings = config.settings_from_env(values)
    assert settings.wal_archiving is True and settings.wal_max_lag_minutes == 45
    assert settings.base_max_age_days == 5  # health's base rule (pg_backup_base_max_age_days)
    assert values["PGPASSWORD"] == NASTY  # the backup user's file keeps the password
    plain = config.settings_from_env(config.parse_env_text(_render(pg_backup_kind="logical")))
    assert plain.wal_archiving is False
    assert "WAL_ARCHIVING" not in _render()  # a role run before pg_backup_kind existed: no line


def test_the_file_wal_push_reads_holds_no_database_password_nor_replica_or_seed_secrets():
    text = _render(_pg_backup_env_for_wal=True, pg_backup_replica_bucket="copy", pg_backup_replica_access_key_id="AK",
                   pg_backup_replica_secret_access_key="replica-secret", pg_backup_seed_passphrase="seed-words",
                   **_wal_vars())
    values = config.parse_env_text(text)
    assert "PGPASSWORD" not in values and NASTY not in text
    assert "replica-secret" not in text and "seed-words" not in text and "S3_REPLICA_BUCKET" not in values
    assert "owned by postgres" in text and "wal-push" in text
    settings = config.settings_from_env(values)  # what wal-push needs: the bucket, the host id, the keys
    assert (settings.bucket, settings.host, settings.prefix) == ("quankey-backups-prod", "db1", "prod/")
    assert settings.encryption_key and settings.secret_key == "se'cr\"et$"
    # the scheduled basebackup's connection: the local socket as the server's OS user (peer), not the backup user's
    assert (settings.db_host, settings.db_port, settings.db_user) == ("/var/run/postgresql", 5432, "postgres")


def test_the_file_wal_push_reads_names_no_tls_file_only_the_backup_user_may_read():
    text = _render(_pg_backup_env_for_wal=True, pg_backup_db_sslmode="verify-full", pg_backup_db_ca_cert="/etc/quankey/ca.crt",
                   pg_backup_db_ssl_key="/etc/quankey/pg.key", pg_backup_db_ssl_cert="/etc/quankey/pg.crt", **_wal_vars())
    values = config.parse_env_text(text)
    assert not [name for name in values if name.startswith("DB_SSL")]  # a socket has no TLS; those files are 0600 another's
    assert [name for name in config.parse_env_text(_render(pg_backup_db_sslmode="verify-full", **_wal_vars()))
            if name.startswith("DB_SSL")] == ["DB_SSLMODE"]  # the backup user's file keeps them


def test_the_archive_command_quotes_its_paths_for_the_shell_postgresql_runs_it_with():
    variables = _yaml("vars", "main.yml")
    template = variables["_pg_backup_archive_command"]
    assert template.strip() == ("{{ _pg_backup_command | quote }} -q --env-file {{ pg_backup_wal_env_file | quote }} "
                                "wal-push %p")
    rendered = "%s -q --env-file %s wal-push %%p" % (shlex.quote("/opt/quankey backup/venv/bin/quankey-backup"),
                                                     shlex.quote("/etc/quankey/wal's.env"))
    assert shlex.split(rendered) == ["/opt/quankey backup/venv/bin/quankey-backup", "-q", "--env-file",
                                     "/etc/quankey/wal's.env", "wal-push", "%p"]
    # ALTER SYSTEM gets it as a psql variable, quoted by psql as an SQL literal: never pasted into the SQL
    assert "ALTER SYSTEM SET archive_command = :'command';" in variables["_pg_backup_wal_alter_sql"]
    assert "_pg_backup_archive_command" not in variables["_pg_backup_wal_alter_sql"]


def test_the_iam_policy_reaches_the_wal_prefix_only_when_the_host_archives_wal():
    variables = _yaml("vars", "main.yml")
    assert "quankey.backup.wal_prefix(pg_backup_s3_prefix)" in variables["_pg_backup_wal_prefix"]
    assert "if _pg_backup_archives_wal" in variables["_pg_backup_write_prefixes"]
    statements = dict((item["Sid"], item) for item in variables["_pg_backup_iam_statements"])
    assert "_pg_backup_write_prefixes" in statements["ListOwnPrefixes"]["Condition"]["StringLike"]["s3:prefix"]
    assert "_pg_backup_write_prefixes" in statements["ReadWriteOwnObjects"]["Resource"]
    assert variables["_pg_backup_archives_wal"] == "{{ pg_backup_kind in ['physical', 'both'] }}"


def test_the_wal_tasks_run_only_for_physical_and_both_and_never_log_the_env_file():
    tasks = _yaml("tasks", "wal_archiving.yml")
    assert len(tasks) == 1 and tasks[0]["when"] == "_pg_backup_archives_wal"
    inner = dict((task["name"], task) for task in tasks[0]["block"])
    written = [task for task in inner.values() if "ansible.builtin.template" in task]
    assert len(written) == 1 and written[0]["no_log"] is True and written[0]["ansible.builtin.template"]["mode"] == "0600"
    restart = [task for task in inner.values() if "ansible.builtin.service" in task][0]
    assert "pg_backup_allow_restart" in restart["when"]
    main = _yaml("tasks", "main.yml")
    assert {"name": "Archive the host's WAL with quankey-backup wal-push (pg_backup_kind physical or both)",
            "ansible.builtin.import_tasks": "wal_archiving.yml"} in main
