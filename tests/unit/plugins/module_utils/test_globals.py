# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A backup's globals: the document's checks (formats/globaldoc.py) and the SQL a restore makes of it
(adapters/pgglobals.py). The SQL is run for real on a server in tests/functional/test_globals.py."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import gzip
import json

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.adapters import pgglobals
from ansible_collections.quankey.backup.plugins.module_utils.catalog import documents, layout
from ansible_collections.quankey.backup.plugins.module_utils.errors import IntegrityError
from ansible_collections.quankey.backup.plugins.module_utils.formats import globaldoc

SCRAM = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$c3RvcmVka2V5c3RvcmVka2V5c3RvcmVka2V5c3RvcmVr=:c2VydmVya2V5c2VydmVya2V5c2VydmVy="


def _role(name, **changes):
    role = {"name": name, "builtin": False, "superuser": False, "inherit": True, "createrole": False,
            "createdb": False, "login": False, "replication": False, "bypassrls": False, "connection_limit": -1,
            "valid_until": None, "password": None, "settings": None, "database_settings": None, "comment": None}
    role.update(changes)
    return role


def _document(**changes):
    document = {
        "format": globaldoc.FORMAT, "version": globaldoc.VERSION, "host": "db1", "database": "app",
        "name": "app_backup_20260101_030000", "server_version": "15.8", "passwords": "included", "warnings": [],
        "database_info": {"name": "app", "owner": "app_owner", "connection_limit": -1,
                          "acl": [{"grantee": None, "privilege": "TEMPORARY", "grantable": False},
                                  {"grantee": "app_owner", "privilege": "CONNECT", "grantable": False},
                                  {"grantee": "reader", "privilege": "CONNECT", "grantable": False}],
                          "settings": ["work_mem=8MB"], "comment": None},
        "roles": [_role("app", login=True, password=SCRAM, settings=["statement_timeout=5s"],
                        database_settings=["search_path=app, \"$user\", public"]),
                  _role("app_owner"), _role("reader", connection_limit=5),
                  _role("pg_read_all_data", builtin=True)],
        "memberships": [{"role": "app_owner", "member": "app", "admin": False, "inherit": None, "set": None},
                        {"role": "pg_read_all_data", "member": "reader", "admin": False, "inherit": None,
                         "set": None}],
        "tablespaces": [{"name": "fast", "owner": "app_owner", "location": "/srv/fast", "options": None,
                         "default": False}],
    }
    document.update(changes)
    return document


def _server(roles=(), memberships=(), tablespaces=("pg_default", "pg_global"), admin="postgres"):
    return pgglobals.ServerRoles(dict((name, {"superuser": False}) for name in roles), set(memberships),
                                 set(tablespaces), admin)


def test_a_document_survives_encoding_and_its_summary_counts_it():
    document = _document()
    assert globaldoc.decode(globaldoc.encode(document)) == document
    summary = globaldoc.summary(document, "k.globals", 10, "a" * 64)
    assert summary == {"object_key": "k.globals", "size_bytes": 10, "checksum_sha256": "a" * 64, "roles": 4,
                       "memberships": 2, "tablespaces": 1, "passwords": "included"}
    assert globaldoc.check_summary(summary)
    assert not globaldoc.check_summary(dict(summary, passwords="maybe"))
    assert not globaldoc.check_summary(dict(summary, extra=1))


@pytest.mark.parametrize("damage, problem", [
    (lambda d: d.update(format="pg_dumpall"), "its format is 'pg_dumpall'"),
    (lambda d: d.update(version=2), "its version is 2"),
    (lambda d: d.update(sql="DROP TABLE x"), "unknown field(s) sql"),
    (lambda d: d["roles"][0].update(password="plain text"), "roles[0] has an invalid password"),
    (lambda d: d["roles"][0].update(settings=["x; DROP ROLE app=1"]), "roles[0] has an invalid settings"),
    (lambda d: d["roles"][0].update(name="x" * 64), "roles[0] has an invalid name"),
    (lambda d: d["roles"][0].update(login="yes"), "roles[0] has an invalid login"),
    (lambda d: d["roles"][0].update(valid_until="now(); DROP"), "roles[0] has an invalid valid_until"),
    (lambda d: d["roles"].append(_role("app")), "role 'app' is listed twice"),
    (lambda d: d["memberships"].append({"role": "ghost", "member": "app", "admin": False, "inherit": None,
                                        "set": None}), "names a role the document does not hold"),
    (lambda d: d["database_info"]["acl"].append({"grantee": "app", "privilege": "ALL; DROP", "grantable": False}),
     "database_info has an invalid acl"),
    (lambda d: d["database_info"].update(owner="nobody"), "the database's owner 'nobody' is not among its roles"),
    (lambda d: d.update(passwords="omitted"), "passwords were omitted yet holds some"),
])
def test_a_document_of_the_wrong_form_is_refused_naming_what_is_wrong(damage, problem):
    document = _document()
    damage(document)
    with pytest.raises(IntegrityError, match="is not a globals document quankey-backup wrote") as caught:
        globaldoc.decode(globaldoc.encode(document), "the globals object x")
    assert problem in str(caught.value)
    assert "the globals object x" in str(caught.value)


