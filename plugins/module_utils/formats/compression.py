# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Streaming compressions, in one registry: zstd (default), gzip, none.

Each codec (:class:`Codec`) gives its name, the first bytes of its streams (``magic``, from magic.py),
the optional package it needs, a streaming compressor and decompressor (small objects with
``update(bytes) -> bytes`` and ``finalize() -> bytes``, chained with the cipher), and the check that
a first 16-byte block is plausibly its stream's start (:meth:`Codec.plausible`). What reads a
stream without knowing its compression asks the registry: the ``auto`` decompressor (the seed's
backups) and openssl_enc's wrong-key probe (:func:`plausible_start`). The settings' choices are
:data:`COMPRESSIONS`. A new compression is one class here and one line in :data:`CODECS`.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import traceback
import zlib

from ..errors import ConfigError, IntegrityError
from . import magic

try:
    import zstandard
    HAS_ZSTANDARD = True
    ZSTANDARD_IMPORT_ERROR = None
except ImportError:
    zstandard = None
    HAS_ZSTANDARD = False
    ZSTANDARD_IMPORT_ERROR = traceback.format_exc()

DEFAULT_COMPRESSION = "zstd"
# One thread (the calling one) by default: measured with `make bench` (docs/benchmarks.md) on
# a 2-core host, zstd's two worker threads held 60-90 MB of job buffers (the backup's peak RSS
# went from ~205 to ~105 MB without them) and saved ~0.5 s of ~11 s on a 1 GB database, as
# PostgreSQL, pg_dump and the upload already keep both cores busy.
# Level 2, not zstd's default 3: measured in the same bench run on a 1 GB database (mixed data, ~30% random
# bytea), level 2 took 11.1 s instead of 13.4 s and 6.4 instead of 10.9 client CPU seconds, and stored 2% less
# (level 3's search over incompressible data costs ~3x level 2's CPU and finds nothing). A stream of any level
# decompresses the same way: backups made at level 3 restore unchanged.
ZSTD_LEVEL = 2
ZSTD_THREADS = 0
GZIP_LEVEL = 6
AUTO = "auto"
SETTING = "BACKUP_COMPRESSION"  # where the host command's compression is set (a caller may name its own option)


class Codec:
    """What every compression provides (see the module)."""

    name = None
    magic = b""  # the first bytes of its streams
    what = None  # its streams in a message: 'a gzip stream'
    requires = None  # the optional Python package it needs, if any
    framed = False  # whether its compressor can end a frame mid-stream (``end_frame``) for a reader to start from

    def __repr__(self):
        return "Codec(%s)" % self.name

    def installed(self):
        """Whether what it needs is installed."""
        return True

    def require(self, label=SETTING):
        """Raise ConfigError naming the package to install when it is missing (``label``: where the choice is set)."""
        if not self.installed():
            raise ConfigError("the Python package '%s' is required for %s compression: pip install %s (or set %s to %s)"
                              % (self.requires, self.name, self.requires, label,
                                 " or ".join(name for name, codec in CODECS.items() if codec.requires is None)))

    def compressor(self, threads=ZSTD_THREADS):
        """A streaming compressor (``threads``: worker threads, for a codec that has them)."""
        raise NotImplementedError

    def decompressor(self):
        """A streaming decompressor; bad or cut input raises IntegrityError (step decompress)."""
        raise NotImplementedError

    def sniff(self, head):
        """Whether a stream whose first bytes are ``head`` (at least :func:`sniff_size` of them) is this codec's."""
        return bool(self.magic) and bytes(head).startswith(self.magic)

    def plausible(self, block):
        """Whether a first 16-byte block is plausibly the start of this codec's stream (a wrong key rarely passes)."""
        return self.sniff(block)


class _Identity:
    """Passes bytes through unchanged (compression 'none'); every byte is a place a reader can start from."""

    def update(self, data):
        return bytes(data)

    def end_frame(self):
        return b""

    def finalize(self):
        return b""


class _Compressing:
    """A zlib-like compressobj (zlib's, zstandard's) as update/finalize."""

    def __init__(self, obj):
        self._obj = obj

    def update(self, data):
        return self._obj.compress(data)

    def finalize(self):
        return self._obj.flush()


class _ZstdFrames(_Compressing):
    """zstd's compressobj, able to end its frame so that the next bytes start a new, independently readable one."""

    def __init__(self, compressor):
        _Compressing.__init__(self, compressor.compressobj())
        self._compressor = compressor

    def end_frame(self):
        """The end of the current frame; what follows is compressed as a new frame."""
        out = self._obj.flush()
        self._obj = self._compressor.compressobj()
        return out


class _Decompressing:
    """A zlib-like decompressobj as update/finalize: corrupt data and a missing end marker raise IntegrityError."""

    def __init__(self, obj, label, errors, flush=False):
        self._obj = obj
        self._label = label
        self._errors = errors
        self._flush = flush

    def update(self, data):
        if not data:  # a decryptor's last word may be empty (aes-256-cbc: a block of padding only); a finished
            return b""  # zstd frame refuses even empty input
        try:
            return self._obj.decompress(data)
        except self._errors as exc:
            raise IntegrityError("%s data is corrupt: %s" % (self._label, exc), step="decompress")

    def finalize(self):
        if not self._obj.eof:
            raise IntegrityError("%s stream ended before its end marker: the backup is incomplete" % self._label,
                                 step="decompress")
        return self._obj.flush() if self._flush else b""


