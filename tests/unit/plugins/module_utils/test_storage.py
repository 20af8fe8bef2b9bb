# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The S3 layer without a network: part sizing, error translation, retries on a fake clock, lost answers,
resumed downloads."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import io

import pytest

from ansible_collections.quankey.backup.plugins.module_utils import config
from ansible_collections.quankey.backup.plugins.module_utils.adapters import s3 as storage
from ansible_collections.quankey.backup.plugins.module_utils.errors import ConfigError, ConflictError, NotFoundError, StorageError

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

    def _retrying(self, action, key, attempt, recover=None, budget=None, cancel=None):
        return attempt()

    def url(self, key=""):
        return "s3://b/" + key

    def head(self, key):
        return {"ContentLength": sum(len(part) for part in self.client.parts.values())}

    def lock_arguments(self):
        return {}


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


# --------------------------------------------------------------------------- retries (no network, no real sleeping)

from botocore.exceptions import (  # noqa: E402
    ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError, ResponseStreamingError, SSLError)

REFUSED = "<urllib3.connection.HTTPConnection object>: Failed to establish a new connection: [Errno 111] Connection refused"


class _Clock:
    """A monotonic clock that only moves when something sleeps."""

    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def pause(self, seconds, cancel=None):
        self.sleeps.append(seconds)
        self.now += seconds
        return cancel is not None and cancel.is_set()


def _policy(window, clock, jitter=1.0):
    return storage.RetryPolicy(window, clock=clock, pause=clock.pause, jitter=lambda: jitter)


def _refused():
    return EndpointConnectionError(endpoint_url="http://127.0.0.1:9/b/k", error=REFUSED)


def _not_s3(code="", operation="ListObjectsV2"):
    """What botocore makes of a web server's 404 page: no S3 error code (empty, or the status)."""
    return ClientError({"Error": {"Code": code, "Message": ""}, "ResponseMetadata": {"HTTPStatusCode": 404}}, operation)


class _Script:
    """A client method that answers with the given outcomes in turn: a value, an exception to raise, or a function
    of the call's arguments. Records the calls."""

    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.calls = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome(**kwargs) if callable(outcome) else outcome


class _Client:
    """Client methods as _Scripts, set per test."""

    def __init__(self, **methods):
        for name, script in methods.items():
            setattr(self, name, script)


def _store(clock, window=30, **methods):
    store = storage.S3Store("bkt", endpoint_url="http://127.0.0.1:9", retry=_policy(window, clock))
    store.client = _Client(**methods)
    return store


@pytest.mark.parametrize("exc,transient", [
    (_refused(), True),
    (ConnectTimeoutError(endpoint_url="http://s3"), True),
    (ReadTimeoutError(endpoint_url="http://s3"), True),
    (ConnectionClosedError(endpoint_url="http://s3"), True),
    (ResponseStreamingError(error="Connection reset by peer"), True),
    (_client_error("SlowDown", 503), True),
    (_client_error("InternalError", 500), True),
    (_client_error("ServiceUnavailable", 503), True),
    (_client_error("RequestTimeout", 400), True),
    (_client_error("502", 502), True),  # a load balancer's own page
    (_client_error("504", 504), True),
    (_client_error("AccessDenied", 403), False),
    (_client_error("NoSuchBucket", 404), False),
    (_client_error("InvalidAccessKeyId", 403), False),
    (_client_error("PreconditionFailed", 412), False),
    (_client_error("NoSuchKey", 404), False),
    (_client_error("NotImplemented", 501), False),
    (_not_s3(), False),
    (NoCredentialsError(), False),
    (SSLError(endpoint_url="https://s3", error="certificate verify failed"), False),
])
def test_only_failures_that_may_pass_are_transient(exc, transient):
    assert storage.is_transient(exc) is transient


