# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fakes of the workflows' adapters, for unit tests of the workflows' failure paths.

- :class:`MemoryStore` stands for adapters/s3.py's ``S3Store`` (and :class:`MemoryUpload` for its
  ``MultipartUpload``): a bucket in memory with S3's conditional writes, and faults injected per request
  (:meth:`MemoryStore.inject`).
- :class:`FakePg` stands for adapters/postgres.py's ``PgClient``: a server in memory (databases, roles),
  whose client programs are real small processes (one Python script installed as ``pg_dump``,
  ``pg_restore`` and ``psql``) reading and writing a database's content as files in a state directory.
  A database's content is a fake archive (:func:`archive`): ``PGDMP``, a JSON line (tables, owner, body
  size), then the body; pg_restore checks it arrived whole and lists its tables as ``pg_restore --list``
  would.

Their public methods have the real adapters' names and signatures (test_fakes.py holds them to it); what
only tests use is listed in ``TEST_HELPERS``. The end-to-end tests (tests/functional) use the real ones.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import hashlib
import io
import json
import os
import stat
import sys
import tarfile

from ansible_collections.quankey.backup.plugins.module_utils.adapters.s3 import (MIN_PART_SIZE, READ_CHUNK,
                                                                                 RETRY_COUNTS, UPLOAD_CONCURRENCY,
                                                                                 no_lock_error)
from ansible_collections.quankey.backup.plugins.module_utils.errors import (ConfigError, ConflictError, NotFoundError,
                                                                            PostgresError)
from ansible_collections.quankey.backup.plugins.module_utils.adapters.s3 import ArchivedError

UTC = datetime.timezone.utc
NOW = datetime.datetime(2025, 8, 20, 12, 0, 0, tzinfo=UTC)
KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # base64 of 32 bytes: the test master key
# The settings of the tests (conftest.py's ``settings``): host db1 backs up database app to bucket backups.
ENV = {"DB_NAME": "app", "DB_USER": "postgres", "S3_BUCKET": "backups", "BACKUP_ENCRYPTION_KEY": KEY,
       "BACKUP_HOST_ID": "db1", "BACKUP_COMPRESSION": "gzip",
       # FakePg has no catalog: the globals are read from and made on real servers (tests/functional/test_globals.py)
       "BACKUP_GLOBALS": "false"}


# --------------------------------------------------------------------------- S3

class _Stored:
    def __init__(self, data, last_modified, storage_class):
        self.data = bytes(data)
        self.etag = '"%s"' % hashlib.md5(self.data).hexdigest()
        self.last_modified = last_modified
        self.storage_class = storage_class


class _Fault:
    def __init__(self, action, key, before, after, times, cut):
        self.action = action
        self.key = key
        self.before = before
        self.after = after
        self.times = times
        self.cut = cut

    def matches(self, action, key):
        if action != self.action or self.times == 0:
            return False
        return self.key is None or (self.key(key) if callable(self.key) else self.key == key)


