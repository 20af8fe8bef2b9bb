# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The metadata signature (plugins/module_utils/signing.py), checked against docs/FORMAT.md's recipe computed here."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import hashlib
import hmac
import json

import pytest

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ansible_collections.quankey.backup.plugins.module_utils.formats import crypto, signing

MK = bytes(range(32))
SK = bytes(range(64, 96))
DOC = {"name": "db_backup_20250809_030000", "object_key": "backups/postgresql/h/db/db_backup_20250809_030000.encrypted",
       "size_bytes": 123, "checksum_sha256": "ab" * 32, "key_id": "qk1-0011223344556677", "table_count": 3,
       "envelope": {"type": "aes-256-gcm-hkdf-sha256", "salt": "c2FsdA=="}, "label": "caf\u00e9"}


def _spec_mac(key, document):
    """FORMAT.md, "Metadata signature", written out independently of signing.py."""
    body = dict((k, v) for k, v in document.items() if k != "signature")
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return base64.b64encode(hmac.new(key, b"quankey-backup/v1 metadata\x00" + text.encode("ascii"),
                                     hashlib.sha256).digest()).decode("ascii")


def test_the_derived_signing_key_and_the_signature_follow_the_spec():
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"", info=b"quankey-backup/v1 metadata-signing").derive(MK)
    assert signing.derive_signing_key(MK) == derived and derived != MK
    signed = signing.sign_metadata(DOC, crypto.key_id(MK), derived)
    assert signed["signature"] == {"algorithm": "hmac-sha256", "key_id": crypto.key_id(MK), "value": _spec_mac(derived, DOC)}
    assert "signature" not in DOC  # the input is not modified
    resigned = signing.sign_metadata(signed, "qks-x", SK)  # an old signature is replaced, not signed over
    assert resigned["signature"]["value"] == _spec_mac(SK, DOC)


def test_signing_key_ids_are_their_own_namespace():
    kid = signing.signing_key_id(SK)
    assert kid == "qks-" + hashlib.sha256(b"quankey-backup/v1 signing-key-id\x00" + SK).hexdigest()[:16]
    assert kid != crypto.key_id(SK).replace("qk1-", "qks-")


@pytest.mark.parametrize("field, value", [
    ("checksum_sha256", "cd" * 32), ("size_bytes", 124), ("key_id", "qk1-ffffffffffffffff"),
    ("envelope", {"type": "aes-256-gcm-hkdf-sha256", "salt": "b3RoZXI="}), ("object_key", "elsewhere"), ("extra", 1),
])
def test_any_change_to_the_document_invalidates_it(field, value):
    keys = {"qks-a": SK}
    signed = signing.sign_metadata(DOC, "qks-a", SK)
    assert signing.verify_metadata(signed, keys) == (signing.VALID, "qks-a")
    assert signing.verify_metadata(dict(signed, **{field: value}), keys) == (signing.INVALID, "qks-a")


def test_each_outcome():
    signed = signing.sign_metadata(DOC, "qks-a", SK)
    assert signing.verify_metadata(DOC, {"qks-a": SK}) == (signing.UNSIGNED, None)
    assert signing.verify_metadata(signed, {"qks-b": SK}) == (signing.UNKNOWN_KEY, "qks-a")
    assert signing.verify_metadata(signed, {"qks-a": MK}) == (signing.INVALID, "qks-a")
    for broken in ("nope", {"algorithm": "md5", "key_id": "qks-a", "value": "x"},
                   dict(signed["signature"], value="not base64!"), dict(signed["signature"], value="AAAA"),
                   dict(signed["signature"], key_id=5)):
        assert signing.verify_metadata(dict(signed, signature=broken), {"qks-a": SK})[0] == signing.INVALID


def test_messages_name_the_backup_and_hold_no_key():
    for outcome in (signing.INVALID, signing.UNKNOWN_KEY, signing.UNSIGNED):
        message = signing.describe_failure(outcome, "qks-a", "db_backup_1", "set X")
        assert "db_backup_1" in message and "\n" not in message
        assert base64.b64encode(SK).decode() not in message
    assert signing.describe_failure(signing.INVALID, None, "b", "x").startswith("metadata signature invalid for backup b")