def test_waits_double_up_to_the_cap_and_the_last_attempt_comes_when_the_window_ends():
    clock = _Clock()
    timer = _policy(60, clock).start()
    while True:
        wait = timer.next_wait()
        if wait is None:
            break
        clock.pause(wait)
    assert clock.sleeps[:6] == [0.5, 1.0, 2.0, 4.0, 8.0, storage.MAX_WAIT]
    assert max(clock.sleeps) == storage.MAX_WAIT and clock.now == 60  # the last wait is cut to the window
    assert timer.failures == len(clock.sleeps) + 1


def test_jitter_waits_between_half_and_all_of_the_step():
    clock = _Clock()
    low, high = _policy(60, clock, jitter=0.0).start(), _policy(60, clock, jitter=0.999).start()
    assert [low.next_wait(), low.next_wait(), low.next_wait()] == [0.25, 0.5, 1.0]
    assert [round(high.next_wait(), 2), round(high.next_wait(), 2), round(high.next_wait(), 2)] == [0.5, 1.0, 2.0]


def test_a_budget_shortens_the_window_and_zero_means_no_retries():
    clock = _Clock()
    assert _policy(300, clock).start(budget=60).window == 60
    assert _policy(0, clock).start().next_wait() is None
    assert _policy(0, clock).start(budget=60).window == 0


def test_a_cancelled_timer_stops_at_once():
    cancel = __import__("threading").Event()
    timer = _policy(300, _Clock()).start(cancel=cancel)
    assert timer.next_wait() is not None
    cancel.set()
    assert timer.next_wait() is None and timer.cancelled()


@pytest.mark.parametrize("window,expected", [(0, (10, 120)), (1, (2, 5)), (8, (8, 8)), (300, (10, 120))])
def test_one_attempt_cannot_outlast_a_short_window_by_much(window, expected):
    assert storage.attempt_timeouts(window) == expected


def test_transient_failures_are_retried_and_each_retry_is_logged_with_cause_and_time_left(caplog):
    clock = _Clock()
    put = _Script(_refused(), _client_error("SlowDown", 503), {"ETag": '"e"'})
    store = _store(clock, put_object=put)
    assert store.put_bytes("k", b"{}") == {"ETag": '"e"'}
    assert len(put.calls) == 3 and len(clock.sleeps) == 2
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert "S3 PutObject of s3://bkt/k failed (cannot connect: Connection refused): retrying in 0.5s, 30s left of " \
           "the 30s retry window (S3_RETRY_WINDOW_SECONDS)" == warnings[0]
    assert "(HTTP 503 SlowDown)" in warnings[1]


def test_a_failure_outlasting_the_window_names_action_key_cause_and_how_long_it_lasted():
    clock = _Clock()
    store = _store(clock, upload_part=_Script(_client_error("SlowDown", 503)))
    with pytest.raises(StorageError) as failure:
        store._call("UploadPart", "k", store.client.upload_part)
    message = str(failure.value)
    assert message.startswith("S3 UploadPart of s3://bkt/k failed via http://127.0.0.1:9: SlowDown")
    assert "it kept failing for 30 s over %d attempts (retry window: 30 s, S3_RETRY_WINDOW_SECONDS)" \
        % len(store.client.upload_part.calls) in message
    assert clock.now == 30  # waited the window out, on the fake clock


def test_without_a_window_the_first_failure_is_final_and_says_nothing_of_retries():
    clock = _Clock()
    store = _store(clock, window=0, delete_object=_Script(_refused()))
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint") as failure:
        store.delete("k")
    assert "kept failing" not in str(failure.value) and clock.sleeps == []


@pytest.mark.parametrize("exc,kind", [
    (_client_error("AccessDenied", 403), StorageError),
    (_client_error("NoSuchBucket", 404), StorageError),
    (_client_error("InvalidAccessKeyId", 403), StorageError),
    (_client_error("PreconditionFailed", 412), ConflictError),
    (_not_s3(), StorageError),
])
def test_lasting_failures_are_never_retried(exc, kind):
    clock = _Clock()
    put = _Script(exc)
    store = _store(clock, put_object=put, get_object=_Script(AssertionError("no read-back without a lost answer")))
    with pytest.raises(kind):
        store.put_bytes("k", b"{}", if_none_match=True)
    assert len(put.calls) == 1 and clock.sleeps == []


