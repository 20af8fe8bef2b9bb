# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restoring a backup with several pg_restore processes at once, each fed by its own ranged reads of the object.

A backup taken with a range index (its metadata's ``data_ranges``, docs/FORMAT.md) has its compressed stream cut
into frames where table data blocks start, so any range can be read, authenticated (each AES-256-GCM segment at its
own index, the object's last one as final) and decompressed on its own. The restore then runs like
``pg_restore -j``: the schema (pre-data) first, then the table data split over ``jobs`` pg_restore processes (the
largest ranges first, each process given the ranges that balance the bytes), then indexes and constraints
(post-data) with ``pg_restore -j``. The archive's start (header and table of contents) is held in memory
(``memfd``), never on disk; the table data streams straight from S3 into PostgreSQL.

Every byte restored is authenticated as a whole-object read would have authenticated it, so a ranged restore skips
only the whole object's SHA-256, which the segments' tags make redundant for these formats. Any failure stops every
process and the caller drops the staging database, as for a single-stream restore.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import logging
import os
import subprocess
import threading

from ..adapters.process import Child, TocReader, prefetch
from ..adapters.s3 import READ_CHUNK
from ..errors import IntegrityError, PostgresError, TruncatedError, in_step
from ..formats import crypto
from ..formats.compression import decompressor
from ..formats.pgarchive import parse_toc

MAX_AUTO_JOBS = 4
LOG = logging.getLogger("quankey_backup")


def default_jobs():
    """The host's cores, at most MAX_AUTO_JOBS."""
    return max(1, min(os.cpu_count() or 1, MAX_AUTO_JOBS))


def why_single(record, jobs, new_decryptor):
    """Why this backup restores with one stream (a phrase), or None when it restores in parallel."""
    index = record.metadata.get("data_ranges")
    if jobs <= 1:
        return "one job"
    if not index:
        return "the backup has no range index (taken by an older version, with gzip, or with aes-256-cbc)"
    if getattr(new_decryptor, "ranged", None) is None:
        return "its encryption cannot be read by ranges"
    if not hasattr(os, "memfd_create") or not os.path.isdir("/proc/self/fd"):
        return "this system has no memfd_create or /proc/self/fd"
    return None


def assign(sizes, jobs):
    """Balance ranges over ``jobs`` processes: the largest first, each to the least loaded; each job's ranges in order."""
    loads = [[0, []] for _job in range(min(jobs, len(sizes)))]
    for size, which in sorted(((size, which) for which, size in enumerate(sizes)), key=lambda item: (-item[0], item[1])):
        target = min(loads, key=lambda load: load[0])
        target[0] += size
        target[1].append(which)
    return [sorted(load[1]) for load in loads if load[1]]


def _memfd(name, data):
    """An in-memory file holding ``data`` (``memfd_create``): ``(fd, path another process opens it by)``."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd, "/proc/self/fd/%d" % fd


class _Object:
    """The object's facts every range read needs: key, version, header, segment size, size."""

    def __init__(self, store, record, new_decryptor):
        self.store = store
        self.key = record.object_key
        self.basename = record.basename
        self.compression = record.metadata["compression"]
        self.size = record.metadata["size_bytes"]
        self.new_decryptor = new_decryptor
        head = store.head(self.key)
        if head is None:
            raise IntegrityError("%s is gone: the backup's data object was deleted" % store.url(self.key), step="download")
        if head.get("ContentLength") != self.size:
            raise IntegrityError("%s is %s bytes, its metadata says %d: the object was replaced or damaged"
                                 % (store.url(self.key), head.get("ContentLength"), self.size), step="download")
        self.etag = head.get("ETag")
        self.header = store.get_range(self.key, 0, crypto.HEADER_SIZE)
        self.segment_size = in_step("decrypt", crypto.read_header, self.header)["segment_size"]
        capacity = None
        try:
            capacity = crypto.stream_capacity(self.segment_size, self.size)
        except ValueError:
            pass
        indexed = record.metadata["data_ranges"]["stream_bytes"]
        if capacity != indexed:
            raise TruncatedError("backup %s: its object is truncated or was replaced: it holds %s stream bytes, its range "
                                 "index says %d" % (self.basename, capacity, indexed), step="decrypt")
        self.downloaded = len(self.header)
        self._lock = threading.Lock()

    def count(self, size):
        with self._lock:
            self.downloaded += size
            return self.downloaded

    def read(self, start, end, expected, sink, progress, stop):
        """Stream bytes ``start``-``end`` of the compressed stream, decompressed, into ``sink``; checks their length."""
        try:
            first, last, final, begin, finish = crypto.segment_span(start, end, self.segment_size, self.size)
        except ValueError as exc:
            raise IntegrityError("backup %s: its range index does not fit its object (%s)" % (self.basename, exc),
                                 step="download")
        opener = in_step("decrypt", self.new_decryptor.ranged, self.header, first, last, final)
        unpack = decompressor(self.compression)
        skip, left, produced = start - first * self.segment_size, end - start, 0

        def window(plain):
            nonlocal skip, left
            if skip:
                cut = min(skip, len(plain))
                plain, skip = plain[cut:], skip - cut
            taken = plain[:left]
            left -= len(taken)
            return taken

        for chunk in prefetch(self.store.iter_object(self.key, READ_CHUNK, begin, finish, self.etag)):
            if stop.is_set():
                return produced
            progress(self.count(len(chunk)), self.size)
            out = unpack.update(window(in_step("decrypt", opener.update, chunk)))
            produced += len(out)
            if out and not sink.feed(out):
                return produced
        out = unpack.update(window(in_step("decrypt", opener.finalize))) + unpack.finalize()
        produced += len(out)
        if out and not sink.feed(out):
            return produced
        if left or produced != expected:
            raise IntegrityError("backup %s: stream bytes %d-%d gave %d archive bytes, its range index says %d"
                                 % (self.basename, start, end, produced, expected), step="decompress")
        return produced


class _Prefix:
    """A sink collecting the archive's start (header and TOC), at most ``limit`` bytes."""

    def __init__(self, limit):
        self.parts = []
        self.size = 0
        self.limit = limit

    def feed(self, data):
        self.size += len(data)
        if self.size > self.limit:
            return False
        self.parts.append(bytes(data))
        return True


class RangedRestore:
    """One ranged restore into a staging database (see the module); :meth:`run` returns the counts."""

    def __init__(self, store, record, new_decryptor, *, pg, argv, env, jobs, progress, explain):
        self.pg = pg  # for the listing (pg_restore --list)
        self.explain = explain  # why a pg_restore failed, from its stderr
        self.entries = []
        self.record = record
        self.index = record.metadata["data_ranges"]
        self.argv = argv  # pg_restore and its options for the staging database, without a section or file
        self.env = env
        self.jobs = jobs
        self.progress = progress
        self._progress_lock = threading.Lock()
        self.object = _Object(store, record, new_decryptor)
        self.prefix = None
        self.listing = None
        self._prefix_file = None  # (fd, path) of the in-memory archive start, made once for every section
        self._children = []
        self._fds = []
        self._stop = threading.Event()
        self._errors = []
        if record.metadata.get("dump_bytes") != self.index["archive_bytes"]:
            raise IntegrityError("backup %s: its range index covers %d archive bytes, its metadata says %s"
                                 % (record.basename, self.index["archive_bytes"], record.metadata.get("dump_bytes")),
                                 step="download")

    def _report(self, done, total=None):
        with self._progress_lock:
            self.progress(done, total)

    def _ranges(self):
        """``[(stream start, stream end, archive length, dump ids)]`` from the index."""
        ranges = self.index["ranges"]
        ends = [(item[0], item[1]) for item in ranges[1:]] + [(self.index["archive_bytes"], self.index["stream_bytes"])]
        return [(start, packed, end_packed, end_plain - start, dump_ids)
                for (start, packed, dump_ids), (end_plain, end_packed) in zip(ranges, ends)]

    def _child(self, argv, name, pass_fds=()):
        child = Child(argv, self.env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, name=name, pass_fds=pass_fds)
        self._children.append(child)
        return child

    def _file(self, name, data):
        fd, path = _memfd(name, data)
        self._fds.append(fd)
        return fd, path

    def read_prefix(self):
        """The archive's header and TOC (the first frame), checked; also its listing (pg_restore --list)."""
        first = self.index["ranges"][0]
        sink = _Prefix(first[0])
        self.object.read(0, first[1], first[0], sink, self._report, self._stop)
        self.prefix = b"".join(sink.parts)
        try:
            parsed = parse_toc(self.prefix)
        except ValueError as exc:
            parsed, problem = None, str(exc)
        else:
            problem = "it ends inside its table of contents"
        if parsed is None or parsed[0] != len(self.prefix):
            raise IntegrityError("backup %s: the archive's start does not parse as its table of contents (%s)"
                                 % (self.record.basename, problem if parsed is None else "it is %d bytes, not %d"
                                    % (len(self.prefix), parsed[0])), step="pg_restore")
        with_data = [entry.dump_id for entry in parsed[1] if entry.had_data]
        indexed = [dump_id for item in self.index["ranges"] for dump_id in item[2]]
        if indexed != with_data:
            raise IntegrityError("backup %s: its range index names other data blocks than its table of contents"
                                 % self.record.basename, step="pg_restore")
        self.entries = parsed[1]
        toc = TocReader(self.pg)
        try:
            toc.feed(self.prefix)
            self.listing = toc.listing(step="pg_restore")
        finally:
            toc.kill()
        return self.listing

    def _section(self, section, extra=(), name=None):
        """pg_restore of one section from the in-memory archive start (each pg_restore opens it anew by path)."""
        if self._prefix_file is None:
            self._prefix_file = self._file("quankey-archive-start", self.prefix)
        fd, path = self._prefix_file
        child = self._child(self.argv + ["--section=%s" % section] + list(extra) + [path],
                            name or "pg_restore (%s)" % section, pass_fds=(fd,))
        status = child.wait()
        if status != 0:
            raise PostgresError("%s: %s" % (child.describe_exit(status), self.explain(child.stderr_text())),
                                step="pg_restore")

    def pre_data(self):
        self._section("pre-data")

    def post_data(self):
        self._section("post-data", ["--jobs=%d" % self.jobs])

    def data(self):
        """The table data: ranges balanced over the jobs, one pg_restore each, all at once."""
        ranges = self._ranges()
        jobs = assign([item[3] for item in ranges], self.jobs)
        own = [set(dump_id for which in job for dump_id in ranges[which][4]) for job in jobs]
        everyone = set().union(*own)
        threads = []
        for number, job in enumerate(jobs):
            wanted = [entry.dump_id for entry in self.entries
                      if entry.dump_id in own[number] or (number == 0 and entry.dump_id not in everyone)]
            fd, path = self._file("quankey-restore-list", "".join("%d;\n" % dump_id for dump_id in wanted).encode())
            child = self._child(self.argv + ["--section=data", "--use-list=%s" % path],
                                "pg_restore (data %d)" % (number + 1), pass_fds=(fd,))
            thread = threading.Thread(target=self._feed, args=(child, [ranges[which] for which in job]),
                                      name="restore-data-%d" % (number + 1))
            thread.daemon = True
            threads.append((thread, child))
            thread.start()
        for thread, _child in threads:
            thread.join()
        if self._errors:
            raise self._errors[0]

    def _feed(self, child, ranges):
        try:
            open_ = child.feed(self.prefix)
            for start, packed, end_packed, length, _ids in ranges:
                if not open_ or self._stop.is_set():
                    break
                produced = self.object.read(packed, end_packed, length, child, self._report, self._stop)
                open_ = produced == length and not self._stop.is_set()
            status = child.wait()
            if self._stop.is_set():
                return
            if status != 0 or not open_:
                raise PostgresError("%s: %s" % (child.describe_exit(status), self.explain(child.stderr_text())),
                                    step="pg_restore")
        except BaseException as exc:  # pylint: disable=broad-except  # handed to the caller, which raises the first
            self._errors.append(exc)
            self._stop.set()
            for other in self._children:
                other.kill()

    def counts(self):
        return {"downloaded_bytes": self.object.downloaded, "dump_bytes": self.index["archive_bytes"],
                "sink_open": True, "sha256": None, "payload": "custom", "jobs": self.jobs}

    def close(self):
        """Stop every process and free the in-memory files (after success too)."""
        self._stop.set()
        for child in self._children:
            child.kill()
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []
        self._prefix_file = None
