# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""S3 (or any S3-compatible store) for the engine.

Every botocore failure is translated into a :class:`StorageError` (or
:class:`NotFoundError`) whose message names the bucket, the key, the action and
what to check. Uploads are multipart, with parts sent in the background while
the pipeline keeps producing, and are aborted on any failure.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import logging
import threading
import traceback

from .config import FIELD_VARIABLES
from .errors import AccessDeniedError, ConfigError, ConflictError, NotFoundError, StorageError

try:
    import boto3
    import botocore.config
    import botocore.exceptions
    HAS_BOTO3 = True
    BOTO3_IMPORT_ERROR = None
except ImportError:
    boto3 = None
    botocore = None
    HAS_BOTO3 = False
    BOTO3_IMPORT_ERROR = traceback.format_exc()

LOG = logging.getLogger("quankey_backup")
MIB = 1024 * 1024
MIN_PART_SIZE = 8 * MIB
MAX_PART_SIZE = 5 * 1024 * MIB
MAX_PARTS = 10000
PART_TIER = 2000        # parts per size tier: sizes double every PART_TIER parts
UPLOAD_CONCURRENCY = 3  # parts in flight besides the one being filled
READ_CHUNK = MIB

_ACCESS_CODES = ("AccessDenied", "AllAccessDisabled", "403", "Forbidden")
_CREDENTIAL_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "TokenRefreshRequired")
_MISSING_CODES = ("NoSuchKey", "404", "NotFound")
_CONFLICT_CODES = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")
# Answers of a store that does not implement conditional requests (If-Match / If-None-Match on writes).
_UNSUPPORTED_CODES = ("NotImplemented", "501")


def _unsupported(exc):
    """Whether a StorageError is the store saying it does not implement a request's conditions."""
    return any(code in exc.message for code in _UNSUPPORTED_CODES)


