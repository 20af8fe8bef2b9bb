# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests of encryption formats v1 and v2 (plugins/module_utils/crypto.py, docs/FORMAT.md)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import hashlib
import hmac
import json
import os
import random
import re
import struct

import pytest

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ansible_collections.quankey.backup.plugins.module_utils.formats import crypto
from ansible_collections.quankey.backup.plugins.module_utils.errors import (
    ConfigError,
    IntegrityError,
    TamperedError,
    TruncatedError,
    WrongKeyError,
)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
VECTORS_PATH = os.path.join(HERE, "fixtures", "format_v1_vectors.json")
FORMAT_DOC_PATH = os.path.join(REPO_ROOT, "docs", "FORMAT.md")

with open(VECTORS_PATH, encoding="utf-8") as _f:
    V = json.load(_f)

MK = bytes(range(32))
DK = bytes(range(32, 64))
WRAP_SALT = bytes(range(0xA0, 0xB0))
WRAP_NONCE = bytes(range(0xC0, 0xCC))
STREAM_SALT = bytes(range(0xD0, 0xE0))
LONG_PLAINTEXT = bytes(i % 251 for i in range(2560))
S = 1024  # small segment size (log2 10) used by most tests
SEALED = S + crypto.TAG_SIZE
OTHER_MK = bytes(range(100, 132))
THIRD_MK = bytes(range(150, 182))
HOST, DATABASE, NAME = "db1", "quankey_prod", "quankey_prod_backup_20250809_030000"
BINDING = crypto.backup_binding(HOST, DATABASE, NAME)


# --------------------------------------------------------------------------- independent reference
# Written from docs/FORMAT.md with hmac (RFC 5869 HKDF) and the low-level GCM
# API, so the vectors check the specification, not the module against itself.

def ref_hkdf(ikm, salt, info):
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def ref_gcm(key, nonce, plaintext, aad):
    enc = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
    enc.authenticate_additional_data(aad)
    return enc.update(plaintext) + enc.finalize() + enc.tag


def ref_key_id(master_key):
    return "qk1-" + hashlib.sha256(b"quankey-backup/v1 key-id\x00" + master_key).hexdigest()[:16]


def ref_binding(host, database, name):
    out = b"quankey-backup/v2 backup\x00"
    for part in (host, database, name):
        encoded = part.encode("utf-8")
        out += len(encoded).to_bytes(2, "big") + encoded
    return out


def ref_encrypt(data_key, salt, log2, plaintext):
    size = 1 << log2
    commitment = ref_hkdf(data_key, salt, b"quankey-backup/v1 commitment")
    payload_key = ref_hkdf(data_key, salt, b"quankey-backup/v1 payload")
    header = b"QKBK" + bytes([1, 1, log2, 0]) + salt + commitment
    chunks = [plaintext[i:i + size] for i in range(0, len(plaintext), size)] or [b""]
    out = [header]
    for index, chunk in enumerate(chunks):
        final = index == len(chunks) - 1
        nonce = b"\x00\x00\x00" + struct.pack(">Q", index) + (b"\x01" if final else b"\x00")
        out.append(ref_gcm(payload_key, nonce, chunk, header))
    return b"".join(out)


# --------------------------------------------------------------------------- helpers

def encrypt(plaintext, data_key=DK, segment_size=S, salt=None, chunks=None):
    """Encrypt in one update, or in the given chunk sizes."""
    enc = crypto.StreamEncryptor(data_key, segment_size=segment_size, _salt=salt)
    if chunks is None:
        return enc.update(plaintext) + enc.finalize()
    out, pos = [], 0
    for size in chunks:
        out.append(enc.update(plaintext[pos:pos + size]))
        pos += size
    assert pos == len(plaintext)
    out.append(enc.finalize())
    return b"".join(out)


def decrypt(blob, data_key=DK, chunk=None):
    dec = crypto.StreamDecryptor(data_key)
    if chunk is None:
        return dec.update(blob) + dec.finalize()
    out = [dec.update(blob[i:i + chunk]) for i in range(0, len(blob), chunk)]
    out.append(dec.finalize())
    return b"".join(out)


def random_chunks(rng, total, max_chunk):
    sizes = []
    while sum(sizes) < total:
        sizes.append(min(rng.randint(0, max_chunk), total - sum(sizes)))
    return sizes


def long_object():
    """The 2.5-segment vector object: segments of 1040, 1040 and 528 bytes."""
    return encrypt(LONG_PLAINTEXT, salt=STREAM_SALT)


