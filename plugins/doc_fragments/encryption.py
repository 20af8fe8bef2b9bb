# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The active key and the keyring; argument spec: module_utils/ansible_common.py encryption_argument_spec()
    DOCUMENTATION = r"""
options:
  encryption_key:
    description:
      - The active master key, base64 of exactly 32 random bytes (C(openssl rand -base64 32)).
      - Each backup is encrypted with its own random data key; the active master key wraps that data key in the
        backup's metadata. A restore needs the master key that made the backup, as O(encryption_key) or among
        O(decryption_keys) or in O(keyring_file); its id (C(qk1-...)) is recorded as C(key_id) and named in the
        error when no key given opens it.
      - Keep a copy of it outside the backups; without it no backup can be restored.
      - If not set, the environment variable E(BACKUP_ENCRYPTION_KEY) is used.
      - This value is a secret and is never logged.
    type: str
  decryption_keys:
    description:
      - Older master keys (base64 of 32 bytes each) still accepted to open backups, for example the previous key
        during a key rotation. They never wrap new backups.
      - Together with O(encryption_key) and the keys of O(keyring_file) they form the keyring; each key is known
        by its key id (C(qk1-...)).
      - If not set, the environment variable E(BACKUP_DECRYPTION_KEYS) is used (keys separated by commas or spaces).
      - This value is a secret and is never logged.
    type: list
    elements: str
  keyring_file:
    description:
      - A file on the managed host with more older master keys, one base64 key per line (V(#) starts a comment).
      - It must be readable by its owner only (mode 0600 or stricter); otherwise it is refused.
      - If not set, the environment variable E(BACKUP_KEYRING_FILE) is used.
    type: path
  encryption:
    description:
      - How new backups are encrypted (and what P(quankey.backup.backup_rekey#module) re-wraps data keys to).
      - V(aes-256-gcm) encrypts each backup with AES-256-GCM under a fresh data key wrapped by O(encryption_key).
      - V(hybrid-pq) encrypts the same way but seals the data key to the public keys in O(recipients) with a hybrid
        X25519 + ML-KEM-768 key exchange, so the database host holds no key that opens past backups; restoring needs
        the private key in O(identity_file). It needs O(signing_key) when no O(encryption_key) is set, and
        cryptography 48 or later (with OpenSSL 3.5 or later, as in its wheels) on the host.
      - V(aes-256-cbc) writes the seed's format (OpenSSL C(enc -aes-256-cbc -pbkdf2) with the text of
        O(encryption_key) as passphrase), which the stock C(openssl) command decrypts. It is not authenticated;
        use it only where that compatibility is needed.
      - Restores read all three (and the seed's own backups) whatever this is set to.
      - Defaults to V(aes-256-gcm).
      - If not set, the environment variable E(BACKUP_ENCRYPTION) is used.
    type: str
    choices: [aes-256-gcm, hybrid-pq, aes-256-cbc]
  recipients:
    description:
      - Public keys (C(qkpq1-pub-...)) printed by C(quankey-backup keygen), that O(encryption=hybrid-pq) seals each
        backup's data key to; any one of their private keys restores it.
      - If not set, the environment variable E(BACKUP_RECIPIENTS) is used (keys separated by commas or spaces).
    type: list
    elements: str
  identity_file:
    description:
      - The private key file made by C(quankey-backup keygen), which opens backups sealed to its public key
        (O(encryption=hybrid-pq)). Keep it where restores run, not on the database hosts.
      - It must be readable by its owner only (mode 0600 or stricter); otherwise it is refused.
      - If not set, the environment variable E(BACKUP_IDENTITY_FILE) is used.
    type: path
  signing_key:
    description:
      - Base64 of 32 random bytes (C(openssl rand -base64 32)) that signs each backup's metadata (HMAC-SHA256), so
        that someone who can write to the bucket cannot swap an object and its checksum unnoticed.
      - When not set, a key derived from O(encryption_key) signs, and the keys derived from every master key
        verify. Hosts that hold no master key (O(encryption=hybrid-pq)) need it, and so do the restore and health
        checks of their backups.
      - After a rotation, older signing keys may follow the active one, separated by commas or spaces; they
        still verify the metadata they signed until P(quankey.backup.backup_rekey#module) re-signs it.
      - If not set, the environment variable E(BACKUP_SIGNING_KEY) is used.
      - This value is a secret and is never logged.
    type: str
  seed_passphrase:
    description:
      - The passphrase the seed's scripts gave C(openssl enc) (their C(BACKUP_ENCRYPTION_KEY), as text, whatever its
        shape), which opens the backups they made (C(backups/postgresql/<name>.encrypted) with
        C(metadata/<name>.meta)) and the seed-format backups written with O(encryption=aes-256-cbc).
      - Set it when O(encryption_key) holds a new master key. The text of O(encryption_key) is tried too, so a host
        that kept the seed's key as its master key needs nothing more.
      - Used to restore, verify and adopt (P(quankey.backup.backup_adopt#module)) the seed's backups.
      - If not set, the environment variable E(BACKUP_SEED_PASSPHRASE) is used.
      - This value is a secret and is never logged.
    type: str
  seed_kdf:
    description:
      - How the seed's key was derived from O(seed_passphrase), when it is none of those tried by default
        (PBKDF2-SHA256 at the usual iteration counts, OpenSSL's EVP_BytesToKey with SHA-256 or MD5), for example
        V(pbkdf2-sha256:250000) for C(openssl enc -pbkdf2 -iter 250000), C(pbkdf2-sha512:N), C(pbkdf2-sha1:N),
        or V(evp-md5), V(evp-sha256), V(evp-sha1) for C(openssl enc) without C(-pbkdf2). It is tried first.
      - If not set, the environment variable E(BACKUP_SEED_KDF) is used.
    type: str
requirements:
  - cryptography >= 41 (for O(encryption=hybrid-pq), 48 or later built with OpenSSL 3.5 or later, as its wheels are)
"""