class MemoryStore:
    """A bucket in memory that answers like adapters/s3.S3Store (conditional writes included)."""

    TEST_HELPERS = ("inject", "put_object", "keys", "data")

    def __init__(self, bucket="backups", now=NOW, versioned=False, lock_enabled=False):
        self.bucket = bucket
        self.endpoint_url = None
        self.storage_class = "STANDARD_IA"
        self.object_lock = None  # (mode, days), as S3Store's: every object written is locked so long
        self.lock_enabled = lock_enabled  # whether the bucket has Object Lock (check_object_lock)
        self.locks = {}  # key -> (mode, retain until), the current version's retention
        self.versioned = versioned  # delete() leaves a delete marker: the object goes to ``hidden``
        self.hidden = {}  # key -> (_Stored under a delete marker, the marker's time)
        self.conditional_writes = True
        self.now = now
        self.objects = {}  # key -> _Stored
        self.uploads = {}  # upload id -> MemoryUpload, while open
        self.aborted = []  # keys of the uploads aborted
        self.requests = []  # (action, key) of every request, in order
        self._faults = []
        self._uploads_made = 0

    def __repr__(self):
        return "MemoryStore(%s: %d objects, %d open uploads)" % (self.bucket, len(self.objects), len(self.uploads))

    # -- for tests

    def inject(self, action, key=None, before=None, after=None, times=1, cut=None):
        """Act on the next ``times`` (None: every) requests ``action`` (a method's name, or ``upload_part``,
        ``complete_multipart``) for ``key`` (None: any; a function: a test of the key).

        ``before``: an exception raised instead of the request, or a function ``before(key)`` run first (another
        writer acting at that moment). ``after``: an exception raised once the request was done (its answer
        lost). ``cut`` (iter_object): the body ends after that many bytes.
        """
        self._faults.append(_Fault(action, key, before, after, times, cut))

    def put_object(self, key, data, last_modified=None):
        """Store an object as another writer (or the past) would, no request counted."""
        self.objects[key] = _Stored(data, last_modified or self.now, "STANDARD")

    def keys(self, prefix=""):
        """The keys stored under ``prefix``, sorted."""
        return sorted(key for key in self.objects if key.startswith(prefix))

    def data(self, key):
        """An object's bytes, None when there is none."""
        return self.objects[key].data if key in self.objects else None

    def _request(self, action, key):
        """Count a request and apply its faults; returns ``(exception to raise after it, cut)``."""
        self.requests.append((action, key))
        after = cut = None
        for fault in self._faults:
            if not fault.matches(action, key):
                continue
            if fault.times is not None:
                fault.times -= 1
            if isinstance(fault.before, BaseException):
                raise fault.before
            if fault.before is not None:
                fault.before(key)
            after = after or fault.after
            cut = fault.cut if fault.cut is not None else cut
        return after, cut

    def _missing(self, key):
        return NotFoundError("no object at %s" % self.url(key))

    # -- S3Store's methods

    @classmethod
    def from_settings(cls, settings, retry_window=None):
        return cls(settings.bucket)

    def url(self, key=""):
        return "s3://%s/%s" % (self.bucket, key)

    def retry_counts(self, since=None):
        """Nothing is retried in memory: a fault injected is final."""
        return dict.fromkeys(RETRY_COUNTS, 0)

    def check_bucket(self, prefix=""):
        after, _cut = self._request("check_bucket", prefix)
        if after:
            raise after

    def list_objects(self, prefix, delimiter=None):
        after, _cut = self._request("list_objects", prefix)
        if after:
            raise after
        found = []
        for key in self.keys(prefix):
            if delimiter and delimiter in key[len(prefix):]:
                continue
            item = self.objects[key]
            found.append({"key": key, "size": len(item.data), "last_modified": item.last_modified,
                          "storage_class": item.storage_class})
        return iter(found)

    def head(self, key):
        after, _cut = self._request("head", key)
        item = self.objects.get(key)
        if after:
            raise after
        if item is None:
            return None
        return {"ContentLength": len(item.data), "ETag": item.etag, "LastModified": item.last_modified,
                "StorageClass": item.storage_class}

    def exists(self, key):
        return self.head(key) is not None

    def get_tags(self, key):
        after, _cut = self._request("get_tags", key)
        if after:
            raise after
        if key not in self.objects:
            raise self._missing(key)
        return dict(self.__dict__.setdefault("tags", {}).get(key, {}))

    def put_tags(self, key, tags):
        after, _cut = self._request("put_tags", key)
        if after:
            raise after
        if key not in self.objects:
            raise self._missing(key)
        self.__dict__.setdefault("tags", {})[key] = dict(tags)

    def archived(self, key):
        return ArchivedError("%s is archived in GLACIER" % self.url(key), key=key, storage_class="GLACIER")

    def get_bytes(self, key):
        return self.get_bytes_and_etag(key)[0]

    def get_bytes_and_etag(self, key):
        after, _cut = self._request("get_bytes_and_etag", key)
        if after:
            raise after
        if key not in self.objects:
            raise self._missing(key)
        return self.objects[key].data, self.objects[key].etag

    def get_range(self, key, start, length):
        after, _cut = self._request("get_range", key)
        if after:
            raise after
        if key not in self.objects:
            raise self._missing(key)
        return self.objects[key].data[start:start + length]

    def iter_object(self, key, chunk_size=READ_CHUNK, start=0, end=None, etag=None):
        after, cut = self._request("iter_object", key)
        if key not in self.objects:
            raise self._missing(key)
        if etag is not None and etag != self.objects[key].etag:
            raise ConflictError("%s: If-Match %s failed" % (key, etag))
        data = self.objects[key].data
        if cut is not None:
            data = data[:cut]
        data = data[start:end]
        for start in range(0, len(data), chunk_size):
            yield data[start:start + chunk_size]
        if after:
            raise after

    def put_bytes(self, key, data, content_type="application/json", if_none_match=False, if_match=None):
        after, _cut = self._request("put_bytes", key)
        current = self.objects.get(key)
        if if_none_match and current is not None:
            raise ConflictError("PutObject of %s was refused because another writer got there first (the object was "
                                "created or changed since it was read)" % self.url(key))
        if if_match is not None and (current is None or current.etag != if_match):
            raise ConflictError("PutObject of %s was refused because another writer got there first (the object was "
                                "created or changed since it was read)" % self.url(key))
        self.objects[key] = _Stored(data, self.now, "STANDARD")
        self._lock_new(key)
        if after:
            raise after

    def copy_from(self, source, key):
        after, _cut = self._request("copy_from", key)
        if key not in source.objects:
            raise source._missing(key)  # pylint: disable=protected-access
        self.objects[key] = _Stored(source.objects[key].data, self.now, self.storage_class)
        if after:
            raise after

    def _lock_new(self, key):
        lock = self.lock_arguments()
        if lock:
            self.locks[key] = (lock["ObjectLockMode"].lower(), lock["ObjectLockRetainUntilDate"])

    def delete(self, key):
        after, _cut = self._request("delete", key)
        item = self.objects.pop(key, None)
        if self.versioned and item is not None:
            self.hidden[key] = (item, self.now)
        if after:
            raise after

    def lock_arguments(self):
        if not self.object_lock:
            return {}
        mode, days = self.object_lock[0], self.object_lock[1]
        return {"ObjectLockMode": mode.upper(), "ObjectLockRetainUntilDate": self.now + datetime.timedelta(days=days)}

    def check_object_lock(self):
        self._request("check_object_lock", "")
        if not self.object_lock:
            return None
        if not self.lock_enabled:
            raise no_lock_error(self.bucket)
        return True

    def lock_of(self, key):
        self._request("lock_of", key)
        return self.locks.get(key) if key in self.objects else None

    def ensure_locked(self, key, head, lock):
        self.locks[key] = (lock["ObjectLockMode"].lower(), lock["ObjectLockRetainUntilDate"])

    def list_versions(self, prefix):
        self._request("list_versions", prefix)
        found = []
        for key in sorted(set(self.objects) | set(self.hidden)):
            if not key.startswith(prefix):
                continue
            if key in self.objects:
                item = self.objects[key]
                found.append({"key": key, "version_id": "v-" + item.etag.strip('"'), "latest": True, "deleted": False,
                              "size": len(item.data), "last_modified": item.last_modified})
            elif key in self.hidden:
                item, when = self.hidden[key]
                found.append({"key": key, "version_id": "marker", "latest": True, "deleted": True, "size": None,
                              "last_modified": when})
                found.append({"key": key, "version_id": "v-" + item.etag.strip('"'), "latest": False,
                              "deleted": False, "size": len(item.data), "last_modified": item.last_modified})
        return iter(found)

    def delete_version(self, key, version_id):
        after, _cut = self._request("delete_version", key)
        if version_id == "marker" and key in self.hidden and key not in self.objects:
            self.objects[key] = self.hidden.pop(key)[0]
        if after:
            raise after

    def open_multipart(self, key, base_part_size=MIN_PART_SIZE, concurrency=UPLOAD_CONCURRENCY):
        after, _cut = self._request("open_multipart", key)
        if after:
            raise after
        self._uploads_made += 1
        upload = MemoryUpload(self, key, "upload-%d" % self._uploads_made, base_part_size)
        self.uploads[upload.upload_id] = upload
        return upload

    def list_multipart_uploads(self, prefix):
        after, _cut = self._request("list_multipart_uploads", prefix)
        if after:
            raise after
        return iter([{"key": upload.key, "upload_id": upload.upload_id, "initiated": upload.initiated}
                     for upload in self.uploads.values() if upload.key.startswith(prefix)])

    def list_parts(self, key, upload_id):
        after, _cut = self._request("list_parts", key)
        if after:
            raise after
        upload = self.uploads[upload_id]
        return iter([{"number": number, "size": len(part), "last_modified": upload.initiated}
                     for number, part in enumerate(upload.parts, 1)])

    def abort_multipart(self, key, upload_id, budget=None):
        after, _cut = self._request("abort_multipart", key)
        if self.uploads.pop(upload_id, None) is not None:
            self.aborted.append(key)
        if after:
            raise after


