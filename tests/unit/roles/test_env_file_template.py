# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_backup's env file template: quankey-backup and the shell (the seed sources the file) read every
value back exactly, whatever characters a password or key holds."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import subprocess

import jinja2
import pytest
import yaml
from ansible.plugins.filter.core import FilterModule as AnsibleCoreFilters

from ansible_collections.quankey.backup.plugins.module_utils import config

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "roles", "pg_backup", "templates")
NASTY = "it's \"quoted\" $HOME `id` \\ # not a comment; a=b"


def _render(**overrides):
    values = {
        "ansible_managed": "Ansible managed", "inventory_hostname": "db1", "pg_backup_user": "quankey-backup",
        "pg_backup_databases": ["quankey_prod", "other"], "pg_backup_db_host": "localhost", "pg_backup_db_port": 5432,
        "pg_backup_db_user": "quankey", "pg_backup_db_password": NASTY, "pg_backup_db_sslmode": "",
        "pg_backup_db_ca_cert": "", "pg_backup_db_ssl_cert": "", "pg_backup_db_ssl_key": "",
        "_pg_backup_client_version": "15", "_pg_backup_own_prefixes": ["backups/postgresql/db1/", "metadata/db1/"],
        "pg_backup_iam_policy_path": "/etc/quankey/iam-policy.json", "pg_backup_aws_access_key_id": "AKIAEXAMPLE",
        "pg_backup_aws_secret_access_key": "se'cr\"et$", "pg_backup_s3_region": "eu-central-1",
        "pg_backup_s3_bucket": "quankey-backups-prod", "pg_backup_s3_prefix": "prod", "pg_backup_s3_endpoint_url": "",
        "pg_backup_s3_storage_class": "STANDARD_IA", "pg_backup_aws_profile": "", "pg_backup_aws_ca_bundle": "",
        "pg_backup_object_lock_mode": "", "pg_backup_object_lock_days": 30,
        "pg_backup_replica_bucket": "", "pg_backup_replica_endpoint_url": "", "pg_backup_replica_region": "",
        "pg_backup_replica_access_key_id": "", "pg_backup_replica_secret_access_key": "", "pg_backup_replica_prune": False,
        "pg_backup_replica_iam_policy_path": "/etc/quankey/iam-policy-replica.json",
        "pg_backup_s3_validate_certs": True, "pg_backup_aws_config": {}, "pg_backup_encryption_key": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I=",
        "pg_backup_compression": "zstd", "pg_backup_host_id": "db1", "pg_backup_name": "quankey",
        "pg_backup_retention_days": 30, "pg_backup_min_keep": 3, "_pg_backup_health_schedule": "daily",
        "pg_backup_keep_daily": 0, "pg_backup_keep_weekly": 0, "pg_backup_keep_monthly": 0, "pg_backup_keep_yearly": 0,
        "pg_backup_s3_retry_window_seconds": 300, "pg_backup_lock_wait_timeout": 300,
        "pg_backup_env_extra": {"AWS_SESSION_TOKEN": "to ken"},
        "pg_backup_encryption": "aes-256-gcm", "pg_backup_recipients": [], "pg_backup_signing_key": "",
        "pg_backup_restore_role": "quankey_restore", "pg_backup_seed_passphrase": "", "pg_backup_seed_kdf": "",
        "_pg_backup_seed_kept": {}, "_pg_backup_seed_copy": "", "pg_backup_globals": True,
        "pg_backup_count_rows": False,
        "pg_backup_kind": "logical",
        "pg_backup_metrics_dir": "/var/lib/prometheus/node-exporter",
    }
    values.update(overrides)
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), trim_blocks=True,
                                     keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    environment.filters.update(AnsibleCoreFilters().filters())  # the template's | bool is Ansible's own filter
    return environment.get_template("backup.env.j2").render(**values)


