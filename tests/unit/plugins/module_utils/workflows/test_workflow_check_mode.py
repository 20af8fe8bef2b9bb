# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Check mode refuses what the real run refuses: restore's preview against run_restore on the fakes, each
refusal with the same words, and the preview changing nothing on the server."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import ansible_common, config
from ansible_collections.quankey.backup.plugins.module_utils.errors import ConfigError, RefusedError, WrongKeyError
from ansible_collections.quankey.backup.plugins.module_utils.workflows import backup, restore
from ansible_collections.quankey.backup.tests.unit.plugins.module_utils.workflows.fakes import archive

UTC = datetime.timezone.utc
WHEN = datetime.datetime(2025, 8, 20, 3, 0, 0, tzinfo=UTC)
OTHER_KEY = "b3RoZXItb3RoZXItb3RoZXItb3RoZXItb3RoZXItMDA="  # base64 of 32 bytes: opens nothing here


@pytest.fixture
def taken(settings, store, pg):
    pg.add_database("app", archive(tables=3, size=64 * 1024))
    result = backup.run_backup(settings, store=store, pg=pg, now=WHEN)
    del pg.server.log[:]
    return result


def _server(pg):
    return sorted(pg.server.databases), dict((name, dict(info)) for name, info in pg.server.roles.items())


def _both_refuse(settings, store, pg, error, match, **options):
    """The real run and check mode fail alike; check mode leaves the server as it was."""
    before = _server(pg)
    with pytest.raises(error, match=match) as preview:
        restore.preview_restore(settings, store=store, pg=pg, **options)
    assert pg.server.log == [] and _server(pg) == before, "check mode changed the server"
    with pytest.raises(error) as real:
        restore.run_restore(settings, store=store, pg=pg, **options)
    assert (type(real.value), str(real.value)) == (type(preview.value), str(preview.value))


def test_an_existing_target_without_force_is_refused_in_check_mode_too(settings, store, pg, taken):
    _both_refuse(settings, store, pg, RefusedError, "database 'app' already exists on .* with --target-db, or pass "
                 "--force", target_db="app")


def test_an_existing_target_with_sessions_is_refused_in_check_mode_too(settings, store, pg, taken):
    pg.add_database("busy", sessions=2)
    _both_refuse(settings, store, pg, RefusedError, "database 'busy' has 2 active connections", target_db="busy",
                 force=True)


def test_a_target_name_longer_than_63_bytes_is_refused_in_check_mode_too(settings, store, pg, taken):
    _both_refuse(settings, store, pg, RefusedError, "longer than PostgreSQL's 63 bytes", target_db="t" * 64)


def test_the_login_as_restore_role_is_refused_in_check_mode_too(make_settings, store, pg, taken):
    settings = make_settings(BACKUP_RESTORE_ROLE="postgres")
    _both_refuse(settings, store, pg, ConfigError, "^BACKUP_RESTORE_ROLE is postgres, the login that restores .* pass "
                 "--as-admin$", target_db="incident")


def test_a_privileged_restore_role_is_refused_in_check_mode_too(make_settings, store, pg, taken):
    pg.server.roles["risky"] = {"login": False, "valid_until": None, "member_of": None, "risks": ["it can create roles"]}
    _both_refuse(make_settings(BACKUP_RESTORE_ROLE="risky"), store, pg, RefusedError,
                 "restore role 'risky' .* may not run a backup's SQL: it can create roles", target_db="incident")


def test_keys_that_do_not_open_the_backup_are_refused_in_check_mode_before_the_server(make_settings, store, pg, taken):
    _both_refuse(make_settings(BACKUP_ENCRYPTION_KEY=OTHER_KEY), store, pg, WrongKeyError, "wrapped with key",
                 target_db="app")  # the existing target is not what the real run names first: the key is


def test_check_mode_reports_the_target_and_the_role_and_creates_neither(settings, store, pg, taken):
    plan, verification = restore.preview_restore(settings, store=store, pg=pg, target_db="app", force=True)
    assert (plan["target_exists"], plan["restore_role_exists"], plan["sql_runs_as"]) == (True, False, "quankey_restore")
    assert verification["checksum_ok"] and verification["table_count"] == 3
    assert pg.server.log == [] and "quankey_restore" not in pg.server.roles
    plan, _verification = restore.preview_restore(settings, store=store, pg=pg, target_db="incident", as_admin=True)
    assert (plan["target_exists"], plan["restore_role_exists"], plan["sql_runs_as"]) == (False, None, "postgres")


def test_a_module_is_told_its_options(settings, store, pg, taken, monkeypatch, tmp_path):
    monkeypatch.setattr(config, "DEFAULT_ENV_FILE", str(tmp_path / "none.env"))
    options = ansible_common.settings_from_params({"db": "app", "login_user": "postgres", "bucket": "backups",
                                                   "host_id": "db1", "encryption_key": settings.encryption_key}, {})
    with pytest.raises(RefusedError, match="restore under another name with the target_db option, or pass force: true"):
        restore.preview_restore(options, store=store, pg=pg, target_db="app")
