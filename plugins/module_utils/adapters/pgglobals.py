# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A database's globals on a PostgreSQL server: reading them at backup time, recreating them at restore time.

:func:`capture` reads, in the database itself, what it needs from the cluster (formats/globaldoc.py):
the roles that own or are granted anything in it (pg_shdepend), its owner, its ACL's grantees, the roles
with settings in it, every member of those roles (an application's login is often a member of the
owner role) and every role they are members of; with their attributes, settings, memberships and
password hashes (when pg_authid can be read: a superuser), its own ACL and settings, and its tablespaces.

:func:`role_plan` turns a checked document and what the target server already has into SQL that
creates only what is missing: every name goes through :func:`quote_ident`, every value through
:func:`quote_literal` or a checked form; no text of the backup is ever run as SQL. An existing role is
changed only with ``force``. Attributes that reach past a database (superuser, CREATEROLE,
REPLICATION, BYPASSRLS) and memberships in the predefined roles that reach the server's files or
every table are given only when the caller says the backup is this server's own.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

from ..errors import PostgresError
from ..formats import globaldoc
from .postgres import DANGEROUS_ROLES, quote_ident, quote_literal

FIRST_NORMAL_OID = 16384  # below it: the bootstrap superuser (10) and the predefined roles (pg_*), on every server
# GUCs whose value is a list, each element quoted on its own (as pg_dump's variable_is_guc_list_quote)
LIST_SETTINGS = ("local_preload_libraries", "search_path", "session_preload_libraries", "shared_preload_libraries",
                 "temp_tablespaces", "unix_socket_directories")

_NEEDED_ROLES = """
WITH RECURSIVE
d AS (SELECT oid, datdba, datacl, dattablespace FROM pg_catalog.pg_database
      WHERE datname = pg_catalog.current_database()),
spaces AS (
  SELECT dattablespace AS oid FROM d
  UNION SELECT reltablespace FROM pg_catalog.pg_class WHERE reltablespace <> 0),
used_spaces AS (SELECT oid FROM spaces WHERE oid NOT IN (SELECT oid FROM pg_catalog.pg_tablespace
                                                         WHERE spcname IN ('pg_default', 'pg_global'))),
seed(r) AS (
  SELECT datdba FROM d
  UNION SELECT s.refobjid FROM pg_catalog.pg_shdepend s, d
        WHERE s.dbid = d.oid AND s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass
  UNION SELECT a.grantee FROM d, pg_catalog.aclexplode(d.datacl) a WHERE a.grantee <> 0
  UNION SELECT s.setrole FROM pg_catalog.pg_db_role_setting s, d WHERE s.setdatabase = d.oid AND s.setrole <> 0
  UNION SELECT t.spcowner FROM pg_catalog.pg_tablespace t WHERE t.oid IN (SELECT oid FROM used_spaces)),
down(r) AS (
  SELECT r FROM seed
  UNION SELECT m.member FROM pg_catalog.pg_auth_members m JOIN down ON m.roleid = down.r
        WHERE down.r >= %(first)d),
needed(r) AS (
  SELECT r FROM down
  UNION SELECT m.roleid FROM pg_catalog.pg_auth_members m JOIN needed ON m.member = needed.r)
"""