def test_the_engine_reads_back_every_value():
    values = config.parse_env_text(_render())
    assert values["PGPASSWORD"] == NASTY
    assert values["AWS_SECRET_ACCESS_KEY"] == "se'cr\"et$"
    assert values["AWS_SESSION_TOKEN"] == "to ken"
    assert values["DB_NAME"] == "quankey_prod" and values["DB_PORT"] == "5432"
    assert values["PG_BIN_DIR"] == "/usr/lib/postgresql/15/bin"
    assert values["BACKUP_NAME"] == "quankey" and values["S3_PREFIX"] == "prod"
    assert "DB_SSLMODE" not in values and "S3_ENDPOINT_URL" not in values
    settings = config.settings_from_env(values)
    assert (settings.db_name, settings.bucket, settings.host, settings.prefix) == (
        "quankey_prod", "quankey-backups-prod", "db1", "prod/")


def test_the_aws_options_are_written_when_set_and_read_back_by_the_engine():
    values = config.parse_env_text(_render(pg_backup_aws_access_key_id="", pg_backup_aws_secret_access_key="",
                                           pg_backup_env_extra={}, pg_backup_aws_profile="backup",
                                           pg_backup_aws_ca_bundle="/etc/ssl/s3 ca.pem", pg_backup_s3_validate_certs="no",
                                           pg_backup_aws_config={"retries": {"mode": "adaptive"}, "read_timeout": 60}))
    settings = config.settings_from_env(values)
    assert (settings.profile, settings.ca_bundle, settings.validate_certs) == ("backup", "/etc/ssl/s3 ca.pem", False)
    assert settings.aws_config == {"retries": {"mode": "adaptive"}, "read_timeout": 60}
    plain = config.parse_env_text(_render(pg_backup_s3_region=""))
    assert "AWS_DEFAULT_REGION" not in plain and "AWS_PROFILE" not in plain and "AWS_CA_BUNDLE" not in plain
    assert "S3_CLIENT_CONFIG" not in plain and plain["S3_VALIDATE_CERTS"] == "true"
    assert config.settings_from_env(plain).region is None  # botocore's chain decides, then us-east-1 (adapters/s3.py)


def test_the_shell_reads_back_the_same_values(tmp_path):
    env_file = tmp_path / "backup.env"
    env_file.write_text(_render())
    out = subprocess.run(["sh", "-c", 'set -a; . "$1"; printf "%s\\0%s" "$PGPASSWORD" "$AWS_SECRET_ACCESS_KEY"', "sh",
                          str(env_file)], capture_output=True, text=True, check=True, env={"PATH": os.environ["PATH"]})
    assert out.stdout.split("\0") == [NASTY, "se'cr\"et$"]


@pytest.mark.parametrize("optional, variable", [("pg_backup_db_sslmode", "DB_SSLMODE"),
                                                ("pg_backup_s3_endpoint_url", "S3_ENDPOINT_URL")])
def test_optional_settings_appear_only_when_set(optional, variable):
    assert config.parse_env_text(_render(**{optional: "require"}))[variable] == "require"


def test_the_tls_files_are_written_when_set_and_read_back_by_the_engine():
    values = config.parse_env_text(_render(pg_backup_db_sslmode="verify-full", pg_backup_db_ca_cert="/etc/quankey/pg ca.crt",
                                           pg_backup_db_ssl_cert="/etc/quankey/pg.crt", pg_backup_db_ssl_key=""))
    assert (values["DB_SSLROOTCERT"], values["DB_SSLCERT"]) == ("/etc/quankey/pg ca.crt", "/etc/quankey/pg.crt")
    assert "DB_SSLKEY" not in values and "DB_SSLROOTCERT" not in config.parse_env_text(_render())
    settings = config.settings_from_env(values)
    assert (settings.db_sslmode, settings.db_ca_cert, settings.db_ssl_cert) == (
        "verify-full", "/etc/quankey/pg ca.crt", "/etc/quankey/pg.crt")


def test_recipient_mode_writes_the_public_keys_and_the_signing_key_and_no_master_key():
    publics = ["qkpq1-pub-AAAA", "qkpq1-pub-BBBB"]
    signing_key = "c2lnbmluZy1zaWduaW5nLXNpZ25pbmctc2lnbmluZy0="
    values = config.parse_env_text(_render(pg_backup_encryption="hybrid-pq", pg_backup_encryption_key="",
                                           pg_backup_recipients=publics, pg_backup_signing_key=signing_key))
    assert values["BACKUP_ENCRYPTION"] == "hybrid-pq" and "BACKUP_ENCRYPTION_KEY" not in values
    assert values["BACKUP_SIGNING_KEY"] == signing_key
    settings = config.settings_from_env(values)
    assert (settings.encryption, settings.recipients, settings.signing_key) == ("hybrid-pq", " ".join(publics), signing_key)
    default = config.parse_env_text(_render())
    assert default["BACKUP_ENCRYPTION"] == "aes-256-gcm"
    assert "BACKUP_RECIPIENTS" not in default and "BACKUP_SIGNING_KEY" not in default


