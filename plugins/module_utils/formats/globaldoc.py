# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A backup's globals: the cluster-wide things its database needs that pg_dump leaves out (docs/FORMAT.md, "Globals").

Roles (attributes, password hashes when they could be read, settings), memberships, the database's
owner, ACL and settings, and the tablespaces it uses, as one JSON document; stored gzip-compressed
and encrypted under the backup's own key, next to its data object, its SHA-256 in the signed metadata.

Reading is strict: every field is checked for its type and form before anything is made of it, so
a restore only ever turns checked names and values into SQL (adapters/pgglobals.py), never text
from the backup. Pure: no I/O.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import gzip
import io
import json
import re

from ..errors import IntegrityError

FORMAT = "quankey-globals"
VERSION = 1
MAX_BYTES = 64 * 1024 * 1024  # a globals document this big (decompressed) is not one we wrote
PASSWORDS = ("included", "omitted")
DATABASE_PRIVILEGES = ("CONNECT", "CREATE", "TEMPORARY")
NAME_LIMIT = 63  # PostgreSQL's NAMEDATALEN - 1, in bytes
ROLE_FLAGS = ("superuser", "inherit", "createrole", "createdb", "login", "replication", "bypassrls")
# The attributes a role may not get from a backup made elsewhere (adapters/pgglobals.py): each can reach past its
# database (the server's files, every table, other roles).
PRIVILEGED_FLAGS = ("superuser", "createrole", "replication", "bypassrls")

_PASSWORD_RE = re.compile(r"\A(SCRAM-SHA-256\$[0-9]+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+|md5[0-9a-f]{32})\Z")
_SETTING_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)*=")
_VALID_UNTIL_RE = re.compile(r"\A(infinity|-infinity|\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z)\Z")
_VERSION_RE = re.compile(r"\A\d+(\.\d+)?\Z")


def encode(document):
    """The stored plaintext of a globals document: canonical JSON, gzip-compressed (mtime 0)."""
    text = json.dumps(document, indent=None, sort_keys=True, separators=(",", ":")) + "\n"
    return gzip.compress(text.encode("utf-8"), mtime=0)


def decode(data, where="the globals object"):
    """The checked document of a globals object's plaintext; IntegrityError names ``where`` and what is wrong."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(bytes(data))) as stream:
            text = stream.read(MAX_BYTES + 1)
    except (OSError, EOFError) as exc:
        raise IntegrityError("%s is not a gzip stream (%s): it was not written by quankey-backup" % (where, exc))
    if len(text) > MAX_BYTES:
        raise IntegrityError("%s holds more than %d bytes: it was not written by quankey-backup" % (where, MAX_BYTES))
    try:
        document = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityError("%s is not valid JSON (%s)" % (where, exc))
    check(document, where)
    return document


def summary(document, object_key, size_bytes, checksum):
    """The metadata's ``globals`` field: where the object is, its checksum, and what it holds (counts)."""
    return {"object_key": object_key, "size_bytes": size_bytes, "checksum_sha256": checksum,
            "roles": len(document["roles"]), "memberships": len(document["memberships"]),
            "tablespaces": len(document["tablespaces"]), "passwords": document["passwords"]}


def check_summary(value):
    """Whether a metadata ``globals`` field has the form :func:`summary` gives."""
    return (isinstance(value, dict) and set(value) == {"object_key", "size_bytes", "checksum_sha256", "roles",
                                                       "memberships", "tablespaces", "passwords"}
            and _is_text(value["object_key"]) and _is_count(value["size_bytes"])
            and isinstance(value["checksum_sha256"], str) and re.match(r"\A[0-9a-f]{64}\Z", value["checksum_sha256"])
            is not None and all(_is_count(value[field]) for field in ("roles", "memberships", "tablespaces"))
            and value["passwords"] in PASSWORDS)


def check_binding(document, host, database, name, where="the globals object"):
    """IntegrityError unless the document says it belongs to this backup (host, database, name)."""
    found = (document["host"], document["database"], document["name"])
    if found != (host, database, name):
        raise IntegrityError("%s belongs to backup %s/%s/%s, not %s/%s/%s: it was swapped"
                             % ((where,) + found + (host, database, name)))


# -- the checks -------------------------------------------------------------------------------------


def check(document, where="the globals object"):
    """IntegrityError unless ``document`` is a globals document of this version, every field of the right form."""
    problem = _problem(document)
    if problem:
        raise IntegrityError("%s is not a globals document quankey-backup wrote: %s" % (where, problem))