def test_a_listing_resumes_at_the_page_that_failed():
    clock = _Clock()
    pages = _Script({"Contents": [{"Key": "a", "Size": 1, "LastModified": 1}], "IsTruncated": True,
                     "NextContinuationToken": "t2"},
                    ConnectionClosedError(endpoint_url="http://s3"),
                    {"Contents": [{"Key": "b", "Size": 2, "LastModified": 2}], "IsTruncated": False})
    store = _store(clock, list_objects_v2=pages)
    assert [item["key"] for item in store.list_objects("p/")] == ["a", "b"]
    assert [call.get("ContinuationToken") for call in pages.calls] == [None, "t2", "t2"]


# --------------------------------------------------------------------------- an endpoint that is not S3

def _from_env_file(field):
    return "%s in /etc/quankey/backup.env" % config.FIELD_VARIABLES[field]


@pytest.mark.parametrize("code,action", [("", "ListObjectsV2"), ("404", "ListObjectsV2"), ("", "GetObject"),
                                         ("404", "PutObject")])
def test_a_404_without_an_s3_error_says_the_endpoint_is_not_s3(code, action):
    error = storage.translate_error(_not_s3(code, action), action, "b", "p/", "http://web:80", _from_env_file)
    assert type(error) is StorageError  # pylint: disable=unidiomatic-typecheck  # not NotFoundError (exit 7)
    assert str(error) == ("the S3 endpoint http://web:80 answered HTTP 404 without an S3 error to %s of s3://b/p/ "
                          "(not an S3 endpoint?): check S3_ENDPOINT_URL in /etc/quankey/backup.env" % action)


def test_a_bare_404_to_head_is_s3_saying_no_such_key():
    error = storage.translate_error(_not_s3("404", "HeadObject"), "HeadObject", "b", "k")
    assert isinstance(error, NotFoundError)
    store = _store(_Clock(), head_object=_Script(_not_s3("404", "HeadObject")))
    assert store.head("k") is None


def test_s3_own_404s_keep_their_meaning():
    assert isinstance(storage.translate_error(_client_error("NoSuchKey", 404), "GetObject", "b", "k"), NotFoundError)
    assert "does not exist" in str(storage.translate_error(_client_error("NoSuchBucket", 404), "ListObjectsV2", "b"))


# --------------------------------------------------------------------------- answers lost after the store acted

def _keeping(objects, key="k"):
    """A put_object that stores its body in ``objects`` and then loses the answer."""
    def put(**kwargs):
        objects[key] = bytes(kwargs["Body"])
        raise ConnectionClosedError(endpoint_url="http://s3")
    return put


def _get_from(objects):
    def get(**kwargs):
        if kwargs["Key"] not in objects:
            raise _client_error("NoSuchKey", 404, "GetObject")
        return {"Body": io.BytesIO(objects[kwargs["Key"]]), "ETag": '"x"'}
    return get


def test_a_conditional_put_whose_answer_was_lost_is_read_back_not_called_a_conflict(caplog):
    objects = {}
    store = _store(_Clock(), put_object=_Script(_keeping(objects), _client_error("PreconditionFailed", 412)),
                   get_object=_Script(_get_from(objects)))
    store.put_bytes("k", b'{"a": 1}', if_none_match=True)
    assert objects == {"k": b'{"a": 1}'}
    assert any("the answer to an earlier attempt was lost" in record.getMessage() for record in caplog.records)


def test_a_retry_refused_because_another_writer_got_there_is_still_a_conflict():
    objects = {"k": b"theirs"}
    lost = ConnectionClosedError(endpoint_url="http://s3")  # lost before the store acted
    store = _store(_Clock(), put_object=_Script(lost, _client_error("PreconditionFailed", 412)),
                   get_object=_Script(_get_from(objects)))
    with pytest.raises(ConflictError):
        store.put_bytes("k", b"ours", if_none_match=True)


