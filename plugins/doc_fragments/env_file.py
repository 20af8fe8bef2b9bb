# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The host's env file; argument spec: module_utils/ansible_common.py env_file_argument_spec()
    DOCUMENTATION = r"""
options:
  env_file:
    description:
      - A file on the managed host with the settings of the C(quankey-backup) command, C(KEY=VALUE) lines (C(export),
        quotes and C(#) comments allowed), such as the one the P(quankey.backup.pg_backup#role) role writes. With it a
        task can use the host's own configuration and give no other option.
      - Each option that names an environment variable takes, when it is not set, that variable from the environment
        of the module on the managed host, else the same variable from this file, else its default. An option given
        to the task always wins over the file.
      - The settings that have no option are read from it too (C(BACKUP_MIN_KEEP), C(BACKUP_LOCK_WAIT_TIMEOUT),
        C(S3_RETRY_WINDOW_SECONDS)), and its libpq variables C(PGSSL*), C(PGSERVICE*) and C(PGSYSCONFDIR) reach the
        PostgreSQL client programs, as they do for the command.
      - Its process variables (C(HTTPS_PROXY), C(HTTP_PROXY), C(NO_PROXY), C(AWS_CONFIG_FILE), C(AWS_ROLE_ARN), ... -
        the list is in the command's docs/CLI.md) are put into the module's environment for boto3, unless that environment
        sets them. Any other variable in the file has no effect and gives a warning naming it.
      - Defaults to C(/etc/quankey/backup.env) when that file exists; when this user may not read it, it is skipped
        with a warning (use C(become)). A file named here must exist and be readable.
      - It holds secrets, so keep it mode 0600; a file that group or others may read gives a warning. The secrets
        read from it are never returned or logged.
      - If not set, the environment variable E(QUANKEY_ENV_FILE) is used.
    type: path
"""
