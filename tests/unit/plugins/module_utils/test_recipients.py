# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests of the hybrid-pq recipient mode (plugins/module_utils/recipients.py, docs/FORMAT.md)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import binascii
import copy
import datetime
import hashlib
import hmac
import json
import os
import pickle
import re

import pytest

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ansible_collections.quankey.backup.plugins.module_utils.formats import crypto, recipients
from ansible_collections.quankey.backup.plugins.module_utils.errors import (
    ConfigError,
    IntegrityError,
    TamperedError,
    WrongKeyError,
)

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS_PATH = os.path.join(HERE, "fixtures", "hybrid_pq_vectors.json")

with open(VECTORS_PATH, encoding="utf-8") as _f:
    V = json.load(_f)

SECRETS = dict((name, bytes.fromhex(item["secret_hex"])) for name, item in V["identities"].items())
VECTOR = dict((item["name"], item) for item in V["vectors"])
DK = bytes(range(32, 64))
HOST, DATABASE, NAME = "db1", "quankey_prod", "quankey_prod_backup_20250809_030000"
BINDING = crypto.backup_binding(HOST, DATABASE, NAME)
SLOT_FIELDS = ("ephemeral_public", "kem_ciphertext", "salt", "nonce", "wrapped_key")
FIELD_SIZES = {"ephemeral_public": 32, "kem_ciphertext": 1088, "salt": 16, "nonce": 12, "wrapped_key": 48}


# --------------------------------------------------------------------------- independent reference
# Written from docs/FORMAT.md with hmac (RFC 5869 HKDF), the low-level GCM API and
# the raw X25519 / ML-KEM primitives, so the vectors check the specification.

def ref_hkdf(ikm, salt, info):
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def ref_public(secret):
    x_public = X25519PrivateKey.from_private_bytes(secret[:32]).public_key().public_bytes_raw()
    kem_public = MLKEM768PrivateKey.from_seed_bytes(secret[32:]).public_key().public_bytes_raw()
    return x_public + kem_public


def ref_recipient_id(public):
    return "qkr-" + hashlib.sha256(b"quankey-backup/v1 hybrid-pq recipient-id\x00" + public).hexdigest()[:16]


def ref_public_key_text(public):
    checksum = hashlib.sha256(b"quankey-backup/v1 hybrid-pq public-key\x00" + public).digest()[:8]
    return "qkpq1-pub-" + base64.b64encode(public + checksum).decode("ascii")


def vector_binding(vector):
    """The binding bytes of a version 2 vector, built from its parts as docs/FORMAT.md says; None for version 1."""
    if "binding" not in vector:
        return None
    out = b"quankey-backup/v2 backup\x00"
    for part in ("host", "database", "name"):
        encoded = vector["binding"][part].encode("utf-8")
        out += len(encoded).to_bytes(2, "big") + encoded
    assert out.hex() == vector["binding"]["hex"]
    return out


def ref_open_slot(secret, slot, binding=None):
    """Open one envelope slot from the specification (version 2 when ``binding`` is given); return (data key, intermediate values)."""
    ephemeral = base64.b64decode(slot["ephemeral_public"])
    ciphertext = base64.b64decode(slot["kem_ciphertext"])
    salt = base64.b64decode(slot["salt"])
    nonce = base64.b64decode(slot["nonce"])
    wrapped = base64.b64decode(slot["wrapped_key"])
    x_private = X25519PrivateKey.from_private_bytes(secret[:32])
    x_secret = x_private.exchange(X25519PublicKey.from_public_bytes(ephemeral))
    kem_secret = MLKEM768PrivateKey.from_seed_bytes(secret[32:]).decapsulate(ciphertext)
    rid = ref_recipient_id(ref_public(secret))
    label = b"quankey-backup/v1 hybrid-pq kek\x00" if binding is None else b"quankey-backup/v2 hybrid-pq kek\x00"
    info = label + rid.encode("ascii") + ephemeral + x_private.public_key().public_bytes_raw() + hashlib.sha256(ciphertext).digest()
    kek = ref_hkdf(kem_secret + x_secret, salt, info)
    dec = Cipher(algorithms.AES(kek), modes.GCM(nonce, wrapped[32:])).decryptor()
    dec.authenticate_additional_data(label + rid.encode("ascii") + (binding or b""))
    data_key = dec.update(wrapped[:32]) + dec.finalize()
    return data_key, {
        "recipient_id": rid,
        "mlkem_shared_secret_hex": kem_secret.hex(),
        "x25519_shared_secret_hex": x_secret.hex(),
        "kem_ciphertext_sha256": hashlib.sha256(ciphertext).hexdigest(),
        "kek_hex": kek.hex(),
    }


# --------------------------------------------------------------------------- helpers

def identity(name):
    return recipients.identity_from_secret(SECRETS[name])


def fresh(count):
    return [recipients.generate_identity() for _index in range(count)]


def b64(data):
    return base64.b64encode(data).decode("ascii")


def flip(text, position=0):
    """Base64 text with one bit of the decoded byte at ``position`` flipped."""
    data = bytearray(base64.b64decode(text))
    data[position] ^= 0x01
    return b64(bytes(data))


def secret_forms(ident):
    """Every text form of an identity's secret parts that must never appear anywhere."""
    line = ident.secret_line()
    secret = base64.b64decode(line[len(recipients.SECRET_KEY_PREFIX):])
    forms = set()
    for part in (secret, secret[:32], secret[32:]):
        forms.update([binascii.hexlify(part).decode("ascii"), binascii.hexlify(part).decode("ascii").upper(), b64(part),
                      base64.urlsafe_b64encode(part).decode("ascii").rstrip("=")])
    forms.add(line[len(recipients.SECRET_KEY_PREFIX):])
    # also the middle of the base64, for texts that cut it differently
    forms.update(b64(part)[8:40] for part in (secret, secret[:32], secret[32:]))
    return forms


def assert_no_secret(text, *idents):
    for ident in idents:
        for form in secret_forms(ident):
            assert form not in text


# --------------------------------------------------------------------------- constants and module

