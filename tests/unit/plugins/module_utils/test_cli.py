# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host command's pure parts: settings precedence, option parsing (the progress line: test_progress.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import cli


def test_environment_wins_over_the_env_file(tmp_path):
    path = tmp_path / "backup.env"
    path.write_text("DB_NAME=from_file\nS3_BUCKET=file-bucket\nUNRELATED=x\n")
    os.chmod(str(path), 0o600)
    values = cli.load_environment(str(path), {"DB_NAME": "from_env", "HOME": "/root", "BACKUP_FILE": "b"})
    assert values["DB_NAME"] == "from_env"
    assert values["S3_BUCKET"] == "file-bucket"
    assert values["BACKUP_FILE"] == "b"
    assert "HOME" not in values


def test_env_file_can_come_from_quankey_env_file(tmp_path):
    path = tmp_path / "other.env"
    path.write_text("DB_NAME=x\n")
    os.chmod(str(path), 0o600)
    assert cli.load_environment(None, {"QUANKEY_ENV_FILE": str(path)})["DB_NAME"] == "x"


@pytest.mark.parametrize("argv", [
    ["restore", "--backup", "latest", "--before", "2025-08-09", "--target-db", "x", "--force"],
    ["list", "--json", "--all", "--limit", "3"],
    ["health", "--json", "--max-age-hours", "12", "--schedule", "6-hour"],
    ["prune", "--dry-run"],
    ["verify", "--host", "db2", "--db", "quankey_prod"],
    ["rekey", "--dry-run", "--json"],
    ["rekey", "--host", "db2", "--db", "quankey_prod"],
    ["rekey", "--all"],
])
def test_documented_options_parse(argv):
    args = cli._parser().parse_args(argv)
    assert args.command == argv[0]


def test_unknown_command_is_a_usage_error():
    with pytest.raises(SystemExit) as info:
        cli._parser().parse_args(["backpu"])
    assert info.value.code == 2


def test_a_bad_schedule_is_named_where_it_was_set(tmp_path, capsys):
    path = tmp_path / "backup.env"
    path.write_text("BACKUP_SCHEDULE=weekly\nS3_BUCKET=b\nDB_NAME=d\n")
    os.chmod(str(path), 0o600)
    assert cli.main(["--env-file", str(path), "health"], environ={}) == 3
    assert "BACKUP_SCHEDULE in %s 'weekly' is not a preset" % path in capsys.readouterr().err
    assert cli.main(["--env-file", str(path), "health", "--schedule", "fortnightly"], environ={}) == 3
    assert "--schedule 'fortnightly' is not a preset" in capsys.readouterr().err


def test_the_environment_wins_over_the_env_file_and_messages_say_which(tmp_path, capsys):
    path = tmp_path / "backup.env"
    path.write_text("BACKUP_RETENTION_DAYS=0\nS3_BUCKET=b\nDB_NAME=d\n")
    os.chmod(str(path), 0o600)
    assert cli.main(["--env-file", str(path), "prune", "--dry-run"], environ={}) == 3
    assert "BACKUP_RETENTION_DAYS in %s must be between 1 and 36500, got 0" % path in capsys.readouterr().err
    assert cli.main(["--env-file", str(path), "prune", "--dry-run"], environ={"BACKUP_RETENTION_DAYS": "-1"}) == 3
    err = capsys.readouterr().err
    assert "BACKUP_RETENTION_DAYS must be between 1 and 36500, got -1" in err and str(path) not in err
