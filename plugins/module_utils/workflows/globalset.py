# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A backup's globals at restore time: reading its globals object back (checked against the signed metadata) and
recreating, on the target server, the roles, memberships and settings its database needs (``--with-globals``).

The SQL comes from adapters/pgglobals.py; this file decides when and in which order it runs around a restore
(workflows/restore.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import logging

from ..adapters import pgglobals
from ..adapters.postgres import quote_ident
from ..catalog import layout
from ..errors import BackupError, ChecksumMismatchError, IntegrityError, NotFoundError, RefusedError, in_step
from ..formats import globaldoc

LOG = logging.getLogger("quankey_backup")


def load_globals(store, record, new_decryptor):
    """The checked globals document of a backup (formats/globaldoc.py), or None when it has none.

    The object must be the one its signed metadata names, at the place beside its data object, of
    the size and SHA-256 the metadata gives; it is decrypted under the backup's own key and must
    say it belongs to this backup. IntegrityError (step ``globals``) otherwise.
    """
    summary = record.metadata.get("globals") if record.metadata else None
    if not summary:
        return None
    key = summary["object_key"]
    if key != layout.globals_key(record.object_key):
        raise IntegrityError("backup %s's metadata names globals object %s, which is not beside its data object (%s)"
                             % (record.basename, key, layout.globals_key(record.object_key)), step="globals")
    if summary["size_bytes"] > globaldoc.MAX_BYTES:
        raise IntegrityError("backup %s's globals object is said to be %d bytes: more than a globals object can be"
                             % (record.basename, summary["size_bytes"]), step="globals")
    try:
        data = in_step("globals", store.get_bytes, key)
    except NotFoundError:
        raise IntegrityError("backup %s's globals object %s is missing from the bucket: its roles cannot be restored "
                             "(restore without --with-globals, creating the roles by hand)"
                             % (record.basename, store.url(key)), step="globals")
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != summary["size_bytes"] or digest != summary["checksum_sha256"]:
        raise ChecksumMismatchError("the globals object %s (%d bytes, SHA-256 %s) is not the one backup %s's metadata "
                                    "names (%d bytes, %s): it was replaced or damaged"
                                    % (store.url(key), len(data), digest, record.basename, summary["size_bytes"],
                                       summary["checksum_sha256"]), step="globals")
    where = "the globals object %s" % store.url(key)
    try:
        decryptor = new_decryptor()
        plain = decryptor.update(data) + decryptor.finalize()
    except BackupError as exc:
        raise IntegrityError("%s does not decrypt under backup %s's key (%s): it belongs to another backup or was "
                             "damaged" % (where, record.basename, exc.message), step="globals")
    document = in_step("globals", globaldoc.decode, plain, where)
    in_step("globals", globaldoc.check_binding, document, record.host, record.db, record.basename, where)
    return document


def globals_to_restore(store, record, new_decryptor):
    """The globals a ``--with-globals`` restore recreates: a trusted backup's, checked (None when it has none)."""
    if not record.verdict.trusted:
        raise RefusedError("--with-globals recreates roles, with their passwords, from the backup: only a backup whose "
                           "metadata signature is verified here may do that, and %s's is %s"
                           % (record.basename, record.verdict.describe()), step="globals")
    document = load_globals(store, record, new_decryptor)
    if document is None:
        LOG.warning("backup %s has no globals (taken before quankey-backup kept them, or with BACKUP_GLOBALS=false): "
                    "no role is created; a role its objects need must exist here", record.basename)
    return document


class GlobalsRestore:
    """What a ``--with-globals`` restore does with a backup's globals on the target server (a no-op without them).

    :meth:`create_roles` before anything else (the archive's owners and grantees must exist),
    :meth:`settle_database` once the data is in (owner, ACL, settings of the restored database),
    :meth:`undo` when the restore fails (drops the roles it created, if they own nothing).
    """

    def __init__(self, pg, document, force, privileged):
        self.pg = pg
        self.document = document
        self.server = None
        self.report = {}
        self._statements = []  # role_plan's SQL, run by create_roles
        if document is not None:
            self.server = pgglobals.server_roles(pg, document)
            self._statements, self.report = pgglobals.role_plan(document, self.server, force=force,
                                                                privileged=privileged)
            self.report["missing_tablespaces"] = pgglobals.missing_tablespaces(document, self.server)
            self.report["settings_applied"] = 0
            self.report["passwords"] = document["passwords"]

    def plan(self):
        """The report of what :meth:`create_roles` would do (check mode)."""
        return self.report

    def create_roles(self):
        """Create the missing roles (and, with force, set the existing ones), in one transaction."""
        if self.document is None:
            return
        for skipped in self.report["skipped"]:
            LOG.warning("--with-globals: %s", skipped)
        if self.report["missing_tablespaces"]:
            LOG.warning("--with-globals: tablespace(s) %s of the backup are not on this server (a tablespace needs a "
                        "directory on the server: CREATE TABLESPACE ... LOCATION ...): the data goes to the default "
                        "tablespace", ", ".join(self.report["missing_tablespaces"]))
        if self.document["passwords"] != "included":
            LOG.warning("--with-globals: backup's globals hold no passwords (the backup user could not read them): "
                        "set the created login roles' passwords (ALTER ROLE ... PASSWORD)")
        if self._statements:
            self.pg.query(pgglobals.transaction(self._statements), step="globals")
        if self.report["created_roles"]:
            LOG.info("--with-globals: created role(s) %s", ", ".join(self.report["created_roles"]))

    def acting_roles(self, own):
        """The backup's roles the restore's login may act as while the archive's SQL runs (so that ``ALTER DEFAULT
        PRIVILEGES FOR ROLE x`` works): those this restore created, which own nothing else here, and with ``own``
        (this server's own verified backup) those that were here; never a predefined role or one that could leave
        the database (a superuser, CREATEROLE, ...: PgClient.role_risks)."""
        if self.document is None:
            return []
        names = list(self.report["created_roles"])
        if own:
            names += [name for name in self.report["existing_roles"] if name != self.server.admin]
        builtin = set(role["name"] for role in self.document["roles"] if role["builtin"])
        return [name for name in names if name not in builtin and not self.pg.role_risks(name)]

    def settle_database(self, staging, owner):
        """Give the restored database the source's owner (when it is here), ACL and settings; the owner now."""
        if self.document is None:
            return owner
        wanted = self.document["database_info"]["owner"]
        if wanted in self.server.roles or wanted in self.report["created_roles"]:
            self.pg.query("ALTER DATABASE %s OWNER TO %s" % (quote_ident(staging), quote_ident(wanted)),
                          step="globals")
            owner = owner or wanted
        statements, applied = pgglobals.database_plan(self.document, staging, self.server)
        if statements:
            self.pg.query(pgglobals.transaction(statements), step="globals")
        self.report["settings_applied"] = applied
        self.report["database_owner"] = wanted
        return owner

    def undo(self):
        """Drop the roles :meth:`create_roles` made (best effort); whether it did."""
        created = list(self.report.get("created_roles") or [])
        if not created:
            return False
        try:
            self.pg.query("DROP ROLE IF EXISTS %s" % ", ".join(quote_ident(name) for name in reversed(created)),
                          step="globals")
        except BackupError as exc:
            LOG.error("could not drop the roles this restore created (%s): %s", ", ".join(created), exc)
            return False
        self.report["created_roles"] = []
        return True
