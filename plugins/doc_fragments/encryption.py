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
requirements:
  - cryptography >= 41
"""
