# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 11, part 1-2: every backup the seed's scripts may have written restores.

Each backup is made by a plausible version of the seed's pipeline with the stock pg_dump, gzip/zstd,
openssl and the AWS CLI (tests/seedbackup.py), never by our code; then restored by the installed
``quankey-backup`` on the real test bed and compared with its source.
"""

import base64
import json
import os

import pytest

from hostcommand import new_name, run_cli
from sampledb import table_digests
from seedbackup import seed_backup

# (dump options, compressor, openssl options, passphrase kind, the derivation that must be found)
VARIANTS = {
    "the seed's own pipeline": ("-Fc", "gzip", "-pbkdf2", "base64", "PBKDF2-HMAC-SHA256, 10000 iterations"),
    "-iter 100000": ("-Fc", "gzip", "-pbkdf2 -iter 100000", "base64", "PBKDF2-HMAC-SHA256, 100000 iterations"),
    "no -pbkdf2 (OpenSSL 1.1+)": ("-Fc", "gzip", "", "base64", "EVP_BytesToKey SHA256"),
    "no -pbkdf2 (OpenSSL 1.0)": ("-Fc", "gzip", "-md md5", "base64", "EVP_BytesToKey MD5"),
    "openssl rand -hex 32": ("-Fc", "gzip", "-pbkdf2", "hex", "PBKDF2-HMAC-SHA256, 10000 iterations"),
    "the placeholder passphrase": ("-Fc", "gzip", "-pbkdf2", "placeholder", "PBKDF2-HMAC-SHA256, 10000 iterations"),
    "no gzip": ("-Fc", "cat", "-pbkdf2", "base64", "PBKDF2-HMAC-SHA256, 10000 iterations"),
    "zstd": ("-Fc", "zstd -q -c", "-pbkdf2", "base64", "PBKDF2-HMAC-SHA256, 10000 iterations"),
    "plain SQL, gzip": ("", "gzip", "-pbkdf2", "base64", "PBKDF2-HMAC-SHA256, 10000 iterations"),
    "plain SQL": ("", "cat", "", "base64", "EVP_BytesToKey SHA256"),
}


def _passphrase(kind):
    if kind == "hex":
        return os.urandom(32).hex()
    if kind == "placeholder":
        return "32_byte_encryption_key"  # the seed README's own placeholder, used as is by some
    return base64.b64encode(os.urandom(32)).decode("ascii")


@pytest.fixture
def env(testbed, source):
    values = testbed.backup_env(source)
    values.update(S3_PREFIX=new_name("seed"), BACKUP_HOST_ID="db1")
    return values


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_of_the_seeds_pipeline_restores_equal_to_its_source(testbed, source, env, tmp_path, variant):
    dump_options, compress, enc_options, kind, matched = VARIANTS[variant]
    passphrase = _passphrase(kind)
    name = "quankey_backup_20250809_030000"
    seed_backup(testbed, env, tmp_path, name, dump_options, compress, enc_options, passphrase)
    # the seed's variable as written, whatever its shape, is the passphrase
    seed_host = dict(env, BACKUP_ENCRYPTION_KEY=passphrase)
    verified = json.loads(run_cli(seed_host, "verify", "--allow-seed", "--json", check=0).stdout)
    assert matched in verified["kdf"] and "passphrase BACKUP_ENCRYPTION_KEY" in verified["kdf"]
    assert verified["payload"] == ("sql" if not dump_options else "custom")
    target = new_name("seedvar")
    restored = json.loads(run_cli(seed_host, "restore", "--allow-seed", "--target-db", target, "--json", check=0).stdout)
    assert restored["sql_ran_as"] == "quankey_restore" and matched in restored["kdf"]
    assert table_digests(testbed.pg, target) == table_digests(testbed.pg, source)
    listed = json.loads(run_cli(seed_host, "list", "--details", "--json", check=0).stdout)["backups"]
    assert matched in listed[0]["kdf"]


def test_the_seed_passphrase_beside_a_new_master_key(testbed, source, env, tmp_path):
    passphrase = "32_byte_encryption_key"
    seed_backup(testbed, env, tmp_path, "quankey_backup_20250809_030000", passphrase=passphrase)
    master = base64.b64encode(os.urandom(32)).decode("ascii")
    # the placeholder is no master key: the error says which of the two to set
    proc = run_cli(dict(env, BACKUP_ENCRYPTION_KEY=passphrase), "backup", check=3)
    assert "BACKUP_ENCRYPTION_KEY is not valid base64" in proc.stderr and "BACKUP_SEED_PASSPHRASE" in proc.stderr
    moved = dict(env, BACKUP_ENCRYPTION_KEY=master, BACKUP_SEED_PASSPHRASE=passphrase)
    run_cli(moved, "backup", check=0)
    verified = json.loads(run_cli(moved, "verify", "--allow-seed", "--backup", "quankey_backup_20250809_030000", "--json",
                                  check=0).stdout)
    assert "passphrase BACKUP_SEED_PASSPHRASE" in verified["kdf"]
    wrong = run_cli(dict(moved, BACKUP_SEED_PASSPHRASE="not it"), "verify", "--allow-seed", "--backup",
                    "quankey_backup_20250809_030000", check=6)
    assert "none of the passphrases given" in wrong.stderr and "BACKUP_SEED_PASSPHRASE" in wrong.stderr
    assert passphrase not in wrong.stderr + proc.stderr


def test_a_derivation_outside_the_usual_ones_is_named_by_a_setting(testbed, source, env, tmp_path):
    passphrase = _passphrase("base64")
    seed_backup(testbed, env, tmp_path, "quankey_backup_20250809_030000", enc_options="-pbkdf2 -iter 250000 -md sha512",
                passphrase=passphrase)
    seed_host = dict(env, BACKUP_ENCRYPTION_KEY=passphrase)
    proc = run_cli(seed_host, "verify", "--allow-seed", check=6)
    assert "BACKUP_SEED_KDF" in proc.stderr
    verified = json.loads(run_cli(dict(seed_host, BACKUP_SEED_KDF="pbkdf2-sha512:250000"), "verify", "--allow-seed",
                                  "--json", check=0).stdout)
    assert "PBKDF2-HMAC-SHA512, 250000 iterations" in verified["kdf"]