def _problem(document):
    if not isinstance(document, dict):
        return "not a JSON object"
    if document.get("format") != FORMAT:
        return "its format is %r" % (document.get("format"),)
    if document.get("version") != VERSION:
        return "its version is %r; this quankey-backup reads version %d: upgrade it" % (document.get("version"), VERSION)
    problem = _fields(document, {"format": None, "version": None, "host": _is_text, "database": _is_name,
                                 "name": _is_text, "server_version": _is_version,
                                 "passwords": lambda value: value in PASSWORDS, "database_info": _is_dict,
                                 "roles": _is_list, "memberships": _is_list, "tablespaces": _is_list,
                                 "warnings": _texts})
    if problem:
        return problem
    problem = _fields(document["database_info"], {
        "name": _is_name, "owner": _is_name, "connection_limit": _is_limit, "acl": _acl, "settings": _settings,
        "comment": _optional_text}, "database_info")
    if problem:
        return problem
    names = set()
    for index, role in enumerate(document["roles"]):
        problem = _fields(role, dict([("name", _is_name), ("builtin", _is_bool)]
                                     + [(flag, _is_bool) for flag in ROLE_FLAGS]
                                     + [("connection_limit", _is_limit), ("valid_until", _valid_until),
                                        ("password", _password), ("settings", _settings),
                                        ("database_settings", _settings), ("comment", _optional_text)]),
                          "roles[%d]" % index)
        if problem:
            return problem
        if role["name"] in names:
            return "role %r is listed twice" % role["name"]
        names.add(role["name"])
    if document["passwords"] == "omitted" and any(role["password"] for role in document["roles"]):
        return "it says passwords were omitted yet holds some"
    for index, member in enumerate(document["memberships"]):
        problem = _fields(member, {"role": _is_name, "member": _is_name, "admin": _is_bool,
                                   "inherit": _optional_bool, "set": _optional_bool}, "memberships[%d]" % index)
        if problem:
            return problem
        if member["role"] not in names or member["member"] not in names:
            return "memberships[%d] names a role the document does not hold" % index
    for index, space in enumerate(document["tablespaces"]):
        problem = _fields(space, {"name": _is_name, "owner": _is_name, "location": _optional_text,
                                  "options": _settings, "default": _is_bool}, "tablespaces[%d]" % index)
        if problem:
            return problem
    owner = document["database_info"]["owner"]
    if owner not in names:
        return "the database's owner %r is not among its roles" % owner
    return None


def _fields(value, checks, where="the document"):
    if not isinstance(value, dict):
        return "%s is not a JSON object" % where
    missing = sorted(set(checks) - set(value))
    unknown = sorted(set(value) - set(checks))
    if missing or unknown:
        return "%s %s" % (where, "lacks %s" % ", ".join(missing) if missing else "has unknown field(s) %s"
                          % ", ".join(unknown))
    for field, test in checks.items():
        if test is not None and not test(value[field]):
            return "%s has an invalid %s" % (where, field)
    return None


def _is_text(value):
    return isinstance(value, str) and value != "" and "\x00" not in value


def _is_name(value):
    return _is_text(value) and len(value.encode("utf-8")) <= NAME_LIMIT


def _optional_text(value):
    return value is None or (isinstance(value, str) and "\x00" not in value)


def _is_bool(value):
    return isinstance(value, bool)


def _optional_bool(value):
    return value is None or isinstance(value, bool)


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_limit(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= -1


def _is_dict(value):
    return isinstance(value, dict)


def _is_list(value):
    return isinstance(value, list)


def _texts(value):
    return isinstance(value, list) and all(isinstance(item, str) and "\x00" not in item for item in value)


def _is_version(value):
    return isinstance(value, str) and _VERSION_RE.match(value) is not None


def _valid_until(value):
    return value is None or (isinstance(value, str) and _VALID_UNTIL_RE.match(value) is not None)


def is_password_hash(value):
    """Whether ``value`` is a password hash PostgreSQL stores (SCRAM-SHA-256 verifier or md5), never a clear text."""
    return isinstance(value, str) and _PASSWORD_RE.match(value) is not None


def _password(value):
    return value is None or is_password_hash(value)


def _settings(value):
    """``name=value`` entries, as pg_db_role_setting and spcoptions hold them."""
    return value is None or (isinstance(value, list) and all(
        isinstance(item, str) and "\x00" not in item and _SETTING_RE.match(item) is not None for item in value))


def _acl(value):
    if value is None:
        return True
    return isinstance(value, list) and all(
        isinstance(item, dict) and set(item) == {"grantee", "privilege", "grantable"}
        and (item["grantee"] is None or _is_name(item["grantee"])) and item["privilege"] in DATABASE_PRIVILEGES
        and isinstance(item["grantable"], bool) for item in value)