def test_names_the_integrator_relies_on():
    assert recipients.ENVELOPE_TYPE == "hybrid-pq-x25519-mlkem768-hkdf-sha256" == V["envelope_type"]
    assert recipients.ENVELOPE_TYPE_V2 == "hybrid-pq-x25519-mlkem768-hkdf-sha256-v2" == V["envelope_type_v2"]
    assert crypto._HYBRID_PQ_TYPES == {recipients.ENVELOPE_TYPE: 1, recipients.ENVELOPE_TYPE_V2: 2}
    assert recipients.ENCRYPTION_NAME == "hybrid-pq"
    assert recipients.PUBLIC_KEY_PREFIX == "qkpq1-pub-"
    assert recipients.RECIPIENT_ID_PREFIX == "qkr-"
    assert recipients.SECRET_KEY_PREFIX == "QKPQ1-SECRET-"
    assert recipients.HAS_MLKEM is True
    recipients.require_mlkem()  # does not raise here


def test_require_mlkem_says_which_version(monkeypatch):
    monkeypatch.setattr(recipients, "HAS_MLKEM", False)
    with pytest.raises(ConfigError) as info:
        recipients.require_mlkem()
    message = str(info.value)
    assert "48.0.0" in message and recipients.CRYPTOGRAPHY_VERSION in message
    assert "pip install 'cryptography>=48.0.0'" in message and "\n" not in message
    monkeypatch.setattr(recipients, "MLKEM768PrivateKey", None)
    assert "the installed version is %s:" % recipients.CRYPTOGRAPHY_VERSION in recipients._mlkem_missing_message()
    monkeypatch.setattr(recipients, "CRYPTOGRAPHY_VERSION", None)
    assert "which is not installed" in recipients._mlkem_missing_message()
    for function, args in [(recipients.generate_identity, ()), (recipients.parse_recipient, ("x", "W")),
                           (recipients.seal_data_key, ([], DK)), (recipients.open_data_key, ([], {}, "N"))]:
        with pytest.raises(ConfigError, match="needs ML-KEM-768"):
            function(*args)


def test_module_is_python39_syntax():
    import ast
    with open(recipients.__file__.replace(".pyc", ".py"), encoding="utf-8") as handle:
        ast.parse(handle.read(), feature_version=(3, 9))


# --------------------------------------------------------------------------- vectors

@pytest.mark.parametrize("name", sorted(SECRETS))
def test_identity_vector_reproduces_public_key_and_id(name):
    item = V["identities"][name]
    ident = identity(name)
    public = ref_public(SECRETS[name])
    assert ident.recipient_id == item["recipient_id"] == ref_recipient_id(public)
    assert recipients.public_key_text(ident) == ident.recipient.text == item["public_key"] == ref_public_key_text(public)
    assert ident.secret_line() == item["secret_line"] == "QKPQ1-SECRET-" + b64(SECRETS[name])
    assert public[:32].hex() == item["x25519_public_hex"]
    assert hashlib.sha256(public[32:]).hexdigest() == item["mlkem_public_sha256"]
    assert base64.b64decode(item["public_key"][10:])[1216:].hex() == item["checksum_hex"]
    parsed = recipients.parse_identity_text(item["secret_line"] + "\n", "vector")
    assert [one.recipient_id for one in parsed] == [item["recipient_id"]]
    assert recipients.parse_recipient(item["public_key"], "vector").recipient_id == item["recipient_id"]


def test_vector_sizes():
    text = V["identities"]["alice"]["public_key"]
    assert len(text) == 10 + 1632 and not text.endswith("=")
    assert len(V["identities"]["alice"]["secret_line"]) == 13 + 128
    assert re.match(r"\Aqkr-[0-9a-f]{16}\Z", V["identities"]["alice"]["recipient_id"])


def test_the_vectors_cover_both_versions():
    assert sorted(VECTOR) == ["one_recipient", "two_recipients", "two_recipients_v2"]
    assert [crypto.envelope_version(VECTOR[name]["envelope"]) for name in sorted(VECTOR)] == [1, 1, 2]
    assert vector_binding(VECTOR["two_recipients_v2"]) == BINDING
    assert (VECTOR["two_recipients_v2"]["binding"]["host"], VECTOR["two_recipients_v2"]["binding"]["database"],
            VECTOR["two_recipients_v2"]["binding"]["name"]) == (HOST, DATABASE, NAME)


@pytest.mark.parametrize("name", sorted(VECTOR))
def test_vector_envelopes_open(name):
    vector = VECTOR[name]
    data_key = bytes.fromhex(vector["data_key_hex"])
    envelope = vector["envelope"]
    binding = vector_binding(vector)
    assert envelope["type"] == (recipients.ENVELOPE_TYPE if binding is None else recipients.ENVELOPE_TYPE_V2)
    assert recipients.envelope_recipient_ids(envelope) == [V["identities"][who]["recipient_id"] for who in vector["opens_with"]]
    for who in vector["opens_with"]:
        assert recipients.open_data_key(identity(who), envelope, "vector", binding=binding) == data_key
        assert recipients.open_data_key([identity(other) for other in sorted(SECRETS)], envelope, "vector", binding) == data_key
    for who in vector["does_not_open_with"]:
        with pytest.raises(WrongKeyError):
            recipients.open_data_key([identity(who)], envelope, "vector", binding=binding)


@pytest.mark.parametrize("name", sorted(VECTOR))
def test_vector_intermediates_match_the_specification(name):
    vector = VECTOR[name]
    assert len(vector["slots"]) == len(vector["envelope"]["recipients"]) == len(vector["opens_with"])
    for who, slot, expected in zip(vector["opens_with"], vector["envelope"]["recipients"], vector["slots"]):
        data_key, values = ref_open_slot(SECRETS[who], slot, vector_binding(vector))
        assert data_key.hex() == vector["data_key_hex"]
        assert values == expected
        assert slot["recipient_id"] == expected["recipient_id"]


