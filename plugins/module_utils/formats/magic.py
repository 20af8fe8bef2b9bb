# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The first bytes of every format the engine reads or writes, in one place, and what a foreign start is called.

A reader that finds bytes that are not its own names what they are instead (:func:`describe`), so an
error says "it is a gzip stream, not encrypted" rather than "bad magic". Pure: no I/O.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

PG_DUMP = b"PGDMP"  # pg_dump's custom-format archive (-Fc)
# Starts of a plain-SQL dump (pg_dump without -Fc): its header comment, its first SET when written without
# comments, or the \restrict line pg_dump 15.14+ puts near the top.
SQL_STARTS = (b"--\n-- PostgreSQL database dump", b"SET statement_timeout", b"SET ", b"\\restrict ")
QUANKEY = b"QKBK"  # a format v1/v2 data object (crypto.py)
OPENSSL_SALTED = b"Salted__"  # openssl enc -salt (openssl_enc.py)
OPENSSL_BASE64 = b"U2FsdGVkX1"  # base64 of b"Salted__": the output of openssl enc -a
GZIP = b"\x1f\x8b"  # RFC 1952; the third byte is the method, 08 (deflate) for every gzip in use
GZIP_DEFLATE = GZIP + b"\x08"
ZSTD = b"\x28\xb5\x2f\xfd"  # a zstd frame (RFC 8878)


class Start:
    """A known start of an object: its bytes, what it is called, whether it is encrypted, and how to open it."""

    def __init__(self, magic, name, encrypted, hint):
        self.magic = magic
        self.name = name
        self.encrypted = encrypted
        self.hint = hint

    def __repr__(self):
        return "Start(%r)" % (self.magic,)

    def matches(self, prefix):
        """Whether ``prefix`` starts so; a prefix of at least 8 bytes that ends inside a longer magic matches too."""
        return prefix.startswith(self.magic) or (8 <= len(prefix) < len(self.magic) and self.magic.startswith(prefix))

    def describe(self):
        """'a gzip stream, not encrypted', 'OpenSSL enc output (aes-256-cbc)'."""
        return self.name if self.encrypted else "%s, not encrypted" % self.name


# First match wins.
STARTS = (
    Start(PG_DUMP, "a plaintext pg_dump archive", False, "restore it as is"),
    Start(QUANKEY, "quankey-backup format v1 (QKBK, aes-256-gcm)", True, "decrypt it with the format-v1 reader"),
    Start(OPENSSL_SALTED, "OpenSSL enc output (aes-256-cbc)", True, "decrypt it as aes-256-cbc"),
    Start(OPENSSL_BASE64, "base64 text (openssl enc -a)", True, "decode it with base64 -d first"),
    Start(GZIP, "a gzip stream", False, "decompress it with gunzip"),
    Start(ZSTD, "a zstd stream", False, "decompress it with zstd -d"),
)


def identify(prefix):
    """The :class:`Start` an object's first bytes are, or None when they are none this engine knows."""
    prefix = bytes(prefix)
    for start in STARTS:
        if start.matches(prefix):
            return start
    return None


def is_payload(head):
    """Whether ``head`` (not empty) starts a backup's plaintext: a pg_dump archive, or a plain-SQL dump (a head
    shorter than one of SQL_STARTS matches when it is the start of it)."""
    head = bytes(head)
    return bool(head) and (head.startswith(PG_DUMP) or any(head.startswith(start[:len(head)]) for start in SQL_STARTS))
