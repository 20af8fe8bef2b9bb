# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The master key; argument spec: module_utils/ansible_common.py encryption_argument_spec()
    DOCUMENTATION = r"""
options:
  encryption_key:
    description:
      - The master key, base64 of exactly 32 random bytes (C(openssl rand -base64 32)).
      - Each backup is encrypted with its own random data key; the master key wraps that data key in the
        backup's metadata. A restore needs the master key that made the backup; its id (C(qk1-...)) is
        recorded as C(key_id) and named in the error when another key is given.
      - Keep a copy of it outside the backups; without it no backup can be restored.
      - If not set, the environment variable E(BACKUP_ENCRYPTION_KEY) is used.
      - This value is a secret and is never logged.
    type: str
requirements:
  - cryptography >= 41
"""