def test_v2_vector_opens_only_for_its_backup():
    vector = VECTOR["two_recipients_v2"]
    envelope = vector["envelope"]
    with pytest.raises(TypeError, match="binding=crypto.backup_binding"):
        recipients.open_data_key([identity("alice")], envelope, "vector")
    for who in ("alice", "bob"):
        with pytest.raises(TamperedError) as info:
            recipients.open_data_key([identity(who)], envelope, "vector", binding=crypto.backup_binding("db2", DATABASE, NAME))
        assert_copied_or_modified(info.value, identity(who).recipient_id)
    # the v1 intermediates of the spec do not open it: the label differs
    with pytest.raises(InvalidTag):
        ref_open_slot(SECRETS["alice"], envelope["recipients"][0])
    assert ref_open_slot(SECRETS["alice"], envelope["recipients"][0], BINDING)[0].hex() == vector["data_key_hex"]


def test_two_recipient_vector_opens_with_either_identity():
    vector = VECTOR["two_recipients"]
    data_key = bytes.fromhex(vector["data_key_hex"])
    assert sorted(vector["opens_with"]) == ["alice", "bob"]
    assert recipients.open_data_key([identity("alice")], vector["envelope"], "vector") == data_key
    assert recipients.open_data_key([identity("bob")], vector["envelope"], "vector") == data_key
    assert recipients.open_data_key([identity("carol"), identity("bob")], vector["envelope"], "vector") == data_key


# --------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("count", [1, 3])
def test_round_trip(count):
    idents = fresh(count)
    data_key = os.urandom(32)
    envelope = recipients.seal_data_key([one.recipient for one in idents], data_key)
    envelope = json.loads(json.dumps(envelope))  # JSON-ready
    assert set(envelope) == {"type", "recipients"}
    assert [slot["recipient_id"] for slot in envelope["recipients"]] == [one.recipient_id for one in idents]
    for slot in envelope["recipients"]:
        assert set(slot) == {"recipient_id"} | set(SLOT_FIELDS)
        for field, size in FIELD_SIZES.items():
            assert len(base64.b64decode(slot[field], validate=True)) == size
    for one in idents:
        assert recipients.open_data_key([one], envelope, "N") == data_key
        assert recipients.open_data_key(one, envelope, "N") == data_key
        _value, values = ref_open_slot(base64.b64decode(one.secret_line()[13:]), envelope["recipients"][idents.index(one)])
        assert _value == data_key and values["recipient_id"] == one.recipient_id


def test_seal_is_randomised_and_collapses_duplicates():
    alice = identity("alice")
    first = recipients.seal_data_key([alice.recipient, alice.recipient, recipients.parse_recipient(alice.recipient.text, "x")], DK)
    second = recipients.seal_data_key(alice.recipient, DK)
    assert len(first["recipients"]) == len(second["recipients"]) == 1
    for field in SLOT_FIELDS:
        assert first["recipients"][0][field] != second["recipients"][0][field]
    assert recipients.open_data_key([alice], first, "N") == recipients.open_data_key([alice], second, "N") == DK


def test_seal_needs_1_to_16_recipients():
    with pytest.raises(ConfigError, match=r"^no hybrid-pq recipient given"):
        recipients.seal_data_key([], DK)
    many = fresh(17)
    with pytest.raises(ConfigError, match=r"^17 hybrid-pq recipients given: an envelope holds at most 16$"):
        recipients.seal_data_key([one.recipient for one in many], DK)
    envelope = recipients.seal_data_key([one.recipient for one in many[:16]], DK)
    assert len(envelope["recipients"]) == 16
    assert recipients.open_data_key([many[15]], envelope, "N") == DK


def test_seal_rejects_caller_bugs():
    alice = identity("alice")
    with pytest.raises(ValueError):
        recipients.seal_data_key([alice.recipient], bytes(31))
    with pytest.raises(TypeError):
        recipients.seal_data_key([alice.recipient], "not bytes")
    with pytest.raises(TypeError):
        recipients.seal_data_key([alice], DK)  # an Identity is not a Recipient
    with pytest.raises(TypeError):
        recipients.public_key_text("qkpq1-pub-")


def test_seal_refuses_low_order_x25519_key():
    alice = identity("alice")
    bad = recipients.Recipient(bytes(32), alice.recipient.public_bytes[32:])
    with pytest.raises(ConfigError, match=r"^recipient %s has an unusable X25519 public key" % bad.recipient_id):
        recipients.seal_data_key([bad], DK)


def test_generate_identity_is_random():
    first, second = fresh(2)
    assert first.recipient_id != second.recipient_id
    assert first.secret_line() != second.secret_line()


# --------------------------------------------------------------------------- public keys

def test_public_key_text_round_trip():
    ident = recipients.generate_identity()
    text = recipients.public_key_text(ident)
    assert text == recipients.public_key_text(ident.recipient) and text.startswith("qkpq1-pub-")
    parsed = recipients.parse_recipient(text, "BACKUP_RECIPIENTS")
    assert parsed == ident.recipient and hash(parsed) == hash(ident.recipient)
    assert parsed.recipient_id == ident.recipient_id and parsed.text == text
    assert parsed.public_bytes == ident.recipient.public_bytes
    assert recipients.parse_recipient("  %s\n" % text, "x") == parsed
    assert recipients.parse_recipient(text.encode("ascii"), "x") == parsed
    assert repr(parsed) == "Recipient(%s)" % ident.recipient_id
    assert recipients.recipient_id_of(parsed.public_bytes) == parsed.recipient_id


def test_parse_recipients_splits_collapses_and_counts():
    alice, bob, carol = identity("alice"), identity("bob"), identity("carol")
    value = "%s,%s\n %s  %s," % (alice.recipient.text, bob.recipient.text, alice.recipient.text, carol.recipient.text)
    assert [one.recipient_id for one in recipients.parse_recipients(value, "R")] == [alice.recipient_id, bob.recipient_id, carol.recipient_id]
    as_list = recipients.parse_recipients([alice.recipient.text, "%s %s" % (bob.recipient.text, bob.recipient.text)], "R")
    assert [one.recipient_id for one in as_list] == [alice.recipient_id, bob.recipient_id]
    assert recipients.parse_recipients("", "R") == [] == recipients.parse_recipients(None, "R") == recipients.parse_recipients([], "R")
    assert recipients.parse_recipients(" , \n", "R") == []
    with pytest.raises(ConfigError, match=r"^BACKUP_RECIPIENTS \(key 2 of 3\) is not a hybrid-pq public key"):
        recipients.parse_recipients([alice.recipient.text, "nonsense-token", bob.recipient.text], "BACKUP_RECIPIENTS")
    with pytest.raises(ConfigError, match=r"^R is not a hybrid-pq public key"):
        recipients.parse_recipients("nonsense-token", "R")