class MemoryUpload:
    """A multipart upload of :class:`MemoryStore`, as adapters/s3.MultipartUpload behaves: each ``write`` is a part."""

    def __init__(self, store, key, upload_id, base_part_size):
        self.store = store
        self.key = key
        self.upload_id = upload_id
        self.base_part_size = base_part_size
        self.initiated = store.now
        self.parts = []
        self.bytes_written = 0
        self._closed = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort(exc)
        return False

    def write(self, data):
        after, _cut = self.store._request("upload_part", self.key)  # pylint: disable=protected-access
        self.parts.append(bytes(data))
        self.bytes_written += len(data)
        if after:
            raise after

    def complete(self):
        store = self.store
        after, _cut = store._request("complete_multipart", self.key)  # pylint: disable=protected-access
        if self.key in store.objects:
            raise ConflictError("CompleteMultipartUpload of %s was refused because another writer got there first (the "
                                "object was created or changed since it was read)" % store.url(self.key))
        store.objects[self.key] = _Stored(b"".join(self.parts), store.now, store.storage_class)
        store._lock_new(self.key)  # pylint: disable=protected-access
        store.uploads.pop(self.upload_id, None)
        self._closed = True
        if after:
            raise after
        return self.bytes_written

    def abort(self, failure=None):
        if self._closed:
            return
        self._closed = True
        try:
            self.store.abort_multipart(self.key, self.upload_id)
        except Exception:  # pylint: disable=broad-except  # as the real one: the upload is left to prune
            pass