class _Upload:
    """A fake client's multipart side: parts kept, Complete makes the object (and may lose its answer)."""

    def __init__(self, lose_complete_answer=False):
        self.parts = {}
        self.object = None
        self.lose = lose_complete_answer
        self.aborts = 0

    def create(self, **kwargs):
        return {"UploadId": "u1"}

    def upload_part(self, **kwargs):
        self.parts[kwargs["PartNumber"]] = bytes(kwargs["Body"])
        return {"ETag": '"%d"' % kwargs["PartNumber"]}

    def complete(self, **kwargs):
        if self.object is not None:
            raise _client_error("NoSuchUpload", 404, "CompleteMultipartUpload")
        self.object = b"".join(self.parts[number] for number in sorted(self.parts))
        if self.lose:
            raise ConnectionClosedError(endpoint_url="http://s3")
        return {}

    def head(self, **kwargs):
        if self.object is None:
            raise _client_error("404", 404, "HeadObject")
        return {"ContentLength": len(self.object)}

    def client(self, **overrides):
        methods = dict(create_multipart_upload=_Script(self.create), upload_part=_Script(self.upload_part),
                       complete_multipart_upload=_Script(self.complete), head_object=_Script(self.head),
                       abort_multipart_upload=_Script({}))
        methods.update(overrides)
        return methods


def test_a_complete_whose_answer_was_lost_is_a_success_when_the_object_is_there_whole():
    fake = _Upload(lose_complete_answer=True)
    store = _store(_Clock(), **fake.client())
    upload = storage.MultipartUpload(store, "k", 8, 2)
    upload.write(b"0123456789abc")
    assert upload.complete() == 13
    assert len(store.client.complete_multipart_upload.calls) == 2 and fake.object == b"0123456789abc"


def test_a_complete_refused_on_its_first_attempt_is_a_conflict():
    fake = _Upload()
    store = _store(_Clock(), **fake.client(complete_multipart_upload=_Script(_client_error("PreconditionFailed", 412))))
    upload = storage.MultipartUpload(store, "k", 8, 2)
    upload.write(b"abc")
    with pytest.raises(ConflictError):
        upload.complete()


# --------------------------------------------------------------------------- aborts

def test_an_abort_is_retried_and_when_the_store_stays_away_the_failure_names_the_upload_and_prune(caplog):
    clock = _Clock()
    fake = _Upload()
    store = _store(clock, window=300, **fake.client(upload_part=_Script(_refused()),
                                                    abort_multipart_upload=_Script(_refused())))
    with pytest.raises(StorageError) as failure:
        with storage.MultipartUpload(store, "k", 8, 2) as upload:
            upload.write(b"x" * 5)  # one part, sent by complete(): one thread on the fake clock
            upload.complete()
    message = str(failure.value)
    assert message.startswith("cannot reach the S3 endpoint http://127.0.0.1:9 (UploadPart s3://bkt/k)")
    assert "kept failing for 300 s" in message
    assert message.endswith("; the multipart upload of s3://bkt/k is still open (the abort failed too): the next "
                            "`quankey-backup prune` aborts it once it is 24 h old")
    assert len(store.client.abort_multipart_upload.calls) > 3  # retried, within its own budget
    assert clock.now <= 300 + storage.ABORT_BUDGET + 1


def test_an_abort_that_gets_through_adds_nothing_to_the_failure():
    fake = _Upload()
    store = _store(_Clock(), **fake.client(abort_multipart_upload=_Script(_refused(), {})))
    with pytest.raises(RuntimeError) as failure:
        with storage.MultipartUpload(store, "k", 8, 2) as upload:
            upload.write(b"abc")
            raise RuntimeError("pg_dump died")
    assert str(failure.value) == "pg_dump died" and len(store.client.abort_multipart_upload.calls) == 2


