# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure helpers of the PostgreSQL layer: quoting, versions, error messages, TOC counting."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import postgres
from ansible_collections.quankey.backup.plugins.module_utils.errors import PostgresError

TOC = """;
; Archive created at 2026-11-26 06:23:04 UTC
;     dbname: d1
;
215; 1259 16385 TABLE public a postgres
216; 1259 16390 TABLE public b postgres
217; 1259 16394 VIEW public v postgres
218; 1259 16398 TABLE s c postgres
219; 1259 16400 TABLE DATA y postgres
3352; 0 16385 TABLE DATA public a postgres
3353; 0 16390 TABLE DATA public b postgres
"""


def test_toc_counts_tables_not_table_data_or_views():
    # 219 is a table in a schema named DATA: still a table
    assert postgres.count_toc_tables(TOC) == 4


def test_identifiers_and_literals_are_quoted():
    assert postgres.quote_ident('we"ird') == '"we""ird"'
    assert postgres.quote_literal("it's") == "'it''s'"


@pytest.mark.parametrize("text,expected", [
    ("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)", (15, 18)),
    ("pg_restore (PostgreSQL) 17.2", (17, 2)),
    ("pg_dump (PostgreSQL) 18devel", (18, 0)),
])
def test_client_versions_are_read(text, expected):
    assert postgres.parse_client_version(text) == expected


def test_unreadable_version_is_an_error():
    with pytest.raises(PostgresError):
        postgres.parse_client_version("something else")


@pytest.mark.parametrize("stderr,match", [
    ('psql: error: connection to server at "127.0.0.1", port 5432 failed: FATAL:  password authentication failed for user "q"',
     "rejected the password for user 'q'.*PGPASSWORD"),
    ('psql: error: connection to server at "127.0.0.1", port 5 failed: Connection refused\n\tIs the server running',
     r"connection refused\): is the server running\? check with `pg_isready -h 127.0.0.1 -p 5432`"),
    ('psql: error: connection to server failed: FATAL:  database "nope" does not exist', "database 'nope' does not exist.*DB_NAME"),
    ('FATAL:  role "ghost" does not exist', "role 'ghost' does not exist"),
    ("ERROR:  permission denied to create database", "may not create databases"),
    ("psql: error: something odd", "PostgreSQL error on 127.0.0.1:5432 .*something odd"),
])
def test_client_errors_become_one_helpful_line(stderr, match):
    import re
    message = postgres.explain_client_error(stderr, "127.0.0.1:5432", "q", "d")
    assert re.search(match, message), message
    assert "\n" not in message


def test_client_errors_name_a_module_option_when_the_value_came_from_one():
    message = postgres.explain_client_error("FATAL:  password authentication failed for user \"q\"", "h:5432", "q", "d",
                                            label=lambda field: {"db_password": "the login_password option"}[field])
    assert message.endswith("check the login_password option")
