# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_dump's custom archive, read as it streams past: where its table of contents ends and where each data block
starts, so that a backup can later be restored by several pg_restore processes at once (docs/FORMAT.md, "Range
index"). Bytes only, no I/O.

The archive (pg_dump -Fc to a pipe) is a header, the table of contents (TOC), then one data block per TOC entry that
has data, in TOC order: a type byte (1: table data, 3: large objects), the entry's dump id, then length-prefixed
chunks ending with a zero length (large objects: per object its oid, its chunks and a zero; a zero oid ends the
block). Integers are a sign byte and ``intSize`` little-endian bytes.

:class:`ArchiveScanner` is fed the plaintext in order and reports every block's start offset. Table data chunks
are COPY (or INSERT) text, which never holds a NUL byte, so the end of such a block is found as the first run of
``intSize + 1`` zero bytes after its first chunk (a C-speed search, not a walk over every row's chunk); the next
block's header must follow at once, so a wrong guess leaves no index rather than a wrong one. Large-object blocks
(binary) are walked chunk by chunk. Anything unexpected (an unknown archive version, a block out of TOC order)
sets :attr:`ArchiveScanner.problem` and the backup simply has no index: it restores with one stream.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


from . import magic

BLK_DATA = 1
BLK_BLOBS = 3
# Archive versions whose TOC this reader knows: 1.13 (PostgreSQL 11), 1.14 (12: table access method),
# 1.15 (16: compression algorithm byte), 1.16 (17: relkind).
KNOWN_VERSIONS = ((1, 13), (1, 14), (1, 15), (1, 16))
TOC_LIMIT = 512 * 1024 * 1024  # a TOC larger than this is not indexed (the backup restores with one stream)


class _Short(Exception):
    """More bytes are needed to parse the TOC."""


class _Reader:
    """Reads pg_dump's integers and strings from a buffer (raises _Short past its end)."""

    def __init__(self, buf, int_size=4):
        self.buf = buf
        self.pos = 0
        self.int_size = int_size

    def take(self, size):
        end = self.pos + size
        if end > len(self.buf):
            raise _Short()
        data = self.buf[self.pos:end]
        self.pos = end
        return data

    def byte(self):
        return self.take(1)[0]

    def int(self):
        sign = self.byte()
        value = int.from_bytes(bytes(self.take(self.int_size)), "little")
        return -value if sign else value

    def str(self):
        size = self.int()
        if size < 0:
            return None
        return bytes(self.take(size)).decode("utf-8", "replace")


class TocEntry:
    """One TOC entry: its dump id, whether it had data (a block follows the TOC), its kind and section."""

    __slots__ = ("dump_id", "had_data", "desc", "section")

    def __init__(self, dump_id, had_data, desc, section):
        self.dump_id = dump_id
        self.had_data = had_data
        self.desc = desc
        self.section = section

    def __repr__(self):
        return "TocEntry(%d, %s, %r)" % (self.dump_id, self.had_data, self.desc)


def parse_toc(buf):
    """``(toc_end, entries, int_size)`` of an archive's start, or None when ``buf`` ends inside the TOC.

    Raises ValueError for what this reader does not know (not a custom archive, an unknown version).
    """
    if len(buf) < len(magic.PG_DUMP) + 6:
        return None
    if bytes(buf[:len(magic.PG_DUMP)]) != magic.PG_DUMP:
        raise ValueError("not a pg_dump custom archive")
    reader = _Reader(buf)
    reader.take(len(magic.PG_DUMP))
    version = (reader.byte(), reader.byte())
    reader.byte()  # revision
    if version not in KNOWN_VERSIONS:
        raise ValueError("archive version %d.%d is not one this reader knows" % version)
    reader.int_size = reader.byte()
    off_size = reader.byte()
    if reader.byte() != 1:  # archCustom
        raise ValueError("not a custom-format archive")
    try:
        if version >= (1, 15):
            reader.byte()  # compression algorithm
        else:
            reader.int()  # compression level
        for _field in range(7):  # creation time: sec, min, hour, mday, mon, year, isdst
            reader.int()
        for _field in range(3):  # database name, server version, pg_dump version
            reader.str()
        entries = []
        for _entry in range(reader.int()):
            dump_id = reader.int()
            had_data = reader.int() != 0
            reader.str()  # table oid
            reader.str()  # oid
            reader.str()  # tag
            desc = reader.str()
            section = reader.int()
            for _field in range(6):  # defn, drop statement, copy statement, namespace, tablespace, table access method
                reader.str()
            if version >= (1, 16):
                reader.int()  # relkind
            reader.str()  # owner
            reader.str()  # "false" (with oids, long gone)
            while reader.str() is not None:  # dependencies
                pass
            reader.take(1 + off_size)  # the data offset: a flag and offSize bytes
            entries.append(TocEntry(dump_id, had_data, desc, section))
    except _Short:
        return None
    return reader.pos, entries, reader.int_size


class ArchiveScanner:
    """Finds the end of the TOC and every data block's start in a streamed custom archive.

    ``feed(piece)`` returns the offsets (from the archive's start) of the blocks that start in this piece;
    :attr:`blocks` is every block as ``[offset, dump id]``; :meth:`finish` checks the end. When the archive is
    not one this can index, :attr:`problem` says why and nothing more is reported.
    """

    def __init__(self, toc_limit=TOC_LIMIT):
        self.offset = 0
        self.toc_end = None
        self.entries = None
        self.blocks = []
        self.problem = None
        self._toc_limit = toc_limit
        self._head = bytearray()
        self._next_try = 0
        self._expected = None  # the dump ids of the entries with data, in TOC order
        self._int_size = 4
        self._terminator = b""
        self._state = "head"
        self._need = bytearray()  # bytes of a header or integer being assembled
        self._want = 0
        self._skip = 0
        self._tail = b""  # the last bytes of table data, for a zero run cut by a piece's end
        self._lo_stage = None

    def _give_up(self, why):
        self.problem = why
        self._state = "off"
        self._head = bytearray()

    @property
    def reading_toc(self):
        """Whether the TOC's end is still unknown (a writer holds the bytes back until it is)."""
        return self._state == "head"

    def feed(self, piece):
        """Scan the next bytes; the offsets of the blocks that start in them (or, once the TOC is read, before)."""
        starts = []
        if self._state == "off":
            self.offset += len(piece)
            return starts
        if self._state == "head":
            self._head += piece
            self.offset += len(piece)
            if len(self._head) < self._next_try and len(self._head) <= self._toc_limit:
                return starts
            self._next_try = 2 * len(self._head)  # parse attempts double the bytes each time: linear in all
            try:
                parsed = parse_toc(self._head)
            except ValueError as exc:
                self._give_up(str(exc))
                return starts
            if parsed is None:
                if len(self._head) > self._toc_limit:
                    self._give_up("its table of contents is larger than %d bytes" % self._toc_limit)
                return starts
            self.toc_end, self.entries, self._int_size = parsed
            self._terminator = b"\x00" * (self._int_size + 1)
            self._expected = [entry.dump_id for entry in self.entries if entry.had_data]
            self._expected.reverse()
            rest = memoryview(bytes(self._head[self.toc_end:]))
            self._head = bytearray()
            self._state = "block"
            self._scan(rest, self.toc_end, starts)
            return starts
        base = self.offset
        self.offset += len(piece)
        self._scan(memoryview(piece).cast("B"), base, starts)
        return starts

    def _scan(self, view, base, starts):
        pos = 0
        while pos < len(view) and self._state != "off":
            pos = self._step(view, pos, base, starts)

    def _take(self, view, pos, size):
        """Gather ``size`` bytes across pieces; ``(bytes or None, new pos)``."""
        take = min(size - len(self._need), len(view) - pos)
        self._need += view[pos:pos + take]
        pos += take
        if len(self._need) < size:
            return None, pos
        data, self._need = bytes(self._need), bytearray()
        return data, pos

    def _int(self, data):
        value = int.from_bytes(data[1:], "little")
        return -value if data[0] else value

    def _step(self, view, pos, base, starts):
        state = self._state
        if state == "block":  # a block header: type byte and dump id
            if not self._need:
                starts.append(base + pos)
                self.blocks.append([base + pos, None])
            data, pos = self._take(view, pos, 2 + self._int_size)
            if data is None:
                return pos
            kind, dump_id = data[0], self._int(data[1:])
            if kind not in (BLK_DATA, BLK_BLOBS):
                self._give_up("a data block of unknown type %d at offset %d" % (kind, self.blocks[-1][0]))
                return pos
            if not self._expected or self._expected[-1] != dump_id:
                self._give_up("data block %d at offset %d is not the next entry with data in the table of contents"
                              % (dump_id, self.blocks[-1][0]))
                return pos
            self._expected.pop()
            self.blocks[-1][1] = dump_id
            self._state = "first" if kind == BLK_DATA else "lo_oid"
            return pos
        if state == "first":  # the first chunk's length of table data, read exactly
            data, pos = self._take(view, pos, 1 + self._int_size)
            if data is None:
                return pos
            size = self._int(data)
            if size < 0:
                self._give_up("a negative chunk length in block %d" % self.blocks[-1][1])
            elif size == 0:
                self._state = "block"
            else:
                self._skip = size
                self._tail = b""
                self._state = "text"
            return pos
        if state == "text":  # table data: skip the first chunk, then look for the terminating zero run
            if self._skip:
                step = min(self._skip, len(view) - pos)
                self._skip -= step
                return pos + step
            window = self._tail + bytes(view[pos:])
            found = window.find(self._terminator)
            if found < 0:
                self._tail = window[-self._int_size:] if self._int_size else b""
                return len(view)
            end = pos + found + len(self._terminator) - len(self._tail)  # the terminator's end, in this piece
            self._tail = b""
            self._state = "block"
            return end
        return self._step_lo(view, pos)

    def _step_lo(self, view, pos):
        """Large objects: an oid (0 ends the block), then chunks until a zero length; walked exactly."""
        if self._skip:
            step = min(self._skip, len(view) - pos)
            self._skip -= step
            return pos + step
        data, pos = self._take(view, pos, 1 + self._int_size)
        if data is None:
            return pos
        value = self._int(data)
        if value < 0:
            self._give_up("a negative length in large-object block %d" % self.blocks[-1][1])
        elif self._state == "lo_oid":
            self._state = "block" if value == 0 else "lo_chunk"
        elif value == 0:
            self._state = "lo_oid"
        else:
            self._skip = value
        return pos

    def finish(self):
        """Check the archive ended between blocks with every entry's data seen; sets :attr:`problem` if not."""
        if self._state == "off":
            return
        if self._state == "head":
            self._give_up("the archive ends inside its table of contents")
        elif self._state != "block" or self._need:
            self._give_up("the archive ends inside a data block")
        elif self._expected:
            self._give_up("%d entries with data have no data block" % len(self._expected))
        if self.blocks and self.blocks[-1][1] is None:
            self.blocks.pop()


RANGE_MIN = 8 * 1024 * 1024  # a range starts at a block once the one before holds this many archive bytes
RANGE_COUNT = 1024  # ... or the database's size over this, so that a huge database's index stays small
INDEX_VERSION = 1


def range_bytes(db_size):
    """How many archive bytes a range holds at least before the next block starts a new one."""
    return max(RANGE_MIN, (db_size or 0) // RANGE_COUNT)


class RangeIndexer:
    """Where a backup's compressed stream is cut into independently readable ranges, and what each holds.

    ``split(piece)`` says where, in the next plaintext ``piece``, a new compressed frame must start (a list of
    offsets within it), or None while the piece must be held back (the TOC is still being read). ``index(stream_bytes)``
    is the metadata's ``data_ranges`` once the stream has ended, or None when the archive could not be indexed.
    The first range starts where the TOC ends, so the archive's start (header and TOC) is a frame of its own.
    """

    def __init__(self, min_bytes=RANGE_MIN):
        self.scanner = ArchiveScanner()
        self.min_bytes = min_bytes
        self.ranges = []  # [archive offset, compressed offset], filled by the writer through ``started``
        self._seen = 0

    def split(self, piece):
        """Offsets within ``piece`` (which follows everything split before) where a frame must start; None: hold it."""
        starts = self.scanner.feed(piece)
        if self.scanner.reading_toc:
            return None
        base, self._seen = self._seen, self.scanner.offset
        cuts = []
        last = self.ranges[-1][0] if self.ranges else None
        for start in starts:
            if last is None or start - last >= self.min_bytes:
                cuts.append(start - base)
                last = start
        return cuts

    def started(self, archive_offset, compressed_offset):
        """The writer began a new frame at these offsets."""
        self.ranges.append([archive_offset, compressed_offset])

    def index(self, archive_bytes, stream_bytes):
        """The ``data_ranges`` document, or None (and why, logged by the caller through :attr:`problem`)."""
        self.scanner.finish()
        if self.scanner.problem is None and not self.ranges:
            self.scanner.problem = "it holds no table data"
        if self.problem is not None:
            return None
        ids = [[] for _range in self.ranges]
        which = 0
        for offset, dump_id in self.scanner.blocks:
            while which + 1 < len(self.ranges) and self.ranges[which + 1][0] <= offset:
                which += 1
            ids[which].append(dump_id)
        return {"version": INDEX_VERSION, "archive_bytes": archive_bytes, "stream_bytes": stream_bytes,
                "ranges": [[start, packed, dump_ids] for (start, packed), dump_ids in zip(self.ranges, ids)]}

    @property
    def problem(self):
        """Why this archive has no index (None: it has one, or will)."""
        if self.scanner.problem is not None:
            return self.scanner.problem
        if self.ranges and self.ranges[0][0] != self.scanner.toc_end:
            return "its first range does not start where the table of contents ends"
        return None


def check_index(index):
    """Whether ``index`` is a well-formed ``data_ranges`` document (types, order, bounds); the metadata's check."""
    if not isinstance(index, dict) or set(index) != {"version", "archive_bytes", "stream_bytes", "ranges"}:
        return False
    if index["version"] != INDEX_VERSION:
        return False
    counts = (index["archive_bytes"], index["stream_bytes"])
    if not all(isinstance(value, int) and not isinstance(value, bool) and value > 0 for value in counts):
        return False
    ranges = index["ranges"]
    if not isinstance(ranges, list) or not ranges:
        return False
    previous = (0, 0)
    for item in ranges:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[2], list) and item[2]):
            return False
        start, packed, dump_ids = item
        if not all(isinstance(value, int) and not isinstance(value, bool) for value in [start, packed] + dump_ids):
            return False
        if not (previous[0] < start < index["archive_bytes"] and previous[1] < packed < index["stream_bytes"]):
            return False
        if any(value <= 0 for value in dump_ids):
            return False
        previous = (start, packed)
    return True
