# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The keyring and rekey's pure parts: keys from settings and files, re-wrapping one envelope."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import json
import os

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import config, keys
from ansible_collections.quankey.backup.plugins.module_utils.catalog import layout, trust
from ansible_collections.quankey.backup.plugins.module_utils.formats import crypto, signing
from ansible_collections.quankey.backup.plugins.module_utils.workflows import rekey
from ansible_collections.quankey.backup.plugins.module_utils.errors import (ConfigError, IntegrityError, TamperedError,
                                                                            WrongKeyError)

OLD = bytes(range(32))
NEW = bytes(range(100, 132))
OTHER = bytes(range(200, 232))


def b64(key):
    return base64.b64encode(key).decode("ascii")


def settings(**env):
    return config.settings_from_env(env)


BASENAME = "db_backup_20250101_000000"


def _record(metadata=None, basename=BASENAME, host="db1", db="db"):
    """A backup as the bucket lists it (its place gives its identity), with ``metadata`` loaded."""
    record = layout.BackupRecord(host, db, basename, layout.metadata_key("", host, db, basename),
                                 layout.object_key("", host, db, basename), object_size=1)
    record.metadata = metadata
    return record


def _metadata(master, data_key=None, version=2, record=None):
    """Metadata naming the backup at ``record``'s place, its data key wrapped (format ``version``) with ``master``."""
    record = record or _record()
    data_key = data_key or os.urandom(32)
    binding = keys.identity_binding(record) if version == 2 else None
    return {"encryption": crypto.ENCRYPTION_NAME, "key_id": crypto.key_id(master), "host": record.host,
            "database": record.db, "name": record.basename, "object_key": record.object_key,
            "timestamp": layout.format_timestamp(record.timestamp),
            "envelope": crypto.wrap_data_key(master, data_key, binding=binding), "size_bytes": 1}, data_key


def _rekey(metadata, context, record=None):
    record = record or _record()
    record.metadata = metadata
    return rekey.rekey_metadata(record, context)


def _verdict(context, metadata, record=None):
    record = record or _record()
    record.metadata = metadata
    return context.verdict(record)


@pytest.mark.parametrize("value, count", [
    (None, 0), ("", 0), ("a", 1), ("a,b", 2), ("a, b", 2), ("a b\tc\nd", 4), (" ,a,, b, ", 2), (["a", "b,c"], 3),
])
def test_split_keys_takes_commas_and_whitespace_strings_and_lists(value, count):
    assert len(keys.split_keys(value)) == count


def test_keyring_is_the_active_key_first_then_the_old_ones_deduplicated():
    listed = "%s, %s %s" % (b64(OLD), b64(NEW), b64(OLD))
    ring = keys.keyring(settings(BACKUP_ENCRYPTION_KEY=b64(NEW), BACKUP_DECRYPTION_KEYS=listed))
    assert ring.active == NEW and ring.active_id == crypto.key_id(NEW)
    assert ring.ids == [crypto.key_id(NEW), crypto.key_id(OLD)]
    assert ring.keys == [NEW, OLD]
    assert crypto.key_id(OLD) in ring and crypto.key_id(OTHER) not in ring
    assert b64(NEW) not in repr(ring) and b64(OLD) not in repr(ring) and crypto.key_id(OLD) in repr(ring)


def test_decryption_keys_alone_open_but_rekey_needs_an_active_key():
    only_old = settings(BACKUP_DECRYPTION_KEYS=b64(OLD))
    ring = keys.keyring(only_old)
    assert ring.active is None and ring.ids == [crypto.key_id(OLD)]
    with pytest.raises(ConfigError, match="BACKUP_ENCRYPTION_KEY is not set"):
        keys.keyring(only_old, require_active=True)


def test_no_key_at_all_names_the_active_key():
    assert not keys.configured(settings())
    with pytest.raises(ConfigError, match="BACKUP_ENCRYPTION_KEY is not set"):
        keys.keyring(settings())