def flatten(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from flatten(value, prefix + key + ".")
        else:
            yield prefix + key, value


def doc_vectors():
    with open(FORMAT_DOC_PATH, encoding="utf-8") as f:
        text = f.read()
    section = text.split("\n## Test vectors\n", 1)[1]
    found = {}
    for block in re.findall(r"```text\n(.*?)```", section, re.S):
        for line in block.splitlines():
            match = re.match(r"^([A-Za-z0-9_.]+) = (.*)$", line)
            assert match, "unparsable vector line in docs/FORMAT.md: %r" % line
            assert match.group(1) not in found, "duplicate vector %s" % match.group(1)
            found[match.group(1)] = match.group(2)
    return text, found


# --------------------------------------------------------------------------- vectors

def test_key_id_vector():
    assert crypto.key_id(MK) == V["key_id"] == ref_key_id(MK)
    assert crypto.key_id(OTHER_MK) != V["key_id"]
    assert re.match(r"^qk1-[0-9a-f]{16}$", crypto.key_id(OTHER_MK))


def test_inputs_in_vectors_are_the_documented_inputs():
    assert V["inputs"] == {
        "master_key": MK.hex(),
        "master_key_base64": base64.b64encode(MK).decode(),
        "data_key": DK.hex(),
        "wrap_salt": WRAP_SALT.hex(),
        "wrap_nonce": WRAP_NONCE.hex(),
        "stream_salt": STREAM_SALT.hex(),
    }
    assert crypto.parse_master_key(V["inputs"]["master_key_base64"]) == MK


def test_envelope_vector():
    envelope = crypto.wrap_data_key(MK, DK, _salt=WRAP_SALT, _nonce=WRAP_NONCE)
    assert envelope == V["envelope"]["json"]
    wrap_key = ref_hkdf(MK, WRAP_SALT, b"quankey-backup/v1 key-wrap")
    assert wrap_key.hex() == V["envelope"]["wrap_key"]
    wrapped = ref_gcm(wrap_key, WRAP_NONCE, DK, b"quankey-backup/v1 key-wrap\x00" + ref_key_id(MK).encode())
    assert len(wrapped) == 48
    assert wrapped.hex() == V["envelope"]["wrapped_key_hex"]
    assert base64.b64decode(envelope["wrapped_key"]) == wrapped
    assert crypto.unwrap_data_key(MK, V["envelope"]["json"]) == DK


def test_envelope_v2_vector():
    vec = V["envelope_v2"]
    assert (vec["binding"]["host"], vec["binding"]["database"], vec["binding"]["name"]) == (HOST, DATABASE, NAME)
    binding = ref_binding(HOST, DATABASE, NAME)
    assert binding.hex() == vec["binding"]["hex"]
    assert crypto.backup_binding(HOST, DATABASE, NAME) == binding
    envelope = crypto.wrap_data_key(MK, DK, binding, _salt=WRAP_SALT, _nonce=WRAP_NONCE)
    assert envelope == vec["json"]
    assert envelope["type"] == crypto.ENVELOPE_TYPE_V2
    wrap_key = ref_hkdf(MK, WRAP_SALT, b"quankey-backup/v2 key-wrap")
    assert wrap_key.hex() == vec["wrap_key"]
    aad = b"quankey-backup/v2 key-wrap\x00" + ref_key_id(MK).encode("ascii") + binding
    assert aad.hex() == vec["aad_hex"]
    wrapped = ref_gcm(wrap_key, WRAP_NONCE, DK, aad)
    assert wrapped.hex() == vec["wrapped_key_hex"]
    assert base64.b64decode(envelope["wrapped_key"]) == wrapped
    assert crypto.unwrap_data_key(MK, vec["json"], binding=binding) == DK
    # the same inputs give the v1 envelope when no binding is given: the versions differ only in the wrap
    assert crypto.wrap_data_key(MK, DK, _salt=WRAP_SALT, _nonce=WRAP_NONCE) == V["envelope"]["json"]
    assert {k: v for k, v in vec["json"].items() if k not in ("type", "wrapped_key")} == \
        {k: v for k, v in V["envelope"]["json"].items() if k not in ("type", "wrapped_key")}


def test_stream_key_vectors():
    assert ref_hkdf(DK, STREAM_SALT, b"quankey-backup/v1 payload").hex() == V["stream_keys"]["payload_key"]
    assert ref_hkdf(DK, STREAM_SALT, b"quankey-backup/v1 commitment").hex() == V["stream_keys"]["commitment"]
    header = bytes.fromhex(V["streams"]["empty"]["header_hex"])
    assert header[24:56].hex() == V["stream_keys"]["commitment"]


@pytest.mark.parametrize("name", ["empty", "quankey", "two_and_a_half_segments"])
def test_stream_vectors(name):
    vec = V["streams"][name]
    if name == "two_and_a_half_segments":
        plaintext = LONG_PLAINTEXT
        assert hashlib.sha256(plaintext).hexdigest() == vec["plaintext_sha256"]
    else:
        plaintext = bytes.fromhex(vec.get("plaintext_hex", ""))
    assert len(plaintext) == vec["plaintext_size"]
    log2 = vec["segment_size"].bit_length() - 1
    enc = crypto.StreamEncryptor(DK, segment_size=vec["segment_size"], _salt=STREAM_SALT)
    assert enc.header.hex() == vec["header_hex"]
    blob = (enc.update(plaintext) if plaintext else b"") + enc.finalize()
    assert blob == ref_encrypt(DK, STREAM_SALT, log2, plaintext)
    assert len(blob) == vec["object_size"]
    if "object_hex" in vec:
        assert blob.hex() == vec["object_hex"]
    else:
        assert hashlib.sha256(blob).hexdigest() == vec["object_sha256"]
    assert decrypt(blob) == plaintext
    info = crypto.read_header(blob[:crypto.HEADER_SIZE])
    assert info == {"version": 1, "suite": 1, "segment_size": vec["segment_size"], "salt": STREAM_SALT.hex()}


def test_empty_stream_without_update_matches_vector():
    enc = crypto.StreamEncryptor(DK, _salt=STREAM_SALT)
    assert enc.finalize().hex() == V["streams"]["empty"]["object_hex"]


def test_format_doc_quotes_exactly_the_vectors():
    _text, found = doc_vectors()
    expected = dict((name, str(value)) for name, value in flatten(V) if name != "description")
    assert sorted(found) == sorted(expected), "docs/FORMAT.md and format_v1_vectors.json list different vectors"
    for name, value in expected.items():
        assert found[name] == value, "docs/FORMAT.md disagrees with format_v1_vectors.json on %s" % name


def test_format_doc_quotes_the_v2_binding_example():
    text, found = doc_vectors()
    assert found["envelope_v2.binding.hex"] == BINDING.hex()
    assert found["envelope_v2.json.type"] == "aes-256-gcm-hkdf-sha256-v2"
    assert "\n## Format version 2: the backup's identity in every key wrap\n" in text


def test_format_doc_has_no_stray_hex():
    text, _found = doc_vectors()
    known = set(str(value) for _name, value in flatten(V))
    for run in re.findall(r"[0-9a-f]{32,}", text):
        assert run in known, "hex in docs/FORMAT.md that is not a test vector: %s" % run


def test_ref_encrypt_matches_module_for_many_sizes():
    rng = random.Random(7)
    for size in [0, 1, 15, 16, S - 1, S, S + 1, 2 * S, 2 * S + 17, 5 * S]:
        plaintext = bytes(rng.getrandbits(8) for _byte in range(size))
        assert encrypt(plaintext, salt=STREAM_SALT) == ref_encrypt(DK, STREAM_SALT, 10, plaintext)


# --------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("size", [0, 1, S - 1, S, S + 1, 3 * S])
def test_round_trip_random_chunking(size):
    rng = random.Random(size)
    plaintext = os.urandom(size)
    one_shot = encrypt(plaintext, salt=STREAM_SALT)
    expected_segments = max(1, -(-size // S))
    assert len(one_shot) == crypto.HEADER_SIZE + expected_segments * crypto.TAG_SIZE + size
    for _attempt in range(20):
        chunked = encrypt(plaintext, salt=STREAM_SALT, chunks=random_chunks(rng, size, 3 * S))
        assert chunked == one_shot
        dec = crypto.StreamDecryptor(DK)
        out, pos = [], 0
        for step in random_chunks(rng, len(chunked), 3 * SEALED):
            out.append(dec.update(chunked[pos:pos + step]))
            pos += step
        out.append(dec.finalize())
        assert b"".join(out) == plaintext
        assert dec.segments == expected_segments
        assert dec.plaintext_bytes == size


@pytest.mark.parametrize("size", [0, crypto.DEFAULT_SEGMENT_SIZE - 1, crypto.DEFAULT_SEGMENT_SIZE, crypto.DEFAULT_SEGMENT_SIZE + 1])
def test_round_trip_default_segment_size(size):
    plaintext = os.urandom(size)
    blob = encrypt(plaintext, segment_size=crypto.DEFAULT_SEGMENT_SIZE, chunks=random_chunks(random.Random(size), size, 300000))
    assert blob[6] == 20
    assert decrypt(blob, chunk=65536) == plaintext


def test_encryptor_emits_segments_as_soon_as_more_data_follows():
    enc = crypto.StreamEncryptor(DK, segment_size=S)
    first = enc.update(b"a" * S)
    assert first == enc.header  # the full segment is held back: it may be the last
    second = enc.update(b"b")
    assert len(second) == SEALED
    third = enc.update(b"c" * (3 * S))
    assert len(third) == 3 * SEALED  # segments 1..3 sealed, 1 byte held back
    assert enc.segments == 4
    last = enc.finalize()
    assert len(last) == 1 + crypto.TAG_SIZE
    assert enc.plaintext_bytes == 4 * S + 1


def test_decryptor_holds_back_at_most_one_segment():
    blob = long_object()
    dec = crypto.StreamDecryptor(DK)
    assert dec.update(blob[:crypto.HEADER_SIZE + SEALED]) == b""  # segment 0 might be the last
    assert dec.segments == 0
    assert dec.update(blob[crypto.HEADER_SIZE + SEALED:crypto.HEADER_SIZE + SEALED + 1]) == LONG_PLAINTEXT[:S]
    rest = dec.update(blob[crypto.HEADER_SIZE + SEALED + 1:])
    assert rest == LONG_PLAINTEXT[S:2 * S]
    assert dec.finalize() == LONG_PLAINTEXT[2 * S:]
    assert dec.segments == 3


def test_bytes_like_inputs():
    plaintext = os.urandom(3 * S + 5)
    blob = encrypt(plaintext, salt=STREAM_SALT)
    enc = crypto.StreamEncryptor(DK, segment_size=S, _salt=STREAM_SALT)
    assert enc.update(bytearray(plaintext[:100])) + enc.update(memoryview(plaintext)[100:]) + enc.finalize() == blob
    dec = crypto.StreamDecryptor(bytearray(DK))
    assert dec.update(memoryview(blob)) + dec.finalize() == plaintext


def test_update_after_finalize_is_an_error():
    enc = crypto.StreamEncryptor(DK)
    blob = enc.update(b"x") + enc.finalize()
    with pytest.raises(ValueError):
        enc.update(b"y")
    with pytest.raises(ValueError):
        enc.finalize()
    dec = crypto.StreamDecryptor(DK)
    assert dec.update(blob) + dec.finalize() == b"x"
    with pytest.raises(ValueError):
        dec.update(b"y")
    with pytest.raises(ValueError):
        dec.finalize()


def test_decryptor_repeats_its_first_failure():
    blob = bytearray(long_object())
    blob[100] ^= 1
    dec = crypto.StreamDecryptor(DK)
    with pytest.raises(TamperedError) as first:
        dec.update(bytes(blob))
    for call in (dec.finalize, lambda: dec.update(b"more")):
        with pytest.raises(TamperedError) as again:
            call()
        assert again.value is first.value
    dec = crypto.StreamDecryptor(DK)
    dec.update(bytes(blob[:56 + SEALED]))
    with pytest.raises(TamperedError, match="segment 0 "):
        dec.finalize()
    with pytest.raises(TamperedError, match="segment 0 "):
        dec.finalize()


def test_fresh_salt_per_object():
    a, b = crypto.StreamEncryptor(DK), crypto.StreamEncryptor(DK)
    assert a.header[8:24] != b.header[8:24]
    assert len(crypto.new_data_key()) == 32
    assert crypto.new_data_key() != crypto.new_data_key()


@pytest.mark.parametrize("size", [S // 2, 1000, 1 << 25, 1023])
def test_invalid_segment_sizes_rejected(size):
    with pytest.raises(ValueError):
        crypto.StreamEncryptor(DK, segment_size=size)


# --------------------------------------------------------------------------- tampering

def expect_rejected(blob, data_key=DK):
    """Decrypt, expecting an IntegrityError from update or finalize; return it."""
    dec = crypto.StreamDecryptor(data_key)
    with pytest.raises(IntegrityError) as info:
        dec.update(blob)
        dec.finalize()
    return info.value


def test_every_flipped_byte_is_rejected():
    blob = long_object()
    for pos in range(len(blob)):
        for mask in (0x01, 0x80):
            bad = bytearray(blob)
            bad[pos] ^= mask
            err = expect_rejected(bytes(bad))
            if pos < 4:
                assert err.__class__ is IntegrityError and "not a quankey-backup encrypted object" in str(err)
            elif pos in (4, 5, 7):
                assert err.__class__ is IntegrityError, (pos, err)
            elif pos == 6:
                assert isinstance(err, (TamperedError, IntegrityError)) and not isinstance(err, WrongKeyError)
            elif pos < crypto.HEADER_SIZE:
                assert isinstance(err, WrongKeyError), (pos, err)
            else:
                index = (pos - crypto.HEADER_SIZE) // SEALED
                assert isinstance(err, TamperedError), (pos, err)
                assert "segment %d (object offset %d)" % (index, crypto.HEADER_SIZE + index * SEALED) in str(err)


def test_header_errors_name_the_value():
    blob = long_object()
    for pos, value, words in [(4, 2, "format version 2"), (5, 9, "suite 9"), (6, 30, "2**30"), (7, 1, "reserved byte 0x01")]:
        bad = bytearray(blob)
        bad[pos] = value
        err = expect_rejected(bytes(bad))
        assert err.__class__ is IntegrityError and words in str(err)
        with pytest.raises(IntegrityError, match=re.escape(words)):
            crypto.read_header(bytes(bad))


def test_truncation_at_every_offset_is_rejected():
    blob = long_object()
    assert len(blob) == 2664
    for cut in range(len(blob)):
        err = expect_rejected(blob[:cut])
        body = cut - crypto.HEADER_SIZE
        if cut <= crypto.HEADER_SIZE:
            assert isinstance(err, TruncatedError), (cut, err)
        elif body % SEALED == 0:
            assert isinstance(err, TruncatedError), (cut, err)
            assert "truncated after segment %d" % (body // SEALED - 1) in str(err)
        elif body % SEALED < crypto.TAG_SIZE:
            assert isinstance(err, TruncatedError), (cut, err)
        else:
            assert isinstance(err, TamperedError), (cut, err)
            assert "segment %d " % (body // SEALED) in str(err)


def test_truncation_at_boundary_with_chunked_feed():
    plaintext = os.urandom(3 * S)
    blob = encrypt(plaintext)
    cut = crypto.HEADER_SIZE + 2 * SEALED
    dec = crypto.StreamDecryptor(DK)
    out = b"".join(dec.update(blob[i:min(i + 100, cut)]) for i in range(0, cut, 100))
    with pytest.raises(TruncatedError, match="truncated after segment 1: the object is incomplete"):
        dec.finalize()
    assert out == plaintext[:S]  # segment 1 is held back, never released unverified as final


def test_swapped_segments_rejected():
    blob = long_object()
    h, seg0, seg1, seg2 = blob[:56], blob[56:56 + SEALED], blob[56 + SEALED:56 + 2 * SEALED], blob[56 + 2 * SEALED:]
    err = expect_rejected(h + seg1 + seg0 + seg2)
    assert isinstance(err, TamperedError) and "segment 0 (object offset 56)" in str(err)
    err = expect_rejected(h + seg0 + seg0 + seg2)
    assert isinstance(err, TamperedError) and "segment 1 " in str(err)
    err = expect_rejected(h + seg0 + seg2)  # dropped segment 1
    assert isinstance(err, TamperedError) and "segment 1 " in str(err)


def test_segments_from_another_object_rejected():
    a = encrypt(LONG_PLAINTEXT, salt=STREAM_SALT)
    b = encrypt(LONG_PLAINTEXT, salt=bytes(16))
    err = expect_rejected(a[:56] + b[56:])
    assert isinstance(err, TamperedError) and "segment 0 " in str(err)


@pytest.mark.parametrize("extra", [b"\x00", b"x" * 15, b"x" * 16, b"x" * 2000])
def test_appended_bytes_rejected(extra):
    for blob in (long_object(), bytes.fromhex(V["streams"]["quankey"]["object_hex"]), bytes.fromhex(V["streams"]["empty"]["object_hex"])):
        err = expect_rejected(blob + extra)
        assert isinstance(err, TamperedError), err


def test_data_after_full_final_segment_reported_as_appended():
    blob = encrypt(os.urandom(2 * S))
    err = expect_rejected(blob + b"\x00")
    assert isinstance(err, TamperedError)
    assert "segment 1 (object offset %d)" % (56 + SEALED) in str(err) and "appended" in str(err)
    err = expect_rejected(blob + blob[56:56 + SEALED])
    assert isinstance(err, TamperedError) and "appended" in str(err)


def test_wrong_data_key_rejected_before_any_output():
    blob = long_object()
    dec = crypto.StreamDecryptor(bytes(32))
    with pytest.raises(WrongKeyError, match="the data key does not open this object") as info:
        dec.update(blob)
    assert DK.hex() not in str(info.value) and bytes(32).hex() not in str(info.value)
    assert dec.plaintext_bytes == 0


def test_plaintext_pg_dump_is_recognised():
    archive = b"PGDMP\x01\x0e\x00" + os.urandom(200)
    for data in (archive, archive[:20]):
        err = expect_rejected(data)
        assert err.__class__ is IntegrityError
        assert "plaintext pg_dump archive, not encrypted" in str(err)
    with pytest.raises(IntegrityError, match="plaintext pg_dump archive"):
        crypto.read_header(archive)


def test_openssl_enc_is_recognised():
    legacy = b"Salted__" + os.urandom(100)
    err = expect_rejected(legacy)
    assert err.__class__ is IntegrityError and "OpenSSL enc output" in str(err)
    with pytest.raises(IntegrityError, match="OpenSSL enc output"):
        crypto.read_header(legacy)


def test_foreign_and_short_objects():
    err = expect_rejected(b"hello world, this is plain text")
    assert err.__class__ is IntegrityError and "not a quankey-backup encrypted object" in str(err)
    assert isinstance(expect_rejected(b""), TruncatedError)
    assert isinstance(expect_rejected(b"QKB"), TruncatedError)
    with pytest.raises(TruncatedError):
        crypto.read_header(long_object()[:40])
    with pytest.raises(IntegrityError, match="not a quankey-backup"):
        crypto.read_header(b"x" * 56)


# --------------------------------------------------------------------------- envelope

def test_unwrap_with_wrong_master_key_names_both_key_ids():
    envelope = crypto.wrap_data_key(MK, DK)
    with pytest.raises(WrongKeyError) as info:
        crypto.unwrap_data_key(OTHER_MK, envelope)
    message = str(info.value)
    assert "wrapped with key %s" % crypto.key_id(MK) in message
    assert "the key given is %s" % crypto.key_id(OTHER_MK) in message
    assert "BACKUP_ENCRYPTION_KEY" in message
    for secret in (MK, OTHER_MK, DK):
        assert secret.hex() not in message and base64.b64encode(secret).decode() not in message


def test_keyring_unwrap_picks_the_right_key():
    envelope = crypto.wrap_data_key(MK, DK)
    assert crypto.unwrap_data_key([OTHER_MK, THIRD_MK, MK], envelope) == DK
    assert crypto.unwrap_data_key((MK, OTHER_MK), envelope) == DK
    with pytest.raises(WrongKeyError) as info:
        crypto.unwrap_data_key([OTHER_MK, THIRD_MK], envelope)
    assert "the keys given are %s, %s" % (crypto.key_id(OTHER_MK), crypto.key_id(THIRD_MK)) in str(info.value)


def test_keyring_unwrap_tolerates_an_edited_key_id_hint():
    envelope = dict(crypto.wrap_data_key(MK, DK), key_id=crypto.key_id(OTHER_MK))
    with pytest.raises(TamperedError):
        crypto.unwrap_data_key(OTHER_MK, envelope)
    assert crypto.unwrap_data_key([OTHER_MK, MK], envelope) == DK


def test_modified_envelope_with_matching_key_is_tampering():
    envelope = crypto.wrap_data_key(MK, DK)
    wrapped = bytearray(base64.b64decode(envelope["wrapped_key"]))
    wrapped[0] ^= 1
    bad = dict(envelope, wrapped_key=base64.b64encode(bytes(wrapped)).decode())
    with pytest.raises(TamperedError, match=re.escape(crypto.key_id(MK))):
        crypto.unwrap_data_key(MK, bad)
    bad = dict(envelope, salt=base64.b64encode(bytes(16)).decode())
    with pytest.raises(TamperedError):
        crypto.unwrap_data_key(MK, bad)


@pytest.mark.parametrize("field", ["type", "key_id", "salt", "nonce", "wrapped_key"])
def test_malformed_envelope_names_the_field(field):
    envelope = crypto.wrap_data_key(MK, DK)
    missing = dict(envelope)
    del missing[field]
    with pytest.raises(IntegrityError, match="field '%s' is missing" % field) as info:
        crypto.unwrap_data_key(MK, missing)
    assert not isinstance(info.value, WrongKeyError)
    broken = dict(envelope, **{field: "not base64 !"})
    with pytest.raises(IntegrityError, match="field '%s'" % field):
        crypto.unwrap_data_key(MK, broken)
    if field in ("salt", "nonce", "wrapped_key"):
        short = dict(envelope, **{field: base64.b64encode(b"abc").decode()})
        with pytest.raises(IntegrityError, match="field '%s' decodes to 3 bytes" % field):
            crypto.unwrap_data_key(MK, short)


def test_unknown_envelope_type_and_non_object():
    envelope = dict(crypto.wrap_data_key(MK, DK), type="hybrid-pq")
    with pytest.raises(IntegrityError, match="'hybrid-pq'"):
        crypto.unwrap_data_key(MK, envelope)
    with pytest.raises(IntegrityError, match="not a JSON object"):
        crypto.unwrap_data_key(MK, ["not", "a", "dict"])


def test_unwrap_of_a_hybrid_pq_envelope_says_it_is_sealed_to_recipients():
    for kind in ("hybrid-pq-x25519-mlkem768-hkdf-sha256", "hybrid-pq-x25519-mlkem768-hkdf-sha256-v2"):
        with pytest.raises(IntegrityError, match="field 'type' is '%s': this backup's data key is sealed to hybrid-pq recipients" % kind) as info:
            crypto.unwrap_data_key(MK, {"type": kind, "recipients": []}, binding=BINDING)
        assert not isinstance(info.value, (TamperedError, WrongKeyError))


def test_envelope_is_fresh_and_json_serialisable():
    a, b = crypto.wrap_data_key(MK, DK), crypto.wrap_data_key(MK, DK)
    assert a["salt"] != b["salt"] and a["nonce"] != b["nonce"] and a["wrapped_key"] != b["wrapped_key"]
    assert json.loads(json.dumps(a)) == a
    assert DK.hex() not in json.dumps(a) and base64.b64encode(DK).decode() not in json.dumps(a)


def test_rotation_rewraps_without_touching_the_object():
    blob = long_object()
    envelope = crypto.wrap_data_key(MK, DK)
    rotated = crypto.wrap_data_key(OTHER_MK, crypto.unwrap_data_key(MK, envelope))
    assert rotated["key_id"] == crypto.key_id(OTHER_MK)
    assert decrypt(blob, data_key=crypto.unwrap_data_key(OTHER_MK, rotated)) == LONG_PLAINTEXT


# --------------------------------------------------------------------------- format version 2: the backup's identity

COPIED_WORDS = ("does not open for this backup", "copied from another backup (another host, database or name)", "or modified")


def assert_copied_or_modified(error, kid=None):
    message = str(error)
    assert type(error) is TamperedError, error  # pylint: disable=unidiomatic-typecheck  # exactly, not a subclass
    for words in COPIED_WORDS:
        assert words in message, message
    if kid is not None:
        assert kid in message
    for secret in (MK, OTHER_MK, DK):
        assert secret.hex() not in message and base64.b64encode(secret).decode() not in message


def test_names_the_integrator_relies_on():
    assert crypto.ENVELOPE_TYPE == "aes-256-gcm-hkdf-sha256"
    assert crypto.ENVELOPE_TYPE_V2 == "aes-256-gcm-hkdf-sha256-v2"
    assert crypto.FORMAT_VERSION == 1  # the data object's header version: the same in formats 1 and 2
    assert callable(crypto.backup_binding) and callable(crypto.envelope_version)


def test_module_is_python39_syntax():
    import ast
    with open(crypto.__file__.replace(".pyc", ".py"), encoding="utf-8") as handle:
        ast.parse(handle.read(), feature_version=(3, 9))


def test_v2_round_trip_with_the_backups_binding():
    data_key = crypto.new_data_key()
    envelope = crypto.wrap_data_key(MK, data_key, BINDING)
    envelope = json.loads(json.dumps(envelope))
    assert set(envelope) == {"type", "key_id", "salt", "nonce", "wrapped_key"}
    assert envelope["type"] == crypto.ENVELOPE_TYPE_V2 and envelope["key_id"] == crypto.key_id(MK)
    assert crypto.unwrap_data_key(MK, envelope, binding=BINDING) == data_key
    assert crypto.unwrap_data_key([OTHER_MK, MK], envelope, "K", crypto.backup_binding(HOST, DATABASE, NAME)) == data_key
    assert crypto.unwrap_data_key(MK, envelope, binding=bytearray(BINDING)) == data_key
    assert crypto.envelope_version(envelope) == 2


@pytest.mark.parametrize("changed", [
    ("db2", DATABASE, NAME),
    (HOST, "quankey_staging", NAME),
    (HOST, DATABASE, "quankey_prod_backup_20250810_030000"),
    ("db1 ", DATABASE, NAME),
    (HOST, "Quankey_prod", NAME),
])
def test_v2_envelope_under_another_host_database_or_name_is_tampering_not_wrong_key(changed):
    envelope = crypto.wrap_data_key(MK, DK, BINDING)
    with pytest.raises(TamperedError) as info:
        crypto.unwrap_data_key(MK, envelope, binding=crypto.backup_binding(*changed))
    assert_copied_or_modified(info.value, crypto.key_id(MK))
    with pytest.raises(TamperedError) as info:
        crypto.unwrap_data_key([THIRD_MK, MK, OTHER_MK], envelope, binding=crypto.backup_binding(*changed))
    assert_copied_or_modified(info.value, crypto.key_id(MK))


def test_metadata_copied_from_another_hosts_backup_does_not_open():
    """Host A's object and metadata copied under host B's name: B's binding does not open A's data key."""
    data_key = crypto.new_data_key()
    from_a = crypto.wrap_data_key(MK, data_key, crypto.backup_binding("host-a", "shop", "shop_backup_20250809_030000"))
    copied_to_b = json.loads(json.dumps(from_a))
    with pytest.raises(TamperedError) as info:
        crypto.unwrap_data_key(MK, copied_to_b, binding=crypto.backup_binding("host-b", "shop", "shop_backup_20250809_030000"))
    assert_copied_or_modified(info.value)
    # restoring A's backup anywhere (e.g. a replacement machine) uses A's identity, from where it is stored
    assert crypto.unwrap_data_key(MK, copied_to_b, binding=crypto.backup_binding("host-a", "shop", "shop_backup_20250809_030000")) == data_key


def test_v2_envelope_with_a_key_not_given_is_still_a_wrong_key():
    envelope = crypto.wrap_data_key(MK, DK, BINDING)
    with pytest.raises(WrongKeyError) as info:
        crypto.unwrap_data_key([OTHER_MK, THIRD_MK], envelope, "OLD_KEYS", BINDING)
    assert str(info.value) == ("this backup's data key is wrapped with key %s; the keys given are %s, %s: set OLD_KEYS to the key that made this backup"
                               % (crypto.key_id(MK), crypto.key_id(OTHER_MK), crypto.key_id(THIRD_MK)))
    with pytest.raises(WrongKeyError):  # a wrong key with a wrong binding: the key is what is reported
        crypto.unwrap_data_key(OTHER_MK, envelope, binding=crypto.backup_binding("x", "y", "z"))


@pytest.mark.parametrize("field", ["salt", "nonce", "wrapped_key"])
def test_modified_v2_envelope_is_tampering(field):
    envelope = crypto.wrap_data_key(MK, DK, BINDING)
    data = bytearray(base64.b64decode(envelope[field]))
    data[-1] ^= 0x80
    with pytest.raises(TamperedError) as info:
        crypto.unwrap_data_key(MK, dict(envelope, **{field: base64.b64encode(bytes(data)).decode()}), binding=BINDING)
    assert_copied_or_modified(info.value, crypto.key_id(MK))


def test_relabelling_the_version_does_not_open():
    v2 = crypto.wrap_data_key(MK, DK, BINDING)
    downgraded = dict(v2, type=crypto.ENVELOPE_TYPE)  # strip the binding by calling it version 1
    with pytest.raises(TamperedError, match="modified or corrupted"):
        crypto.unwrap_data_key(MK, downgraded)
    with pytest.raises(TamperedError, match="modified or corrupted"):
        crypto.unwrap_data_key(MK, downgraded, binding=BINDING)
    upgraded = dict(crypto.wrap_data_key(MK, DK), type=crypto.ENVELOPE_TYPE_V2)
    with pytest.raises(TamperedError) as info:
        crypto.unwrap_data_key(MK, upgraded, binding=BINDING)
    assert_copied_or_modified(info.value)


def test_v1_envelope_opens_with_and_without_a_binding():
    envelope = crypto.wrap_data_key(MK, DK)
    assert envelope["type"] == crypto.ENVELOPE_TYPE
    assert crypto.unwrap_data_key(MK, envelope) == DK
    assert crypto.unwrap_data_key(MK, envelope, binding=BINDING) == DK
    assert crypto.unwrap_data_key(MK, envelope, binding=crypto.backup_binding("any", "other", "backup")) == DK
    assert crypto.unwrap_data_key(MK, V["envelope"]["json"], "BACKUP_ENCRYPTION_KEY", BINDING) == DK


def test_v2_envelope_without_a_binding_is_a_caller_error():
    envelope = crypto.wrap_data_key(MK, DK, BINDING)
    with pytest.raises(TypeError, match="binding=backup_binding"):
        crypto.unwrap_data_key(MK, envelope)
    with pytest.raises(TypeError):
        crypto.unwrap_data_key(MK, V["envelope_v2"]["json"], binding=None)


@pytest.mark.parametrize("bad, error", [
    ("db1/quankey_prod/quankey_prod_backup_20250809_030000", TypeError),
    (12, TypeError),
    (b"", ValueError),
    (b"quankey-backup/v1 backup\x00" + BINDING[len(b"quankey-backup/v2 backup\x00"):], ValueError),
    (BINDING + b"\x00", ValueError),
    (BINDING[:-1], ValueError),
    (b"quankey-backup/v2 backup\x00\x00\x00\x00\x01a\x00\x01b", ValueError),
    (b"quankey-backup/v2 backup\x00\x00\x01\xff\x00\x01a\x00\x01b", ValueError),
])
def test_a_binding_not_made_by_backup_binding_is_a_caller_error(bad, error):
    with pytest.raises(error):
        crypto.wrap_data_key(MK, DK, bad)
    with pytest.raises(error):
        crypto.unwrap_data_key(MK, V["envelope_v2"]["json"], binding=bad)
    with pytest.raises(error):
        crypto.unwrap_data_key(MK, V["envelope"]["json"], binding=bad)


def test_wrap_keeps_salt_and_nonce_as_keywords():
    assert crypto.wrap_data_key(MK, DK, _salt=WRAP_SALT, _nonce=WRAP_NONCE) == V["envelope"]["json"]
    assert crypto.wrap_data_key(MK, DK, binding=BINDING, _salt=WRAP_SALT, _nonce=WRAP_NONCE) == V["envelope_v2"]["json"]
    assert crypto.wrap_data_key(MK, DK, None, WRAP_SALT, WRAP_NONCE) == V["envelope"]["json"]


def test_binding_bytes_are_the_documented_encoding():
    assert BINDING == (b"quankey-backup/v2 backup\x00" + b"\x00\x03db1" + b"\x00\x0cquankey_prod"
                       + b"\x00\x23quankey_prod_backup_20250809_030000")
    assert BINDING.hex() == V["envelope_v2"]["binding"]["hex"]


def test_binding_encoding_is_unambiguous():
    first = crypto.backup_binding("ab", "c", "d")
    second = crypto.backup_binding("a", "bc", "d")
    third = crypto.backup_binding("a", "b", "cd")
    assert len({first, second, third}) == 3
    assert first.endswith(b"\x00\x02ab\x00\x01c\x00\x01d") and second.endswith(b"\x00\x01a\x00\x02bc\x00\x01d")
    assert crypto.backup_binding("a\x00", "b", "c") != crypto.backup_binding("a", "\x00b", "c")
    envelope = crypto.wrap_data_key(MK, DK, first)
    with pytest.raises(TamperedError):
        crypto.unwrap_data_key(MK, envelope, binding=second)


def test_binding_of_a_multibyte_database_name_counts_utf8_bytes():
    binding = crypto.backup_binding("db1", "donn\u00e9es_\u00e9", "donn\u00e9es_\u00e9_backup_20250809_030000")
    database = "donn\u00e9es_\u00e9".encode("utf-8")
    assert len(database) == 11 and len("donn\u00e9es_\u00e9") == 9
    assert binding == ref_binding("db1", "donn\u00e9es_\u00e9", "donn\u00e9es_\u00e9_backup_20250809_030000")
    assert b"\x00\x0b" + database in binding
    decomposed = crypto.backup_binding("db1", "donne\u0301es_\u00e9", "donn\u00e9es_\u00e9_backup_20250809_030000")
    assert decomposed != binding  # no Unicode normalisation: the name's bytes as stored are bound
    data_key = crypto.new_data_key()
    envelope = crypto.wrap_data_key(MK, data_key, binding)
    assert crypto.unwrap_data_key(MK, envelope, binding=binding) == data_key
    with pytest.raises(TamperedError):
        crypto.unwrap_data_key(MK, envelope, binding=decomposed)


@pytest.mark.parametrize("args, error, words", [
    (("", DATABASE, NAME), ValueError, "host is empty"),
    ((HOST, "", NAME), ValueError, "database is empty"),
    ((HOST, DATABASE, ""), ValueError, "name is empty"),
    ((None, DATABASE, NAME), TypeError, "host must be a str, not NoneType"),
    ((HOST, b"quankey_prod", NAME), TypeError, "database must be a str, not bytes"),
    ((HOST, DATABASE, 20250809), TypeError, "name must be a str, not int"),
    ((HOST, "x" * 65536, NAME), ValueError, "database is 65536 UTF-8 bytes, at most 65535"),
    ((HOST, "\u00e9" * 32768, NAME), ValueError, "database is 65536 UTF-8 bytes"),
    (("\udc80", DATABASE, NAME), ValueError, "host is not encodable as UTF-8"),
])
def test_backup_binding_rejects_caller_bugs(args, error, words):
    with pytest.raises(error, match=re.escape(words)) as info:
        crypto.backup_binding(*args)
    assert info.value.__context__ is None


def test_backup_binding_takes_parts_of_up_to_65535_bytes():
    binding = crypto.backup_binding(HOST, "x" * 65535, NAME)
    assert b"\xff\xff" + b"x" * 65535 in binding
    envelope = crypto.wrap_data_key(MK, DK, binding)
    assert crypto.unwrap_data_key(MK, envelope, binding=binding) == DK


def test_envelope_version_of_every_known_type():
    assert crypto.envelope_version(crypto.wrap_data_key(MK, DK)) == 1
    assert crypto.envelope_version(crypto.wrap_data_key(MK, DK, BINDING)) == 2
    assert crypto.envelope_version(V["envelope"]["json"]) == 1
    assert crypto.envelope_version(V["envelope_v2"]["json"]) == 2
    assert crypto.envelope_version({"type": "hybrid-pq-x25519-mlkem768-hkdf-sha256"}) == 1
    assert crypto.envelope_version({"type": "hybrid-pq-x25519-mlkem768-hkdf-sha256-v2"}) == 2


@pytest.mark.parametrize("envelope, words", [
    ({"type": "openssl-enc-pbkdf2-sha256"}, "OpenSSL enc (aes-256-cbc) envelope has no format version"),
    ({"type": "aes-256-gcm-hkdf-sha256-v3"}, "field 'type' is 'aes-256-gcm-hkdf-sha256-v3': expected a master-key type"),
    ({"type": ["aes-256-gcm-hkdf-sha256"]}, "field 'type' is 'list'"),
    ({"type": "x" * 100}, "field 'type' is 'str'"),
    ({}, "field 'type' is missing"),
    ({"type": None}, "field 'type' is missing"),
    (["type", "aes-256-gcm-hkdf-sha256"], "not a JSON object"),
    (None, "not a JSON object"),
])
def test_envelope_version_of_anything_else_is_an_integrity_error(envelope, words):
    with pytest.raises(IntegrityError, match=re.escape(words)) as info:
        crypto.envelope_version(envelope)
    assert type(info.value) is IntegrityError  # pylint: disable=unidiomatic-typecheck  # exactly, not a subclass


def test_rekey_rewraps_a_v1_backup_to_v2_without_touching_the_object():
    blob = long_object()
    old = crypto.wrap_data_key(MK, DK)
    assert crypto.envelope_version(old) == 1
    new = crypto.wrap_data_key(OTHER_MK, crypto.unwrap_data_key(MK, old, binding=BINDING), BINDING)
    assert crypto.envelope_version(new) == 2 and new["key_id"] == crypto.key_id(OTHER_MK)
    assert decrypt(blob, data_key=crypto.unwrap_data_key([MK, OTHER_MK], new, binding=BINDING)) == LONG_PLAINTEXT


# --------------------------------------------------------------------------- master key

def test_parse_master_key_accepts_openssl_output():
    text = base64.b64encode(OTHER_MK).decode()
    assert crypto.parse_master_key(text + "\n") == OTHER_MK
    assert crypto.parse_master_key("  " + text[:20] + "\n" + text[20:] + " ") == OTHER_MK
    assert crypto.parse_master_key(text.encode()) == OTHER_MK


@pytest.mark.parametrize("value", [None, "", "   \n", b""])
def test_parse_master_key_not_set(value):
    with pytest.raises(ConfigError) as info:
        crypto.parse_master_key(value)
    assert str(info.value) == ("BACKUP_ENCRYPTION_KEY is not set: generate one with `openssl rand -base64 32` "
                               "and set it (e.g. in /etc/quankey/backup.env)")


def check_secret_free(error, value):
    message = str(error)
    assert "\n" not in message
    assert "openssl rand -base64 32" in message
    assert error.__context__ is None and error.__cause__ is None  # no chained traceback quoting the value
    for i in range(len(value) - 5):
        assert value[i:i + 6] not in message, "key material in message: %r" % message


@pytest.mark.parametrize("value", [
    "Qk!x9#pLm$7r@2vW+Zt0",
    base64.urlsafe_b64encode(b"\xfb" * 32).decode(),  # URL-safe alphabet
    base64.b64encode(OTHER_MK).decode().rstrip("="),  # missing padding
    "\u00e9" * 44,
])
def test_parse_master_key_bad_base64(value):
    with pytest.raises(ConfigError, match="BACKUP_ENCRYPTION_KEY is not valid base64") as info:
        crypto.parse_master_key(value)
    check_secret_free(info.value, value)


@pytest.mark.parametrize("size", [1, 16, 31, 33, 64])
def test_parse_master_key_wrong_length(size):
    value = base64.b64encode(os.urandom(size)).decode()
    with pytest.raises(ConfigError, match="BACKUP_ENCRYPTION_KEY decodes to %d bytes instead of 32" % size) as info:
        crypto.parse_master_key(value)
    check_secret_free(info.value, value)


def test_parse_master_key_uses_the_given_name():
    with pytest.raises(ConfigError, match="^OLD_KEY is not set"):
        crypto.parse_master_key("", name="OLD_KEY")


def test_reprs_hold_no_key_material():
    enc = crypto.StreamEncryptor(DK)
    dec = crypto.StreamDecryptor(DK)
    dec.update(enc.update(b"x") + enc.finalize())
    for obj in (enc, dec):
        text = repr(obj)
        assert text.startswith("<Stream") and DK.hex() not in text and repr(DK) not in text


def test_missing_cryptography_is_a_config_error(monkeypatch):
    monkeypatch.setattr(crypto, "HAS_CRYPTOGRAPHY", False)
    for call in (lambda: crypto.StreamEncryptor(DK), lambda: crypto.StreamDecryptor(DK),
                 lambda: crypto.wrap_data_key(MK, DK), lambda: crypto.unwrap_data_key(MK, V["envelope"]["json"]),
                 lambda: crypto.wrap_data_key(MK, DK, BINDING), lambda: crypto.unwrap_data_key(MK, V["envelope_v2"]["json"], binding=BINDING)):
        with pytest.raises(ConfigError, match="the Python package 'cryptography' is required: pip install cryptography"):
            call()
    assert crypto.key_id(MK) == V["key_id"]  # needs only hashlib
    assert crypto.backup_binding(HOST, DATABASE, NAME) == BINDING and crypto.envelope_version(V["envelope_v2"]["json"]) == 2


def test_bytes_only_aead_path(monkeypatch):
    """Older cryptography takes only bytes as AEAD data: the copying path gives the same objects."""
    plaintext = os.urandom(3 * S + 7)
    expected = encrypt(plaintext, salt=STREAM_SALT)
    monkeypatch.setattr(crypto, "_AEAD_TAKES_BUFFERS", False)
    chunks = random_chunks(random.Random(3), len(plaintext), 2 * S)
    assert encrypt(bytearray(plaintext), salt=STREAM_SALT, chunks=chunks) == expected
    assert decrypt(memoryview(expected), chunk=700) == plaintext
