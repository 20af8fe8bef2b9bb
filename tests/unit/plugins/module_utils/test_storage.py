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


class _FakeClient:
    """Records what a MultipartUpload sends (no network)."""

    def __init__(self):
        self.parts = {}
        self.bodies = []
        self.completed = None
        self.aborted = False

    def create_multipart_upload(self, **kwargs):
        return {"UploadId": "u1"}

    def upload_part(self, Body, PartNumber, **kwargs):  # noqa: N803  # boto3's argument names
        self.bodies.append(Body)
        self.parts[PartNumber] = bytes(Body)
        return {"ETag": '"%d"' % PartNumber}

    def complete_multipart_upload(self, MultipartUpload, **kwargs):  # noqa: N803
        self.completed = [part["PartNumber"] for part in MultipartUpload["Parts"]]

    def abort_multipart_upload(self, **kwargs):
        self.aborted = True


class _FakeStore:
    bucket = "b"
    storage_class = "STANDARD_IA"
    conditional_writes = True

    def __init__(self):
        self.client = _FakeClient()

    def _call(self, action, key, func, **kwargs):
        return func(**kwargs)

    def url(self, key=""):
        return "s3://b/" + key

    def head(self, key):
        return {"ContentLength": sum(len(part) for part in self.client.parts.values())}


@pytest.mark.parametrize("sizes", [[3, 5, 7, 1, 20, 2], [16], [8, 8], [1] * 17, [40]])
def test_multipart_upload_cuts_exact_parts_in_order(sizes):
    store = _FakeStore()
    upload = storage.MultipartUpload(store, "k", 8, 2)
    stream = bytes(range(256))
    data, pos = [], 0
    for size in sizes:
        chunk = stream[pos:pos + size]
        data.append(chunk)
        upload.write(chunk)
        pos += size
    assert upload.complete() == pos
    sent = store.client.parts
    assert b"".join(sent[number] for number in sorted(sent)) == b"".join(data)
    assert all(len(sent[number]) == 8 for number in sorted(sent)[:-1])
    assert 0 < len(sent[max(sent)]) <= 8
    assert store.client.completed == sorted(sent)


def test_multipart_upload_of_nothing_sends_one_empty_part():
    store = _FakeStore()
    upload = storage.MultipartUpload(store, "k", 8, 2)
    assert upload.complete() == 0
    assert store.client.parts == {1: b""}


def test_multipart_upload_never_changes_a_part_after_sending_it():
    """A retried request must send the same bytes: the part buffer is not reused."""
    store = _FakeStore()
    upload = storage.MultipartUpload(store, "k", 8, 2)
    for _round in range(5):
        upload.write(b"abcdef")
        upload.write(memoryview(b"xyz"))
    upload.complete()
    assert [bytes(body) for body in store.client.bodies] == [store.client.parts[n] for n in sorted(store.client.parts)]