def test_a_bad_decryption_key_is_named_by_position_never_by_value():
    bad = b64(b"short")
    with pytest.raises(ConfigError) as info:
        keys.keyring(settings(BACKUP_ENCRYPTION_KEY=b64(NEW), BACKUP_DECRYPTION_KEYS="%s,%s" % (b64(OLD), bad)))
    assert "BACKUP_DECRYPTION_KEYS (key 2 of 2) decodes to 5 bytes instead of 32" in str(info.value)
    assert bad not in str(info.value)


def test_module_lists_of_keys_work_too():
    ring = keys.keyring(config.Settings(encryption_key=b64(NEW), decryption_keys=[b64(OLD), b64(OTHER)]))
    assert ring.keys == [NEW, OLD, OTHER]


def _keyring_file(tmp_path, text, mode=0o600):
    path = tmp_path / "keyring"
    path.write_text(text)
    os.chmod(str(path), mode)
    return str(path)


def test_keyring_file_one_key_per_line_with_comments(tmp_path):
    path = _keyring_file(tmp_path, "# keys retired in 2025\n%s\n\n  %s   # the 2024 key\n" % (b64(OLD), b64(OTHER)))
    ring = keys.keyring(settings(BACKUP_ENCRYPTION_KEY=b64(NEW), BACKUP_KEYRING_FILE=path))
    assert ring.keys == [NEW, OLD, OTHER]
    assert keys.configured(settings(BACKUP_KEYRING_FILE=path))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700 | 0o004])
def test_keyring_file_readable_by_others_is_refused_in_one_line(tmp_path, mode):
    path = _keyring_file(tmp_path, b64(OLD) + "\n", mode)
    with pytest.raises(ConfigError) as info:
        keys.read_keyring_file(path)
    message = str(info.value)
    assert path in message and "chmod 0600 %s" % path in message and "%04o" % mode in message
    assert "\n" not in message and b64(OLD) not in message


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_keyring_file_owner_only_is_accepted(tmp_path, mode):
    assert keys.read_keyring_file(_keyring_file(tmp_path, b64(OLD), mode)) == [OLD]


def test_keyring_file_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        keys.read_keyring_file(str(tmp_path / "missing"))
    path = _keyring_file(tmp_path, "%s\nnot-a-key!\n" % b64(OLD))
    with pytest.raises(ConfigError, match="keyring file %s line 2 is not valid base64" % path):
        keys.read_keyring_file(path)


def test_wrong_key_errors_name_the_keyring_settings_when_set():
    assert keys.opening_keys_label(settings(BACKUP_ENCRYPTION_KEY=b64(NEW))) == "BACKUP_ENCRYPTION_KEY"
    assert keys.opening_keys_label(settings(BACKUP_ENCRYPTION_KEY=b64(NEW), BACKUP_DECRYPTION_KEYS=b64(OLD))) == \
        "BACKUP_ENCRYPTION_KEY or BACKUP_DECRYPTION_KEYS"


def _context(active, *older):
    return keys.KeyContext(settings(BACKUP_ENCRYPTION_KEY=b64(active), BACKUP_DECRYPTION_KEYS=",".join(b64(k) for k in older)))