def test_the_restore_role_is_written_unless_empty():
    values = config.parse_env_text(_render())
    assert values["BACKUP_RESTORE_ROLE"] == "quankey_restore"
    assert config.settings_from_env(values).restore_role == "quankey_restore"
    assert "BACKUP_RESTORE_ROLE" not in config.parse_env_text(_render(pg_backup_restore_role=""))


def test_the_seeds_passphrase_is_written_when_it_is_not_the_master_key():
    key = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I="
    values = config.parse_env_text(_render(pg_backup_seed_passphrase=NASTY, pg_backup_seed_kdf="evp-md5"))
    assert (values["BACKUP_SEED_PASSPHRASE"], values["BACKUP_SEED_KDF"]) == (NASTY, "evp-md5")
    settings = config.settings_from_env(values)
    assert (settings.seed_passphrase, settings.seed_kdf) == (NASTY, "evp-md5")
    # the seed's key kept as the master key is tried as the passphrase anyway: not written twice
    same = config.parse_env_text(_render(pg_backup_encryption_key=key, pg_backup_seed_passphrase=key))
    assert "BACKUP_SEED_PASSPHRASE" not in same and "BACKUP_SEED_KDF" not in same


def test_the_seeds_other_variables_are_kept_after_the_roles_and_before_env_extra():
    text = _render(_pg_backup_seed_kept={"BACKUP_ALERT_EMAIL": "dba@example.com", "SEED_NOTE": NASTY},
                   _pg_backup_seed_copy="/etc/quankey/backup.env.seed-20261201",
                   pg_backup_env_extra={"AWS_SESSION_TOKEN": "to ken"})
    values = config.parse_env_text(text)
    assert (values["BACKUP_ALERT_EMAIL"], values["SEED_NOTE"]) == ("dba@example.com", NASTY)
    assert "# Kept from the seed's env file (a copy of it: /etc/quankey/backup.env.seed-20261201)" in text
    assert text.index("SEED_NOTE=") < text.index("AWS_SESSION_TOKEN=")


def test_the_role_lists_every_variable_its_template_writes():
    """The seed's values of these are never copied as they are (vars/main.yml, _pg_backup_env_names)."""
    every = _render(pg_backup_db_sslmode="require", pg_backup_s3_endpoint_url="http://s3", pg_backup_recipients=["k"],
                    pg_backup_db_ca_cert="/etc/quankey/pg-ca.crt", pg_backup_db_ssl_cert="/etc/quankey/pg.crt",
                    pg_backup_db_ssl_key="/etc/quankey/pg.key",
                    pg_backup_signing_key="k", pg_backup_seed_passphrase="p", pg_backup_seed_kdf="evp-md5",
                    pg_backup_aws_profile="backup", pg_backup_aws_ca_bundle="/etc/ssl/s3.pem",
                    pg_backup_aws_config={"read_timeout": 60}, pg_backup_env_extra={},
                    pg_backup_object_lock_mode="governance", pg_backup_replica_bucket="copy",
                    pg_backup_replica_endpoint_url="http://s3-2", pg_backup_replica_region="eu-west-1",
                    pg_backup_replica_access_key_id="a", pg_backup_replica_secret_access_key="s",
                    pg_backup_kind="both", pg_backup_wal_env_file="/etc/quankey/wal.env", pg_backup_wal_max_lag_minutes=60,
                    pg_backup_base_max_age_days=8)
    with open(os.path.join(TEMPLATE_DIR, "..", "vars", "main.yml")) as handle:
        names = yaml.safe_load(handle)["_pg_backup_env_names"]
    assert sorted(config.parse_env_text(every)) == sorted(names)


