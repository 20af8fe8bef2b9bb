# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests of the seed's OpenSSL enc format (plugins/module_utils/openssl_enc.py, docs/FORMAT.md).

Interoperability is checked both ways against the stock ``openssl`` binary;
the passphrase always reaches it through the environment (``-pass env:K``),
never on a command line.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import zlib

import pytest

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ansible_collections.quankey.backup.plugins.module_utils.formats import magic, openssl_enc as oe
from ansible_collections.quankey.backup.plugins.module_utils.errors import (
    ConfigError,
    IntegrityError,
    TamperedError,
    TruncatedError,
    WrongKeyError,
)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
VECTORS_PATH = os.path.join(HERE, "fixtures", "openssl_enc_vectors.json")
FORMAT_DOC_PATH = os.path.join(REPO_ROOT, "docs", "FORMAT.md")

with open(VECTORS_PATH, encoding="utf-8") as _f:
    V = json.load(_f)

VECTOR_PASSPHRASE = V["passphrase"].encode("ascii")
VECTOR_SALT = bytes.fromhex(V["salt_hex"])
# Shaped like the seed's key (`openssl rand -base64 32`); used as text, as the seed did.
PASSPHRASE = "k3vN0u9Yb2q1Xw7Zr4Tj8Lm5Pc6Hs0Ad9Fg2Ei1Ko3U="
OTHER = "Zx1Cv2Bn3Mq4Wr5Et6Yu7Io8Pa9Sd0Fg1Hj2Kl3Zx4C="
THIRD = "Qw9Er8Ty7Ui6Op5As4Df3Gh2Jk1Lz0Xc9Vb8Nm7Qw6E="
GZIP_START = b"\x1f\x8b\x08\x00"
OPENSSL = shutil.which("openssl")

needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the stock openssl binary is not installed")
needs_gzip = pytest.mark.skipif(shutil.which("gzip") is None, reason="gzip is not installed")
needs_zstd = pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd is not installed")


# --------------------------------------------------------------------------- helpers

def openssl_env(passphrase=PASSPHRASE, name="K"):
    env = dict(os.environ)
    env[name] = passphrase
    return env