def test_an_abort_retry_told_no_such_upload_is_done():
    store = _store(_Clock(), abort_multipart_upload=_Script(ConnectionClosedError(endpoint_url="http://s3"),
                                                            _client_error("NoSuchUpload", 404)))
    store.abort_multipart("k", "u1")
    assert len(store.client.abort_multipart_upload.calls) == 2


# --------------------------------------------------------------------------- downloads cut mid-body

class _CutBody:
    """A response body that fails like a reset connection once ``cut`` bytes were sent (a read across it is lost)."""

    def __init__(self, data, cut=None):
        self.data = data
        self.pos = 0
        self.cut = cut

    def read(self, size=None):
        end = len(self.data) if size is None else min(len(self.data), self.pos + size)
        if self.cut is not None and end > self.cut:
            raise ResponseStreamingError(error="('Connection broken: ConnectionResetError(104, 'Connection reset by peer')'")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def close(self):
        pass


def test_a_download_cut_mid_body_goes_on_with_a_ranged_get_of_the_same_version():
    data = bytes(range(256)) * 4096  # 1 MiB
    cut = 300 * 1024

    def get(**kwargs):
        if "Range" not in kwargs:
            return {"Body": _CutBody(data, cut), "ETag": '"v1"'}
        start = int(kwargs["Range"].split("=")[1].rstrip("-"))
        return {"Body": _CutBody(data[start:]), "ETag": '"v1"'}

    clock = _Clock()
    store = _store(clock, get_object=_Script(get))
    assert b"".join(store.iter_object("k", 400 * 1024)) == data
    first, resumed = store.client.get_object.calls
    assert "Range" not in first and "IfMatch" not in first
    assert resumed["Range"] == "bytes=%d-" % storage.RESUME_PIECE and resumed["IfMatch"] == '"v1"'
    assert len(clock.sleeps) == 1


def test_an_object_replaced_while_a_download_resumes_is_not_stitched_together():
    data = b"x" * (storage.RESUME_PIECE * 2)
    store = _store(_Clock(), get_object=_Script({"Body": _CutBody(data, storage.RESUME_PIECE + 1), "ETag": '"v1"',
                                                 "ContentLength": len(data)},
                                                _client_error("PreconditionFailed", 412, "GetObject")))
    with pytest.raises(StorageError, match=r"s3://bkt/k changed while it was being downloaded") as failure:
        b"".join(store.iter_object("k"))
    assert not isinstance(failure.value, ConflictError)
    assert "at byte %d of %d (50%%) it no longer has the ETag \"v1\"" % (storage.RESUME_PIECE, len(data)) \
        in str(failure.value)


def test_a_download_that_cannot_go_on_names_the_byte_it_stopped_at_after_the_window():
    data = b"x" * (storage.RESUME_PIECE * 4)
    clock = _Clock()
    store = _store(clock, window=20, get_object=_Script({"Body": _CutBody(data, storage.RESUME_PIECE * 3 + 1),
                                                         "ContentLength": len(data), "ETag": '"v1"'}, _refused()))
    with pytest.raises(StorageError) as failure:
        b"".join(store.iter_object("k"))
    message = str(failure.value)
    assert message.startswith("cannot reach the S3 endpoint http://127.0.0.1:9 (GetObject s3://bkt/k)")
    assert "kept failing for 20 s" in message
    assert message.endswith("; the download stopped at byte %d of %d (75%%)" % (storage.RESUME_PIECE * 3, len(data)))
    assert all(call["Range"] == "bytes=%d-" % (storage.RESUME_PIECE * 3) and call["IfMatch"] == '"v1"'
               for call in store.client.get_object.calls[1:])


def test_an_object_that_is_missing_from_the_start_is_not_found_and_one_deleted_midway_names_the_byte():
    store = _store(_Clock(), get_object=_Script(_client_error("NoSuchKey", 404, "GetObject")))
    with pytest.raises(NotFoundError, match="no object at s3://bkt/k"):
        b"".join(store.iter_object("k"))
    data = b"x" * (storage.RESUME_PIECE * 2)
    store = _store(_Clock(), get_object=_Script({"Body": _CutBody(data, storage.RESUME_PIECE + 1), "ETag": '"v1"'},
                                                _client_error("NoSuchKey", 404, "GetObject")))
    with pytest.raises(StorageError, match=r"s3://bkt/k was deleted while it was being downloaded, at byte %d:"
                       % storage.RESUME_PIECE):
        b"".join(store.iter_object("k"))


