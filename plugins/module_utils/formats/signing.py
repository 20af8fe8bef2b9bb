# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Signed metadata: an HMAC-SHA256 over the whole metadata document (docs/FORMAT.md, "Metadata signature").

The checksum, size, object key, key id and envelope of a backup are only as
trustworthy as its metadata object, and the bucket is writable by every backup
host. The signature is made with a key the bucket does not hold: the signing key
(``BACKUP_SIGNING_KEY``) or, when none is set, a key derived from the active
master key (``BACKUP_ENCRYPTION_KEY``) by HKDF. Someone who can write to the
bucket but holds neither cannot swap an object and its checksum unnoticed.

Pure: no S3, no settings. :mod:`keys` decides which keys sign and verify.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import binascii
import hashlib
import hmac
import json

from . import crypto

SIGNATURE_FIELD = "signature"
ALGORITHM = "hmac-sha256"
SIGNING_KEY_ID_PREFIX = "qks-"
SIGNATURE_SIZE = 32

_DERIVE_INFO = b"quankey-backup/v1 metadata-signing"
_SIGNING_KEY_ID_LABEL = b"quankey-backup/v1 signing-key-id\x00"
_MESSAGE_PREFIX = b"quankey-backup/v1 metadata\x00"

# Outcomes of verify_metadata.
VALID, INVALID, UNSIGNED, UNKNOWN_KEY = "valid", "invalid", "unsigned", "unknown key"


def derive_signing_key(master_key):
    """The signing key derived from a master key (HKDF-SHA256, no salt); its key id is the master key's."""
    crypto.require_cryptography()
    master_key = crypto.check_key(master_key, "master key")
    return crypto.hkdf(master_key, b"", _DERIVE_INFO)


def signing_key_id(signing_key):
    """Non-secret id of an explicit signing key: ``qks-`` + 16 hex chars of SHA-256(label + key)."""
    signing_key = crypto.check_key(signing_key, "signing key")
    return SIGNING_KEY_ID_PREFIX + hashlib.sha256(_SIGNING_KEY_ID_LABEL + signing_key).hexdigest()[:16]


def signed_bytes(metadata):
    """The bytes the signature covers: a fixed prefix and the canonical JSON of every field but ``signature``."""
    body = dict((field, value) for field, value in metadata.items() if field != SIGNATURE_FIELD)
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return _MESSAGE_PREFIX + text.encode("ascii")


def _mac(signing_key, metadata):
    return hmac.new(signing_key, signed_bytes(metadata), hashlib.sha256).digest()


def sign_metadata(metadata, key_id, signing_key):
    """A copy of ``metadata`` with its ``signature`` field set (any old signature replaced)."""
    signing_key = crypto.check_key(signing_key, "signing key")
    signed = dict((field, value) for field, value in metadata.items() if field != SIGNATURE_FIELD)
    signed[SIGNATURE_FIELD] = {
        "algorithm": ALGORITHM,
        "key_id": key_id,
        "value": base64.b64encode(_mac(signing_key, signed)).decode("ascii"),
    }
    return signed


def signature_key_id(metadata):
    """The key id a metadata document says it was signed with, or None (unsigned or malformed)."""
    signature = metadata.get(SIGNATURE_FIELD) if isinstance(metadata, dict) else None
    if isinstance(signature, dict) and isinstance(signature.get("key_id"), str):
        return signature["key_id"]
    return None


def verify_metadata(metadata, signing_keys):
    """Check a metadata document's signature with ``signing_keys`` ({key id: 32-byte key}).

    Returns ``(outcome, key id or None)``; outcome is VALID, UNSIGNED (no
    signature field), UNKNOWN_KEY (signed with a key not given) or INVALID (the
    signature is malformed or does not match: the document was changed after it
    was signed). Never raises for what the document holds.
    """
    if SIGNATURE_FIELD not in metadata:
        return UNSIGNED, None
    signature = metadata[SIGNATURE_FIELD]
    if not isinstance(signature, dict) or signature.get("algorithm") != ALGORITHM:
        return INVALID, None
    kid = signature.get("key_id")
    value = signature.get("value")
    if not isinstance(kid, str) or not isinstance(value, str):
        return INVALID, None
    if kid not in signing_keys:
        return UNKNOWN_KEY, kid
    given = None
    try:
        given = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        pass
    if given is None or len(given) != SIGNATURE_SIZE:
        return INVALID, kid
    expected = _mac(signing_keys[kid], metadata)
    return (VALID if hmac.compare_digest(given, expected) else INVALID), kid


def describe_failure(outcome, kid, basename, how_to_fix):
    """The one-line message for a signature that is not VALID (``how_to_fix``: where the keys are set)."""
    if outcome == INVALID:
        return ("metadata signature invalid for backup %s: its metadata (checksum, size, key id or envelope) was changed "
                "after it was written, or the signature was damaged: do not trust it; restore another backup with --backup"
                % basename)
    if outcome == UNKNOWN_KEY:
        return ("metadata of backup %s is signed with key %s, which is not among the keys given: %s"
                % (basename, kid, how_to_fix))
    return ("metadata of backup %s is not signed: it was written before metadata signing, or its signature was removed, "
            "so its checksum cannot be trusted against someone who can write to the bucket" % basename)
