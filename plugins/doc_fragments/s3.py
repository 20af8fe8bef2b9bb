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
      - AWS region of the bucket.
      - If not set, the environment variables E(AWS_DEFAULT_REGION) and E(AWS_REGION) are used, in that order.
      - Without either, botocore's own chain decides (the region of O(profile) or of the default profile in the AWS
        config file on the managed host); only when that names none either, V(us-east-1) is used. The instance
        metadata service is not asked.
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
      - AWS access key ID. Without it (and without O(secret_key) and O(profile)) boto3 finds credentials the usual
        way, the recommended one first - an instance role, or web identity (C(AWS_ROLE_ARN) and
        C(AWS_WEB_IDENTITY_TOKEN_FILE), for example IRSA on EKS).
      - The O(access_key), O(secret_key) and O(session_token) options are mutually exclusive with O(profile).
      - If not set, the environment variables E(AWS_ACCESS_KEY_ID) and E(AWS_ACCESS_KEY) are used, in that order.
    type: str
    aliases: [aws_access_key_id, aws_access_key]
  secret_key:
    description:
      - AWS secret access key.
      - If not set, the environment variables E(AWS_SECRET_ACCESS_KEY) and E(AWS_SECRET_KEY) are used, in that order.
      - This value is a secret and is never logged.
    type: str
    aliases: [aws_secret_access_key, aws_secret_key]
  session_token:
    description:
      - AWS STS session token, for temporary credentials.
      - If not set, the environment variables E(AWS_SESSION_TOKEN) and E(AWS_SECURITY_TOKEN) are used, in that order.
      - This value is a secret and is never logged.
    type: str
    aliases: [aws_session_token]
  profile:
    description:
      - A named profile of the AWS config and credentials files on the managed host (C(~/.aws/config) and
        C(~/.aws/credentials) of the user the module runs as, or the files the environment variables
        C(AWS_CONFIG_FILE) and C(AWS_SHARED_CREDENTIALS_FILE) name). Its credentials, region, C(ca_bundle),
        C(max_attempts) and C(retry_mode) are used where nothing else sets them.
      - Mutually exclusive with O(access_key), O(secret_key) and O(session_token), wherever each is set. A profile
        that is in neither file fails the task naming both files.
      - If not set, the environment variables E(AWS_PROFILE) and E(AWS_DEFAULT_PROFILE) are used, in that order.
    type: str
    aliases: [aws_profile]
  aws_ca_bundle:
    description:
      - A PEM file on the managed host of the CA certificates the S3 endpoint's TLS certificate is checked against
        (a private CA in front of an S3-compatible store, a TLS-inspecting proxy). It must exist when the task runs.
        Defaults to botocore's own bundle (or C(ca_bundle) of O(profile), or C(REQUESTS_CA_BUNDLE)).
      - If not set, the environment variable E(AWS_CA_BUNDLE) is used.
    type: path
  validate_certs:
    description:
      - When V(false), the S3 endpoint's TLS certificate is not checked at all, and the task warns. Strongly
        discouraged; set O(aws_ca_bundle) instead. Defaults to V(true).
      - If not set, the environment variable E(S3_VALIDATE_CERTS) is used.
    type: bool
  aws_config:
    description:
      - 'Parameters of the S3 client''s botocore Config
        (U(https://botocore.amazonaws.com/v1/documentation/api/latest/reference/config.html)), for example
        V({"retries": {"max_attempts": 10, "mode": "adaptive"}, "connect_timeout": 5, "read_timeout": 60}). A name that
        is no parameter of botocore''s Config fails the task.'
      - C(retries) here, else the environment variables C(AWS_MAX_ATTEMPTS) and C(AWS_RETRY_MODE), else the profile's
        C(max_attempts) and C(retry_mode), turn botocore's own retries on (mode V(standard) unless one names
        another); the collection's retries (C(S3_RETRY_WINDOW_SECONDS)) still try a request again that fails after
        botocore's attempts, until their window ends (V(0) leaves botocore's alone). Without them every retry is the
        collection's, each logged. C(connect_timeout) and C(read_timeout) replace the timeouts the retry window
        gives (10 and 120 seconds, shorter with a short window).
      - If not set, the environment variable E(S3_CLIENT_CONFIG) is used (a JSON object).
    type: dict
requirements:
  - boto3 >= 1.26
"""