def test_retries_and_resumed_downloads_are_counted_for_the_result():
    data = b"y" * (storage.RESUME_PIECE * 3)

    def get(**kwargs):  # cut twice: inside the second piece, then inside the third
        start = int(kwargs["Range"].split("=")[1].rstrip("-")) if "Range" in kwargs else 0
        cut = {0: storage.RESUME_PIECE + 1, storage.RESUME_PIECE: storage.RESUME_PIECE + 1}.get(start)
        return {"Body": _CutBody(data[start:], cut), "ETag": '"v1"'}

    clock = _Clock()
    slow = _client_error("SlowDown", 503)
    store = _store(clock, get_object=_Script(get), put_object=_Script(slow, slow, {"ETag": '"e"'}))
    assert store.retry_counts() == {"requests_retried": 0, "retries": 0, "download_resumes": 0}
    store.put_bytes("m", b"{}")
    before = store.retry_counts()
    assert before == {"requests_retried": 1, "retries": 2, "download_resumes": 0}
    assert b"".join(store.iter_object("k")) == data
    assert store.retry_counts(since=before) == {"requests_retried": 2, "retries": 2, "download_resumes": 2}
    assert store.retry_counts() == {"requests_retried": 3, "retries": 4, "download_resumes": 2}


# --------------------------------------------------------------------------- the setting

def test_the_window_comes_from_s3_retry_window_seconds_and_shapes_the_client():
    settings = config.settings_from_env({"S3_BUCKET": "b", "S3_RETRY_WINDOW_SECONDS": "45"})
    store = storage.S3Store.from_settings(settings)
    assert store.retry.window == 45
    assert store.client.meta.config.read_timeout == 45 and store.client.meta.config.connect_timeout == 10
    assert store.client.meta.config.retries["total_max_attempts"] == 1  # every retry is ours, logged
    assert config.settings_from_env({}).retry_window == 300
    off = storage.S3Store.from_settings(config.settings_from_env({"S3_BUCKET": "b", "S3_RETRY_WINDOW_SECONDS": "0"}))
    assert off.client.meta.config.retries["total_max_attempts"] == 2


@pytest.mark.parametrize("value,match", [("-1", "must be between 0 and 86400"), ("soon", "must be a whole number"),
                                         ("100000", "must be between 0 and 86400")])
def test_a_bad_window_is_refused_naming_the_variable(value, match):
    with pytest.raises(ConfigError, match="S3_RETRY_WINDOW_SECONDS " + match):
        config.settings_from_env({"S3_RETRY_WINDOW_SECONDS": value})


def test_causes_are_short():
    assert storage.describe_cause(_client_error("SlowDown", 503)) == "HTTP 503 SlowDown"
    assert storage.describe_cause(_client_error("502", 502)) == "HTTP 502"
    assert storage.describe_cause(_refused()) == "cannot connect: Connection refused"
    assert storage.describe_cause(ReadTimeoutError(endpoint_url="http://s3")) == "no answer within the read timeout"


# --------------------------------------------------------------------------- Object Lock, versions

def _locked_store(clock=None, lock=("governance", 7), **methods):
    store = _store(clock or _Clock(), **methods)
    store.object_lock = lock
    return store