_CAPTURE = _NEEDED_ROLES + """
SELECT pg_catalog.json_build_object(
  'roles', (SELECT COALESCE(pg_catalog.json_agg(pg_catalog.json_build_object(
      'name', a.rolname, 'builtin', a.oid < %(first)d, 'superuser', a.rolsuper, 'inherit', a.rolinherit,
      'createrole', a.rolcreaterole, 'createdb', a.rolcreatedb, 'login', a.rolcanlogin,
      'replication', a.rolreplication, 'bypassrls', a.rolbypassrls, 'connection_limit', a.rolconnlimit,
      'valid_until', CASE WHEN a.rolvaliduntil IS NULL THEN NULL
                          WHEN pg_catalog.isfinite(a.rolvaliduntil)
                          THEN pg_catalog.to_char(a.rolvaliduntil AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                          ELSE a.rolvaliduntil::text END,
      'password', %(password)s,
      'settings', (SELECT s.setconfig FROM pg_catalog.pg_db_role_setting s
                   WHERE s.setrole = a.oid AND s.setdatabase = 0),
      'database_settings', (SELECT s.setconfig FROM pg_catalog.pg_db_role_setting s, d
                            WHERE s.setrole = a.oid AND s.setdatabase = d.oid),
      'comment', pg_catalog.shobj_description(a.oid, 'pg_authid')) ORDER BY a.rolname), '[]'::json)
    FROM %(roles)s a WHERE a.oid IN (SELECT r FROM needed)),
  'memberships', (SELECT COALESCE(pg_catalog.json_agg(pg_catalog.json_build_object(
      'role', g.rolname, 'member', u.rolname, 'admin', m.admin_option,
      'inherit', (pg_catalog.to_jsonb(m) ->> 'inherit_option')::boolean,
      'set', (pg_catalog.to_jsonb(m) ->> 'set_option')::boolean) ORDER BY g.rolname, u.rolname), '[]'::json)
    FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
    JOIN pg_catalog.pg_roles u ON u.oid = m.member
    WHERE m.member IN (SELECT r FROM needed) AND m.roleid IN (SELECT r FROM needed)),
  'tablespaces', (SELECT COALESCE(pg_catalog.json_agg(pg_catalog.json_build_object(
      'name', t.spcname, 'owner', pg_catalog.pg_get_userbyid(t.spcowner),
      'location', pg_catalog.pg_tablespace_location(t.oid), 'options', t.spcoptions,
      'default', t.oid = (SELECT dattablespace FROM d)) ORDER BY t.spcname), '[]'::json)
    FROM pg_catalog.pg_tablespace t WHERE t.oid IN (SELECT oid FROM used_spaces)),
  'database_info', (SELECT pg_catalog.json_build_object(
      'name', db.datname, 'owner', pg_catalog.pg_get_userbyid(db.datdba), 'connection_limit', db.datconnlimit,
      'acl', CASE WHEN db.datacl IS NULL THEN NULL ELSE (SELECT COALESCE(pg_catalog.json_agg(
               pg_catalog.json_build_object('grantee', CASE WHEN a.grantee = 0 THEN NULL
                                                             ELSE pg_catalog.pg_get_userbyid(a.grantee) END,
                                            'privilege', a.privilege_type, 'grantable', a.is_grantable)
               ORDER BY a.grantee, a.privilege_type), '[]'::json) FROM pg_catalog.aclexplode(db.datacl) a) END,
      'settings', (SELECT s.setconfig FROM pg_catalog.pg_db_role_setting s
                   WHERE s.setrole = 0 AND s.setdatabase = db.oid),
      'comment', pg_catalog.shobj_description(db.oid, 'pg_database'))
    FROM pg_catalog.pg_database db WHERE db.datname = pg_catalog.current_database()),
  'server_version', pg_catalog.current_setting('server_version_num'))
"""


