# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that ask the engine (plugins/module_utils) on the controller, so that the roles hold no copy of its rules.

- ``backup_prefixes``: a host's two key prefixes (its data objects and its metadata), catalog/layout.py's.
- ``drill_reports_prefix``: the key prefix of a host's restore drill reports, catalog/layout.py's.
- ``wal_prefix``: the key prefix of a host's archived WAL (every timeline), catalog/layout.py's.
- ``base_prefix``: the key prefix of a host's physical base backups (data objects and metadata), catalog/layout.py's.
- ``settings_error``: the engine's verdict on settings a role is about to write, before anything is installed:
  config.Settings' validation (the settings table) and whether new backups can be sealed and signed with those
  keys (keys.KeyContext), in the role's words (``labels``). Messages never hold a secret (errors.py).
- ``env_extra_error``: the engine's verdict on more lines for an env file (pg_backup_env_extra): each must be a
  variable the engine uses (config.variable_use: a setting, libpq's pass-through, a process variable), with a value
  the engine accepts, and none a line the role writes itself. Messages name the variables, never their values.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible.errors import AnsibleFilterError

from ansible_collections.quankey.backup.plugins.module_utils import config, keys
from ansible_collections.quankey.backup.plugins.module_utils.catalog import layout
from ansible_collections.quankey.backup.plugins.module_utils.errors import BackupError
from ansible_collections.quankey.backup.plugins.module_utils.formats import crypto, recipients


def backup_prefixes(host_id, prefix=""):
    """``[<prefix>backups/postgresql/<host>/, <prefix>metadata/<host>/]``: every key a host writes is under these."""
    if not host_id:
        raise AnsibleFilterError("backup_prefixes needs a host id")
    normalized = config.normalize_prefix(prefix)
    return [layout.object_prefix(normalized, host_id), layout.metadata_prefix(normalized, host_id)]


def drill_reports_prefix(host_id, prefix=""):
    """``<prefix>drills/<host>/``: the restore drill reports of a host's databases (the drill host writes them)."""
    if not host_id:
        raise AnsibleFilterError("drill_reports_prefix needs a host id")
    return layout.drill_prefix(config.normalize_prefix(prefix), host_id)


def wal_prefix(host_id, prefix=""):
    """``<prefix>wal/<host>/``: the host's archived WAL, every timeline (wal-push writes there)."""
    if not host_id:
        raise AnsibleFilterError("wal_prefix needs a host id")
    return layout.wal_prefix(config.normalize_prefix(prefix), host_id)


def base_prefix(host_id, prefix=""):
    """``<prefix>base/<host>/``: the host's physical base backups, data objects and metadata (basebackup writes
    there, prune deletes there)."""
    if not host_id:
        raise AnsibleFilterError("base_prefix needs a host id")
    return layout.base_prefix(config.normalize_prefix(prefix), host_id)


def controller_checks_keys():
    """Whether this Python has what the engine needs to check keys at all (cryptography, an ansible-core dependency)."""
    return crypto.HAS_CRYPTOGRAPHY


def _check_keys(settings):
    """The engine's check that new backups can be sealed and signed here (ConfigError); a mode that needs a library
    this Python lacks (ML-KEM for hybrid-pq, before cryptography 48) is left to the host, which has it."""
    context = keys.KeyContext(settings)
    try:
        context.require_sealing()
        context.signer()
    except BackupError as exc:
        if not recipients.HAS_MLKEM and str(exc) == _missing_mlkem():
            return
        raise


def _missing_mlkem():
    """The engine's message when ML-KEM is missing here (None when it is not)."""
    try:
        recipients.require_mlkem()
    except BackupError as exc:
        return str(exc)
    return None


def settings_error(values, labels=None, databases=None):
    """'' when the engine accepts ``values`` (config.Settings fields) for taking backups, else its message.

    Taking backups needs a database and a bucket, keys to seal new backups with and to sign their metadata.

    ``labels`` names each field as the caller knows it (``{"host_id": "pg_backup_host_id"}``); ``databases``
    (each a ``db_name``) are checked one by one. Unset values (None, '', []) take the engine's defaults. The keys
    are checked when the controller's Python can (:func:`controller_checks_keys`, :func:`_check_keys`); else the
    host's engine checks them when it first uses them.
    """
    if not isinstance(values, dict):
        raise AnsibleFilterError("settings_error expects a dict of settings, got %s" % type(values).__name__)
    given = dict((field, value) for field, value in values.items() if value not in (None, "", []))
    try:
        for db_name in list(databases or []) or [given.get("db_name")]:
            if db_name not in (None, ""):
                given["db_name"] = db_name
            settings = config.Settings(source="role variables", labels=labels or {}, **given)
            settings.require("db_name", "bucket")
            if controller_checks_keys():
                _check_keys(settings)
    except BackupError as exc:
        return str(exc)
    except TypeError as exc:  # a field the engine does not have: the caller's mistake, not the user's
        raise AnsibleFilterError("settings_error: %s" % exc)
    return ""


_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # what the env file's reader (config.parse_env_text) takes as a name


def env_extra_error(extra, written=(), labels=None, name="pg_backup_env_extra"):
    """'' when the engine would use every entry of ``extra`` (variable -> value, more lines for an env file), else
    what is wrong with each entry that it would not use, in one message naming the entries, never their values.

    Refused: a name that is no variable name; a name in ``written`` (the variables the caller writes itself, which the
    entry would silently replace) or an older name of one (read only when that is not set); a value that is null or
    holds a line break; a variable the engine does not use (config.variable_use, with config.NO_EFFECT's hint); a
    setting's value the engine refuses (config.Settings).
    ``labels`` (field -> the caller's variable) names what to set instead of a written variable; ``name`` is how the
    caller calls ``extra``.
    """
    if not isinstance(extra, dict):
        raise AnsibleFilterError("env_extra_error expects a dict of variables, got %s" % type(extra).__name__)
    by_variable = dict((variable, setting) for setting in config.TABLE for variable in setting.variables)
    written, labels, problems, settings, unused = set(written or ()), labels or {}, [], {}, False
    for key in sorted(extra, key=str):
        value = extra[key]
        setting = by_variable.get(key)
        if not isinstance(key, str) or not _NAME_RE.match(key):
            problems.append("%r is not a variable name: use letters, digits and '_', not starting with a digit" % (key,))
        elif key in written or (setting is not None and setting.variable in written):
            instead = labels.get(setting.field if setting is not None else None) or "the role's own variable for it"
            problems.append("%s is written by the role itself: set %s instead" % (key, instead) if key in written else
                            "%s is read only when %s is not set, which the role writes itself: set %s instead"
                            % (key, setting.variable, instead))
        elif value is None or "\n" in str(value) or "\r" in str(value):
            what = "no value (null)" if value is None else "a line break"
            problems.append("%s has %s: give it a one-line value" % (key, what))
        elif config.variable_use(key) is None:
            unused = True
            problems.append("%s is not a variable quankey-backup reads, so it would have no effect%s"
                            % (key, " (%s)" % config.NO_EFFECT[key] if key in config.NO_EFFECT else ""))
        elif config.variable_use(key) == "setting":
            settings[key] = str(value)  # as the env file will hold it (the template writes `value | string`)
    if settings:
        try:
            config.settings_from_env(settings, origin=name)
        except BackupError as exc:
            problems.append(str(exc))
    if not problems:
        return ""
    return "%s: %s%s" % (name, "; ".join(problems), ". Accepted are %s" % config.accepted_variables() if unused else "")


class FilterModule(object):
    """quankey.backup's filters."""

    def filters(self):
        return {"backup_prefixes": backup_prefixes, "drill_reports_prefix": drill_reports_prefix,
                "wal_prefix": wal_prefix, "base_prefix": base_prefix, "settings_error": settings_error,
                "env_extra_error": env_extra_error}
