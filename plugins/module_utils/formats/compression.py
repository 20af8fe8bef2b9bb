# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Streaming compressors: zstd (default), gzip, none.

Each codec is a pair of small objects with ``update(bytes) -> bytes`` and
``finalize() -> bytes`` so the pipeline can chain them with the cipher.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import traceback
import zlib

from ..errors import ConfigError, IntegrityError

try:
    import zstandard
    HAS_ZSTANDARD = True
    ZSTANDARD_IMPORT_ERROR = None
except ImportError:
    zstandard = None
    HAS_ZSTANDARD = False
    ZSTANDARD_IMPORT_ERROR = traceback.format_exc()

COMPRESSIONS = ("zstd", "gzip", "none")
DEFAULT_COMPRESSION = "zstd"
# One thread (the calling one) by default: measured with `make bench` (docs/benchmarks.md) on
# a 2-core host, zstd's two worker threads held 60-90 MB of job buffers (the backup's peak RSS
# went from ~205 to ~105 MB without them) and saved ~0.5 s of ~11 s on a 1 GB database, as
# PostgreSQL, pg_dump and the upload already keep both cores busy.
ZSTD_LEVEL = 3
ZSTD_THREADS = 0
GZIP_LEVEL = 6


def _require_zstandard():
    if not HAS_ZSTANDARD:
        raise ConfigError("the Python package 'zstandard' is required for zstd compression: "
                          "pip install zstandard (or choose BACKUP_COMPRESSION=gzip)")


def check_compression(name):
    """Return ``name`` if it is a known compression, else raise ConfigError."""
    if name not in COMPRESSIONS:
        raise ConfigError("unknown compression %r: choose one of %s" % (name, ", ".join(COMPRESSIONS)))
    if name == "zstd":
        _require_zstandard()
    return name


class _Identity:
    """Passes bytes through unchanged (compression 'none')."""

    def update(self, data):
        return bytes(data)

    def finalize(self):
        return b""


class _ZstdCompressor:
    def __init__(self, threads):
        _require_zstandard()
        self._obj = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=threads).compressobj()

    def update(self, data):
        return self._obj.compress(data)

    def finalize(self):
        return self._obj.flush()


class _ZstdDecompressor:
    def __init__(self):
        _require_zstandard()
        self._obj = zstandard.ZstdDecompressor().decompressobj()

    def update(self, data):
        try:
            return self._obj.decompress(data)
        except zstandard.ZstdError as exc:
            raise IntegrityError("zstd data is corrupt: %s" % exc, step="decompress")

    def finalize(self):
        if not self._obj.eof:
            raise IntegrityError("zstd stream ended before its end marker: the backup is incomplete", step="decompress")
        return b""


class _GzipCompressor:
    def __init__(self):
        self._obj = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    def update(self, data):
        return self._obj.compress(data)

    def finalize(self):
        return self._obj.flush()


class _GzipDecompressor:
    def __init__(self):
        self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def update(self, data):
        try:
            return self._obj.decompress(data)
        except zlib.error as exc:
            raise IntegrityError("gzip data is corrupt: %s" % exc, step="decompress")

    def finalize(self):
        if not self._obj.eof:
            raise IntegrityError("gzip stream ended before its end marker: the backup is incomplete", step="decompress")
        return self._obj.flush()


def compressor(name, threads=ZSTD_THREADS):
    """A streaming compressor for ``name`` (zstd uses ``threads`` worker threads; 0: in the calling thread)."""
    check_compression(name)
    if name == "zstd":
        return _ZstdCompressor(threads)
    if name == "gzip":
        return _GzipCompressor()
    return _Identity()


GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
DUMP_MAGIC = b"PGDMP"
# Starts of a plain-SQL dump (pg_dump without -Fc): its header comment, its first SET when written without
# comments, or the \restrict line pg_dump 15.14+ puts near the top.
SQL_STARTS = (b"--\n-- PostgreSQL database dump", b"SET statement_timeout", b"SET ", b"\\restrict ")
AUTO = "auto"


class _Sniffing:
    """Decompression chosen by the first bytes (the seed's backups: gzip, or a bare pg_dump archive)."""

    def __init__(self):
        self._head = b""
        self._inner = None

    def update(self, data):
        if self._inner is None:
            self._head += bytes(data)
            if len(self._head) < len(ZSTD_MAGIC):
                return b""
            data, self._head = self._head, b""
            self._inner = _choose(data)
        return self._inner.update(data)

    def finalize(self):
        if self._inner is None:
            raise IntegrityError("the decrypted stream is only %d bytes: the backup is incomplete" % len(self._head),
                                 step="decompress")
        return self._inner.finalize()


def _choose(head):
    if head.startswith(GZIP_MAGIC):
        return _GzipDecompressor()
    if head.startswith(ZSTD_MAGIC):
        return decompressor("zstd")
    if head.startswith(DUMP_MAGIC) or any(head.startswith(start[:len(head)]) for start in SQL_STARTS):
        return _Identity()
    raise IntegrityError("the decrypted stream starts with neither gzip, zstd, a pg_dump archive nor SQL: wrong key, or "
                         "not a database backup", step="decompress")


def decompressor(name):
    """A streaming decompressor for ``name`` (``auto``: chosen by the first bytes); bad input raises IntegrityError."""
    if name == AUTO:
        return _Sniffing()
    check_compression(name)
    if name == "zstd":
        return _ZstdDecompressor()
    if name == "gzip":
        return _GzipDecompressor()
    return _Identity()
