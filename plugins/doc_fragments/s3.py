# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # Where backups live in S3 and how to reach it; argument spec: module_utils/ansible_common.py s3_argument_spec()
    DOCUMENTATION = r"""
options:
  bucket:
    description:
      - Name of the S3 bucket that holds the backups. Required, as an option, in the environment or in O(env_file).
      - If not set, the environment variable E(S3_BUCKET) is used.
    type: str
  prefix:
    description:
      - Key prefix under which all backups and metadata of this bucket are kept, for example V(prod/). Defaults to
        none.
      - If not set, the environment variable E(S3_PREFIX) is used.
    type: str
  host_id:
    description:
      - This host's name in object keys (C(backups/postgresql/<host_id>/<db>/...)), so one bucket can serve
        a fleet and IAM can scope each host to its own prefix.
      - Letters, digits, V(.), V(_) and V(-) only. Defaults to the managed host's short host name.
      - If not set, the environment variable E(BACKUP_HOST_ID) is used.
    type: str
  region:
    description:
      - AWS region of the bucket. Defaults to V(us-east-1).
      - If not set, the environment variables E(AWS_DEFAULT_REGION) and E(AWS_REGION) are used, in that order.
    type: str
    aliases: [aws_region]
  endpoint_url:
    description:
      - URL of an S3-compatible endpoint (MinIO, Ceph, a local test server) instead of AWS.
      - If not set, the environment variable E(S3_ENDPOINT_URL) is used.
    type: str
    aliases: [aws_endpoint_url]
  access_key:
    description:
      - AWS access key ID. Without it (and without O(secret_key)) boto3 finds credentials the usual way,
        for example from an instance profile.
      - If not set, the environment variables E(AWS_ACCESS_KEY_ID) and E(AWS_ACCESS_KEY) are used, in that order.
    type: str
    aliases: [aws_access_key_id]
  secret_key:
    description:
      - AWS secret access key.
      - If not set, the environment variables E(AWS_SECRET_ACCESS_KEY) and E(AWS_SECRET_KEY) are used, in that order.
      - This value is a secret and is never logged.
    type: str
    aliases: [aws_secret_access_key]
  session_token:
    description:
      - AWS session token, for temporary credentials.
      - If not set, the environment variables E(AWS_SESSION_TOKEN) and E(AWS_SECURITY_TOKEN) are used, in that order.
      - This value is a secret and is never logged.
    type: str
    aliases: [aws_session_token]
requirements:
  - boto3 >= 1.26
"""