def test_parse_recipients_at_most_16():
    texts = [one.recipient.text for one in fresh(17)]
    with pytest.raises(ConfigError, match=r"^R lists 17 different recipients: at most 16 are allowed$"):
        recipients.parse_recipients(texts, "R")
    assert len(recipients.parse_recipients(texts[:16] + texts[:3], "R")) == 16


def _bad_tokens():
    alice = identity("alice")
    text = alice.recipient.text
    body = text[len("qkpq1-pub-"):]
    raw = base64.b64decode(body)
    wrong_kem = raw[:32] + b"\xff" * 1184
    wrong_kem += hashlib.sha256(b"quankey-backup/v1 hybrid-pq public-key\x00" + wrong_kem).digest()[:8]
    changed = body[:100] + ("A" if body[100] != "A" else "B") + body[101:]
    return [
        ("wrong prefix", "qkpq2-pub-" + body, "is not a hybrid-pq public key: expected qkpq1-pub- followed by base64"),
        ("secret given", alice.secret_line(), "is a hybrid-pq secret key, not a public key"),
        ("master key given", b64(bytes(range(32))), "is not a hybrid-pq public key"),
        ("not base64", "qkpq1-pub-" + body[:-4] + "!!!!", "is not valid base64"),
        ("truncated", "qkpq1-pub-" + b64(raw[:-3]), "decodes to 1221 bytes instead of 1224"),
        ("mistyped", "qkpq1-pub-" + changed, "its checksum does not match"),
        ("checksum dropped", "qkpq1-pub-" + b64(raw[:1216]), "decodes to 1216 bytes instead of 1224"),
        ("ML-KEM key invalid", "qkpq1-pub-" + b64(wrong_kem), "its ML-KEM-768 part is rejected"),
        ("empty", "  ", "is empty"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_tokens())))
def test_bad_token_is_config_error_without_the_token(case):
    _name, token, expected = _bad_tokens()[case]
    with pytest.raises(ConfigError) as info:
        recipients.parse_recipient(token, "BACKUP_RECIPIENTS (key 1 of 2)")
    message = str(info.value)
    assert message.startswith("BACKUP_RECIPIENTS (key 1 of 2) ")
    assert expected in message
    assert "\n" not in message
    body = token.strip()
    for start in range(0, max(len(body) - 12, 1), 7):
        piece = body[start:start + 12]
        if len(piece) == 12 and not piece.startswith(("qkpq", "QKPQ")):
            assert piece not in message
    assert_no_secret(message, identity("alice"))
    assert info.value.__cause__ is None and info.value.__context__ is None


# --------------------------------------------------------------------------- identities and files

def test_identity_file_text_round_trip():
    ident = recipients.generate_identity()
    when = datetime.datetime(2026, 5, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
    text = recipients.identity_file_text(ident, when)
    lines = text.splitlines()
    assert text.endswith("\n")
    assert all(line.startswith("# ") for line in lines[:-1])
    assert "created 2026-05-01T12:00:00Z" in lines[0]
    assert "# recipient id: %s" % ident.recipient_id in lines
    assert any(line.endswith(": " + ident.recipient.text) for line in lines)
    assert lines[-1] == ident.secret_line() and lines[-1].startswith("QKPQ1-SECRET-")
    parsed = recipients.parse_identity_text(text, "identity file x")
    assert [one.recipient_id for one in parsed] == [ident.recipient_id]
    assert parsed[0].secret_line() == ident.secret_line()
    assert "created" in recipients.identity_file_text(ident).splitlines()[0]


def test_parse_identity_text_comments_blank_lines_and_several():
    alice, bob = identity("alice"), identity("bob")
    text = "# two identities\n\n   \n%s   # old one\n\t%s\n" % (alice.secret_line(), bob.secret_line())
    assert [one.recipient_id for one in recipients.parse_identity_text(text, "f")] == [alice.recipient_id, bob.recipient_id]
    assert recipients.parse_identity_text("# nothing\n\n", "f") == []


def _bad_identity_lines():
    alice = identity("alice")
    body = alice.secret_line()[len("QKPQ1-SECRET-"):]
    return [
        (alice.recipient.text, "is a hybrid-pq public key, not an identity"),
        (b64(bytes(range(32))), "is not a hybrid-pq identity: expected a line starting with QKPQ1-SECRET-"),
        ("QKPQ1-SECRET-" + body[:-2] + "*=", "is not valid base64"),
        ("QKPQ1-SECRET-" + b64(base64.b64decode(body)[:95]), "decodes to 95 bytes instead of 96"),
        ("qkpq1-secret-" + body, "is not a hybrid-pq identity"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_identity_lines())))
def test_bad_identity_line_is_named_by_line_number(case):
    line, expected = _bad_identity_lines()[case]
    text = "# comment\n\n%s\n" % line
    with pytest.raises(ConfigError) as info:
        recipients.parse_identity_text(text, "identity file /etc/quankey/identity")
    message = str(info.value)
    assert message.startswith("identity file /etc/quankey/identity line 3 ")
    assert expected in message
    body = line.split("-")[-1]
    assert body[5:25] not in message
    assert_no_secret(message, identity("alice"))


def _write(path, text, mode):
    path.write_text(text)
    os.chmod(str(path), mode)
    return str(path)


def test_identity_file_mode_0600_accepted(tmp_path):
    ident = recipients.generate_identity()
    path = _write(tmp_path / "identity", recipients.identity_file_text(ident), 0o600)
    assert [one.recipient_id for one in recipients.read_identity_file(path, "BACKUP_IDENTITY_FILE")] == [ident.recipient_id]
    os.chmod(path, 0o400)
    assert [one.recipient_id for one in recipients.read_identity_file(path)] == [ident.recipient_id]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_identity_file_readable_by_others_refused(tmp_path, mode):
    ident = recipients.generate_identity()
    path = _write(tmp_path / "identity", recipients.identity_file_text(ident), mode)
    with pytest.raises(ConfigError) as info:
        recipients.read_identity_file(path, "BACKUP_IDENTITY_FILE")
    message = str(info.value)
    assert message == ("identity file %s is mode %04o and holds a secret key: refused until only its owner can read it: chmod 0600 %s"
                       % (path, mode, path))
    assert_no_secret(message, ident)