class _ZstdDecompressing(_Decompressing):
    """zstd frames one after another (RFC 8878 allows any number; ``zstd -d`` reads them all): a new frame starts where
    one ends, and the stream must end at a frame's end."""

    def __init__(self):
        _Decompressing.__init__(self, zstandard.ZstdDecompressor().decompressobj(), "zstd", zstandard.ZstdError)

    def update(self, data):
        out = []
        while data:
            if self._obj.eof:
                self._obj = zstandard.ZstdDecompressor().decompressobj()
            out.append(_Decompressing.update(self, data))
            data = self._obj.unused_data if self._obj.eof else b""
        return b"".join(out)


class Zstd(Codec):
    """zstd (RFC 8878), level ZSTD_LEVEL, in the calling thread unless told otherwise."""

    name = "zstd"
    magic = magic.ZSTD
    what = "a zstd stream"
    requires = "zstandard"

    def installed(self):
        return HAS_ZSTANDARD

    framed = True

    def compressor(self, threads=ZSTD_THREADS):
        self.require()
        return _ZstdFrames(zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=threads))

    def decompressor(self):
        self.require()
        return _ZstdDecompressing()


class Gzip(Codec):
    """gzip (RFC 1952), what the seed's scripts piped pg_dump through."""

    name = "gzip"
    magic = magic.GZIP
    what = "a gzip stream"

    def compressor(self, threads=ZSTD_THREADS):
        return _Compressing(zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS))

    def decompressor(self):
        return _Decompressing(zlib.decompressobj(16 + zlib.MAX_WBITS), "gzip", zlib.error, flush=True)

    def plausible(self, block):
        """Method deflate and the reserved flag bits clear, so a wrong key passes by chance about once in 2**27
        tries rather than 2**24."""
        block = bytes(block)
        return block.startswith(magic.GZIP_DEFLATE) and len(block) > 3 and not block[3] & 0xE0


class NoCompression(Codec):
    """none: the stream is the payload itself (a pg_dump archive, or a plain-SQL dump of the seed's)."""

    name = "none"
    what = "an uncompressed dump (pg_dump archive or SQL)"
    framed = True

    def compressor(self, threads=ZSTD_THREADS):
        return _Identity()

    def decompressor(self):
        return _Identity()

    def sniff(self, head):
        return magic.is_payload(head)


CODECS = dict((codec.name, codec) for codec in (Zstd(), Gzip(), NoCompression()))
COMPRESSIONS = tuple(CODECS)  # the settings' choices


def get(name, label=SETTING):
    """The codec of a compression's name; ConfigError for an unknown one."""
    if name not in CODECS:
        raise ConfigError("unknown compression %r: choose one of %s for %s" % (name, ", ".join(CODECS), label))
    return CODECS[name]


def check_compression(name, label=SETTING):
    """Return ``name`` if it is a known compression whose package is installed, else raise ConfigError naming
    ``label`` (where it is set: BACKUP_COMPRESSION, or a module's option)."""
    get(name, label).require(label)
    return name


def compressor(name, threads=ZSTD_THREADS):
    """A streaming compressor for ``name`` (zstd uses ``threads`` worker threads; 0: in the calling thread)."""
    return get(name).compressor(threads)


def decompressor(name):
    """A streaming decompressor for ``name`` (``auto``: chosen by the first bytes); bad input raises IntegrityError."""
    if name == AUTO:
        return _Sniffing()
    return get(name).decompressor()


def sniff_size():
    """How many first bytes tell the registry's codecs apart."""
    return max([len(codec.magic) for codec in CODECS.values()] + [4])


def kinds():
    """The registry's streams for a message: 'a zstd stream, a gzip stream or an uncompressed dump (...)'."""
    whats = [codec.what for codec in CODECS.values()]
    return whats[0] if len(whats) == 1 else "%s or %s" % (", ".join(whats[:-1]), whats[-1])


def plausible_start(block):
    """Whether a first 16-byte block of plaintext plausibly starts a backup's stream in any registered compression
    (the aes-256-cbc wrong-key probe)."""
    return any(codec.plausible(block) for codec in CODECS.values())


class _Sniffing:
    """Decompression chosen by the first bytes (the seed's backups: gzip, or a bare pg_dump archive)."""

    def __init__(self):
        self._head = b""
        self._inner = None
        self._need = sniff_size()

    def update(self, data):
        if self._inner is None:
            self._head += bytes(data)
            if len(self._head) < self._need:
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
    for codec in CODECS.values():
        if codec.sniff(head):
            codec.require()
            return codec.decompressor()
    raise IntegrityError("the decrypted stream starts as none of %s: wrong key, or not a database backup" % kinds(),
                         step="decompress")