def test_a_locked_store_writes_metadata_with_the_mode_and_a_retain_until_days_ahead():
    put = _Script({"ETag": '"e"'})
    store = _locked_store(put_object=put, lock=("compliance", 30))
    before = datetime.datetime.now(datetime.timezone.utc)
    store.put_bytes("k", b"{}", if_none_match=True)
    sent = put.calls[0]
    assert sent["ObjectLockMode"] == "COMPLIANCE" and sent["IfNoneMatch"] == "*"
    ahead = sent["ObjectLockRetainUntilDate"] - before
    assert datetime.timedelta(days=30) - datetime.timedelta(seconds=2) <= ahead <= datetime.timedelta(days=30, seconds=5)
    plain = _Script({"ETag": '"e"'})
    _store(_Clock(), put_object=plain).put_bytes("k", b"{}")
    assert not any(name.startswith("ObjectLock") for name in plain.calls[0])


def test_a_bucket_without_object_lock_fails_naming_the_setting_and_how_to_enable_it():
    missing = _client_error("ObjectLockConfigurationNotFoundError", 404, "GetObjectLockConfiguration")
    store = _locked_store(get_object_lock_configuration=_Script(missing))
    with pytest.raises(ConfigError, match=r"bucket 'bkt' has no Object Lock, and BACKUP_OBJECT_LOCK_MODE asks .*"
                                          r"object-lock-enabled-for-bucket.*or unset BACKUP_OBJECT_LOCK_MODE"):
        store.check_object_lock()
    refused = ClientError({"Error": {"Code": "InvalidRequest", "Message": "Bucket is missing ObjectLockConfiguration"},
                           "ResponseMetadata": {"HTTPStatusCode": 400}}, "PutObject")
    store = _locked_store(put_object=_Script(refused))
    with pytest.raises(ConfigError, match="has no Object Lock"):
        store.put_bytes("k", b"{}")
    enabled = {"ObjectLockConfiguration": {"ObjectLockEnabled": "Enabled"}}
    assert _locked_store(get_object_lock_configuration=_Script(enabled)).check_object_lock() is True
    denied = _client_error("AccessDenied", 403, "GetObjectLockConfiguration")
    assert _locked_store(get_object_lock_configuration=_Script(denied)).check_object_lock() is None  # the write says
    assert _store(_Clock()).check_object_lock() is None  # locking off: nothing asked


def test_a_multipart_upload_is_created_locked_and_a_version_stored_without_the_lock_gets_it_afterwards():
    create = _Script({"UploadId": "u1"})
    store = _locked_store(create_multipart_upload=create, lock=("compliance", 9))
    assert store.open_multipart("k").upload_id == "u1"
    assert create.calls[0]["ObjectLockMode"] == "COMPLIANCE" and "ObjectLockRetainUntilDate" in create.calls[0]
    retention = _Script({})
    store = _locked_store(put_object_retention=retention)
    lock = store.lock_arguments()
    store.ensure_locked("k", {"ContentLength": 3, "VersionId": "v1"}, lock)
    assert retention.calls == [{"Bucket": "bkt", "Key": "k", "VersionId": "v1", "Retention": {
        "Mode": "GOVERNANCE", "RetainUntilDate": lock["ObjectLockRetainUntilDate"]}}]
    store.ensure_locked("k", {"ObjectLockRetainUntilDate": lock["ObjectLockRetainUntilDate"]}, lock)
    assert len(retention.calls) == 1  # stored locked: nothing more
    denied = _locked_store(put_object_retention=_Script(_client_error("AccessDenied", 403, "PutObjectRetention")))
    denied.ensure_locked("k", {"VersionId": "v1"}, lock)  # a warning: these keys may neither see nor set it
    failing = _locked_store(put_object_retention=_Script(_client_error("InvalidRequest", 400, "PutObjectRetention")))
    with pytest.raises(StorageError, match="PutObjectRetention"):
        failing.ensure_locked("k", {"VersionId": "v1"}, lock)


def test_versions_and_delete_markers_are_listed_per_key_newest_first_with_utc_times():
    at = datetime.datetime(2026, 12, 1, 10, 0, tzinfo=datetime.timezone.utc)
    page = {"Versions": [{"Key": "a", "VersionId": "1", "IsLatest": False, "Size": 5, "LastModified": at}],
            "DeleteMarkers": [{"Key": "a", "VersionId": "m", "IsLatest": True,
                               "LastModified": at + datetime.timedelta(hours=1)}]}
    store = _store(_Clock(), list_object_versions=_Script(page))
    found = list(store.list_versions("a"))
    assert [(item["version_id"], item["deleted"], item["latest"], item["size"]) for item in found] == [
        ("m", True, True, None), ("1", False, False, 5)]
    assert found[0]["last_modified"] == at + datetime.timedelta(hours=1)