def test_the_s3_retry_window_and_the_table_lock_wait_are_written_for_the_engine():
    values = config.parse_env_text(_render(pg_backup_s3_retry_window_seconds=45, pg_backup_lock_wait_timeout=120))
    assert (values["S3_RETRY_WINDOW_SECONDS"], values["BACKUP_LOCK_WAIT_TIMEOUT"]) == ("45", "120")
    settings = config.settings_from_env(values)
    assert (settings.retry_window, settings.lock_wait_timeout) == (45, 120)
    defaults = config.parse_env_text(_render())
    assert (defaults["S3_RETRY_WINDOW_SECONDS"], defaults["BACKUP_LOCK_WAIT_TIMEOUT"]) == ("300", "300")


@pytest.mark.parametrize("given, written, kept", [(True, "true", True), (False, "false", False),
                                                  ("yes", "true", True), ("no", "false", False)])
def test_the_globals_setting_is_written_for_the_engine(given, written, kept):
    """pg_backup_globals (a bool, or what Ansible's bool takes: yes/no) -> BACKUP_GLOBALS, which the engine reads back."""
    values = config.parse_env_text(_render(pg_backup_globals=given))
    assert values["BACKUP_GLOBALS"] == written
    assert config.settings_from_env(values).globals is kept


@pytest.mark.parametrize("given, kept", [(True, True), (False, False), ("yes", True), ("no", False)])
def test_the_count_rows_setting_is_written_and_read_back_by_the_engine(given, kept):
    """pg_backup_count_rows (a bool, or yes/no) -> BACKUP_COUNT_ROWS, which the engine reads back."""
    values = config.parse_env_text(_render(pg_backup_count_rows=given))
    assert values["BACKUP_COUNT_ROWS"] == ("true" if kept else "false")
    assert config.settings_from_env(values).count_rows is kept


def test_the_calendar_retention_rules_are_written_and_read_back_by_the_engine():
    values = config.parse_env_text(_render(pg_backup_keep_daily=7, pg_backup_keep_weekly=4, pg_backup_keep_monthly=12,
                                           pg_backup_keep_yearly=3))
    settings = config.settings_from_env(values)
    assert (settings.keep_daily, settings.keep_weekly, settings.keep_monthly, settings.keep_yearly) == (7, 4, 12, 3)
    off = config.settings_from_env(config.parse_env_text(_render()))
    assert (off.keep_daily, off.keep_weekly, off.keep_monthly, off.keep_yearly) == (0, 0, 0, 0)


def test_the_object_lock_settings_are_written_only_with_a_mode_and_read_back_by_the_engine():
    assert "BACKUP_OBJECT_LOCK" not in _render()
    text = _render(pg_backup_object_lock_mode="compliance", pg_backup_object_lock_days=45)
    values = config.parse_env_text(text)
    settings = config.settings_from_env(values)
    assert (settings.object_lock_mode, settings.object_lock_days) == ("compliance", 45)


def test_the_metrics_dir_is_written_only_when_set_and_read_back_by_the_engine():
    assert config.parse_env_text(_render())["BACKUP_METRICS_DIR"] == "/var/lib/prometheus/node-exporter"
    assert "BACKUP_METRICS_DIR" not in config.parse_env_text(_render(pg_backup_metrics_dir=""))


def test_the_replica_is_written_only_when_set_and_read_back_by_the_engine():
    assert not [name for name in config.parse_env_text(_render()) if name.startswith("S3_REPLICA_")]
    text = _render(pg_backup_replica_bucket="copy", pg_backup_replica_endpoint_url="https://s3.other.example",
                   pg_backup_replica_access_key_id="AKIAREPLICA", pg_backup_replica_secret_access_key=NASTY,
                   pg_backup_replica_prune=True)
    values = config.parse_env_text(text)
    assert values["S3_REPLICA_SECRET_ACCESS_KEY"] == NASTY and "S3_REPLICA_REGION" not in values
    settings = config.settings_from_env(values)
    assert (settings.replica_bucket, settings.replica_endpoint_url, settings.replica_access_key) == (
        "copy", "https://s3.other.example", "AKIAREPLICA")
    assert settings.replica_prune is True and settings.replica_secret_key == NASTY
    assert "\n\n# Backups\n" in text  # the replica's lines end where the S3 section does