def test_bytes_that_are_not_a_globals_object_are_refused():
    with pytest.raises(IntegrityError, match="is not a gzip stream"):
        globaldoc.decode(b"{}")
    with pytest.raises(IntegrityError, match="not valid JSON"):
        globaldoc.decode(gzip.compress(b"\xff{"))
    with pytest.raises(IntegrityError, match="not a JSON object"):
        globaldoc.decode(gzip.compress(json.dumps([1]).encode()))


def test_a_document_of_another_backup_is_refused():
    document = _document()
    globaldoc.check_binding(document, "db1", "app", "app_backup_20260101_030000")
    with pytest.raises(IntegrityError, match="belongs to backup db1/app/app_backup_20260101_030000, not "
                                             "db2/app/app_backup_20260101_030000: it was swapped"):
        globaldoc.check_binding(document, "db2", "app", "app_backup_20260101_030000")


def test_the_metadata_accepts_a_globals_summary_and_refuses_a_malformed_one():
    metadata = documents.build_metadata(
        {"db_name": "app", "retention_days": 30, "host": "db1", "storage_class": "STANDARD", "compression": "zstd"},
        basename="app_backup_20260101_030000", when=layout.parse_timestamp("20260101_030000"), object_key="o",
        size_bytes=1, checksum="b" * 64, envelope={}, key_id="k", table_count=1, dump_bytes=1, duration=1.0,
        server_version="15.8", pg_dump_version="15.8", database_settings=None, encryption_name="aes-256-gcm",
        globals_summary=globaldoc.summary(_document(), "o.globals", 5, "c" * 64))
    data = documents.encode_metadata(metadata)
    assert documents.decode_metadata(data, "m")["globals"]["roles"] == 4
    metadata["globals"]["object_key"] = ""
    with pytest.raises(IntegrityError, match="invalid globals"):
        documents.decode_metadata(documents.encode_metadata(metadata), "m")


def test_the_globals_object_lives_beside_the_data_object():
    assert layout.globals_key("p/backups/postgresql/db1/app/app_backup_20260101_030000.encrypted") == \
        "p/backups/postgresql/db1/app/app_backup_20260101_030000.globals"


def test_a_globals_object_without_metadata_is_an_orphan_and_one_with_it_is_not():
    base = "backups/postgresql/db1/app/"
    records, orphans = layout.records_from_listing(
        "", [{"key": "metadata/db1/app/app_backup_20260101_030000.meta", "size": 1}],
        [{"key": base + "app_backup_20260101_030000.encrypted", "size": 9},
         {"key": base + "app_backup_20260101_030000.globals", "size": 3},
         {"key": base + "app_backup_20260102_030000.globals", "size": 3}])
    assert [record.basename for record in records] == ["app_backup_20260101_030000"]
    assert [item["key"] for item in orphans] == [base + "app_backup_20260102_030000.globals"]


def test_missing_roles_are_created_with_their_attributes_password_settings_and_memberships():
    statements, report = pgglobals.role_plan(_document(), _server(), privileged=True)
    assert report["created_roles"] == ["app", "app_owner", "reader"]
    assert report["existing_roles"] == [] and report["passwords_set"] == ["app"]
    assert statements[0] == ("CREATE ROLE \"app\" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION "
                             "NOBYPASSRLS CONNECTION LIMIT -1 PASSWORD '%s'" % SCRAM)
    assert "ALTER ROLE \"app\" SET statement_timeout TO '5s'" in statements
    assert "GRANT \"app_owner\" TO \"app\"" in statements
    assert "GRANT \"pg_read_all_data\" TO \"reader\"" in statements  # this server's own backup
    assert not any("pg_read_all_data\" WITH" in statement or "CREATE ROLE \"pg_read_all_data\"" in statement
                   for statement in statements)
    assert any("CONNECTION LIMIT 5" in statement for statement in statements if "\"reader\"" in statement)


def test_existing_roles_are_left_as_they_are_without_force_and_set_with_it():
    server = _server(roles=("app", "app_owner", "reader", "pg_read_all_data", "postgres"),
                     memberships=[("app_owner", "app")])
    statements, report = pgglobals.role_plan(_document(), server)
    assert statements == [] and report["created_roles"] == []
    assert report["existing_roles"] == ["app", "app_owner", "reader", "pg_read_all_data"]
    statements, report = pgglobals.role_plan(_document(), server, force=True, privileged=True)
    assert report["altered_roles"] == ["app", "app_owner", "reader"]
    assert statements[0].startswith("ALTER ROLE \"app\" WITH NOSUPERUSER")
    assert "ALTER ROLE \"app\" RESET ALL" in statements
    assert "GRANT \"pg_read_all_data\" TO \"reader\"" in statements
    assert "GRANT \"app_owner\" TO \"app\"" not in statements  # it is there already