def test_identity_file_missing_directory_empty_and_binary(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"^identity file %s \(LABEL\) does not exist: make one with `quankey-backup keygen`" % re.escape(missing)):
        recipients.read_identity_file(missing, "LABEL")
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match=r"is not a regular file$"):
        recipients.read_identity_file(str(directory), "LABEL")
    empty = _write(tmp_path / "empty", "# nothing here\n", 0o600)
    with pytest.raises(ConfigError, match=r"^identity file %s \(LABEL\) holds no identity" % re.escape(empty)):
        recipients.read_identity_file(empty, "LABEL")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    os.chmod(str(binary), 0o600)
    with pytest.raises(ConfigError, match=r"is not text"):
        recipients.read_identity_file(str(binary), "LABEL")
    bad = _write(tmp_path / "bad", "# ok\n%s\n" % identity("alice").recipient.text, 0o600)
    with pytest.raises(ConfigError, match=r"^identity file %s line 2 is a hybrid-pq public key" % re.escape(bad)):
        recipients.read_identity_file(bad, "LABEL")


def test_reprs_and_strs_hold_no_secret():
    for ident in [identity("alice"), recipients.generate_identity()]:
        for text in [repr(ident), str(ident), repr(ident.recipient), str(ident.recipient), repr([ident]), "%s" % ident]:
            assert_no_secret(text, ident)
            assert ident.recipient_id in text
        assert repr(ident) == "Identity(%s)" % ident.recipient_id
        assert_no_secret(ident.recipient.text, ident)
        assert_no_secret(json.dumps(recipients.seal_data_key(ident.recipient, DK)), ident)


def test_identity_is_not_pickled_or_copied():
    ident = identity("alice")
    with pytest.raises(TypeError):
        pickle.dumps(ident)
    with pytest.raises(TypeError):
        copy.deepcopy(ident)


# --------------------------------------------------------------------------- wrong key, tampering

def test_non_recipient_identity_is_wrong_key_naming_ids():
    alice, bob, carol = identity("alice"), identity("bob"), identity("carol")
    envelope = recipients.seal_data_key([alice.recipient, bob.recipient], DK)
    with pytest.raises(WrongKeyError) as info:
        recipients.open_data_key([carol], envelope, "BACKUP_IDENTITY_FILE")
    assert str(info.value) == ("this backup's data key is sealed to recipients %s, %s; the identity given is %s: "
                               "set BACKUP_IDENTITY_FILE to the identity of one of its recipients"
                               % (alice.recipient_id, bob.recipient_id, carol.recipient_id))
    assert_no_secret(str(info.value), alice, bob, carol)
    others = fresh(2)
    single = recipients.seal_data_key(alice.recipient, DK)
    with pytest.raises(WrongKeyError) as info:
        recipients.open_data_key(others, single, "LABEL")
    assert str(info.value) == ("this backup's data key is sealed to recipient %s; the identities given are %s, %s: "
                               "set LABEL to the identity of one of its recipients"
                               % (alice.recipient_id, others[0].recipient_id, others[1].recipient_id))
    assert isinstance(info.value, IntegrityError)


def test_no_identity_given_is_config_error():
    envelope = recipients.seal_data_key(identity("alice").recipient, DK)
    with pytest.raises(ConfigError, match=r"^no hybrid-pq identity given: set BACKUP_IDENTITY_FILE to"):
        recipients.open_data_key([], envelope, "BACKUP_IDENTITY_FILE")


def _sealed_to_alice_and_bob():
    alice, bob = identity("alice"), identity("bob")
    return alice, bob, recipients.seal_data_key([alice.recipient, bob.recipient], DK)


@pytest.mark.parametrize("field", SLOT_FIELDS)
@pytest.mark.parametrize("position", [0, -1])
def test_flipped_byte_in_matching_slot_is_tampered(field, position):
    alice, bob, envelope = _sealed_to_alice_and_bob()
    for index, who in enumerate([alice, bob]):
        damaged = copy.deepcopy(envelope)
        damaged["recipients"][index][field] = flip(damaged["recipients"][index][field], position)
        with pytest.raises(TamperedError) as info:
            recipients.open_data_key([who], damaged, "N")
        message = str(info.value)
        assert message == ("this backup's data key is sealed to recipient %s and the identity given with that id does not open it: "
                           "the encryption envelope in the metadata was modified or corrupted" % who.recipient_id)
        assert_no_secret(message, alice, bob)
        other = bob if who is alice else alice
        assert recipients.open_data_key([other], damaged, "N") == DK  # the other slot is intact


def test_altered_recipient_id_is_tampered():
    alice, bob, envelope = _sealed_to_alice_and_bob()
    damaged = copy.deepcopy(envelope)
    rid = damaged["recipients"][0]["recipient_id"]
    damaged["recipients"][0]["recipient_id"] = rid[:-1] + ("0" if rid[-1] != "0" else "1")
    with pytest.raises(TamperedError) as info:
        recipients.open_data_key([alice], damaged, "N")
    assert str(info.value) == ("encryption envelope field 'recipients[0].recipient_id' says %s but the slot was sealed to the identity %s given: "
                               "the encryption envelope in the metadata was modified or corrupted"
                               % (damaged["recipients"][0]["recipient_id"], alice.recipient_id))
    assert recipients.open_data_key([bob], damaged, "N") == DK
    # the ids of two slots swapped: each identity finds "its" slot and fails
    swapped = copy.deepcopy(envelope)
    swapped["recipients"][0]["recipient_id"], swapped["recipients"][1]["recipient_id"] = bob.recipient_id, alice.recipient_id
    for who in (alice, bob):
        with pytest.raises(TamperedError):
            recipients.open_data_key([who], swapped, "N")