# --------------------------------------------------------------------------- PostgreSQL

def archive(tables=3, owner="app", size=64 * 1024, seed=b"x"):
    """A fake pg_dump custom archive: ``PGDMP``, a JSON line (tables, owner, body size), then ``size`` body bytes.

    The body is a hash chain of ``seed``: it does not compress much, and differs per seed.
    """
    body = bytearray()
    block = hashlib.sha256(seed).digest()
    while len(body) < size:
        block = hashlib.sha256(block).digest()
        body += block
    header = json.dumps({"tables": tables, "owner": owner, "body": size}, sort_keys=True).encode("ascii")
    return b"PGDMP" + header + b"\n" + bytes(body[:size])


def archive_header(data):
    """The JSON header of a fake archive (None when ``data`` is not one)."""
    if not data.startswith(b"PGDMP") or b"\n" not in data:
        return None
    try:
        return json.loads(data[5:data.index(b"\n")].decode("ascii"))
    except ValueError:
        return None


# The client programs: one script, installed under each name. Arguments: --db=<hex of the database>, and
# --list / --file=... / --no-owner as the real ones. A fault file (fault-<program>.json) makes it fail.
_TOOL = r'''
import json, os, sys
state = os.environ["FAKE_PG_STATE"]
program = os.path.basename(sys.argv[0])
args = sys.argv[1:]
db = None
for arg in args:
    if arg.startswith("--db="):
        db = bytes.fromhex(arg[5:]).decode("utf-8")


def content_path(name):
    return os.path.join(state, "db-" + name.encode("utf-8").hex())


def fault():
    path = os.path.join(state, "fault-%s.json" % program)
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def fail(found):
    sys.stderr.write(found.get("stderr", "%s: error: failed" % program) + "\n")
    sys.stderr.flush()
    sys.exit(found.get("status", 1))


def header_of(data):
    if not data.startswith(b"PGDMP") or b"\n" not in data:
        sys.stderr.write("pg_restore: error: input file does not appear to be a valid archive\n")
        sys.exit(1)
    return json.loads(data[5:data.index(b"\n")].decode("ascii"))


out = sys.stdout.buffer
found = fault()
if program == "pg_dump":
    with open(content_path(db), "rb") as handle:
        data = handle.read()
    if found:
        out.write(data[:found.get("after_bytes", 0)])
        out.flush()
        fail(found)
    for start in range(0, len(data), 65536):
        out.write(data[start:start + 65536])
    sys.exit(0)
data = sys.stdin.buffer.read()
if program == "pg_restore":
    header = header_of(data)
    if "--list" in args:
        out.write(b";\n; Archive created at 2025-08-20 03:00:00 UTC\n;     Dumped from database version: 15.8\n"
                  b";     Dumped by pg_dump version: 15.8\n;\n")
        for number in range(header["tables"]):
            out.write(("%d; 1259 %d TABLE public t%d %s\n" % (200 + number, 16384 + number, number,
                                                              header["owner"])).encode("utf-8"))
        sys.exit(0)
    if len(data) - data.index(b"\n") - 1 != header["body"]:
        sys.stderr.write("pg_restore: error: could not read from input file: end of file\n")
        sys.exit(1)
if found:
    fail(found)
if db is not None:
    with open(content_path(db), "wb") as handle:
        handle.write(data)
sys.exit(0)
'''


