# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Running the installed `quankey-backup` command as a user would, for the functional tests."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

BIN = Path(sys.executable).parent
CLI = str(BIN / "quankey-backup")
ROOT = Path(__file__).resolve().parents[1]
# The variables of this process a module run must not inherit: the modules get their settings from options or env files.
SETTING_PREFIXES = ("BACKUP_", "AWS_", "S3_", "DB_", "PG", "QUANKEY_")


def new_name(stem):
    """A unique database name, S3 prefix or name stem for one test."""
    return "%s_%s" % (stem, uuid.uuid4().hex[:8])


def run_cli(env, *args, check=None):
    """Run the host command with exactly ``env`` (plus PATH, HOME, a UTF-8 locale); returns CompletedProcess with text.

    With ``check``, assert the exit status and show both streams when it differs.
    """
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"), "LC_ALL": "C.UTF-8"}
    full_env.update(env)
    proc = subprocess.run([CLI] + list(args), env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=300, check=False)
    if check is not None:
        assert proc.returncode == check, "exit %d, wanted %d\nstdout: %s\nstderr: %s" % (
            proc.returncode, check, proc.stdout, proc.stderr)
    return proc


def run_module(tmp_path, program, *args, drop=(), whole=False):
    """``program`` (ansible or ansible-playbook of this venv) with ``args`` on localhost (local connection), this
    checkout as the quankey.backup collection, none of this process's setting variables (SETTING_PREFIXES) nor the
    names in ``drop``; the result of its first task, as the json callback gives it (``whole``: the callback's whole
    report, and the exit status: ``(report, rc)``)."""
    collections = tmp_path / "collections" / "ansible_collections" / "quankey"
    if not collections.exists():
        collections.mkdir(parents=True)
        (collections / "backup").symlink_to(ROOT)
    env = dict((name, value) for name, value in os.environ.items()
               if name.upper() not in drop and not name.startswith(SETTING_PREFIXES))
    env.update(ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "collections"), ANSIBLE_HOME=str(tmp_path / "ansible-home"),
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"), ANSIBLE_NOCOLOR="1", ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_RETRY_FILES_ENABLED="false")
    proc = subprocess.run([str(BIN / program), "-i", "localhost,", "-c", "local"] + list(args), env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=300, check=False)
    try:
        if whole:
            return json.loads(proc.stdout), proc.returncode
        return json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError):
        raise AssertionError("no module result: %s\n%s" % (proc.stdout, proc.stderr)) from None


def run_playbook(tmp, env, playbook, *options, drop_prefixes=(), timeout=300):
    """``ansible-playbook <playbook>`` (quankey.backup.<name>, or a path) with the inventory ``tmp``/inventory.json, the
    collection in ``tmp``/collections; the modules get their settings from the hosts' env files only (none of this
    process's setting variables, SETTING_PREFIXES and ``drop_prefixes``). Asserts that no secret of ``env`` (the
    test bed's) shows in the output; the CompletedProcess (stdout and stderr together, text)."""
    environment = dict((name, value) for name, value in os.environ.items()
                       if not name.startswith(SETTING_PREFIXES + tuple(drop_prefixes)))
    environment.update(ANSIBLE_COLLECTIONS_PATH=str(tmp / "collections"), ANSIBLE_HOME=str(tmp / "ansible-home"),
                       ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-tmp"), ANSIBLE_RETRY_FILES_ENABLED="false",
                       ANSIBLE_NOCOLOR="1", ANSIBLE_NOCOWS="1", ANSIBLE_DEPRECATION_WARNINGS="false")
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(tmp / "inventory.json"), playbook] + list(options),
                          env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=timeout, check=False)
    for secret in (env["PGPASSWORD"], env["AWS_SECRET_ACCESS_KEY"], env["BACKUP_ENCRYPTION_KEY"]):
        assert secret not in proc.stdout
    return proc