@pytest.mark.parametrize("fields", [("ephemeral_public",), ("kem_ciphertext",), ("ephemeral_public", "kem_ciphertext"),
                                    ("salt",), ("nonce",), ("wrapped_key",), SLOT_FIELDS])
def test_swapping_fields_between_slots_fails(fields):
    alice, bob, envelope = _sealed_to_alice_and_bob()
    damaged = copy.deepcopy(envelope)
    first, second = damaged["recipients"]
    for field in fields:
        first[field], second[field] = second[field], first[field]
    for who in (alice, bob):
        with pytest.raises(TamperedError):
            recipients.open_data_key([who], damaged, "N")


def test_low_order_ephemeral_key_is_tampered():
    alice, _bob, envelope = _sealed_to_alice_and_bob()
    damaged = copy.deepcopy(envelope)
    damaged["recipients"][0]["ephemeral_public"] = b64(bytes(32))
    with pytest.raises(TamperedError):
        recipients.open_data_key([alice], damaged, "N")


def test_slot_from_another_envelope_fails():
    alice = identity("alice")
    first = recipients.seal_data_key(alice.recipient, DK)
    second = recipients.seal_data_key(alice.recipient, bytes(range(100, 132)))
    mixed = copy.deepcopy(first)
    mixed["recipients"][0]["wrapped_key"] = second["recipients"][0]["wrapped_key"]
    with pytest.raises(TamperedError):
        recipients.open_data_key([alice], mixed, "N")
    whole = copy.deepcopy(first)
    whole["recipients"][0] = second["recipients"][0]
    assert recipients.open_data_key([alice], whole, "N") == bytes(range(100, 132))  # a whole slot is a valid sealing


@pytest.mark.parametrize("field", SLOT_FIELDS)
def test_field_damage_is_integrity_error_naming_field_and_slot(field):
    alice, _bob, envelope = _sealed_to_alice_and_bob()
    raw = base64.b64decode(envelope["recipients"][1][field])
    size = FIELD_SIZES[field]
    cases = [
        ("!!" + envelope["recipients"][1][field][2:], "is not valid base64"),
        (b64(raw + bytes(3)), "decodes to %d bytes instead of %d" % (size + 3, size)),
        (b64(raw[:-1]), "decodes to %d bytes instead of %d" % (size - 1, size)),
        (12, "is not a string"),
        (None, "is missing"),
    ]
    for value, expected in cases:
        damaged = copy.deepcopy(envelope)
        if value is None:
            del damaged["recipients"][1][field]
        else:
            damaged["recipients"][1][field] = value
        for function, args in [(recipients.open_data_key, ([alice], damaged, "N")), (recipients.envelope_recipient_ids, (damaged,))]:
            with pytest.raises(IntegrityError) as info:
                function(*args)
            assert not isinstance(info.value, (TamperedError, WrongKeyError))
            assert str(info.value) == "encryption envelope field 'recipients[1].%s' %s" % (field, expected)


def _malformed_cases():
    alice, bob, envelope = _sealed_to_alice_and_bob()
    slot = envelope["recipients"][0]
    cases = []

    def case(change, message):
        damaged = copy.deepcopy(envelope)
        result = change(damaged)
        cases.append((result if result is not None else damaged, message))

    case(lambda e: ["not", "a", "dict"], "encryption envelope is not a JSON object")
    case(lambda e: e.pop("type") and None, "encryption envelope field 'type' is missing")
    case(lambda e: e.update(type="hybrid-pq-x25519-mlkem1024-hkdf-sha256"),
         "encryption envelope field 'type' is 'hybrid-pq-x25519-mlkem1024-hkdf-sha256': this reader expects "
         "'hybrid-pq-x25519-mlkem768-hkdf-sha256' or 'hybrid-pq-x25519-mlkem768-hkdf-sha256-v2'")
    case(lambda e: e.update(type=["x"]), "encryption envelope field 'type' is 'list': this reader expects "
         "'hybrid-pq-x25519-mlkem768-hkdf-sha256' or 'hybrid-pq-x25519-mlkem768-hkdf-sha256-v2'")
    case(lambda e: e.update(type="aes-256-gcm-hkdf-sha256"),
         "encryption envelope field 'type' is 'aes-256-gcm-hkdf-sha256': this backup's data key is wrapped with a master key, "
         "not sealed to hybrid-pq recipients: open it with the master key")
    case(lambda e: e.update(type="aes-256-gcm-hkdf-sha256-v2"),
         "encryption envelope field 'type' is 'aes-256-gcm-hkdf-sha256-v2': this backup's data key is wrapped with a master key, "
         "not sealed to hybrid-pq recipients: open it with the master key")
    case(lambda e: e.pop("recipients") and None, "encryption envelope field 'recipients' is missing")
    case(lambda e: e.update(recipients={"0": slot}), "encryption envelope field 'recipients' is not a list")
    case(lambda e: e.update(recipients=[]), "encryption envelope field 'recipients' lists 0 recipients: it must list 1 to 16")
    case(lambda e: e.update(recipients=[dict(slot, recipient_id="qkr-%016x" % index) for index in range(17)]),
         "encryption envelope field 'recipients' lists 17 recipients: it must list 1 to 16")
    case(lambda e: e["recipients"].append("slot"), "encryption envelope field 'recipients[2]' is not a JSON object")
    case(lambda e: e["recipients"][1].pop("recipient_id") and None, "encryption envelope field 'recipients[1].recipient_id' is missing")
    case(lambda e: e["recipients"][1].update(recipient_id="qk1-0123456789abcdef"),
         "encryption envelope field 'recipients[1].recipient_id' is not a recipient id (qkr- and 16 hex digits)")
    case(lambda e: e["recipients"][1].update(recipient_id=alice.recipient_id.upper()),
         "encryption envelope field 'recipients[1].recipient_id' is not a recipient id (qkr- and 16 hex digits)")
    case(lambda e: e["recipients"][1].update(recipient_id=5),
         "encryption envelope field 'recipients[1].recipient_id' is not a recipient id (qkr- and 16 hex digits)")
    case(lambda e: e["recipients"].append(copy.deepcopy(e["recipients"][0])),
         "encryption envelope lists recipient %s twice (recipients[0] and recipients[2])" % alice.recipient_id)
    case(lambda e: e["recipients"][1].update(recipient_id=alice.recipient_id),
         "encryption envelope lists recipient %s twice (recipients[0] and recipients[1])" % alice.recipient_id)
    assert bob  # used by the envelope
    return cases