def choose_part_size(expected_bytes):
    """The first part size: at least 8 MiB, large enough that ``expected_bytes`` fits in 9,000 parts."""
    wanted = -(-max(int(expected_bytes or 0), 0) // (MAX_PARTS - 1000))
    size = max(MIN_PART_SIZE, -(-wanted // MIB) * MIB)
    return min(size, MAX_PART_SIZE)


def part_size_for(part_number, base_size):
    """Size of part ``part_number`` (1-based): ``base_size``, doubled every PART_TIER parts.

    However far off the size estimate was, a stream fits in 10,000 parts up to
    ~31x the estimate (~484 GiB from the 8 MiB minimum).
    """
    return min(base_size * (2 ** ((part_number - 1) // PART_TIER)), MAX_PART_SIZE)


def _error_code(exc):
    response = getattr(exc, "response", None) or {}
    error = response.get("Error", {})
    code = str(error.get("Code", ""))
    if not code:
        code = str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return code


def _variable(field):
    return FIELD_VARIABLES[field]


def translate_error(exc, action, bucket, key=None, endpoint=None, label=_variable):
    """A StorageError/NotFoundError for a botocore exception, naming what, where and what to check.

    ``label(field)`` says where the user sets a setting (a variable, or a module option).
    """
    where = "s3://%s/%s" % (bucket, key or "")
    via = " via %s" % endpoint if endpoint else ""
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return StorageError("no AWS credentials found for %s: set %s and %s" % (where, label("access_key"), label("secret_key")))
    if isinstance(exc, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError)):
        return StorageError("cannot reach the S3 endpoint %s (%s %s): check %s, the network and that the store is up"
                            % (endpoint or "of AWS", action, where, label("endpoint_url")))
    if isinstance(exc, botocore.exceptions.ReadTimeoutError):
        return StorageError("S3 endpoint%s timed out during %s of %s: retry, and check the network" % (via, action, where))
    if isinstance(exc, botocore.exceptions.ClientError):
        code = _error_code(exc)
        if code == "NoSuchBucket" or (code in ("404", "NotFound") and action == "HeadBucket"):
            return StorageError("bucket %r does not exist%s: create it or fix %s" % (bucket, via, label("bucket")))
        if code in _MISSING_CODES:
            return NotFoundError("no object at %s%s" % (where, via))
        if code in _CONFLICT_CODES:
            return ConflictError("%s of %s was refused because another writer got there first (the object was created "
                                 "or changed since it was read)%s" % (action, where, via))
        if code in _CREDENTIAL_CODES:
            return StorageError("S3 rejected the credentials (%s) for %s %s: check %s and %s"
                                % (code, action, where, label("access_key"), label("secret_key")))
        if code in _ACCESS_CODES:
            return AccessDeniedError("S3 access denied for %s (%s): check the IAM policy for this host's prefix" % (where, action))
        if code == "EntityTooSmall":
            return StorageError("S3 rejected a multipart part as too small during %s of %s" % (action, where))
        return StorageError("S3 %s of %s failed%s: %s" % (action, where, via, code or exc))
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return StorageError("S3 %s of %s failed%s: %s" % (action, where, via, exc))
    return StorageError("S3 %s of %s failed%s: %s" % (action, where, via, exc))


class S3Store:
    """One bucket of an S3-compatible store."""

    def __init__(self, bucket, region=None, endpoint_url=None, access_key=None, secret_key=None, session_token=None,
                 storage_class="STANDARD_IA", max_attempts=4, connect_timeout=10, read_timeout=120, label=_variable):
        if not HAS_BOTO3:
            raise ConfigError("the Python package 'boto3' is required: pip install boto3")
        if not bucket:
            raise ConfigError("S3_BUCKET is not set: set it to the backup bucket (e.g. S3_BUCKET=quankey-backups-prod)")
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.storage_class = storage_class
        self.conditional_writes = True  # until the store answers NotImplemented to one
        self.label = label
        config = botocore.config.Config(
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout, read_timeout=read_timeout,
            max_pool_connections=UPLOAD_CONCURRENCY + 4,
            signature_version="s3v4",
        )
        session = boto3.session.Session(aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                                        aws_session_token=session_token, region_name=region or "us-east-1")
        self.client = session.client("s3", endpoint_url=endpoint_url, config=config)

    @classmethod
    def from_settings(cls, settings):
        """The store a :class:`~.config.Settings` points at."""
        return cls(settings.bucket, region=settings.region, endpoint_url=settings.endpoint_url,
                   access_key=settings.access_key, secret_key=settings.secret_key,
                   session_token=settings.session_token, storage_class=settings.storage_class, label=settings.label)

    def url(self, key=""):
        """``s3://bucket/key`` for messages."""
        return "s3://%s/%s" % (self.bucket, key)

    def _call(self, action, key, func, **kwargs):
        try:
            return func(**kwargs)
        except Exception as exc:  # translated below; anything else is re-raised as is
            if botocore is not None and isinstance(exc, (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)):
                raise translate_error(exc, action, self.bucket, key, self.endpoint_url, self.label)
            raise

    def check_bucket(self, prefix=""):
        """Fail early and clearly if the bucket is missing, unreachable or ``prefix`` is not ours to list.

        A one-key listing under ``prefix``, not HeadBucket: AWS authorizes HeadBucket as
        s3:ListBucket on the whole bucket, which a least-privilege policy (ListBucket only
        under this host's prefixes) denies.
        """
        self._call("ListObjectsV2", prefix, self.client.list_objects_v2, Bucket=self.bucket, Prefix=prefix, MaxKeys=1)

    def list_objects(self, prefix, delimiter=None):
        """Every object under ``prefix`` as dicts (key, size, last_modified, storage_class), paginated.

        With ``delimiter`` ("/"), only the objects directly under ``prefix``.
        """
        paginator = self.client.get_paginator("list_objects_v2")
        extra = {"Delimiter": delimiter} if delimiter else {}
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, **extra):
                for item in page.get("Contents", []):
                    yield {"key": item["Key"], "size": item["Size"], "last_modified": item["LastModified"],
                           "storage_class": item.get("StorageClass", "STANDARD")}
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise translate_error(exc, "ListObjectsV2", self.bucket, prefix, self.endpoint_url, self.label)

    def head(self, key):
        """Object attributes, or None when there is no such object."""
        try:
            return self._call("HeadObject", key, self.client.head_object, Bucket=self.bucket, Key=key)
        except NotFoundError:
            return None

    def exists(self, key):
        """Whether an object exists at ``key``."""
        return self.head(key) is not None

    def get_bytes(self, key):
        """A small object's content (metadata)."""
        return self.get_bytes_and_etag(key)[0]

    def get_bytes_and_etag(self, key):
        """A small object's content and its ETag (for a later write conditional on it being unchanged)."""
        response = self._call("GetObject", key, self.client.get_object, Bucket=self.bucket, Key=key)
        return self._read_body(key, response["Body"].read), response.get("ETag")

    def get_range(self, key, start, length):
        """``length`` bytes of an object from ``start`` (a header check without a download)."""
        response = self._call("GetObject", key, self.client.get_object, Bucket=self.bucket, Key=key,
                              Range="bytes=%d-%d" % (start, start + length - 1))
        return self._read_body(key, response["Body"].read)

    def _read_body(self, key, read, *args):
        try:
            return read(*args)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise translate_error(exc, "GetObject", self.bucket, key, self.endpoint_url, self.label)

    def iter_object(self, key, chunk_size=READ_CHUNK):
        """Stream an object in chunks; yields bytes. Size is checked by the caller."""
        response = self._call("GetObject", key, self.client.get_object, Bucket=self.bucket, Key=key)
        body = response["Body"]
        try:
            while True:
                chunk = self._read_body(key, body.read, chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    def put_bytes(self, key, data, content_type="application/json", if_none_match=False, if_match=None):
        """Write a small object in one request (metadata: the commit marker).

        ``if_none_match``: create only if no object is there; ``if_match`` (an ETag): replace only the
        version read. A lost race raises ConflictError. A store that does not implement conditional
        writes (answers NotImplemented) gets the write without the condition, with a warning
        (docs/CLI.md lists which stores honour them); ``if_none_match`` then checks first with HEAD.
        """
        kwargs = dict(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, StorageClass="STANDARD")
        condition = {}
        if if_none_match:
            condition["IfNoneMatch"] = "*"
        elif if_match:
            condition["IfMatch"] = if_match
        if not condition or not self.conditional_writes:
            if if_none_match and self.exists(key):
                raise ConflictError("PutObject of %s was refused: an object is already there (this store does not "
                                    "take conditional writes, so this was checked first)" % self.url(key))
            return self._call("PutObject", key, self.client.put_object, **kwargs)
        try:
            return self._call("PutObject", key, self.client.put_object, **dict(kwargs, **condition))
        except NotFoundError:
            if if_match:  # If-Match on an object that is gone: it was deleted since it was read
                raise ConflictError("PutObject of %s was refused: the object was deleted since it was read (by a "
                                    "prune, or by hand)" % self.url(key))
            raise
        except StorageError as exc:
            if not _unsupported(exc):
                raise
            self._no_conditional_writes(exc)
            return self.put_bytes(key, data, content_type, if_none_match, if_match)

    def _no_conditional_writes(self, exc):
        """Remember that this store refuses conditional writes, and say so once."""
        self.conditional_writes = False
        LOG.warning("the S3 store at %s does not implement conditional writes (%s): metadata writes fall back to "
                    "last-writer-wins, so do not run rekey, prune or backups of one database at the same time",
                    self.endpoint_url or "AWS", exc)

    def delete(self, key):
        """Delete one object."""
        self._call("DeleteObject", key, self.client.delete_object, Bucket=self.bucket, Key=key)

    def open_multipart(self, key, base_part_size=MIN_PART_SIZE, concurrency=UPLOAD_CONCURRENCY):
        """Start a multipart upload of ``key``; see :class:`MultipartUpload`."""
        return MultipartUpload(self, key, base_part_size, concurrency)

    def list_multipart_uploads(self, prefix):
        """Open multipart uploads under ``prefix`` as dicts (key, upload_id, initiated)."""
        paginator = self.client.get_paginator("list_multipart_uploads")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Uploads", []):
                    yield {"key": item["Key"], "upload_id": item["UploadId"], "initiated": item["Initiated"]}
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise translate_error(exc, "ListMultipartUploads", self.bucket, prefix, self.endpoint_url, self.label)

    def abort_multipart(self, key, upload_id):
        """Abort one multipart upload (its parts are discarded by the store)."""
        self._call("AbortMultipartUpload", key, self.client.abort_multipart_upload, Bucket=self.bucket, Key=key,
                   UploadId=upload_id)


class MultipartUpload:
    """A multipart upload fed by ``write()``: parts go out on background threads.

    Memory is bounded: one part being filled plus at most ``concurrency`` parts
    in flight. ``complete()`` returns the stored size after checking it; any
    failure, and ``abort()``, abort the upload so no partial object remains.
    """

    def __init__(self, store, key, base_part_size, concurrency):
        self.store = store
        self.key = key
        self.base_part_size = base_part_size
        self.bytes_written = 0
        self._buffer = None  # the part being filled: a bytearray of the part's size, sent as is when full
        self._filled = 0
        self._parts = {}
        self._error = None
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(concurrency)
        self._threads = []
        self._next_part = 1
        self._closed = False
        response = store._call("CreateMultipartUpload", key, store.client.create_multipart_upload,
                               Bucket=store.bucket, Key=key, StorageClass=store.storage_class,
                               ContentType="application/octet-stream")
        self.upload_id = response["UploadId"]

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False

    def _current_part_size(self):
        return part_size_for(self._next_part, self.base_part_size)

    def write(self, data):
        """Queue bytes; full parts are sent in the background (blocks while too many are in flight).

        Each byte is copied once, into a buffer of the part's size that becomes the part's body
        (no slicing copies: they cost CPU and a transient part's worth of memory each).
        """
        self._raise_if_failed()
        view = memoryview(data).cast("B")
        self.bytes_written += len(view)
        while len(view):
            if self._buffer is None:
                self._buffer = bytearray(self._current_part_size())
            take = min(len(view), len(self._buffer) - self._filled)
            self._buffer[self._filled:self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            if self._filled == len(self._buffer):
                part, self._buffer, self._filled = self._buffer, None, 0
                self._send(part)

    def _send(self, body):
        if self._next_part > MAX_PARTS:
            raise StorageError("upload of %s needs more than %d parts: the stream is far larger than estimated"
                               % (self.store.url(self.key), MAX_PARTS))
        number = self._next_part
        self._next_part += 1
        self._slots.acquire()
        self._raise_if_failed(release=True)
        thread = threading.Thread(target=self._upload_part, args=(number, body), name="upload-part-%d" % number)
        thread.daemon = True
        self._threads.append(thread)
        thread.start()

    def _upload_part(self, number, body):
        try:
            response = self.store._call("UploadPart", self.key, self.store.client.upload_part, Bucket=self.store.bucket,
                                        Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=body)
            with self._lock:
                self._parts[number] = response["ETag"]
        except Exception as exc:  # handed to the producer thread, which raises it
            with self._lock:
                if self._error is None:
                    self._error = exc
        finally:
            self._slots.release()

    def _raise_if_failed(self, release=False):
        with self._lock:
            error = self._error
        if error is not None:
            if release:
                self._slots.release()
            raise error

    def _join(self):
        for thread in self._threads:
            thread.join()
        self._threads = []

    def complete(self):
        """Send the last part, complete the upload, and return the stored object's size."""
        if self._filled or self._next_part == 1:
            part = self._buffer[:self._filled] if self._buffer is not None else bytearray()
            self._buffer = None
            self._filled = 0
            self._send(part)
        self._join()
        self._raise_if_failed()
        parts = [{"PartNumber": number, "ETag": self._parts[number]} for number in sorted(self._parts)]
        self._complete(parts)
        self._closed = True
        head = self.store.head(self.key)
        stored = head["ContentLength"] if head else None
        if stored != self.bytes_written:
            raise StorageError("stored object %s has %s bytes but %d were uploaded"
                               % (self.store.url(self.key), stored, self.bytes_written))
        return stored

    def _complete(self, parts):
        """CompleteMultipartUpload, creating the object only if none is there (else ConflictError; the caller aborts)."""
        store = self.store
        kwargs = dict(Bucket=store.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": parts})
        if store.conditional_writes:
            try:
                store._call("CompleteMultipartUpload", self.key, store.client.complete_multipart_upload,
                            IfNoneMatch="*", **kwargs)
                return
            except StorageError as exc:
                if not _unsupported(exc):
                    raise
                store._no_conditional_writes(exc)
        if store.exists(self.key):
            raise ConflictError("CompleteMultipartUpload of %s was refused: an object is already there (this store "
                                "does not take conditional writes, so this was checked first)" % store.url(self.key))
        store._call("CompleteMultipartUpload", self.key, store.client.complete_multipart_upload, **kwargs)

    def abort(self):
        """Abort the upload (best effort; waits for parts in flight first)."""
        if self._closed:
            return
        self._closed = True
        self._join()
        try:
            self.store.abort_multipart(self.key, self.upload_id)
        except Exception:  # the store may be down: an open upload is swept by `prune`
            pass
