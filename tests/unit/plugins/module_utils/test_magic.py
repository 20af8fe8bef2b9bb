# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every format's first bytes are defined once, in formats/magic.py, and a foreign start is named."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

import pytest

from ansible_collections.quankey.backup.plugins.module_utils.formats import crypto, magic, openssl_enc
from ansible_collections.quankey.backup.plugins.module_utils.errors import IntegrityError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "plugins", "module_utils"))


@pytest.mark.parametrize("prefix, name", [
    (b"PGDMP\x01\x0f\x00", "a plaintext pg_dump archive, not encrypted"),
    (b"QKBK\x01\x01\x14\x00", "quankey-backup format v1 (QKBK, aes-256-gcm)"),
    (b"Salted__12345678", "OpenSSL enc output (aes-256-cbc)"),
    (b"U2FsdGVkX19hYmNk", "base64 text (openssl enc -a)"),
    (b"U2FsdGVk", "base64 text (openssl enc -a)"),  # 8 bytes that end inside its magic
    (b"\x1f\x8b\x08\x00", "a gzip stream, not encrypted"),
    (b"\x28\xb5\x2f\xfd\x04", "a zstd stream, not encrypted"),
])
def test_known_starts_are_named(prefix, name):
    assert magic.identify(prefix).describe() == name


@pytest.mark.parametrize("prefix", [b"", b"hello world", b"U2Fs", b"Salted_X"])
def test_unknown_starts_are_none(prefix):
    assert magic.identify(prefix) is None


def test_each_reader_names_what_it_was_given_instead():
    gzip = b"\x1f\x8b\x08\x00" + bytes(60)
    with pytest.raises(IntegrityError, match="not a quankey-backup encrypted object: it is a gzip stream, not encrypted$"):
        crypto.read_header(gzip)
    with pytest.raises(IntegrityError, match="not a quankey-backup encrypted object: it is OpenSSL enc output "
                                             r"\(aes-256-cbc\), which its metadata does not record"):
        crypto.read_header(b"Salted__" + bytes(60))
    with pytest.raises(IntegrityError, match="it is a gzip stream, not encrypted; decompress it with gunzip"):
        openssl_enc.check_header(gzip)


@pytest.mark.parametrize("head, payload", [
    (b"PGDMP", True), (b"--\n-- PostgreSQL database dump\n", True), (b"--\n-", True), (b"SET x", True),
    (b"\\restrict k", True), (b"", False), (b"PGDM", False), (b"-- a comment", False), (b"\x1f\x8b\x08", False),
])
def test_a_backups_plaintext_starts_as_a_dump(head, payload):
    assert magic.is_payload(head) is payload


def test_no_magic_bytes_are_written_out_anywhere_else():
    """The literals live in magic.py only: every other engine file names them through it."""
    literals = re.compile(r"""b["'](PGDMP|QKBK|Salted__|U2FsdGVkX1|\\x1f\\x8b|\\x28\\xb5)""")
    found = []
    for folder, _dirs, names in os.walk(ROOT):
        for name in names:
            path = os.path.join(folder, name)
            if name.endswith(".py") and path != os.path.join(ROOT, "formats", "magic.py"):
                with open(path, encoding="utf-8") as handle:
                    found += ["%s: %s" % (os.path.relpath(path, ROOT), match.group(0))
                              for match in literals.finditer(handle.read())]
    assert found == []