@pytest.mark.parametrize("case", range(len(_malformed_cases())))
def test_malformed_envelope_is_integrity_error(case):
    envelope, message = _malformed_cases()[case]
    for function, args in [(recipients.open_data_key, ([identity("alice")], envelope, "N")), (recipients.envelope_recipient_ids, (envelope,))]:
        with pytest.raises(IntegrityError) as info:
            function(*args)
        assert not isinstance(info.value, (TamperedError, WrongKeyError))
        assert str(info.value) == message


def test_error_messages_hold_no_secret():
    alice, bob, envelope = _sealed_to_alice_and_bob()
    carol = identity("carol")
    messages = []
    attempts = [
        lambda: recipients.open_data_key([carol], envelope, "N"),
        lambda: recipients.parse_recipient(alice.secret_line(), "W"),
        lambda: recipients.parse_identity_text(alice.secret_line()[:-4], "F"),
        lambda: recipients.parse_identity_text(alice.recipient.text, "F"),
    ]
    for field in SLOT_FIELDS:
        damaged = copy.deepcopy(envelope)
        damaged["recipients"][0][field] = flip(damaged["recipients"][0][field])
        attempts.append(lambda damaged=damaged: recipients.open_data_key([alice], damaged, "N"))
    for attempt in attempts:
        with pytest.raises((ConfigError, IntegrityError)) as info:
            attempt()
        messages.append(str(info.value))
    assert len(messages) == len(attempts)
    for message in messages:
        assert_no_secret(message, alice, bob, carol)
        assert DK.hex() not in message and b64(DK) not in message


def test_envelope_recipient_ids_in_order():
    idents = fresh(3)
    envelope = recipients.seal_data_key([one.recipient for one in idents], DK)
    assert recipients.envelope_recipient_ids(envelope) == [one.recipient_id for one in idents]
    assert recipients.envelope_recipient_ids(VECTOR["one_recipient"]["envelope"]) == [V["identities"]["alice"]["recipient_id"]]


def test_does_not_open_symmetric_envelopes_and_vice_versa():
    master = bytes(range(32))
    symmetric = crypto.wrap_data_key(master, DK)
    with pytest.raises(IntegrityError, match="wrapped with a master key"):
        recipients.open_data_key([identity("alice")], symmetric, "N")
    with pytest.raises(IntegrityError, match="field 'type'"):
        crypto.unwrap_data_key(master, VECTOR["one_recipient"]["envelope"])
    symmetric_v2 = crypto.wrap_data_key(master, DK, BINDING)
    for function, args in [(recipients.open_data_key, ([identity("alice")], symmetric_v2, "N", BINDING)),
                           (recipients.envelope_recipient_ids, (symmetric_v2,))]:
        with pytest.raises(IntegrityError, match="is 'aes-256-gcm-hkdf-sha256-v2': this backup's data key is wrapped with a master key") as info:
            function(*args)
        assert not isinstance(info.value, (TamperedError, WrongKeyError))
    with pytest.raises(IntegrityError, match="sealed to hybrid-pq recipients") as info:
        crypto.unwrap_data_key(master, VECTOR["two_recipients_v2"]["envelope"], binding=BINDING)
    assert not isinstance(info.value, (TamperedError, WrongKeyError))


# --------------------------------------------------------------------------- format version 2: the backup's identity

def assert_copied_or_modified(error, *rids):
    message = str(error)
    assert type(error) is TamperedError, error  # pylint: disable=unidiomatic-typecheck  # exactly, not a subclass
    for words in ("not open", "for this backup: the metadata was copied from another backup (another host, database or name) or modified"):
        assert words in message, message
    for rid in rids:
        assert rid in message
    assert_no_secret(message, identity("alice"), identity("bob"), identity("carol"))
    assert DK.hex() not in message and b64(DK) not in message


def _sealed_v2():
    alice, bob = identity("alice"), identity("bob")
    return alice, bob, recipients.seal_data_key([alice.recipient, bob.recipient], DK, BINDING)


def test_v2_round_trip_with_two_recipients():
    alice, bob, envelope = _sealed_v2()
    envelope = json.loads(json.dumps(envelope))
    assert set(envelope) == {"type", "recipients"} and envelope["type"] == recipients.ENVELOPE_TYPE_V2
    assert crypto.envelope_version(envelope) == 2
    assert recipients.envelope_recipient_ids(envelope) == [alice.recipient_id, bob.recipient_id]
    for index, who in enumerate((alice, bob)):
        slot = envelope["recipients"][index]
        assert set(slot) == {"recipient_id"} | set(SLOT_FIELDS)
        for field, size in FIELD_SIZES.items():
            assert len(base64.b64decode(slot[field], validate=True)) == size
        assert recipients.open_data_key([who], envelope, "N", binding=BINDING) == DK
        assert recipients.open_data_key(who, envelope, binding=bytearray(BINDING)) == DK
        assert ref_open_slot(SECRETS["alice" if who is alice else "bob"], slot, BINDING)[0] == DK
    assert recipients.open_data_key([identity("carol"), bob, alice], envelope, "N", BINDING) == DK


@pytest.mark.parametrize("changed", [("db2", DATABASE, NAME), (HOST, "quankey_staging", NAME),
                                     (HOST, DATABASE, "quankey_prod_backup_20250810_030000")])
def test_v2_envelope_under_another_host_database_or_name_is_tampering_not_wrong_key(changed):
    alice, bob, envelope = _sealed_v2()
    other = crypto.backup_binding(*changed)
    for who in (alice, bob):
        with pytest.raises(TamperedError) as info:
            recipients.open_data_key([who], envelope, "N", binding=other)
        assert_copied_or_modified(info.value, who.recipient_id)
    with pytest.raises(TamperedError) as info:
        recipients.open_data_key([alice, bob], envelope, "N", binding=other)
    assert_copied_or_modified(info.value, alice.recipient_id, bob.recipient_id)
    assert "recipients %s, %s and the identities given with those ids do not open them for this backup" % (
        alice.recipient_id, bob.recipient_id) in str(info.value)