def test_the_login_the_restore_runs_as_is_never_changed_even_with_force():
    document = _document()
    document["roles"].append(_role("postgres", superuser=True, login=True))
    statements, report = pgglobals.role_plan(document, _server(roles=("postgres",)), force=True, privileged=True)
    assert not any("\"postgres\"" in statement for statement in statements)
    assert "postgres" in report["existing_roles"] and "postgres" not in report["altered_roles"]


def test_another_servers_backup_gets_no_privileged_attribute_or_membership():
    document = _document()
    document["roles"][1].update(superuser=True, bypassrls=True)
    statements, report = pgglobals.role_plan(document, _server(), privileged=False)
    create = [statement for statement in statements if statement.startswith("CREATE ROLE \"app_owner\"")][0]
    assert "NOSUPERUSER" in create and "NOBYPASSRLS" in create
    assert "GRANT \"pg_read_all_data\" TO \"reader\"" not in statements
    assert any("SUPERUSER of role app_owner" in item for item in report["skipped"])
    assert any("membership of reader in pg_read_all_data" in item for item in report["skipped"])


def test_a_builtin_role_missing_here_is_not_created_and_said_so():
    document = _document()
    document["roles"].append(_role("admin", builtin=True, superuser=True, login=True))
    statements, report = pgglobals.role_plan(document, _server(), privileged=True)
    assert not any("\"admin\"" in statement for statement in statements)
    assert any(item.startswith("role admin is the source server's bootstrap superuser") for item in report["skipped"])


def test_names_and_values_are_quoted_never_run():
    document = _document()
    document["roles"][0].update(name='a"; DROP ROLE x; --', comment="it's \\ fine")
    document["memberships"][0]["member"] = 'a"; DROP ROLE x; --'
    document["roles"][0]["settings"] = ["application_name=x'; DROP ROLE y; --"]
    statements, _report = pgglobals.role_plan(document, _server(), privileged=True)
    assert statements[0].startswith('CREATE ROLE "a""; DROP ROLE x; --" WITH')
    assert "COMMENT ON ROLE \"a\"\"; DROP ROLE x; --\" IS E'it''s \\\\ fine'" in statements
    assert "ALTER ROLE \"a\"\"; DROP ROLE x; --\" SET application_name TO 'x''; DROP ROLE y; --'" in statements


@pytest.mark.parametrize("entry, clause", [
    ("search_path=app, \"$user\", public", "search_path TO 'app', '$user', 'public'"),
    ("search_path=\"a,b\", \"c\"\"d\"", "search_path TO 'a,b', 'c\"d'"),
    ("search_path=", "search_path TO ''"),
    ("work_mem=8MB", "work_mem TO '8MB'"),
    ("myapp.Tenant=x=y", "myapp.\"Tenant\" TO 'x=y'"),
])
def test_settings_are_written_as_pg_dump_writes_them(entry, clause):
    assert pgglobals.setting_clause(entry) == clause


def test_the_database_gets_its_settings_acl_and_the_roles_settings_in_it():
    statements, applied = pgglobals.database_plan(_document(), "app__restoring_1", _server())
    assert applied == 2
    assert statements == [
        "ALTER DATABASE \"app__restoring_1\" SET work_mem TO '8MB'",
        "ALTER ROLE \"app\" IN DATABASE \"app__restoring_1\" SET search_path TO 'app', '$user', 'public'",
        "REVOKE ALL ON DATABASE \"app__restoring_1\" FROM PUBLIC",
        "GRANT TEMPORARY ON DATABASE \"app__restoring_1\" TO PUBLIC",
        "GRANT CONNECT ON DATABASE \"app__restoring_1\" TO \"reader\"",
    ]


def test_a_database_with_the_default_acl_keeps_it():
    document = _document()
    document["database_info"]["acl"] = None
    statements, _applied = pgglobals.database_plan(document, "d", _server())
    assert not any("GRANT" in statement or "REVOKE" in statement for statement in statements)


def test_tablespaces_missing_here_are_named():
    assert pgglobals.missing_tablespaces(_document(), _server()) == ["fast"]
    assert pgglobals.missing_tablespaces(_document(), _server(tablespaces=("fast",))) == []


def test_the_statements_run_all_or_none():
    assert pgglobals.transaction([]) == ""
    assert pgglobals.transaction(["A", "B"]) == "BEGIN;\nA;\nB;\nCOMMIT;\n"


def test_a_clear_text_password_is_never_a_hash():
    assert globaldoc.is_password_hash(SCRAM)
    assert globaldoc.is_password_hash("md5" + "0" * 32)
    assert not globaldoc.is_password_hash("hunter2")
    document = copy.deepcopy(_document())
    document["roles"][0]["password"] = "md5" + "0" * 31
    with pytest.raises(IntegrityError, match="invalid password"):
        globaldoc.check(document)