# -- an archived object (issue 16 item 4): GetObject's InvalidObjectState starts the S3 restore and says when

def _archived_store(head, restore=None, tier="Standard", days=7):
    store = _store(_Clock(), get_object=_Script(_client_error("InvalidObjectState", 403, "GetObject")),
                   head_object=_Script(head), restore_object=restore or _Script({}))
    store.restore_tier, store.restore_days = tier, days
    return store


@pytest.mark.parametrize("storage_class, tier, hours", [
    ("GLACIER", "Standard", "3-5 hours"), ("GLACIER", "Expedited", "1-5 minutes"), ("GLACIER", "Bulk", "5-12 hours"),
    ("DEEP_ARCHIVE", "Standard", "12 hours"), ("DEEP_ARCHIVE", "Bulk", "48 hours"),
])
def test_reading_an_archived_object_starts_its_restore_and_says_when_it_is_ready(storage_class, tier, hours):
    store = _archived_store({"StorageClass": storage_class}, tier=tier, days=3)
    with pytest.raises(storage.ArchivedError) as caught:
        store.get_bytes("k")
    message = str(caught.value)
    assert "s3://bkt/k is archived in %s: its S3 restore was started now (tier %s" % (storage_class, tier) in message
    assert "readable in about %s; run the same command again then" % hours in message
    assert "InvalidObjectState" not in message and caught.value.started
    assert store.client.restore_object.calls == [{"Bucket": "bkt", "Key": "k", "RestoreRequest": {
        "Days": 3, "GlacierJobParameters": {"Tier": tier}}}]
    assert isinstance(caught.value, StorageError) and caught.value.exit_code == StorageError.exit_code


def test_a_restore_under_way_is_said_and_not_asked_again():
    store = _archived_store({"StorageClass": "DEEP_ARCHIVE", "Restore": 'ongoing-request="true"'})
    with pytest.raises(storage.ArchivedError, match=r"archived in DEEP_ARCHIVE and its restore is under way .* about "
                                                    r"12 hours after the request; run again then"):
        list(store.iter_object("k"))
    assert store.client.restore_object.calls == []


def test_a_restore_another_run_asked_for_first_is_under_way_too():
    store = _archived_store({"StorageClass": "GLACIER"},
                            restore=_Script(_client_error("RestoreAlreadyInProgress", 409, "RestoreObject")))
    with pytest.raises(storage.ArchivedError, match="restore is under way") as caught:
        store.get_range("k", 0, 16)
    assert not caught.value.started


def test_the_restore_tier_and_days_come_from_the_settings():
    settings = config.settings_from_env({"S3_BUCKET": "b", "S3_RESTORE_TIER": "Bulk", "S3_RESTORE_DAYS": "2"})
    store = storage.S3Store.from_settings(settings)
    assert (store.restore_tier, store.restore_days) == ("Bulk", 2)
    with pytest.raises(ConfigError, match="S3_RESTORE_TIER"):
        config.settings_from_env({"S3_BUCKET": "b", "S3_RESTORE_TIER": "Fast"})


def test_tags_are_read_and_replaced_whole():
    store = _store(_Clock(), get_object_tagging=_Script({"TagSet": [{"Key": "a", "Value": "1"}]}),
                   put_object_tagging=_Script({}))
    assert store.get_tags("k") == {"a": "1"}
    store.put_tags("k", {"quankey-keep": "monthly", "a": "1"})
    assert store.client.put_object_tagging.calls[0]["Tagging"] == {
        "TagSet": [{"Key": "a", "Value": "1"}, {"Key": "quankey-keep", "Value": "monthly"}]}