def test_metadata_copied_from_another_hosts_backup_does_not_open():
    alice = identity("alice")
    from_a = recipients.seal_data_key(alice.recipient, DK, crypto.backup_binding("host-a", "shop", "shop_backup_20250809_030000"))
    with pytest.raises(TamperedError) as info:
        recipients.open_data_key(alice, copy.deepcopy(from_a), "N", crypto.backup_binding("host-b", "shop", "shop_backup_20250809_030000"))
    assert_copied_or_modified(info.value, alice.recipient_id)
    assert recipients.open_data_key(alice, from_a, "N", crypto.backup_binding("host-a", "shop", "shop_backup_20250809_030000")) == DK


def test_v2_stranger_is_still_a_wrong_key():
    alice, bob, envelope = _sealed_v2()
    carol = identity("carol")
    for binding in (BINDING, crypto.backup_binding("x", "y", "z")):
        with pytest.raises(WrongKeyError) as info:
            recipients.open_data_key([carol], envelope, "BACKUP_IDENTITY_FILE", binding=binding)
        assert str(info.value) == ("this backup's data key is sealed to recipients %s, %s; the identity given is %s: "
                                   "set BACKUP_IDENTITY_FILE to the identity of one of its recipients"
                                   % (alice.recipient_id, bob.recipient_id, carol.recipient_id))


def test_v2_altered_recipient_id_is_detected():
    alice, bob, envelope = _sealed_v2()
    damaged = copy.deepcopy(envelope)
    rid = damaged["recipients"][0]["recipient_id"]
    damaged["recipients"][0]["recipient_id"] = rid[:-1] + ("0" if rid[-1] != "0" else "1")
    with pytest.raises(TamperedError) as info:
        recipients.open_data_key([alice], damaged, "N", binding=BINDING)
    assert str(info.value) == ("encryption envelope field 'recipients[0].recipient_id' says %s but the slot was sealed to the identity %s given: "
                               "the encryption envelope in the metadata was modified or corrupted"
                               % (damaged["recipients"][0]["recipient_id"], alice.recipient_id))
    assert recipients.open_data_key([bob], damaged, "N", binding=BINDING) == DK
    # with another backup's binding the altered slot cannot be recognised: no slot names alice, so it is a wrong key
    with pytest.raises(WrongKeyError):
        recipients.open_data_key([alice], damaged, "N", binding=crypto.backup_binding("db2", DATABASE, NAME))
    swapped = copy.deepcopy(envelope)
    swapped["recipients"][0]["recipient_id"], swapped["recipients"][1]["recipient_id"] = bob.recipient_id, alice.recipient_id
    for who in (alice, bob):
        with pytest.raises(TamperedError):
            recipients.open_data_key([who], swapped, "N", binding=BINDING)


@pytest.mark.parametrize("field", SLOT_FIELDS)
def test_flipped_byte_in_a_v2_slot_is_tampered(field):
    alice, bob, envelope = _sealed_v2()
    damaged = copy.deepcopy(envelope)
    damaged["recipients"][1][field] = flip(damaged["recipients"][1][field], -1)
    with pytest.raises(TamperedError) as info:
        recipients.open_data_key([bob], damaged, "N", binding=BINDING)
    assert_copied_or_modified(info.value, bob.recipient_id)
    assert recipients.open_data_key([alice], damaged, "N", binding=BINDING) == DK


def test_relabelling_the_version_does_not_open():
    alice, _bob, envelope = _sealed_v2()
    downgraded = dict(copy.deepcopy(envelope), type=recipients.ENVELOPE_TYPE)
    with pytest.raises(TamperedError, match="modified or corrupted"):
        recipients.open_data_key([alice], downgraded, "N")
    upgraded = dict(recipients.seal_data_key(alice.recipient, DK), type=recipients.ENVELOPE_TYPE_V2)
    with pytest.raises(TamperedError) as info:
        recipients.open_data_key([alice], upgraded, "N", binding=BINDING)
    assert_copied_or_modified(info.value, alice.recipient_id)


def test_v1_envelope_opens_with_and_without_a_binding():
    alice = identity("alice")
    envelope = recipients.seal_data_key(alice.recipient, DK)
    assert envelope["type"] == recipients.ENVELOPE_TYPE and crypto.envelope_version(envelope) == 1
    assert recipients.open_data_key([alice], envelope, "N") == DK
    assert recipients.open_data_key([alice], envelope, "N", binding=BINDING) == DK
    assert recipients.open_data_key([alice], envelope, "N", binding=crypto.backup_binding("a", "b", "c")) == DK
    vector = VECTOR["one_recipient"]
    assert recipients.open_data_key([alice], vector["envelope"], "N", BINDING) == bytes.fromhex(vector["data_key_hex"])


def test_v2_without_a_binding_is_a_caller_error():
    alice, _bob, envelope = _sealed_v2()
    with pytest.raises(TypeError, match="binding=crypto.backup_binding"):
        recipients.open_data_key([alice], envelope, "N")
    with pytest.raises(TypeError):
        recipients.open_data_key([alice], envelope, "N", binding="db1/quankey_prod/quankey_prod_backup_20250809_030000")
    with pytest.raises(ValueError):
        recipients.open_data_key([alice], envelope, "N", binding=BINDING + b"x")


@pytest.mark.parametrize("bad, error", [("db1", TypeError), (b"", ValueError), (BINDING[:-1], ValueError), (12, TypeError)])
def test_seal_with_a_binding_not_made_by_backup_binding_is_a_caller_error(bad, error):
    with pytest.raises(error):
        recipients.seal_data_key(identity("alice").recipient, DK, bad)


def test_rekey_reseals_a_v1_backup_to_v2():
    alice, bob = identity("alice"), identity("bob")
    old = recipients.seal_data_key(alice.recipient, DK)
    new = recipients.seal_data_key([alice.recipient, bob.recipient], recipients.open_data_key(alice, old, "N", BINDING), BINDING)
    assert crypto.envelope_version(old) == 1 and crypto.envelope_version(new) == 2
    assert recipients.open_data_key(bob, new, "N", BINDING) == DK
