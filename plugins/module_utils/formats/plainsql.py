# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plain-SQL dumps (``pg_dump`` without ``-Fc``), made safe to feed to ``psql``.

A plain dump is a psql script, and psql runs backslash commands on the client:
``\\! <shell command>`` in a forged dump would run as the user restoring it. So
:class:`PlainSqlGuard` puts psql in restricted mode first (``\\restrict <random
key>``, psql 15.14/16.10/17.6 and later: every backslash command but
``\\unrestrict <that key>`` is refused, wherever it appears), and drops pg_dump's
own ``\\restrict``/``\\unrestrict`` lines. Under the restore role, which may not
give objects away, it also drops pg_dump's one-line ``ALTER ... OWNER TO ...;``
and ``SET/RESET SESSION AUTHORIZATION`` statements (ownership is settled after
the restore, as for custom archives).

It reads the script as psql does, just enough to tell statements apart: quotes
(``'...'``, ``E'...'``, ``"..."``, ``$tag$...$tag$``), comments, and ``COPY ...
FROM stdin`` data up to its ``\\.`` line, which passes through untouched. It
counts the tables the script creates (``CREATE TABLE`` statements), which stands
in for the table count of an archive's table of contents.

Pure: bytes in, bytes out, no I/O.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ..errors import IntegrityError

_NORMAL, _SQUOTE, _ESTRING, _DQUOTE, _DOLLAR, _COMMENT, _COPY = range(7)
_IDENT = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")
_TAG = re.compile(rb"\$([A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*)?\$")
_TABLE = re.compile(rb"\A\s*CREATE\s+(?:UNLOGGED\s+)?TABLE\s", re.IGNORECASE)
_COPY_FROM_STDIN = re.compile(rb"\A\s*COPY\s.*\sFROM\s+stdin\s*\Z", re.IGNORECASE | re.DOTALL)
# pg_dump's ownership statements: "ALTER <kind> <name> OWNER TO <role>;" on one line (no string literal in it), and
# SET/RESET SESSION AUTHORIZATION (--use-set-session-authorization).
_OWNERSHIP = re.compile(
    rb"\A(ALTER\s+(TABLE|SEQUENCE|VIEW|MATERIALIZED\s+VIEW|FOREIGN\s+TABLE|FUNCTION|PROCEDURE|AGGREGATE|TYPE|DOMAIN"
    rb"|SCHEMA|COLLATION|CONVERSION|TEXT\s+SEARCH\s+(CONFIGURATION|DICTIONARY)|OPERATOR(\s+CLASS|\s+FAMILY)?|LANGUAGE"
    rb"|LARGE\s+OBJECT|EVENT\s+TRIGGER|PUBLICATION|SUBSCRIPTION|SERVER|FOREIGN\s+DATA\s+WRAPPER|STATISTICS|DATABASE)"
    rb"\s[^']+\sOWNER\s+TO\s+(?P<owner>\"[^\"]+\"|[^\s;\"']+)"
    rb"|SET\s+SESSION\s+AUTHORIZATION\s+(\"[^\"]+\"|'[^']*'|[^\s;\"']+)|RESET\s+SESSION\s+AUTHORIZATION);\s*\Z")
_HEAD = 64  # bytes of a statement kept to classify it
_TAIL = 64


