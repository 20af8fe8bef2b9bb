# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plain-SQL guard: what psql is given of a plain dump (plugins/module_utils/plainsql.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.formats import plainsql
from ansible_collections.quankey.backup.plugins.module_utils.errors import IntegrityError

# What pg_dump 15.18 writes for a table owned by postgres, with its restrict lines (abridged).
DUMP = b"""--
-- PostgreSQL database dump
--

\\restrict 5CqLqiTUylsdk41eORyunKYz8GnG4dC1JcZKzyyBsOwdHJdBCmZ7mbVbYYj5SWI

SET statement_timeout = 0;
SELECT pg_catalog.set_config('search_path', '', false);
CREATE FUNCTION public.f() RETURNS integer
    LANGUAGE plpgsql
    AS $_$
BEGIN
ALTER TABLE public.t OWNER TO postgres;
RETURN 1; END $_$;


ALTER FUNCTION public.f() OWNER TO postgres;

CREATE TABLE public."we;ird" (
    a text,
    b integer CHECK (b > 0)
);


ALTER TABLE public."we;ird" OWNER TO appowner;

CREATE UNLOGGED TABLE public.cache (k text);
CREATE VIEW public.v AS SELECT 1;

COPY public."we;ird" (a, b) FROM stdin;
ALTER TABLE public.t OWNER TO postgres;
\\! touch /tmp/pwned
a'b	1
\\.


ALTER TABLE ONLY public."we;ird"
    ADD CONSTRAINT c CHECK ((a <> 'x OWNER TO y;'::text));

\\unrestrict 5CqLqiTUylsdk41eORyunKYz8GnG4dC1JcZKzyyBsOwdHJdBCmZ7mbVbYYj5SWI
"""


def run(text, chunk=5, **kwargs):
    guard = plainsql.PlainSqlGuard(**kwargs)
    out = b"".join(guard.feed(text[pos:pos + chunk]) for pos in range(0, len(text), chunk)) + guard.finish()
    return out, guard


@pytest.mark.parametrize("chunk", [1, 5, 64, 100000])
def test_psql_gets_restricted_mode_first_and_the_dumps_own_restrict_lines_go(chunk):
    out, guard = run(DUMP, chunk, restrict_key="OurKey123")
    assert out.startswith(b"\\restrict OurKey123\n")
    assert b"\\restrict 5Cq" not in out and b"\\unrestrict" not in out
    assert out.replace(b"\\restrict OurKey123\n", b"") == DUMP.replace(
        b"\\restrict 5CqLqiTUylsdk41eORyunKYz8GnG4dC1JcZKzyyBsOwdHJdBCmZ7mbVbYYj5SWI\n", b"").replace(
        b"\\unrestrict 5CqLqiTUylsdk41eORyunKYz8GnG4dC1JcZKzyyBsOwdHJdBCmZ7mbVbYYj5SWI\n", b"")
    assert guard.dropped == 2 and guard.tables == 2


def test_under_the_restore_role_only_top_level_ownership_statements_go():
    out, guard = run(DUMP + b"SET SESSION AUTHORIZATION postgres;\nRESET SESSION AUTHORIZATION;\n", drop_ownership=True)
    assert b"ALTER FUNCTION public.f() OWNER TO postgres;" not in out
    assert b'ALTER TABLE public."we;ird" OWNER TO appowner;' not in out
    assert b"SESSION AUTHORIZATION" not in out
    # untouched: the same words inside a function body, COPY data and a string literal
    assert out.count(b"ALTER TABLE public.t OWNER TO postgres;") == 2
    assert b"CHECK ((a <> 'x OWNER TO y;'::text))" in out
    assert b"\\! touch /tmp/pwned\n" in out  # COPY data: psql sends it as data, never as a command
    assert guard.dropped == 6


@pytest.mark.parametrize("tail, where", [
    (b"INSERT INTO t VALUES ('unfinished\n", "a string"),
    (b"COPY public.t (a) FROM stdin;\nrow\n", "COPY data"),
    (b"CREATE FUNCTION g() RETURNS int AS $$ BEGIN\n", "a $-quoted body"),
    (b"/* a comment /* nested */ still\n", "a comment"),
    (b"SELECT 1", "a statement"),
    (b'SELECT "open\n', "a quoted name"),
])
def test_a_dump_cut_short_is_refused_at_its_end(tail, where):
    with pytest.raises(IntegrityError, match="ends inside %s: it is truncated" % re.escape(where)):
        run(b"SET a = 1;\n" + tail)


def test_escape_strings_dollar_tags_and_identifiers_with_dollars_are_read_as_psql_reads_them():
    text = (b"INSERT INTO t VALUES (E'it\\'s; ALTER TABLE x OWNER TO y;');\n"
            b"CREATE TABLE a$b (c int);\n"
            b"SELECT $1, $tag$ ; $notend$ $tag$;\n"
            b"ALTER TABLE a$b OWNER TO y;\n")
    out, guard = run(text, drop_ownership=True)
    assert out == text.replace(b"ALTER TABLE a$b OWNER TO y;\n", b"") and guard.tables == 1


def test_the_restrict_key_must_be_alphanumeric():
    with pytest.raises(ValueError):
        plainsql.PlainSqlGuard("bad key\n\\! id")


def test_the_owners_named_by_ownership_statements_are_counted_whether_dropped_or_not():
    for drop in (False, True):
        _out, guard = run(DUMP + b'ALTER SCHEMA "odd ""name""" OWNER TO "App Owner";\n', drop_ownership=drop)
        assert guard.owners == {"postgres": 1, "appowner": 1, "App Owner": 1}