def test_rekey_metadata_rewraps_the_envelope_and_key_id_and_re_signs():
    metadata, data_key = _metadata(OLD)
    metadata = keys.KeyContext(settings(BACKUP_ENCRYPTION_KEY=b64(OLD))).sign(metadata)
    context = _context(NEW, OLD)
    updated, opened, old_id = _rekey(metadata, context)
    assert opened == data_key and old_id == crypto.key_id(OLD)
    assert updated["key_id"] == crypto.key_id(NEW) and updated["envelope"]["key_id"] == crypto.key_id(NEW)
    changed = ("envelope", "key_id", "signature", "metadata_version")
    assert dict((k, v) for k, v in updated.items() if k not in changed) == dict((k, v) for k, v in metadata.items() if k not in changed)
    assert metadata["key_id"] == crypto.key_id(OLD)  # the input is not modified
    binding = keys.identity_binding(_record())
    assert crypto.unwrap_data_key(NEW, updated["envelope"], binding=binding) == data_key
    with pytest.raises(WrongKeyError):
        crypto.unwrap_data_key(OLD, updated["envelope"], binding=binding)
    assert updated["signature"]["key_id"] == crypto.key_id(NEW)
    assert _verdict(context, updated).describe().startswith("valid")
    # the old key alone no longer verifies it: the signature moved to the new key
    verdict = _verdict(keys.KeyContext(settings(BACKUP_ENCRYPTION_KEY=b64(OLD))), updated)
    assert verdict.outcome == trust.UNKNOWN_KEY and verdict.key_id == crypto.key_id(NEW)


def test_rekey_metadata_leaves_a_backup_on_the_active_key_and_signer_alone():
    metadata, data_key = _metadata(NEW)
    context = _context(NEW, OLD)
    updated, opened, old_id = _rekey(context.sign(metadata), context)
    assert updated is None and opened is None and old_id == crypto.key_id(NEW)
    # on the active key but signed by another key: re-signed
    resigned, _opened, _old = _rekey(_context(OLD).sign(metadata), context)
    assert resigned["signature"]["key_id"] == crypto.key_id(NEW) and resigned["envelope"] != metadata["envelope"]


def test_rekey_moves_a_version_1_envelope_to_version_2_even_on_the_active_key():
    metadata, data_key = _metadata(NEW, version=1)
    context = _context(NEW)
    updated, opened, _old = _rekey(context.sign(metadata), context)
    assert opened == data_key and updated["envelope"]["type"] == crypto.ENVELOPE_TYPE_V2
    assert crypto.unwrap_data_key(NEW, updated["envelope"], binding=keys.identity_binding(_record())) == data_key
    assert _rekey(updated, context)[0] is None  # now on target


def test_a_version_2_envelope_opens_only_at_the_place_it_was_made_for():
    metadata, data_key = _metadata(NEW)
    context = _context(NEW)
    assert context.open(_record(metadata)) == data_key
    for place in (dict(host="db2"), dict(db="other"), dict(basename="db_backup_20250102_000000")):
        with pytest.raises(TamperedError, match="copied from another backup"):
            context.open(_record(metadata, **place))


def test_rekey_metadata_fixes_a_stale_key_id_field():
    metadata, _data_key = _metadata(NEW)
    metadata["key_id"] = crypto.key_id(OLD)
    updated, _opened, _old = _rekey(metadata, _context(NEW))
    assert updated["key_id"] == crypto.key_id(NEW)


def test_rekey_metadata_fails_closed():
    metadata, _data_key = _metadata(OTHER)
    with pytest.raises(WrongKeyError, match="wrapped with key %s" % crypto.key_id(OTHER)):
        _rekey(metadata, _context(NEW, OLD))
    metadata, _data_key = _metadata(OLD)
    metadata["envelope"]["wrapped_key"] = b64(os.urandom(48))
    with pytest.raises(TamperedError):
        _rekey(metadata, _context(NEW, OLD))
    with pytest.raises(IntegrityError, match="a new key needs a new backup, not a rekey"):
        _rekey(dict(metadata, encryption="aes-256-cbc"), _context(NEW, OLD))
    with pytest.raises(IntegrityError, match="uses encryption .rot13., which this version cannot read"):
        _rekey(dict(metadata, encryption="rot13"), _context(NEW, OLD))