def run_openssl(args, data, passphrase=PASSPHRASE):
    """Run the stock openssl with the passphrase in $K; return stdout (raise on failure)."""
    assert all(passphrase not in arg for arg in args)
    result = subprocess.run([OPENSSL] + args, input=data, env=openssl_env(passphrase), capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def openssl_encrypt(data, passphrase=PASSPHRASE, iterations=None):
    args = ["enc", "-aes-256-cbc", "-salt", "-pbkdf2", "-pass", "env:K"]
    if iterations is not None:
        args += ["-iter", str(iterations)]
    return run_openssl(args, data, passphrase)


def openssl_decrypt(blob, passphrase=PASSPHRASE, iterations=None):
    args = ["enc", "-d", "-aes-256-cbc", "-pbkdf2", "-pass", "env:K"]
    if iterations is not None:
        args += ["-iter", str(iterations)]
    return run_openssl(args, blob, passphrase)


def shell(command, data, passphrase=PASSPHRASE, name="K"):
    """Run a shell pipeline with the passphrase in the environment variable ``name``."""
    result = subprocess.run(["sh", "-c", command], input=data, env=openssl_env(passphrase, name), capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def encrypt(plaintext, passphrase=PASSPHRASE, iterations=oe.DEFAULT_ITERATIONS, salt=None, chunks=None):
    enc = oe.CbcEncryptor(passphrase.encode() if isinstance(passphrase, str) else passphrase, iterations=iterations, _salt=salt)
    if chunks is None:
        return enc.update(plaintext) + enc.finalize()
    out, pos = [], 0
    for size in chunks:
        out.append(enc.update(plaintext[pos:pos + size]))
        pos += size
    assert pos == len(plaintext)
    out.append(enc.finalize())
    return b"".join(out)


def decryptor(passphrases=(("BACKUP_ENCRYPTION_KEY", PASSPHRASE),), **kwargs):
    return oe.CbcDecryptor([(label, value.encode() if isinstance(value, str) else value) for label, value in passphrases], **kwargs)


def decrypt(blob, chunk=None, chunks=None, dec=None, **kwargs):
    dec = dec if dec is not None else decryptor(**kwargs)
    if chunks is None:
        chunk = chunk or max(len(blob), 1)
        chunks = [chunk] * (len(blob) // chunk + 1)
    out, pos = [], 0
    for size in chunks:
        if pos >= len(blob):
            break
        out.append(dec.update(blob[pos:pos + size]))
        pos += size
    out.append(dec.finalize())
    return b"".join(out)


def odd_chunks(rng, total, max_chunk=4099):
    sizes = []
    while sum(sizes) < total:
        sizes.append(min(rng.randint(1, max_chunk) | 1, total - sum(sizes)))
    return sizes


def dump_like(size, seed=1):
    """``size`` bytes that start like a pg_dump archive (passes the default check)."""
    body = random.Random(seed).getrandbits(8 * max(size, 1)).to_bytes(max(size, 1), "big")
    return (b"PGDMP" + body)[:size]


def ref_key_iv(passphrase, salt, iterations):
    """Independent reference: PBKDF2-HMAC-SHA256 from hashlib, 48 bytes = key || iv."""
    derived = hashlib.pbkdf2_hmac("sha256", passphrase, salt, iterations, 48)
    return derived[:32], derived[32:]


def ref_decrypt(passphrase, blob, iterations):
    """Independent reference decryption of a whole object (no streaming, manual unpadding)."""
    assert blob[:8] == b"Salted__"
    key, iv = ref_key_iv(passphrase, blob[8:16], iterations)
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = dec.update(blob[16:]) + dec.finalize()
    pad = padded[-1]
    assert 1 <= pad <= 16 and padded[-pad:] == bytes([pad]) * pad
    return padded[:-pad]


# --------------------------------------------------------------------------- vectors (no openssl needed)

def test_vector_file_shape():
    assert len(VECTOR_SALT) == oe.SALT_SIZE
    assert {v["name"] for v in V["vectors"]} >= {"empty", "quankey", "one_block", "pg_dump_start_iter_2000", "gzip_quankey"}
    assert "-S" in V["command"] and "env:K" in V["command"]


@pytest.mark.parametrize("vector", V["vectors"], ids=[v["name"] for v in V["vectors"]])
def test_vector_key_derivation(vector):
    key, iv = ref_key_iv(VECTOR_PASSPHRASE, VECTOR_SALT, vector["iterations"])
    assert key.hex() == vector["key_hex"] and iv.hex() == vector["iv_hex"]
    assert oe._derive(VECTOR_PASSPHRASE, VECTOR_SALT, vector["iterations"]) == (key, iv)


@pytest.mark.parametrize("vector", V["vectors"], ids=[v["name"] for v in V["vectors"]])
def test_vector_encrypts_to_the_openssl_object(vector):
    plaintext = bytes.fromhex(vector["plaintext_hex"])
    obj = encrypt(plaintext, VECTOR_PASSPHRASE, vector["iterations"], salt=VECTOR_SALT)
    assert obj.hex() == vector["object_hex"]
    for chunk in (1, 3, 16, 17):
        enc = oe.CbcEncryptor(VECTOR_PASSPHRASE, vector["iterations"], _salt=VECTOR_SALT)
        out = [enc.update(plaintext[i:i + chunk]) for i in range(0, len(plaintext), chunk)]
        assert b"".join(out) + enc.finalize() == obj


@pytest.mark.parametrize("vector", V["vectors"], ids=[v["name"] for v in V["vectors"]])
def test_vector_decrypts_in_any_chunking(vector):
    obj = bytes.fromhex(vector["object_hex"])
    plaintext = bytes.fromhex(vector["plaintext_hex"])
    assert ref_decrypt(VECTOR_PASSPHRASE, obj, vector["iterations"]) == plaintext
    for chunk in (1, 2, 7, 15, 16, 17, 31, 32, 33, len(obj)):
        dec = oe.CbcDecryptor([("K", VECTOR_PASSPHRASE)], iterations=vector["iterations"], check_plaintext=None)
        assert decrypt(obj, chunk=chunk, dec=dec) == plaintext
        assert dec.passphrase_label == "K"
        assert dec.salt == VECTOR_SALT
        assert dec.plaintext_bytes == len(plaintext) and dec.object_bytes == len(obj)


def test_vectors_pass_the_default_check_when_they_start_like_a_dump():
    for vector in V["vectors"]:
        plaintext = bytes.fromhex(vector["plaintext_hex"])
        obj = bytes.fromhex(vector["object_hex"])
        dec = oe.CbcDecryptor([("K", VECTOR_PASSPHRASE)], iterations=vector["iterations"])
        if oe.plausible_dump_start(plaintext):
            assert decrypt(obj, chunk=5, dec=dec) == plaintext
        else:
            with pytest.raises(WrongKeyError):
                decrypt(obj, chunk=5, dec=dec)


def test_gzip_vector_is_gzip():
    vector = [v for v in V["vectors"] if v["name"] == "gzip_quankey"][0]
    dec = oe.CbcDecryptor([("K", VECTOR_PASSPHRASE)])
    assert zlib.decompress(decrypt(bytes.fromhex(vector["object_hex"]), dec=dec), 16 + zlib.MAX_WBITS) == b"quankey\n"


def documented_vectors(text):
    """The ``openssl_enc.NAME = VALUE`` lines of the docs (hex in groups: spaces removed)."""
    found = {}
    for line in text.splitlines():
        match = re.match(r"^\s*openssl_enc\.([a-z_]+) = (.+)$", line)
        if match:
            assert match.group(1) not in found, "duplicate documented vector %s" % match.group(1)
            found[match.group(1)] = match.group(2).replace(" ", "")
    return found


def expected_documented_vectors():
    vector = [v for v in V["vectors"] if v["name"] == "quankey"][0]
    return {"passphrase": V["passphrase"], "salt": V["salt_hex"], "iterations": str(vector["iterations"]), "key": vector["key_hex"],
            "iv": vector["iv_hex"], "plaintext": vector["plaintext_hex"], "object": vector["object_hex"]}


def test_format_doc_quotes_exactly_the_vectors():
    """Once docs/FORMAT.md has the seed-format section, its quoted vectors must be the file's."""
    with open(FORMAT_DOC_PATH, encoding="utf-8") as f:
        found = documented_vectors(f.read())
    if not found:
        pytest.skip("docs/FORMAT.md has no OpenSSL enc vectors yet")
    assert found == expected_documented_vectors()


def test_ref_decrypt_matches_module_for_many_sizes():
    rng = random.Random(5)
    for size in list(range(0, 70)) + [1000, 4096, 4097]:
        plaintext = bytes(rng.getrandbits(8) for _index in range(size))
        obj = encrypt(plaintext, iterations=1000)
        assert len(obj) == 16 + (size // 16 + 1) * 16
        assert ref_decrypt(PASSPHRASE.encode(), obj, 1000) == plaintext


# --------------------------------------------------------------------------- interop with stock openssl

@needs_openssl
def test_openssl_defaults_are_pbkdf2_sha256_10000_iterations():
    """`openssl enc -pbkdf2 -P` prints the key and iv our derivation gives for its default settings."""
    printed = run_openssl(["enc", "-aes-256-cbc", "-pbkdf2", "-pass", "env:K", "-S", VECTOR_SALT.hex(), "-P"], b"").decode()
    values = dict(line.replace(" ", "").split("=", 1) for line in printed.splitlines() if "=" in line)
    key, iv = ref_key_iv(PASSPHRASE.encode(), VECTOR_SALT, 10000)
    assert values["key"].lower() == key.hex() and values["iv"].lower() == iv.hex()
    assert oe.DEFAULT_ITERATIONS == 10000


@needs_openssl
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 31, 32, 33, 1000])
def test_our_objects_decrypt_with_openssl(size):
    plaintext = os.urandom(size)
    obj = encrypt(plaintext)
    assert obj.startswith(b"Salted__") and len(obj) == 16 + (size // 16 + 1) * 16
    assert openssl_decrypt(obj) == plaintext


@needs_openssl
def test_our_objects_in_odd_chunks_decrypt_with_openssl():
    rng = random.Random(11)
    plaintext = os.urandom(3 * 1024 * 1024 + 13)  # ~3 MB
    chunks = odd_chunks(rng, len(plaintext), max_chunk=70001)
    assert len(chunks) > 50
    assert openssl_decrypt(encrypt(plaintext, chunks=chunks)) == plaintext
    small = odd_chunks(rng, 5000, max_chunk=37)
    assert openssl_decrypt(encrypt(plaintext[:5000], chunks=small)) == plaintext[:5000]


@needs_openssl
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 33, 1000])
def test_openssl_objects_decrypt_with_ours(size):
    plaintext = os.urandom(size)
    obj = openssl_encrypt(plaintext)
    assert obj.startswith(b"Salted__")
    for chunk in (1, 5, 17, 4099):
        assert decrypt(obj, chunk=chunk, check_plaintext=None) == plaintext


@needs_openssl
def test_large_openssl_object_decrypts_in_odd_chunks():
    rng = random.Random(12)
    plaintext = dump_like(3 * 1024 * 1024 + 5)
    obj = openssl_encrypt(plaintext)
    dec = decryptor()
    assert decrypt(obj, chunks=odd_chunks(rng, len(obj), max_chunk=65537), dec=dec) == plaintext
    assert dec.passphrase_label == "BACKUP_ENCRYPTION_KEY"


@needs_openssl
@needs_gzip
def test_seed_pipeline_gzip_then_openssl_decrypts_with_ours():
    """The seed's pipeline: `gzip | openssl enc -aes-256-cbc -salt -pbkdf2 -pass env:...`."""
    dump = dump_like(200000, seed=3) + b"\x00" * 300000  # compressible
    obj = shell("gzip -c | openssl enc -aes-256-cbc -salt -pbkdf2 -pass env:BACKUP_ENCRYPTION_KEY", dump, name="BACKUP_ENCRYPTION_KEY")
    compressed = decrypt(obj, chunks=odd_chunks(random.Random(4), len(obj), 3333))
    assert compressed.startswith(magic.GZIP_DEFLATE)
    assert zlib.decompress(compressed, 16 + zlib.MAX_WBITS) == dump


@needs_openssl
@needs_gzip
def test_our_gzip_objects_restore_with_the_documented_stock_pipeline(tmp_path):
    """The docs' no-Python restore: check the SHA-256, then `openssl enc -d ... | gunzip`."""
    dump = dump_like(100000, seed=6) + b"\x00" * 100000
    compressed = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    obj = encrypt(compressed.compress(dump) + compressed.flush())
    path = tmp_path / "db_backup_20240101_000000.encrypted"
    path.write_bytes(obj)
    digest = hashlib.sha256(obj).hexdigest()
    command = ("echo '%s  %s' | sha256sum -c --quiet - && "
               "openssl enc -d -aes-256-cbc -pbkdf2 -pass env:BACKUP_ENCRYPTION_KEY -in '%s' | gunzip" % (digest, path, path))
    assert shell(command, b"", name="BACKUP_ENCRYPTION_KEY") == dump


@needs_openssl
@needs_zstd
def test_zstd_variant_both_ways():
    dump = dump_like(50000, seed=7) + b"\x00" * 50000
    obj = shell("zstd -q -c | openssl enc -aes-256-cbc -salt -pbkdf2 -pass env:K", dump)
    compressed = decrypt(obj, chunk=777)
    assert compressed.startswith(magic.ZSTD)
    assert shell("zstd -q -d -c", compressed) == dump
    assert shell("openssl enc -d -aes-256-cbc -pbkdf2 -pass env:K | zstd -q -d -c", encrypt(compressed)) == dump


@needs_openssl
def test_iteration_count_from_the_envelope_both_ways():
    envelope = oe.passphrase_envelope("seed-key", iterations=2000)
    iterations = oe.parse_envelope(json.loads(json.dumps(envelope)))
    assert iterations == 2000
    plaintext = dump_like(12345, seed=8)
    theirs = openssl_encrypt(plaintext, iterations=2000)
    assert decrypt(theirs, chunk=1001, iterations=iterations) == plaintext
    with pytest.raises(WrongKeyError, match=r"PBKDF2-HMAC-SHA256, 10000 iterations"):
        decrypt(theirs)  # the default count derives another key
    ours = encrypt(plaintext, iterations=iterations)
    assert openssl_decrypt(ours, iterations=2000) == plaintext
    result = subprocess.run([OPENSSL, "enc", "-d", "-aes-256-cbc", "-pbkdf2", "-pass", "env:K"], input=ours,
                            env=openssl_env(), capture_output=True, check=False)
    assert result.returncode != 0 or result.stdout != plaintext


@needs_openssl
def test_openssl_rejects_our_object_with_a_wrong_passphrase():
    result = subprocess.run([OPENSSL, "enc", "-d", "-aes-256-cbc", "-pbkdf2", "-pass", "env:K"], input=encrypt(b"x" * 100),
                            env=openssl_env(OTHER), capture_output=True, check=False)
    assert result.returncode != 0 or result.stdout != b"x" * 100


# --------------------------------------------------------------------------- passphrase selection

def test_wrong_passphrase_names_the_labels_never_the_values():
    obj = encrypt(dump_like(5000))
    with pytest.raises(WrongKeyError) as info:
        decrypt(obj, passphrases=[("BACKUP_ENCRYPTION_KEY", OTHER), ("BACKUP_LEGACY_KEY", THIRD)])
    message = str(info.value)
    assert message.startswith("none of the passphrases given decrypts this aes-256-cbc (OpenSSL enc) object: with "
                              "BACKUP_ENCRYPTION_KEY or BACKUP_LEGACY_KEY and PBKDF2-HMAC-SHA256, 10000 iterations")
    assert message.endswith("set BACKUP_ENCRYPTION_KEY or BACKUP_LEGACY_KEY to the passphrase the backup was made with")
    assert "\n" not in message
    for secret in (OTHER, THIRD, PASSPHRASE):
        for i in range(len(secret) - 5):
            assert secret[i:i + 6] not in message
    assert info.value.__context__ is None and info.value.__cause__ is None


def test_wrong_passphrase_is_detected_before_any_output():
    obj = encrypt(dump_like(5000))
    dec = decryptor([("K", OTHER)])
    assert dec.update(obj[:31]) == b""
    with pytest.raises(WrongKeyError):
        dec.update(obj[31:32])
    with pytest.raises(WrongKeyError):  # the failure repeats
        dec.update(obj[32:])
    with pytest.raises(WrongKeyError):
        dec.finalize()


def test_right_passphrase_among_several_is_found():
    plaintext = dump_like(10000)
    obj = encrypt(plaintext, passphrase=THIRD)
    dec = decryptor([("NEW_KEY", OTHER), ("BACKUP_ENCRYPTION_KEY", PASSPHRASE), ("OLD_KEY", THIRD)])
    assert dec.passphrase_label is None
    assert decrypt(obj, chunk=100, dec=dec) == plaintext
    assert dec.passphrase_label == "OLD_KEY"


def test_first_matching_passphrase_wins_and_each_passphrase_is_derived_once(monkeypatch):
    calls = []
    real = oe.Kdf.derive

    def counting(kdf, passphrase, salt):
        calls.append((passphrase, salt, kdf.spec()))
        return real(kdf, passphrase, salt)

    monkeypatch.setattr(oe.Kdf, "derive", counting)
    plaintext = dump_like(100)
    obj = encrypt(plaintext)
    calls.clear()
    dec = decryptor([("A", OTHER), ("B", OTHER), ("C", PASSPHRASE), ("D", PASSPHRASE)])
    assert decrypt(obj, dec=dec) == plaintext
    assert dec.passphrase_label == "C" and dec.kdf.spec() == "pbkdf2-sha256:10000"
    assert [c[0] for c in calls] == [OTHER.encode(), PASSPHRASE.encode()]  # B reused A's result; D never tried
    assert not [name for name in vars(dec) if "derived" in name]  # nothing kept once a key is chosen
    calls.clear()
    assert decrypt(obj, passphrases=[("C", PASSPHRASE)]) == plaintext
    assert len(calls) == 1  # a new instance derives again: no cache across objects


def test_custom_check_and_no_check():
    plaintext = b"hello, world, not a dump"
    obj = encrypt(plaintext)
    assert decrypt(obj, check_plaintext=lambda block: block.startswith(b"hello")) == plaintext
    with pytest.raises(WrongKeyError, match="is not accepted by the plaintext check"):
        decrypt(obj, check_plaintext=lambda block: False)
    assert decrypt(obj, check_plaintext=None) == plaintext
    with pytest.raises(ValueError, match="exactly one passphrase"):
        decryptor([("A", PASSPHRASE), ("B", OTHER)], check_plaintext=None)
    with pytest.raises(TypeError):
        decryptor(check_plaintext="yes")


def test_check_sees_exactly_the_first_plaintext_block():
    seen = []
    plaintext = dump_like(100)

    def check(block):
        seen.append(block)
        return True

    decrypt(encrypt(plaintext), check_plaintext=check)
    assert seen == [plaintext[:16]]


@pytest.mark.parametrize("start,expected", [
    (b"\x1f\x8b\x08\x00\x00", True),
    (b"\x28\xb5\x2f\xfd\x04", True),
    (b"PGDMP\x01\x0f", True),
    (b"\x1f\x8b\x07", False),
    (b"PGDM", False),
    (b"", False),
    (bytes(16), False),
    (b"Salted__", False),
])
def test_plausible_dump_start(start, expected):
    assert oe.plausible_dump_start(start) is expected


def test_wrong_key_false_accept_is_rare():
    """With 300 wrong passphrases the 3-byte gzip check accepts none (chance ~300 / 2**24)."""
    obj = encrypt(GZIP_START + os.urandom(100), iterations=1)
    wrong = [("K%d" % i, "wrong-%d" % i) for i in range(300)]
    with pytest.raises(WrongKeyError):
        decrypt(obj, passphrases=wrong, iterations=1)


# --------------------------------------------------------------------------- damage

def vector_object(name):
    vector = [v for v in V["vectors"] if v["name"] == name][0]
    return bytes.fromhex(vector["object_hex"]), bytes.fromhex(vector["plaintext_hex"]), vector["iterations"]


def vector_decrypt(blob, iterations, check_plaintext=None, chunk=None):
    dec = oe.CbcDecryptor([("BACKUP_ENCRYPTION_KEY", VECTOR_PASSPHRASE)], iterations=iterations, check_plaintext=check_plaintext)
    return decrypt(blob, chunk=chunk, dec=dec)


@pytest.mark.parametrize("offset", [-1, -2, -9, -16])
def test_flipped_byte_in_last_block_is_tampering(offset):
    obj, _plaintext, iterations = vector_object("pg_dump_start_iter_2000")
    damaged = bytearray(obj)
    damaged[offset] ^= 0x01
    with pytest.raises(TamperedError, match="invalid padding in its last block"):
        vector_decrypt(bytes(damaged), iterations, check_plaintext=oe.plausible_dump_start)


def test_flipped_pad_byte_via_previous_block_is_tampering():
    """Flipping the last byte of the second-to-last block flips the pad byte: deterministic padding failure."""
    obj, _plaintext, iterations = vector_object("pg_dump_start_iter_2000")
    damaged = bytearray(obj)
    damaged[-17] ^= 0x40
    with pytest.raises(TamperedError):
        vector_decrypt(bytes(damaged), iterations)


def test_flipped_byte_in_first_block_fails_the_check():
    obj, _plaintext, iterations = vector_object("pg_dump_start_iter_2000")
    for offset in (16, 20, 31):
        damaged = bytearray(obj)
        damaged[offset] ^= 0x01
        with pytest.raises(WrongKeyError, match="or the object's start is corrupted"):
            vector_decrypt(bytes(damaged), iterations, check_plaintext=oe.plausible_dump_start)


def test_flipped_salt_fails_the_check():
    obj, _plaintext, iterations = vector_object("pg_dump_start_iter_2000")
    damaged = bytearray(obj)
    damaged[9] ^= 0x01
    with pytest.raises(WrongKeyError):
        vector_decrypt(bytes(damaged), iterations, check_plaintext=oe.plausible_dump_start)


def test_middle_damage_is_not_detected_by_cbc():
    """CBC is not authenticated: only the metadata SHA-256 catches a modified middle block."""
    plaintext = dump_like(4096)
    obj = encrypt(plaintext)
    damaged = bytearray(obj)
    damaged[16 + 16 * 100 + 3] ^= 0x01
    out = decrypt(bytes(damaged))
    assert out != plaintext and len(out) == len(plaintext)
    assert hashlib.sha256(bytes(damaged)).hexdigest() != hashlib.sha256(obj).hexdigest()


@pytest.mark.parametrize("size", [1, 5, 8, 9, 15, 16, 17, 24, 31])
def test_objects_shorter_than_header_and_one_block_are_truncated(size):
    obj, _plaintext, iterations = vector_object("one_block")
    for chunk in (1, 7, None):
        with pytest.raises(TruncatedError, match="the object is incomplete"):
            vector_decrypt(obj[:size], iterations, chunk=chunk)


def test_empty_object_is_truncated():
    dec = decryptor()
    with pytest.raises(TruncatedError, match="object is empty"):
        dec.finalize()


@pytest.mark.parametrize("cut", [1, 5, 15, 17, 31])
def test_partial_last_block_is_truncated(cut):
    obj, _plaintext, iterations = vector_object("pg_dump_start_iter_2000")
    with pytest.raises(TruncatedError, match="not a whole number of 16-byte blocks"):
        vector_decrypt(obj[:-cut], iterations, chunk=13)


def test_appended_bytes_are_reported():
    obj, _plaintext, iterations = vector_object("pg_dump_start_iter_2000")
    with pytest.raises(TruncatedError, match="or has bytes appended"):
        vector_decrypt(obj + b"\x00", iterations)
    with pytest.raises(TamperedError):
        vector_decrypt(obj + bytes(16), iterations)


def test_truncation_at_a_block_boundary_is_caught_by_the_padding_here():
    obj, _plaintext, iterations = vector_object("pg_dump_start_iter_2000")
    with pytest.raises(TamperedError, match="truncated at a block boundary"):
        vector_decrypt(obj[:-16], iterations)


@pytest.mark.parametrize("prefix,fragment", [
    (b"PGDMP\x01\x0f\x00" + bytes(40), "plaintext pg_dump archive, not encrypted"),
    (b"QKBK\x01\x01\x14\x00" + bytes(60), "quankey-backup format v1 (QKBK, aes-256-gcm)"),
    (b"\x1f\x8b\x08\x00" + bytes(40), "gzip stream, not encrypted"),
    (b"\x28\xb5\x2f\xfd" + bytes(40), "zstd stream, not encrypted"),
    (b"U2FsdGVkX1/w8fLz9PX29w==\n", "base64 text (openssl enc -a)"),
    (b"hello world, this is text", "does not start with b'Salted__'"),
    (b"Salted_X" + bytes(40), "does not start with b'Salted__'"),
    (b"Xa", "does not start with b'Salted__'"),
])
def test_foreign_objects_are_named(prefix, fragment):
    for chunk in (1, 8, None):
        with pytest.raises(IntegrityError) as info:
            decrypt(prefix, chunk=chunk)
        assert not isinstance(info.value, (TruncatedError, WrongKeyError))
        assert fragment in str(info.value)
        assert str(info.value).startswith("not an aes-256-cbc (OpenSSL enc) object: ")


def test_foreign_object_is_rejected_as_soon_as_8_bytes_arrive():
    dec = decryptor()
    assert dec.update(b"PGDMP\x01\x0f") == b""
    with pytest.raises(IntegrityError, match="pg_dump"):
        dec.update(b"\x00")


def test_looks_like():
    assert oe.looks_like(encrypt(b""))
    assert oe.looks_like(memoryview(b"Salted__rest"))
    assert not oe.looks_like(b"Salted_")
    assert not oe.looks_like(b"QKBK\x01\x01\x14\x00")
    assert not oe.looks_like(b"")


# --------------------------------------------------------------------------- iterations and envelope

@pytest.mark.parametrize("bad", [0, -1, 10000001, 2 ** 40, True, False, "10000", 1.5, None])
def test_iterations_out_of_range_or_not_int(bad):
    with pytest.raises(IntegrityError, match="PBKDF2 iteration count"):
        oe.CbcEncryptor(PASSPHRASE.encode(), iterations=bad)
    with pytest.raises(IntegrityError, match="PBKDF2 iteration count"):
        decryptor(iterations=bad)
    with pytest.raises(IntegrityError, match="encryption envelope field 'iterations': PBKDF2 iteration count"):
        oe.parse_envelope(dict(oe.passphrase_envelope("k"), iterations=bad))
    with pytest.raises(IntegrityError):
        oe.passphrase_envelope("k", iterations=bad)


def test_iteration_bounds_are_inclusive():
    assert oe.parse_envelope(oe.passphrase_envelope("k", 1)) == 1
    assert oe.parse_envelope(oe.passphrase_envelope("k", 10000000)) == 10000000
    decryptor(iterations=10000000)  # no PBKDF2 before data arrives
    assert decrypt(encrypt(b"PGDMP", iterations=1), iterations=1) == b"PGDMP"


def test_envelope_fields_and_no_secret():
    envelope = oe.passphrase_envelope("seed-key-1")
    assert envelope == {"type": "openssl-enc-pbkdf2-sha256", "key_id": "seed-key-1", "iterations": 10000,
                        "digest": "sha256", "cipher": "aes-256-cbc"}
    assert json.loads(json.dumps(envelope)) == envelope
    assert oe.parse_envelope(envelope) == 10000
    assert oe.parse_envelope(dict(envelope, future_field=[1, 2])) == 10000  # unknown fields ignored
    envelope_without_id = dict(envelope)
    del envelope_without_id["key_id"]
    assert oe.parse_envelope(envelope_without_id) == 10000
    with pytest.raises(TypeError):
        oe.passphrase_envelope(b"bytes")
    with pytest.raises(ValueError):
        oe.passphrase_envelope("")


@pytest.mark.parametrize("field,value,fragment", [
    ("type", None, "field 'type' is missing"),
    ("type", "aes-256-gcm-hkdf-sha256", "field 'type' is 'aes-256-gcm-hkdf-sha256': this version supports only 'openssl-enc-pbkdf2-sha256'"),
    ("cipher", None, "field 'cipher' is missing"),
    ("cipher", "aes-128-cbc", "field 'cipher' is 'aes-128-cbc'"),
    ("digest", None, "field 'digest' is missing"),
    ("digest", "md5", "field 'digest' is 'md5'"),
    ("digest", 5, "field 'digest' is 'int'"),
    ("key_id", 7, "field 'key_id' is not a string"),
    ("iterations", None, "field 'iterations' is missing"),
])
def test_malformed_envelope_names_the_field(field, value, fragment):
    envelope = oe.passphrase_envelope("k")
    if value is None:
        del envelope[field]
    else:
        envelope[field] = value
    with pytest.raises(IntegrityError) as info:
        oe.parse_envelope(envelope)
    assert fragment in str(info.value)


@pytest.mark.parametrize("envelope", [None, [], "openssl-enc-pbkdf2-sha256", 5])
def test_envelope_not_an_object(envelope):
    with pytest.raises(IntegrityError, match="encryption envelope is not a JSON object"):
        oe.parse_envelope(envelope)


# --------------------------------------------------------------------------- streaming and memory

def test_encryptor_header_first_and_streaming():
    enc = oe.CbcEncryptor(PASSPHRASE.encode(), _salt=VECTOR_SALT)
    first = enc.update(b"")
    assert first == b"Salted__" + VECTOR_SALT == enc.header
    assert enc.update(b"x" * 15) == b""  # less than a block is held back
    assert len(enc.update(b"x")) == 16
    assert len(enc.finalize()) == 16  # a whole block of padding
    with pytest.raises(ValueError):
        enc.update(b"x")
    with pytest.raises(ValueError):
        enc.finalize()


def test_encryptor_finalize_alone_gives_header_and_padding():
    obj = oe.CbcEncryptor(PASSPHRASE.encode()).finalize()
    assert len(obj) == 32 and obj.startswith(b"Salted__")
    assert decrypt(obj, check_plaintext=None) == b""


def test_fresh_salt_per_object():
    salts = {encrypt(b"x")[8:16] for _attempt in range(20)}
    assert len(salts) == 20


def test_bytes_like_inputs():
    plaintext = dump_like(1000)
    obj = encrypt(bytearray(plaintext))
    assert encrypt(memoryview(plaintext), salt=obj[8:16]) == obj
    dec = decryptor()
    out = dec.update(bytearray(obj[:40])) + dec.update(memoryview(obj)[40:]) + dec.finalize()
    assert out == plaintext


def test_decryptor_update_after_finalize():
    obj = encrypt(b"PGDMP")
    dec = decryptor()
    assert dec.update(obj) + dec.finalize() == b"PGDMP"
    with pytest.raises(ValueError):
        dec.update(b"x")
    with pytest.raises(ValueError):
        dec.finalize()


def test_decryptor_repeats_its_first_failure():
    obj, _plaintext, iterations = vector_object("pg_dump_start_iter_2000")
    dec = oe.CbcDecryptor([("K", VECTOR_PASSPHRASE)], iterations=iterations)
    dec.update(obj[:-3])
    with pytest.raises(TruncatedError) as first:
        dec.finalize()
    with pytest.raises(TruncatedError) as again:
        dec.finalize()
    assert again.value is first.value


def lag_bound():
    """Bytes an object may hold back: header + first block before the start, then a block in the unpadder."""
    return oe.HEADER_SIZE + 2 * oe.BLOCK_SIZE


def test_memory_stays_constant_over_50_mb():
    chunk = b"PGDMP" + os.urandom(1024 * 1024 - 5)
    total = 50
    enc = oe.CbcEncryptor(PASSPHRASE.encode(), iterations=1000)
    dec = decryptor(iterations=1000)
    fed = encrypted = decrypted = 0
    digest_in, digest_out = hashlib.sha256(), hashlib.sha256()
    for _index in range(total):
        fed += len(chunk)
        digest_in.update(chunk)
        ciphertext = enc.update(chunk)
        encrypted += len(ciphertext)
        assert 0 <= fed + oe.HEADER_SIZE - encrypted < oe.BLOCK_SIZE  # the padder holds < 1 block
        plain = dec.update(ciphertext)
        decrypted += len(plain)
        digest_out.update(plain)
        assert len(dec._pending) <= oe.HEADER_SIZE + oe.BLOCK_SIZE
        assert 0 <= encrypted - oe.HEADER_SIZE - decrypted <= lag_bound()
    last = enc.finalize()
    plain = dec.update(last) + dec.finalize()
    digest_out.update(plain)
    assert fed == total * len(chunk) == dec.plaintext_bytes == enc.plaintext_bytes
    assert digest_in.digest() == digest_out.digest()


def test_small_feeds_buffer_at_most_header_and_one_block():
    obj = encrypt(dump_like(300))
    dec = decryptor()
    out = []
    for i in range(len(obj)):
        out.append(dec.update(obj[i:i + 1]))
        assert len(dec._pending) <= oe.HEADER_SIZE + oe.BLOCK_SIZE
        assert (i + 1) - oe.HEADER_SIZE - sum(len(o) for o in out) <= lag_bound()
    out.append(dec.finalize())
    assert b"".join(out) == dump_like(300)


# --------------------------------------------------------------------------- configuration and hygiene

def test_passphrase_validation():
    with pytest.raises(TypeError):
        oe.CbcEncryptor(PASSPHRASE)  # str, not bytes
    with pytest.raises(ValueError):
        oe.CbcEncryptor(b"")
    with pytest.raises(ValueError, match="NUL"):
        oe.CbcEncryptor(b"ab\x00cd")
    with pytest.raises(ValueError):
        oe.CbcEncryptor(b"k", _salt=b"short")
    with pytest.raises(ConfigError, match="^no passphrase given"):
        decryptor([])
    with pytest.raises(ConfigError, match="^OLD_KEY is empty: set it to the seed's BACKUP_ENCRYPTION_KEY"):
        decryptor([("BACKUP_ENCRYPTION_KEY", PASSPHRASE), ("OLD_KEY", b"")])
    with pytest.raises(TypeError):
        oe.CbcDecryptor([("K", PASSPHRASE.encode(), "extra")])
    with pytest.raises(TypeError):
        oe.CbcDecryptor(PASSPHRASE.encode())
    with pytest.raises(TypeError):
        oe.CbcDecryptor([("", PASSPHRASE.encode())])
    with pytest.raises(TypeError):
        oe.CbcDecryptor([("K", PASSPHRASE)])


def test_passphrase_is_used_as_text_not_base64_decoded():
    vector = [v for v in V["vectors"] if v["name"] == "quankey"][0]
    decoded = base64.b64decode(V["passphrase"])
    assert ref_key_iv(decoded, VECTOR_SALT, 10000)[0].hex() != vector["key_hex"]
    assert ref_key_iv(VECTOR_PASSPHRASE, VECTOR_SALT, 10000)[0].hex() == vector["key_hex"]


def test_reprs_hold_no_key_material():
    enc = oe.CbcEncryptor(PASSPHRASE.encode())
    dec = decryptor()
    dec.update(enc.update(b"PGDMP" * 10) + enc.finalize())
    for obj in (enc, dec):
        text = repr(obj)
        assert text.startswith("<Cbc") and PASSPHRASE not in text and "Salted" not in text
    assert "passphrase_label=BACKUP_ENCRYPTION_KEY" in repr(dec)


def test_missing_cryptography_is_a_config_error(monkeypatch):
    monkeypatch.setattr(oe, "HAS_CRYPTOGRAPHY", False)
    for call in (lambda: oe.CbcEncryptor(b"k"), lambda: oe.CbcDecryptor([("K", b"k")])):
        with pytest.raises(ConfigError, match="the Python package 'cryptography' is required: pip install cryptography"):
            call()
    assert oe.parse_envelope(oe.passphrase_envelope("k")) == 10000  # needs no cryptography
    assert oe.looks_like(b"Salted__xxxxxxxx")


def test_constants():
    assert (oe.ENCRYPTION_NAME, oe.MAGIC, oe.SALT_SIZE, oe.HEADER_SIZE) == ("aes-256-cbc", b"Salted__", 8, 16)
    assert (oe.DEFAULT_ITERATIONS, oe.ENVELOPE_TYPE) == (10000, "openssl-enc-pbkdf2-sha256")


# --------------------------------------------------------------------------- finding how a seed object's key was derived

# Every way the seed's script may have called openssl enc (its .meta does not record which), and the KDF that reads it.
SEED_VARIANTS = [
    (["-pbkdf2"], "pbkdf2-sha256:10000"),
    (["-pbkdf2", "-iter", "100000"], "pbkdf2-sha256:100000"),
    (["-pbkdf2", "-iter", "600000"], "pbkdf2-sha256:600000"),
    ([], "evp-sha256"),  # no -pbkdf2: EVP_BytesToKey, sha256 since OpenSSL 1.1.0
    (["-md", "md5"], "evp-md5"),  # OpenSSL 1.0's default digest
]


@needs_openssl
@pytest.mark.parametrize("options, expected", SEED_VARIANTS)
def test_a_stock_openssl_object_is_read_whatever_derivation_the_seed_used(options, expected):
    plaintext = dump_like(70000, seed=3)
    blob = run_openssl(["enc", "-aes-256-cbc", "-salt"] + options + ["-pass", "env:K"], plaintext)
    dec = decryptor([("BACKUP_SEED_PASSPHRASE", "32_byte_encryption_key"), ("BACKUP_ENCRYPTION_KEY", PASSPHRASE)],
                    kdfs=oe.probe_kdfs())
    assert decrypt(blob, chunk=4096, dec=dec) == plaintext
    assert (dec.kdf.spec(), dec.passphrase_label) == (expected, "BACKUP_ENCRYPTION_KEY")


@needs_openssl
def test_a_derivation_outside_the_probe_list_needs_the_setting():
    plaintext = dump_like(5000, seed=4)
    blob = run_openssl(["enc", "-aes-256-cbc", "-salt", "-pbkdf2", "-iter", "250000", "-md", "sha512", "-pass", "env:K"],
                       plaintext)
    with pytest.raises(WrongKeyError, match="7 key derivations .* or BACKUP_SEED_KDF to how it was derived"):
        decrypt(blob, kdfs=oe.probe_kdfs())
    dec = decryptor(kdfs=oe.probe_kdfs(oe.parse_kdf("pbkdf2-sha512:250000")))
    assert decrypt(blob, dec=dec) == plaintext and dec.kdf.describe() == "PBKDF2-HMAC-SHA512, 250000 iterations (openssl enc -pbkdf2)"


@needs_openssl
@pytest.mark.parametrize("passphrase", ["32_byte_encryption_key", "f" * 64, "with spaces and ünïcode", PASSPHRASE])
def test_the_seed_passphrase_is_any_text_used_as_written(passphrase):
    plaintext = dump_like(3000, seed=5)
    blob = run_openssl(["enc", "-aes-256-cbc", "-salt", "-pbkdf2", "-pass", "env:K"], plaintext, passphrase=passphrase)
    assert decrypt(blob, passphrases=[("BACKUP_SEED_PASSPHRASE", passphrase)], kdfs=oe.probe_kdfs()) == plaintext


@pytest.mark.parametrize("text, spec", [
    ("pbkdf2", "pbkdf2-sha256:10000"), ("pbkdf2:600000", "pbkdf2-sha256:600000"), ("PBKDF2-SHA1:4096", "pbkdf2-sha1:4096"),
    ("evp", "evp-sha256"), ("evp-md5", "evp-md5"), (" evp-sha1 ", "evp-sha1"),
])
def test_kdf_settings_are_parsed(text, spec):
    assert oe.parse_kdf(text).spec() == spec


@pytest.mark.parametrize("text", ["scrypt", "pbkdf2:0", "evp-md5:1000", "pbkdf2-md4", "", "pbkdf2:99999999"])
def test_bad_kdf_settings_name_the_setting(text):
    with pytest.raises(ConfigError, match="BACKUP_SEED_KDF"):
        oe.parse_kdf(text)


def test_the_probe_tries_cheap_derivations_first_and_a_setting_before_all():
    assert [kdf.spec() for kdf in oe.probe_kdfs()] == ["pbkdf2-sha256:10000", "evp-sha256", "evp-md5", "pbkdf2-sha256:100000",
                                                       "pbkdf2-sha256:200000", "pbkdf2-sha256:600000", "pbkdf2-sha256:1000000"]
    first = oe.parse_kdf("pbkdf2:100000")
    assert oe.probe_kdfs(first)[0] == first and len(oe.probe_kdfs(first)) == 7


def test_evp_bytes_to_key_matches_its_definition():
    salt = bytes(range(8))
    d1 = hashlib.md5(b"pw" + salt).digest()
    d2 = hashlib.md5(d1 + b"pw" + salt).digest()
    d3 = hashlib.md5(d2 + b"pw" + salt).digest()
    assert oe.Kdf("evp", "md5").derive(b"pw", salt) == ((d1 + d2)[:32], d3[:16])


@pytest.mark.parametrize("start, expected", [
    (b"--\n-- PostgreSQL database dump\n", True), (b"SET statement_timeout = 0;", True), (b"\\restrict abc\n", True),
    (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", True), (b"\x1f\x8b\x08\xe0\x00\x00\x00\x00\x00\x03", False),
    (b"-- just a comment", False),
])
def test_plain_sql_and_gzip_starts_are_told_apart_from_noise(start, expected):
    assert oe.plausible_dump_start(start.ljust(16, b" ")) is expected