def capture(pg, database, host, name):
    """The globals document of ``database`` for backup ``name`` of ``host`` (formats/globaldoc.py), checked.

    Password hashes come from pg_authid when this login may read it (a superuser); otherwise they are
    left out, and the document's ``warnings`` say so.
    """
    readable = pg.scalar("SELECT pg_catalog.has_table_privilege('pg_catalog.pg_authid', 'SELECT')", database,
                         step="globals") == "t"
    sql = _CAPTURE % {"first": FIRST_NORMAL_OID, "roles": "pg_catalog.pg_authid" if readable else "pg_catalog.pg_roles",
                      "password": "a.rolpassword" if readable else "NULL"}
    text = pg.scalar(sql, database, step="globals")
    try:
        found = json.loads(text or "")
    except ValueError as exc:
        raise PostgresError("the server's answer about the globals of %s is not JSON (%s)" % (database, exc),
                            step="globals")
    warnings = []
    if not readable:
        warnings.append("the roles' passwords are not in this backup: %s may not read pg_catalog.pg_authid (a "
                        "superuser may, or a member of pg_read_all_data); after a restore onto a new server set them "
                        "again (ALTER ROLE ... PASSWORD), or take backups as such a role" % pg.user)
    version = int(found.pop("server_version"))
    document = {"format": globaldoc.FORMAT, "version": globaldoc.VERSION, "host": host, "database": database,
                "name": name, "server_version": "%d.%d" % (version // 10000, version % 10000),
                "passwords": "included" if readable else "omitted", "warnings": warnings}
    document.update(found)
    for role in document["roles"]:
        if role["password"] is not None and not globaldoc.is_password_hash(role["password"]):
            # a clear-text password (password_encryption off, long ago) is never copied into a backup
            role["password"] = None
            warnings.append("role %s has a password stored in a form that is not a hash: it is not in this backup"
                            % role["name"])
    globaldoc.check(document, "the globals of %s read from %s" % (database, pg.where))
    return document


class ServerRoles:
    """What a target server already has that a globals document names (read by :func:`server_roles`)."""

    def __init__(self, roles, memberships, tablespaces, admin):
        self.roles = roles  # name -> {"superuser": bool, ...}
        self.memberships = memberships  # set of (role, member)
        self.tablespaces = tablespaces  # set of names
        self.admin = admin  # the login the restore runs as


def server_roles(pg, document):
    """The roles, memberships and tablespaces of ``document`` that exist on ``pg``'s server."""
    names = [role["name"] for role in document["roles"]]
    literal = "ARRAY[%s]::text[]" % ", ".join(quote_literal(name) for name in names) if names else "ARRAY[]::text[]"
    rows = pg.query("SELECT 'role', rolname::text, rolsuper::text, '' FROM pg_catalog.pg_roles "
                    "WHERE rolname = ANY(%s) "
                    "UNION ALL SELECT 'member', g.rolname::text, u.rolname::text, '' FROM pg_catalog.pg_auth_members m "
                    "JOIN pg_catalog.pg_roles g ON g.oid = m.roleid JOIN pg_catalog.pg_roles u ON u.oid = m.member "
                    "WHERE g.rolname = ANY(%s) "
                    "UNION ALL SELECT 'tablespace', spcname::text, '', '' FROM pg_catalog.pg_tablespace"
                    % (literal, literal), step="globals")
    roles, memberships, spaces = {}, set(), set()
    for row in rows:
        if len(row) != 4:
            continue
        if row[0] == "role":
            roles[row[1]] = {"superuser": row[2] == "true"}
        elif row[0] == "member":
            memberships.add((row[1], row[2]))
        else:
            spaces.add(row[1])
    return ServerRoles(roles, memberships, spaces, pg.user)


def role_plan(document, server, *, force=False, privileged=False):
    """``(statements, report)``: the SQL that gives ``server`` the document's roles, memberships and role settings.

    Creates the roles that are missing (never the bootstrap superuser or a predefined role), with
    their attributes, password hash, comment and settings; grants the memberships that involve a
    role it creates. An existing role is left as it is unless ``force``: then its attributes,
    password and settings are set to the document's and its missing memberships granted (never for
    the login the restore runs as). ``privileged`` (the backup is this server's own): superuser,
    CREATEROLE, REPLICATION, BYPASSRLS and memberships in DANGEROUS_ROLES are given too; otherwise they
    are left out and named in ``report["skipped"]``.
    """
    statements = []
    report = {"created_roles": [], "existing_roles": [], "altered_roles": [], "memberships_granted": [],
              "skipped": [], "passwords_set": []}
    made = set()
    for role in document["roles"]:
        name = role["name"]
        if name in server.roles:
            report["existing_roles"].append(name)
            if not force or role["builtin"] or name == server.admin:
                continue
            verb = "ALTER"
            report["altered_roles"].append(name)
        elif role["builtin"]:
            report["skipped"].append("role %s is the source server's bootstrap superuser or a predefined role: it is "
                                     "not created (objects it owned get the database's owner)" % name)
            continue
        else:
            verb = "CREATE"
            report["created_roles"].append(name)
            made.add(name)
        statements.append("%s ROLE %s WITH %s" % (verb, quote_ident(name), _role_options(role, privileged, report)))
        if role["password"]:
            report["passwords_set"].append(name)
        if verb == "CREATE" and role["comment"]:
            statements.append("COMMENT ON ROLE %s IS %s" % (quote_ident(name), quote_literal(role["comment"])))
        if verb == "ALTER":
            statements.append("ALTER ROLE %s RESET ALL" % quote_ident(name))
        for entry in role["settings"] or []:
            statements.append("ALTER ROLE %s SET %s" % (quote_ident(name), setting_clause(entry)))
    for member in document["memberships"]:
        pair = (member["role"], member["member"])
        roles_known = all(name in made or name in server.roles or _builtin(document, name) for name in pair)
        if pair in server.memberships or not roles_known:
            continue
        if not (made.intersection(pair) or (force and member["member"] != server.admin)):
            continue
        if member["role"] in DANGEROUS_ROLES and not privileged:
            report["skipped"].append("membership of %s in %s (it reaches the server's files or every table; given "
                                     "only when restoring this server's own backup)" % (member["member"], member["role"]))
            continue
        statements.append("GRANT %s TO %s%s" % (quote_ident(member["role"]), quote_ident(member["member"]),
                                                " WITH ADMIN OPTION" if member["admin"] else ""))
        report["memberships_granted"].append("%s in %s" % pair[::-1])
    return statements, report


def database_plan(document, database, server):
    """``(statements, applied)``: the SQL that gives a restored ``database`` the source's owner's settings in it, its
    ACL and its settings (``applied``: how many settings). Run as the admin after the data is in."""
    info = document["database_info"]
    target = quote_ident(database)
    statements = []
    applied = 0
    for entry in info["settings"] or []:
        statements.append("ALTER DATABASE %s SET %s" % (target, setting_clause(entry)))
        applied += 1
    for role in document["roles"]:
        if _present(document, server, role["name"]):
            for entry in role["database_settings"] or []:
                statements.append("ALTER ROLE %s IN DATABASE %s SET %s"
                                  % (quote_ident(role["name"]), target, setting_clause(entry)))
                applied += 1
    if info["acl"] is not None:
        statements.append("REVOKE ALL ON DATABASE %s FROM PUBLIC" % target)
        for item in info["acl"]:
            grantee = "PUBLIC" if item["grantee"] is None else quote_ident(item["grantee"])
            if item["grantee"] is not None and (item["grantee"] == info["owner"]
                                                or not _present(document, server, item["grantee"])):
                continue  # the owner's own rights come with ownership; a role not here gets nothing
            option = " WITH GRANT OPTION" if item["grantable"] else ""
            statements.append("GRANT %s ON DATABASE %s TO %s%s" % (item["privilege"], target, grantee, option))
    if info["connection_limit"] != -1:
        statements.append("ALTER DATABASE %s WITH CONNECTION LIMIT %d" % (target, info["connection_limit"]))
    if info["comment"]:
        statements.append("COMMENT ON DATABASE %s IS %s" % (target, quote_literal(info["comment"])))
    return statements, applied


def missing_tablespaces(document, server):
    """The tablespaces the backup used that the target server lacks (names)."""
    return sorted(space["name"] for space in document["tablespaces"] if space["name"] not in server.tablespaces)


def transaction(statements):
    """One script that runs ``statements`` all or none."""
    return "BEGIN;\n%s;\nCOMMIT;\n" % ";\n".join(statements) if statements else ""


def setting_clause(entry):
    """``name TO 'value'`` of a ``name=value`` entry of pg_db_role_setting (checked by globaldoc), list settings
    element by element (``search_path TO 'app', 'public'``), as pg_dump writes them."""
    name, value = entry.split("=", 1)
    parts = ".".join(quote_ident(part) if part != part.lower() else part for part in name.split("."))
    if name.lower() in LIST_SETTINGS:
        elements = split_list(value)
        return "%s TO %s" % (parts, ", ".join(quote_literal(item) for item in elements) if elements else "''")
    return "%s TO %s" % (parts, quote_literal(value))


def split_list(value):
    """The elements of a list setting's value (``app, "$user", "a""b"``), as PostgreSQL's SplitGUCList."""
    items = []
    index, size = 0, len(value)
    while index < size:
        while index < size and value[index].isspace():
            index += 1
        if index >= size:
            break
        if value[index] == '"':
            index += 1
            item = []
            while index < size:
                if value[index] == '"':
                    if index + 1 < size and value[index + 1] == '"':
                        item.append('"')
                        index += 2
                        continue
                    index += 1
                    break
                item.append(value[index])
                index += 1
            items.append("".join(item))
        else:
            start = index
            while index < size and value[index] != ",":
                index += 1
            items.append(value[start:index].strip())
        while index < size and value[index] != ",":
            index += 1
        index += 1  # past the comma
    return items


def _present(document, server, name):
    """Whether a role of the document is on the server once :func:`role_plan`'s SQL ran (it exists, or is made)."""
    return name in server.roles or not _builtin(document, name)


def _builtin(document, name):
    return any(role["name"] == name and role["builtin"] for role in document["roles"])


def _role_options(role, privileged, report):
    words = []
    for flag in globaldoc.ROLE_FLAGS:
        value = role[flag]
        if value and flag in globaldoc.PRIVILEGED_FLAGS and not privileged:
            report["skipped"].append("%s of role %s (given only when restoring this server's own backup)"
                                     % (flag.upper(), role["name"]))
            value = False
        words.append(("" if value else "NO") + flag.upper())
    words.append("CONNECTION LIMIT %d" % role["connection_limit"])
    if role["password"]:
        words.append("PASSWORD %s" % quote_literal(role["password"]))
    if role["valid_until"]:
        words.append("VALID UNTIL %s" % quote_literal(role["valid_until"]))
    return " ".join(words)