def test_the_verdict_names_each_signature_outcome():
    metadata, _data_key = _metadata(NEW)
    context = _context(NEW)
    signed = context.sign(metadata)
    assert _verdict(context, signed).describe() == "valid (key %s)" % crypto.key_id(NEW)
    tampered = _verdict(context, dict(signed, checksum_sha256="0" * 64))
    assert tampered.outcome == trust.INVALID and "metadata signature invalid for backup %s" % BASENAME in tampered.problem
    copied = _verdict(context, signed, _record(basename="db_backup_20250102_000000"))
    assert copied.outcome == trust.INVALID and "copied from another backup" in copied.problem
    unsigned = _verdict(context, metadata)
    assert unsigned.outcome == trust.UNSIGNED and "is not signed" in unsigned.problem
    foreign = _verdict(context, _context(OTHER).sign(metadata))
    assert foreign.outcome == trust.UNKNOWN_KEY and "which is not among the keys given" in foreign.problem


def test_a_layout_field_in_a_document_does_not_make_it_a_seed_backup():
    metadata, _data_key = _metadata(NEW)
    verdict = _verdict(_context(NEW), dict(metadata, layout="seed"))
    assert verdict.outcome == trust.UNSIGNED  # judged as what it is: an unsigned document of the host layout
    with pytest.raises(IntegrityError, match="allow unsigned metadata"):
        trust.require(verdict)


def test_an_explicit_signing_key_signs_and_master_derived_keys_still_verify():
    signer = os.urandom(32)
    context = keys.KeyContext(settings(BACKUP_ENCRYPTION_KEY=b64(NEW), BACKUP_SIGNING_KEY=b64(signer)))
    metadata, _data_key = _metadata(NEW)
    signed = context.sign(metadata)
    assert signed["signature"]["key_id"].startswith("qks-") and b64(signer) not in json.dumps(signed)
    assert _verdict(context, signed).describe().startswith("valid (key qks-")
    assert _verdict(context, _context(NEW).sign(metadata)).describe() == "valid (key %s)" % crypto.key_id(NEW)


def test_a_recipients_only_host_needs_a_signing_key():
    context = keys.KeyContext(config.Settings(encryption="hybrid-pq", recipients=[]))
    with pytest.raises(ConfigError, match="no key to sign the backup's metadata with: set BACKUP_SIGNING_KEY"):
        context.signer()


def test_check_data_key_uses_the_key_commitment_of_the_header():
    data_key = os.urandom(32)
    header = crypto.StreamEncryptor(data_key).finalize()[:crypto.HEADER_SIZE]
    crypto.check_key_commitment(header, data_key)
    with pytest.raises(WrongKeyError, match="key commitment"):
        crypto.check_key_commitment(header, os.urandom(32))
    with pytest.raises(IntegrityError, match="plaintext pg_dump"):
        crypto.check_key_commitment(b"PGDMP" + bytes(51), data_key)
    with pytest.raises(IntegrityError, match="shorter"):
        crypto.check_key_commitment(header[:20], data_key)


def test_older_signing_keys_after_the_active_one_still_verify():
    old_signer, new_signer = os.urandom(32), os.urandom(32)
    metadata, _data_key = _metadata(NEW)
    signed_before = keys.KeyContext(settings(BACKUP_ENCRYPTION_KEY=b64(NEW), BACKUP_SIGNING_KEY=b64(old_signer))).sign(metadata)
    rotated = keys.KeyContext(settings(BACKUP_ENCRYPTION_KEY=b64(NEW),
                                       BACKUP_SIGNING_KEY="%s, %s" % (b64(new_signer), b64(old_signer))))
    assert rotated.signer()[0] == signing.signing_key_id(new_signer)
    assert _verdict(rotated, signed_before).describe() == "valid (key %s)" % signing.signing_key_id(old_signer)
    updated, _opened, _old = _rekey(signed_before, rotated)  # re-signed with the new one
    assert updated["signature"]["key_id"] == signing.signing_key_id(new_signer)
    with pytest.raises(ConfigError, match=r"BACKUP_SIGNING_KEY \(key 2 of 2\) is not valid base64"):
        keys.KeyContext(settings(BACKUP_SIGNING_KEY="%s,not-a-key!" % b64(new_signer))).signer()