class _Server:
    """What the admin client and its logins share: the databases, the roles, the programs, the log."""

    def __init__(self, state_dir, server_version, client_version):
        self.state_dir = state_dir
        self.bin_dir = os.path.join(state_dir, "bin")
        self.server_version = server_version
        self.client_version = client_version
        self.databases = {}  # name -> {"owner", "settings", "sessions"}
        self.roles = {}  # name -> {"login", "valid_until", "member_of", "risks"}
        self.log = []  # (what, name) of every change, in order
        self.faults = {}  # method name -> exception raised by its next call
        os.makedirs(self.bin_dir)
        script = os.path.join(self.bin_dir, "fake_pg_tool")
        with open(script, "w") as handle:
            handle.write("#!%s\n%s" % (sys.executable, _TOOL))
        os.chmod(script, stat.S_IRWXU)
        for name in ("pg_dump", "pg_restore", "psql"):
            os.symlink(script, os.path.join(self.bin_dir, name))


class FakePg:
    """A PostgreSQL server in memory behind adapters/postgres.PgClient's methods; its client programs are real
    processes (see the module)."""

    TEST_HELPERS = ("add_database", "content", "fail", "fail_child", "set_cluster")

    def __init__(self, settings, state_dir, server_version=150008, client_version=(15, 8), user=None, password=None,
                 server=None):
        self.settings = settings
        self.server = server or _Server(state_dir, server_version, client_version)
        self.bin_dir = self.server.bin_dir
        self.where = "%s:%s" % (settings.db_host, settings.db_port)
        self.user = settings.db_user if user is None else user
        self.password = password

    def __repr__(self):
        return "FakePg(%s as %s)" % (self.where, self.user)

    # -- for tests

    def add_database(self, name, content=None, owner=None, sessions=0, database_settings=None):
        """A database as it is before the test, with ``content`` (default: a fake archive of 3 tables)."""
        self.server.databases[name] = {"owner": owner or self.user, "sessions": sessions,
                                       "settings": database_settings or {"encoding": "UTF8", "lc_collate": "C",
                                                                         "lc_ctype": "C"}}
        with open(self._path(name), "wb") as handle:
            handle.write(archive() if content is None else content)

    def content(self, name):
        """A database's content (what was dumped or restored into it), None when it has none."""
        path = self._path(name)
        if not os.path.exists(path):
            return None
        with open(path, "rb") as handle:
            return handle.read()

    def fail(self, method, error):
        """Make the next call of ``method`` raise ``error``."""
        self.server.faults[method] = error

    def set_cluster(self, base_tar=None, tablespaces=(), replication=True, status=0, stderr=""):
        """What the fake pg_basebackup writes (``base_tar``'s bytes, then exits ``status`` saying ``stderr``), the
        extra tablespaces the cluster has, whether the login may replicate."""
        if base_tar is not None:
            with open(os.path.join(self.server.state_dir, "base.tar"), "wb") as handle:
                handle.write(base_tar)
        self.server.base = {"tablespaces": [list(item) for item in tablespaces], "replication": replication,
                            "status": status, "stderr": stderr}

    def fail_child(self, program, after_bytes=0, status=1, stderr=None):
        """Make ``program`` (pg_dump, pg_restore, psql) fail: pg_dump after writing ``after_bytes``."""
        with open(os.path.join(self.server.state_dir, "fault-%s.json" % program), "w") as handle:
            json.dump({"after_bytes": after_bytes, "status": status,
                       "stderr": stderr or "%s: error: connection to server lost" % program}, handle)

    def _path(self, name):
        return os.path.join(self.server.state_dir, "db-" + name.encode("utf-8").hex())

    def _faulty(self, method):
        error = self.server.faults.pop(method, None)
        if error is not None:
            raise error

    def _database(self, name, step="query"):
        if name not in self.server.databases:
            raise PostgresError('database "%s" does not exist' % name, step=step)
        return self.server.databases[name]

    # -- PgClient's methods

    def as_login(self, user, password):
        return FakePg(self.settings, None, user=user, password=password, server=self.server)

    def tool(self, name):
        return os.path.join(self.bin_dir, name)

    def environment(self):
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "FAKE_PG_STATE": self.server.state_dir,
                "LC_MESSAGES": "C"}

    def connection_args(self, database):
        return ["--db=" + database.encode("utf-8").hex()]

    def query(self, sql, database=None, step="query"):
        """Only what the workflows send themselves: ``SELECT 1`` (a login's check)."""
        self._faulty("query")
        if sql.strip() != "SELECT 1":
            raise AssertionError("FakePg runs no SQL but SELECT 1: %s" % sql)
        self._database(database or self.settings.db_maintenance_db, step)
        role = self.server.roles.get(self.user)
        if role is not None and not role["login"]:
            raise PostgresError('role "%s" is not permitted to log in' % self.user, step=step)
        return [["1"]]

    def scalar(self, sql, database=None, step="query"):
        rows = self.query(sql, database, step)
        return rows[0][0] if rows else None

    def client_version(self, name="pg_dump"):
        return self.server.client_version

    def server_version_num(self, database=None):
        self._faulty("server_version_num")
        if database is not None:
            self._database(database, "connect")
        return self.server.server_version

    def check_client_version(self, server_version_num, name="pg_dump"):
        major, minor = self.client_version(name)
        if major < server_version_num // 10000:
            raise ConfigError("%s %d.%d cannot talk to a PostgreSQL %d server"
                              % (name, major, minor, server_version_num // 10000))
        return "%d.%d" % (major, minor)

    def database_exists(self, name):
        self._faulty("database_exists")
        return name in self.server.databases

    def database_size(self, name):
        self._database(name)
        return len(self.content(name) or b"") + 8 * 1024 * 1024

    def database_settings(self, name):
        return dict(self._database(name)["settings"])

    def table_count(self, database):
        self._database(database, "verify")
        header = archive_header(self.content(database) or b"")
        return header["tables"] if header else 0

    def active_connections(self, name):
        return self._database(name)["sessions"]

    def create_database(self, name, database_settings=None, owner=None):
        self._faulty("create_database")
        if name in self.server.databases:
            raise PostgresError('database "%s" already exists' % name, step="create database")
        self.server.databases[name] = {"owner": owner or self.user, "sessions": 0,
                                       "settings": dict(database_settings or {})}
        self.server.log.append(("create database", name))
        return "exact" if database_settings else "server default"

    def drop_database(self, name):
        self._faulty("drop_database")
        if self.server.databases.pop(name, None) is not None:
            self.server.log.append(("drop database", name))
        if os.path.exists(self._path(name)):
            os.unlink(self._path(name))

    def wait_for_own_statements(self, seconds=60):
        return True

    def swap_databases(self, staging, target, replaced=None):
        """As the real one: both renames, or neither (one transaction)."""
        self._faulty("swap_databases")
        renames = ([(target, replaced)] if replaced is not None else []) + [(staging, target)]
        names = set(self.server.databases)
        for old, new in renames:
            if old not in names:
                raise PostgresError('database "%s" does not exist' % old, step="rename database")
            if new in names:
                raise PostgresError('database "%s" already exists' % new, step="rename database")
            names.remove(old)
            names.add(new)
        for old, new in renames:
            self.server.databases[new] = self.server.databases.pop(old)
            if os.path.exists(self._path(old)):
                os.rename(self._path(old), self._path(new))
            self.server.log.append(("rename database", "%s -> %s" % (old, new)))

    def role_exists(self, name):
        return name in self.server.roles

    def is_superuser(self, name):
        return "it is a superuser" in self.server.roles.get(name, {}).get("risks", [])

    def role_risks(self, name):
        if name not in self.server.roles:
            raise PostgresError("role %r does not exist on %s" % (name, self.where), step="restore role")
        return list(self.server.roles[name]["risks"])

    def create_restore_role(self, name):
        if name in self.server.roles:
            return False
        self.server.roles[name] = {"login": False, "valid_until": None, "member_of": None, "risks": []}
        self.server.log.append(("create role", name))
        return True

    def create_login_role(self, name, password, valid_until, member_of):
        self.server.roles[name] = {"login": True, "valid_until": valid_until, "member_of": member_of, "risks": []}
        self.server.log.append(("create login role", name))

    def drop_role(self, name, database=None):
        self._faulty("drop_role")
        if self.server.roles.pop(name, None) is not None:
            self.server.log.append(("drop role", name))

    def side_databases(self):
        self._faulty("side_databases")
        return [(name, len(self.content(name) or b""), info["sessions"])
                for name, info in sorted(self.server.databases.items())
                if "__restoring_" in name or "__replaced_" in name or "__drill_" in name]

    def restore_logins(self, role):
        return [(name, info["valid_until"]) for name, info in sorted(self.server.roles.items())
                if info["member_of"] == role and info["login"]]

    def reassign_owned(self, database, from_role, to_role):
        info = self._database(database, "reassign owned")
        if info["owner"] == from_role:
            info["owner"] = to_role
        self.server.log.append(("reassign owned", "%s: %s -> %s" % (database, from_role, to_role)))

    def dump_argv(self, database):
        return [self.tool("pg_dump")] + self.connection_args(database)

    def restore_argv(self, database, no_owner=False):
        return [self.tool("pg_restore")] + (["--no-owner"] if no_owner else []) + self.connection_args(database)

    def script_argv(self, database):
        return [self.tool("psql")] + self.connection_args(database)

    def list_argv(self):
        return [self.tool("pg_restore"), "--list"]

    def basebackup_argv(self, fast_checkpoint=False):
        base = getattr(self.server, "base", {"status": 0, "stderr": ""})
        script = ("import sys\nsys.stdout.buffer.write(open(sys.argv[1], 'rb').read())\nsys.stdout.flush()\n"
                  "sys.stderr.write(sys.argv[3])\nsys.exit(int(sys.argv[2]))\n")
        return [sys.executable, "-c", script, os.path.join(self.server.state_dir, "base.tar"), str(base["status"]),
                base["stderr"]]

    def cluster_facts(self):
        base = getattr(self.server, "base", {})
        return {"version": self.server_version_num(), "identifier": "7300000000000000001", "size": 1024 * 1024,
                "replication": base.get("replication", True), "extra_tablespaces": base.get("tablespaces", [])}


def base_tar(files=None, *, start="0/2000028", stop="0/2000100", timeline=1, algorithm="SHA256", manifest=True,
             in_manifest=None, in_tar=None, label_start=None):
    """A physical base backup's tar as pg_basebackup -D - -Ft writes it: backup_label first, the data files, the
    backup manifest (SHA-256 of each file, the WAL range, its own checksum) last. ``in_manifest``/``in_tar``
    ({path: bytes}) make the two disagree: what the manifest says of a file, or what the tar holds instead."""
    files = dict(files if files is not None else {
        "PG_VERSION": b"15\n", "base/1/1259": bytes(range(256)) * 64, "base/1/1259_fsm": b"\x00" * 24576,
        "global/pg_control": b"c" * 8192, "postgresql.auto.conf": b"# auto\n"})
    label = ("START WAL LOCATION: %s (file %08X0000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: "
             "streamed\nBACKUP FROM: primary\nSTART TIME: 2026-12-01 14:18:50 UTC\nLABEL: quankey-backup base backup\n"
             "START TIMELINE: %d\n" % (label_start or start, timeline, timeline)).encode("ascii")
    members = dict([("backup_label", label)] + list(files.items()))
    listed = dict(members, **(in_manifest or {}))
    entries = ['{ "Path": "%s", "Size": %d, "Last-Modified": "2026-12-01 14:18:50 GMT", "Checksum-Algorithm": "%s", '
               '"Checksum": "%s" }' % (path, len(data), algorithm, hashlib.sha256(data).hexdigest())
               for path, data in listed.items() if data is not None]
    body = ('{ "PostgreSQL-Backup-Manifest-Version": 1,\n"Files": [\n%s\n],\n"WAL-Ranges": [\n{ "Timeline": %d, '
            '"Start-LSN": "%s", "End-LSN": "%s" }\n],\n' % (",\n".join(entries), timeline, start, stop)).encode("ascii")
    document = body + ('"Manifest-Checksum": "%s"}\n' % hashlib.sha256(body).hexdigest()).encode("ascii")
    members.update(in_tar or {})
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for directory in ("global", "base", "base/1", "pg_wal"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o700
            tar.addfile(info)
        if manifest:
            members["backup_manifest"] = document
        for path, data in members.items():
            if data is None:
                continue
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()
