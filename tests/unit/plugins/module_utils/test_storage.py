# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Part sizing and error translation of the S3 layer (no network)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import storage
from ansible_collections.quankey.backup.plugins.module_utils.errors import NotFoundError, StorageError

botocore = pytest.importorskip("botocore")
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError  # noqa: E402

MIB = 1024 * 1024
GIB = 1024 * MIB


def test_part_size_has_an_s3_friendly_floor():
    assert storage.choose_part_size(0) == 8 * MIB
    assert storage.choose_part_size(10 * GIB) == 8 * MIB


@pytest.mark.parametrize("expected", [100 * GIB, 1024 * GIB, 4 * 1024 * GIB])
def test_expected_size_fits_well_within_10000_parts(expected):
    size = storage.choose_part_size(expected)
    assert size % MIB == 0
    assert expected / size <= 9000


def test_parts_grow_so_an_underestimate_still_fits():
    base = storage.choose_part_size(1 * GIB)
    capacity = sum(storage.part_size_for(n, base) for n in range(1, storage.MAX_PARTS + 1))
    assert capacity == 8 * MIB * storage.PART_TIER * 31  # 8 MiB parts doubling every 2,000: ~484 GiB in all
    assert storage.part_size_for(1, base) == base
    assert storage.part_size_for(storage.PART_TIER + 1, base) == 2 * base
    assert storage.part_size_for(storage.MAX_PARTS, 4 * GIB) == storage.MAX_PART_SIZE


def _client_error(code, status=400, operation="PutObject"):
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


@pytest.mark.parametrize("exc,kind,match", [
    (_client_error("AccessDenied", 403), StorageError, r"S3 access denied for s3://b/k \(PutObject\): check the IAM policy"),
    (_client_error("NoSuchBucket", 404), StorageError, "bucket 'b' does not exist"),
    (_client_error("InvalidAccessKeyId", 403), StorageError, "rejected the credentials"),
    (_client_error("SignatureDoesNotMatch", 403), StorageError, "AWS_SECRET_ACCESS_KEY"),
    (_client_error("NoSuchKey", 404), NotFoundError, "no object at s3://b/k"),
    (NoCredentialsError(), StorageError, "no AWS credentials"),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), StorageError, "cannot reach the S3 endpoint"),
])
def test_errors_say_what_where_and_what_to_check(exc, kind, match):
    error = storage.translate_error(exc, "PutObject", "b", "k", "http://127.0.0.1:9")
    assert isinstance(error, kind)
    assert error.message and __import__("re").search(match, str(error))


def test_head_bucket_404_means_missing_bucket():
    error = storage.translate_error(_client_error("404", 404, "HeadBucket"), "HeadBucket", "b")
    assert "does not exist" in str(error)