class PlainSqlGuard:
    """A filter over a plain-SQL dump for psql; ``feed`` bytes, ``finish`` at the end.

    ``restrict_key``: alphanumeric; the output starts with ``\\restrict <key>``.
    ``drop_ownership``: drop top-level one-line ownership statements (see the module).
    ``tables`` counts CREATE TABLE statements; ``dropped`` what was left out.
    """

    def __init__(self, restrict_key=None, drop_ownership=False):
        if restrict_key is not None and not re.match(r"\A[A-Za-z0-9]+\Z", restrict_key):
            raise ValueError("a psql restrict key is alphanumeric")
        self._prefix = ("\\restrict %s\n" % restrict_key).encode("ascii") if restrict_key else b""
        self._drop_ownership = drop_ownership
        self._pending = b""
        self._state = _NORMAL
        self._tag = b""
        self._depth = 0
        self._in_statement = False
        self._head = bytearray()
        self._tail = bytearray()
        self._statements = 0
        self.tables = 0
        self.dropped = 0
        self.owners = {}  # role -> ownership statements naming it (as pg_restore --list owners count entries)
        self.bytes_in = 0

    def feed(self, data):
        """The filtered bytes for ``data`` (whole lines; a partial last line waits for the next call)."""
        self.bytes_in += len(data)
        out = [self._prefix] if self._prefix else []
        self._prefix = b""
        lines = (self._pending + bytes(data)).split(b"\n")
        self._pending = lines.pop()
        for line in lines:
            out.append(self._line(line + b"\n"))
        return b"".join(out)

    def finish(self):
        """The last bytes; IntegrityError if the script ends inside a string, comment, COPY data or statement."""
        out = [self._prefix] if self._prefix else []
        self._prefix = b""
        if self._pending:
            out.append(self._line(self._pending))
            self._pending = b""
        if self._state != _NORMAL or self._in_statement:
            where = {_SQUOTE: "a string", _ESTRING: "a string", _DQUOTE: "a quoted name", _DOLLAR: "a $-quoted body",
                     _COMMENT: "a comment", _COPY: "COPY data"}.get(self._state, "a statement")
            raise IntegrityError("the plain-SQL dump ends inside %s: it is truncated" % where, step="decompress")
        return b"".join(out)

    # -- one line

    def _line(self, line):
        if self._state == _COPY:
            if line.rstrip(b"\r\n") == b"\\.":
                self._state = _NORMAL
            return line
        at_start = self._state == _NORMAL and not self._in_statement
        stripped = line.strip()
        if at_start and (stripped.startswith(b"\\restrict ") or stripped.startswith(b"\\unrestrict ")):
            self.dropped += 1
            return b""  # pg_dump's own: the guard's restricted mode already holds, with a key of its own
        before = self._statements
        self._scan(line)
        whole = at_start and self._statements == before + 1 and not self._in_statement and self._state == _NORMAL
        ownership = _OWNERSHIP.match(stripped) if whole else None
        if ownership and ownership.group("owner"):
            owner = ownership.group("owner").decode("utf-8", "replace")
            owner = owner[1:-1].replace('""', '"') if owner.startswith('"') else owner
            self.owners[owner] = self.owners.get(owner, 0) + 1
        if ownership and self._drop_ownership:
            self.dropped += 1
            return b""
        return line

    def _scan(self, line):
        """Follow psql's lexer through one line: quotes, comments and statement ends."""
        index, size = 0, len(line)
        while index < size:
            char = line[index]
            state = self._state
            if state == _NORMAL:
                index = self._normal(line, index, char)
                continue
            if state == _SQUOTE:
                if char == 0x27:  # '
                    if index + 1 < size and line[index + 1] == 0x27:
                        index += 1  # '' inside a string
                    else:
                        self._state = _NORMAL
            elif state == _ESTRING:
                if char == 0x5C:  # backslash escapes the next byte in E'...'
                    index += 1
                elif char == 0x27:
                    if index + 1 < size and line[index + 1] == 0x27:
                        index += 1
                    else:
                        self._state = _NORMAL
            elif state == _DQUOTE:
                if char == 0x22:
                    if index + 1 < size and line[index + 1] == 0x22:
                        index += 1
                    else:
                        self._state = _NORMAL
            elif state == _DOLLAR:
                if char == 0x24 and line.startswith(self._tag, index):
                    index += len(self._tag) - 1
                    self._state = _NORMAL
            elif state == _COMMENT:
                if line.startswith(b"*/", index):
                    self._depth -= 1
                    index += 1
                    if not self._depth:
                        self._state = _NORMAL
                elif line.startswith(b"/*", index):
                    self._depth += 1
                    index += 1
            self._keep(line[index:index + 1])
            index += 1

    def _normal(self, line, index, char):
        """One step in plain SQL (outside quotes); returns the next index."""
        if line.startswith(b"--", index):
            return len(line)  # a comment to the end of the line
        if line.startswith(b"/*", index):
            self._state, self._depth = _COMMENT, 1
            return index + 2
        if char == 0x3B:  # ;
            self._end_statement()
            return index + 1
        if char in (0x20, 0x09, 0x0A, 0x0D) and not self._in_statement:
            return index + 1
        if not self._in_statement:
            self._in_statement = True
            self._head = bytearray()
            self._tail = bytearray()
        previous = line[index - 1] if index else 0x20
        if char == 0x27:
            escape = previous in (0x45, 0x65) and (index < 2 or line[index - 2] not in _IDENT)
            self._state = _ESTRING if escape else _SQUOTE
        elif char == 0x22:
            self._state = _DQUOTE
        elif char == 0x24 and previous not in _IDENT:
            match = _TAG.match(line, index)
            if match:
                self._state, self._tag = _DOLLAR, match.group(0)
                self._keep(match.group(0))
                return match.end()
        self._keep(line[index:index + 1])
        return index + 1

    def _keep(self, text):
        if not self._in_statement or not text:
            return
        if len(self._head) < _HEAD:
            self._head += text[:_HEAD - len(self._head)]
        self._tail += text
        if len(self._tail) > _TAIL:
            del self._tail[:len(self._tail) - _TAIL]

    def _end_statement(self):
        if not self._in_statement:
            return  # an empty statement (";" alone)
        self._statements += 1
        self._in_statement = False
        head, tail = bytes(self._head), bytes(self._tail)
        if _TABLE.match(head):
            self.tables += 1
        if head[:4].upper() == b"COPY" and _COPY_FROM_STDIN.match(head if len(head) < _HEAD else b"COPY " + tail):
            self._state = _COPY
