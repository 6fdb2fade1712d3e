"""`policy list`, `state list` and `dump` without filters: lines made straight from the
dump's bytes, streamed, without an event loop.

The general way to print an entry is to decode it into its record
(:mod:`xfrmwatch.netlink.decode`) and render that (msgspec for JSON, the table's row in
:mod:`xfrmwatch.output.tables`): about 10 us an entry, most of it spent building records
that are printed once and dropped.  The entries of a real table are much alike (the same
selector shape, lifetimes, flags, templates) around a few fields of their own: addresses,
index and priority, SPI, reqid, sequence number, the current lifetime.  So the entries of
one *shape* (an entry's bytes but those fields) share a %-template: the general rendering
of one of them, made with sentinels in place of its own fields, the text around the
sentinels kept.  Each later entry of that shape is its template filled with its fields,
read with :mod:`struct` from the bytes; its current lifetime is rendered once per distinct
32 bytes.

And the entries of a dump datagram (some 100-160 of them) mostly come in runs of one
shape and one length: a :class:`Batch` checks a whole run at once (the run's bytes as one
integer, masked to the shape's bytes, header included, compared with the shape repeated),
reads the own fields of all its entries with one struct, and writes them with one ``%``
of the template repeated (as bytes); where the run breaks, the entry that breaks it goes
the per-entry way and the next run starts after it.  About 1 us an entry in all, against
10 for the general way and 2.5 for the per-entry templates.

The output is exactly the general way's, by construction and by check: a template is made
on a shape's second sighting (a table of all-different entries costs what the general way
costs, nothing more), and only kept if it reproduces that entry's general rendering; any
other message (malformed, short, another type, a policy with long attributes) goes the
general way.  An SA's keys (in its algorithm attributes) are left out of its shape, as its
own fields are, but never read: no key byte is ever part of a cache key, a template or a
batch (the algorithm's name, key length and ICV or truncation length are part of the
shape).  Every cache is bounded, and output leaves a
datagram's lines at a time (some 100 KiB): memory stays flat for any size of table.
"""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

import msgspec

from . import events as ev
from .errors import KernelError
from .netlink import xfrm as x
from .netlink.decode import Decoder, MalformedError, addr, current_from, iter_attrs, sel_addrs
from .netlink.framing import (
    NLM_F_DUMP_INTR,
    NLM_F_MULTI,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HDR,
)
from .netlink.request import DUMP_SEQ, DUMPS, kernel_error, scan_reply
from .output.tables import SEP, StreamTable, policy_row, policy_table, sa_row, sa_table

__all__ = ["Batch", "Dumps", "Lines", "PolicyLines", "SaLines", "dump", "policy_list", "state_list"]

#: starts every sentinel: the decoder never yields it in a string of its own (C strings end
#: at NUL), and a template whose sentinels do not each appear exactly once is not kept
_S = "\x00"
_JS = "\\u0000"  # the same, as msgspec writes it in JSON
#: output is written once a datagram's lines are through and there are this many pieces or
#: characters of batches (a write of some 100 KiB, a buffer the allocator reuses: one of
#: 1 MiB or more is fresh memory each time, its pages faulted in, which costs more than the
#: write)
_FLUSH = 1 << 12
_FLUSH_CHARS = 1 << 16
_SHAPES_MAX = 4096  # templates (and shapes seen once) kept at most
_CACHE_MAX = 16384  # rendered current lifetimes, and IPv4 addresses, kept at most
#: where the key starts in each key-carrying attribute (its header and fixed part before it:
#: name, key length in bits, and the ICV or truncation length): the key is never part of a
#: shape (nor read: a batch's mask skips it)
_KEY_AT = {
    x.XFRMA_ALG_AEAD: 4 + x.layout_size(x.ALGO_AEAD),
    x.XFRMA_ALG_CRYPT: 4 + x.layout_size(x.ALGO),
    x.XFRMA_ALG_AUTH: 4 + x.layout_size(x.ALGO),
    x.XFRMA_ALG_AUTH_TRUNC: 4 + x.layout_size(x.ALGO_AUTH),
}
_ERR = struct.Struct("=i")
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_ZERO12 = bytes(12)
_ntop = socket.inet_ntop
_ntohl = socket.ntohl
_AF4 = socket.AF_INET

# field offsets in xfrm_userpolicy_info and xfrm_usersa_info (the layouts of netlink/xfrm.py)
_SEL_FAMILY = x.field_offset(x.SELECTOR, "family")
_S_FAMILY = x.field_offset(x.USERSA_INFO, "family")
_POLICY_SIZE = x.MSG_MIN_SIZE[x.XFRM_MSG_NEWPOLICY]
_P_AT = {n: 16 + x.field_offset(x.USERPOLICY_INFO, n) for n in ("sel_daddr", "sel_saddr", "cur_bytes", "priority", "index")}
_S_AT = {
    n: 16 + x.field_offset(x.USERSA_INFO, n)
    for n in ("sel_daddr", "sel_saddr", "id_daddr", "id_be_spi", "saddr", "cur_bytes", "seq", "reqid")
}
_SA_SIZE = x.MSG_MIN_SIZE[x.XFRM_MSG_NEWSA]
#: policies whose attributes are longer than this go the general way (a template per
#: attribute chain: the chains of real policies are a ptype, a mark, a few templates)
_PATTR_MAX = 160


def _own_fields(
    fields: x.Fields, own: tuple[str, ...], after: int = 0, skips: tuple[tuple[int, int], ...] = ()
) -> str:
    """A struct format reading a layout but the fields named ``own`` (skipped), and the
    ``after`` bytes that follow it (the attributes) but the ``skips`` (offset in them,
    size): the bytes of an entry's shape, one ``bytes`` per run of fields not its own."""
    fmt = "="
    run = 0
    for name, f in fields:
        size = struct.calcsize("=" + f)
        if name in own:
            fmt += f"{run}s" if run else ""
            fmt += f"{size}x"
            run = 0
        else:
            run += size
    at = 0
    for o, size in skips:  # (offset in the attributes, size): own fields there (a template's)
        run += o - at
        fmt += (f"{run}s" if run else "") + f"{size}x"
        run, at = 0, o + size
    run += after - at
    return fmt + (f"{run}s" if run else "")


_CUR = ("cur_bytes", "cur_packets", "cur_add_time", "cur_use_time")
#: a policy's own fields; its shape is the rest: the selector but its addresses, the
#: lifetimes, direction, action, flags, share, and the attributes
_POLICY_OWN_FIELDS = ("sel_daddr", "sel_saddr", *_CUR, "priority", "index")
#: an SA's own fields; its shape is the rest: the selector but its addresses, the protocol,
#: lifetimes, statistics, family, mode, replay window, flags, and the attributes
_SA_OWN_FIELDS = ("sel_daddr", "sel_saddr", "id_daddr", "id_be_spi", "saddr", *_CUR, "seq", "reqid")


def _picking(fields: x.Fields, picks: tuple[tuple[str, str], ...]) -> struct.Struct:
    """A struct reading, of a layout, only what ``picks`` names: (field, format) in layout
    order, a format ``Ns`` taking N bytes from that field on; the rest skipped."""
    fmt, at = "=", 0
    for name, f in picks:
        off = x.field_offset(fields, name)
        assert off >= at, name
        fmt += (f"{off - at}x" if off > at else "") + f
        at = off + struct.calcsize("=" + f)
    return struct.Struct(fmt)


#: a policy's own fields: selector destination and source, current lifetime, priority, index
_POLICY_OWN = _picking(
    x.USERPOLICY_INFO, (("sel_daddr", "16s"), ("sel_saddr", "16s"), ("cur_bytes", "32s"), ("priority", "I"), ("index", "I"))
)
#: an SA's: selector destination and source, destination, SPI, source, current lifetime, seq, reqid
_SA_OWN = _picking(
    x.USERSA_INFO,
    (
        ("sel_daddr", "16s"), ("sel_saddr", "16s"), ("id_daddr", "16s"), ("id_be_spi", "I"), ("saddr", "16s"),
        ("cur_bytes", "32s"), ("seq", "I"), ("reqid", "I"),
    ),
)  # fmt: skip


def _split(text: str, marks: Iterable[tuple[str, str]]) -> list[str] | None:
    """``text`` cut at its marks, which must each appear exactly once and in the given
    order: the pieces between them.  A mark's conversion (``before%safter``) adds to the
    pieces around its hole.  None if the marks are not so."""
    pieces = []
    last = 0
    for mark, conv in marks:
        at = text.find(mark, last)
        if at < 0 or text.count(mark) != 1:
            return None
        before, after = conv.split("%s")
        pieces.append(text[last:at] + before)
        text = text[: at + len(mark)] + after + text[at + len(mark) :]
        last = at + len(mark)
    pieces.append(text[last:])
    return pieces


def _percent(text: str, marks: Iterable[str]) -> str | None:
    """``text`` as a %-format whose holes are its marks (as :func:`_split` wants them)."""
    pieces = _split(text, ((m, "%s") for m in marks))
    return None if pieces is None else "%s".join(p.replace("%", "%%") for p in pieces)


def _esc(text: str) -> str:
    return text.replace("%", "%%")


#: an IPv4 address's place in a batch's format (an "a" column): its 4 bytes read as
#: ``B``s, written by _V4_FMT, or as one text where the address is the same all along the
#: batch (the gateway's own address, a peer's: four numbers fewer to write an entry).
#: (Looking up texts of addresses, or of their halves, costs a fresh process more than it
#: saves: measured.)  NUL: never in a template's text (see _S)
_V4 = "\x00A"
_V4B = _V4.encode()
_V4_FMT = b"%d.%d.%d.%d"
#: a hole of a batch's format (or an escaped %)
_HOLE = re.compile(rb"%%|%-?[0-9]*[sdx]|\x00A")
_RUNS_MAX = 128  # structs and masks of batches (per shape and run length) kept at most
_FORMATS_MAX = 16  # formats of batches (per run length and texts written in) per shape (each some 100 KiB)
_WINDOW = 8  # entries checked at once after a run broke (doubled at each run that holds)
_PERIOD_MAX = 4  # shapes at most in a period written at once (see Lines._periods)
_BACKOFF_MAX = 16  # entries at most not checked for a run after runs of one (doubled at each)

#: what a batch's own field is read as, and how many values that gives
_PICK_VALUES = {"4B": 4, "16s": 1, "32s": 1, "I": 1}

#: one column of a batch's values: ("v", i) the i-th value read of each entry; ("a", i)
#: the four from there, an IPv4 address (_V4); ("x", i) that value in network byte order
#: (an SPI); ("f", i, get, make) that value's rendering (``get`` a cache's
#: lookup, or None; ``make`` on a miss; a rendering is bytes); ("s", format, [column, ...])
#: a format filled with those columns of each entry (a cell padded as a whole)
Column = tuple[Any, ...]


class Batch:
    """A run of entries of one shape, written at once: the entries of a dump datagram
    follow one another with the same stride, so a run of them is checked in one
    comparison (the datagram's bytes as an integer, masked to the shape's bytes: header,
    fixed part but the own fields, attributes, padding) and read with one struct
    (``own`` repeated), and written with one ``%`` (``fmt`` repeated).  An entry whose
    bytes differ anywhere but its own fields ends the run: it goes the per-entry way.

    ``picks``: (offset in the message, struct format) of each own field, in layout order;
    ``columns``: what fills each hole of ``fmt``, in its order (see :data:`Column`)."""

    __slots__ = ("columns", "fmt", "holes", "mask", "own", "per", "runs", "shape", "stride")

    def __init__(self, entry: bytes, picks: list[tuple[int, str]], fmt: str, columns: list[Column]) -> None:
        self.stride = len(entry)
        own, at = "", 0
        mask = bytearray(b"\xff" * self.stride)
        per = 0
        for o, f in sorted(picks):
            size = struct.calcsize("=" + f)
            own += (f"{o - at}x" if o > at else "") + f
            mask[o : o + size] = bytes(size)
            at = o + size
            per += _PICK_VALUES.get(f, 0)  # (a key: skipped, no value)
        self.own = own + (f"{self.stride - at}x" if self.stride > at else "")
        self.per = per  # values read per entry
        self.mask = bytes(mask)
        self.shape = bytes(a & b for a, b in zip(entry, mask, strict=True))
        self.fmt, self.columns = fmt, columns
        self.holes = _Holes(fmt, columns)
        self.runs: dict[int, tuple[int, int, struct.Struct]] = {}

    @classmethod
    def joined(cls, parts: list[Batch]) -> Batch:
        """The batch of a period of shapes (entries of ``parts``' shapes one after the
        other, as a tunnel's out, in and fwd policies come): its entry is theirs together."""
        b = cls.__new__(cls)
        b.stride = sum(p.stride for p in parts)
        b.own = "".join(p.own for p in parts)  # (each reads its whole stride)
        b.per = sum(p.per for p in parts)
        b.mask = b"".join(p.mask for p in parts)
        b.shape = b"".join(p.shape for p in parts)
        b.fmt = "".join(p.fmt for p in parts)
        b.columns, base = [], 0
        for p in parts:
            b.columns += (_shifted(c, base) for c in p.columns)
            base += p.per
        b.holes = _Holes(b.fmt, b.columns)
        b.runs = {}
        return b

    def run(self, n: int) -> tuple[int, int, struct.Struct]:
        """For a run of ``n``: (mask, shape, as integers; struct)."""
        r = self.runs.get(n)
        if r is None:
            if len(self.runs) >= _RUNS_MAX:
                self.runs.clear()
            r = self.runs[n] = (
                int.from_bytes(self.mask * n, "little"),
                int.from_bytes(self.shape * n, "little"),
                struct.Struct("=" + self.own * n),
            )
        return r

    def matching(self, data: bytes, off: int, n: int) -> int:
        """How many of the ``n`` entries at ``off`` are of this shape (the run's length)."""
        mask, shape, _ = self.run(n)
        end = off + n * self.stride
        masked = int.from_bytes(data if off == 0 and end == len(data) else data[off:end], "little") & mask
        if masked == shape:
            return n
        diff = masked ^ shape
        return ((diff & -diff).bit_length() - 1) // (8 * self.stride)

    def write(self, data: bytes, off: int, n: int, *, inline: bool = True) -> bytes:
        """The lines of the ``n`` entries at ``off`` (checked by :meth:`matching`)."""
        vals = self.run(n)[2].unpack_from(data, off)
        return self.holes.write(vals, self.per, n, inline=inline)


class _Holes:
    """A format (written as bytes: no encoding step, and bytes' % is faster) and the
    columns filling its holes; ``end`` follows each entry's text.  A column whose values
    are the same all along a batch (a priority, a sequence number, a current lifetime,
    the gateway's address) is written into that batch's format as text: a hole less to
    fill for each entry."""

    __slots__ = ("columns", "formats", "pieces", "slots")

    def __init__(self, fmt: str, columns: list[Column], end: str = "") -> None:
        data = (fmt + end).encode()
        self.pieces: list[bytes] = []  # the text before each column's hole, and after the last
        self.slots: list[bytes] = []  # each column's hole
        text, at = b"", 0
        for found in _HOLE.finditer(data):
            hole = found.group()
            text += data[at : found.start()]
            at = found.end()
            if hole == b"%%":
                text += hole
                continue
            self.pieces.append(text)
            self.slots.append(_V4_FMT if hole == _V4B else hole)
            text = b""
        self.pieces.append(text + data[at:])
        if len(self.slots) != len(columns):
            raise ValueError(f"{len(self.slots)} holes for {len(columns)} columns")
        self.columns = [("s", _Holes(c[1], c[2], "\0")) if c[0] == "s" else c for c in columns]
        self.formats: dict[tuple[int, tuple[bytes | None, ...]], bytes] = {}

    def _same(self, col: Column, slot: bytes, vals: tuple[Any, ...], m: int, n: int) -> bytes | None:
        """A column's text, if the same all along the ``n`` entries (else None)."""
        kind, i = col[0], col[1]
        for k in _depends(col):
            c = vals[k::m]
            if c[0] != c[-1] or c.count(c[0]) != n:
                return None
        if kind == "v":
            return slot % int(vals[i])
        if kind == "a":
            return slot % vals[i : i + 4]
        if kind == "x":
            return slot % _ntohl(vals[i])
        if kind == "f":
            text: bytes = (col[2] and col[2](vals[i])) or col[3](vals[i])
            return slot % text
        sub: _Holes = i
        return slot % sub.write(vals[:m], m, 1, inline=False)[:-1]

    def write(self, vals: tuple[Any, ...], m: int, n: int, *, inline: bool = True) -> bytes:
        """The text of ``n`` entries (``vals``: ``m`` values read of each entry)."""
        columns, slots = self.columns, self.slots
        same = tuple(
            self._same(col, slot, vals, m, n) if inline else None for col, slot in zip(columns, slots, strict=True)
        )
        fmt = self.formats.get((n, same))
        if fmt is None:
            one = self.pieces[0] + b"".join(
                (slot if text is None else text.replace(b"%", b"%%")) + piece
                for text, slot, piece in zip(same, slots, self.pieces[1:], strict=True)
            )
            fmt = one * n
            if n > 1:
                if len(self.formats) >= _FORMATS_MAX:
                    self.formats.clear()
                self.formats[(n, same)] = fmt
        h = sum((4 if col[0] == "a" else 1) for col, text in zip(columns, same, strict=True) if text is None)
        if not h:
            return fmt
        args: list[Any] = [None] * (n * h)
        j = 0
        for col, text in zip(columns, same, strict=True):
            if text is not None:
                continue
            kind = col[0]
            if kind == "v":
                args[j::h] = vals[col[1] :: m]
            elif kind == "a":
                i = col[1]
                args[j::h] = vals[i::m]
                args[j + 1 :: h] = vals[i + 1 :: m]
                args[j + 2 :: h] = vals[i + 2 :: m]
                args[j + 3 :: h] = vals[i + 3 :: m]
                j += 3
            elif kind == "x":
                args[j::h] = map(_ntohl, vals[col[1] :: m])
            elif kind == "f":
                get, make = col[2], col[3]
                if get is None:
                    args[j::h] = [make(v) for v in vals[col[1] :: m]]
                else:
                    args[j::h] = [get(v) or make(v) for v in vals[col[1] :: m]]
            else:
                args[j::h] = col[1].write(vals, m, n).split(b"\0")[:n]
            j += 1
        return fmt % tuple(args)


def _shifted(col: Column, base: int) -> Column:
    """A column of an entry's values, reading the values ``base`` further on."""
    if col[0] == "s":
        return ("s", col[1], [_shifted(c, base) for c in col[2]])
    return (col[0], col[1] + base, *col[2:])


def _depends(col: Column) -> list[int]:
    """The values a column is made of (their indices among an entry's values)."""
    kind = col[0]
    if kind == "a":
        return [col[1], col[1] + 1, col[1] + 2, col[1] + 3]
    if kind == "s":
        return [k for c in col[1].columns for k in _depends(c)]
    return [col[1]]


def _v4_at(fam: int, entry: bytes, offs: tuple[int, ...], v4_fams: tuple[int, ...]) -> bool:
    """Whether the addresses at ``offs`` are written as IPv4 from their first 4 bytes
    (the family one of ``v4_fams`` and every address's last 12 bytes zero: part of the shape)."""
    return fam in v4_fams and all(entry[o + 4 : o + 16] == _ZERO12 for o in offs)


def _addr_pick(v4: bool, off: int) -> tuple[int, str]:
    return (off, "4B") if v4 else (off, "16s")


def _indices(picks: dict[str, tuple[int, str]]) -> dict[str, int]:
    """Where each own field's values start among an entry's values (read in layout order)."""
    at, out = 0, {}
    for name, (_, f) in sorted(picks.items(), key=lambda kv: kv[1][0]):
        out[name] = at
        at += _PICK_VALUES.get(f, 0)
    return out


def _addr_hole(v4: bool, i: int, fam: int) -> tuple[str, list[Column]]:
    """An address's hole in a batch format, and its columns (IPv4: its 4 bytes; else its text)."""
    if v4:
        return _V4, [("a", i)]
    return "%s", [("f", i, None, lambda raw: addr(fam, raw).encode())]


def _batch_entry(data: bytes, off: int) -> bytes | None:
    """The bytes of the entry whose body is at ``off``, header included, if a batch can be
    made of its shape: its length a multiple of 4 (the stride), its header a dump reply's."""
    mlen, _, flags, seq, _ = NLMSG_HDR.unpack_from(data, off - 16)
    if mlen % 4 or flags != NLM_F_MULTI or seq != DUMP_SEQ or off - 16 + mlen > len(data):
        return None
    return data[off - 16 : off - 16 + mlen]


def _checked(b: Batch, entry: bytes, line: str) -> Batch | None:
    """``b`` if it writes ``entry`` as ``line`` (the general way's)."""
    want = line.encode()
    ok = b.matching(entry, 0, 1) == 1 and b.write(entry, 0, 1) == want == b.write(entry, 0, 1, inline=False)
    return b if ok else None


class Lines:
    """One kind of entry (policies or SAs) of a dump, rendered from its reply datagrams:
    JSON objects, one a line (``sep="\\n"``) or comma-separated (``sep=","``, `dump`'s
    arrays), or the rows of a :class:`StreamTable`."""

    kind: type[ev.Event]  # the events carrying this kind (PolicyEvent, SaEvent)
    field: str  # their field holding the record
    row: Callable[[Any], list[str]]  # the table's row of a record
    what: str  # the request, for errors
    skipped: str  # what a malformed entry's warning says it was skipped from (as query.py says it)
    msg_type: int  # the dump's replies
    min_size: int  # their fixed part
    noun: str  # the table's count
    layout: x.Fields  # the dump's entries' fixed part
    own: tuple[str, ...]  # the fields of it that are an entry's own (the rest is its shape)

    def __init__(
        self, table: StreamTable | None, out: BinaryIO, log: Callable[[], Any], *, sep: str = "\n"
    ) -> None:
        self.table = table
        self.out = out
        self.log = log  # the logger, configured on first need
        self.before, self.after = ("", "\n") if sep == "\n" else (sep, "")  # around each JSON object
        self.first = True  # no separator before the first object
        self.decoder = Decoder()
        self.enc = msgspec.json.Encoder()
        self.parts: list[str] = []  # pieces of lines (the per-entry way's)
        self.chunks: list[bytes] = []  # output, in order: settled pieces, batches
        self.malformed: list[ev.Malformed] = []
        self.templates: dict[tuple[bytes, ...], Any] = {}
        self.seen: set[tuple[bytes, ...]] = set()
        self.currents: dict[bytes, Any] = {}
        self.json_currents: dict[bytes, bytes] = {}
        self.table_currents: dict[bytes, bytes] = {}
        self.v4: dict[bytes, str] = {}
        self.shapes: dict[int, struct.Struct] = {}  # an entry's shape, by its length
        self.skips: dict[int, tuple[tuple[int, int], ...]] = {}  # own fields in the attributes, by length
        self.size = 0  # bytes waiting in chunks
        self.batched = 0  # entries written in runs (see _batch)
        self.window = 1 << 30  # entries checked at once for a run (see _batch)
        self.skip = 0  # entries not checked for a run (after runs of one: see _batch)
        self.backoff = 0  # and how many after the next run of one
        self.periods: dict[tuple[Batch, ...], Batch | None] = {}  # see _periods

    # --- the walk -----------------------------------------------------------------

    def feed(self, data: bytes) -> bool:
        """Render the entries of one reply datagram; True once the dump is complete.  A
        datagram the kernel ends with an error (or marks interrupted) is not printed (what
        came before it is written, and the error raised)."""
        self._settle()
        mark = len(self.chunks)
        try:
            if self.table is not None and not self.table.fmt:  # the table's widths come from the first rows
                done = self._general_datagram(data)
            else:
                done = self._walk(data)
        except BaseException:
            del self.chunks[mark:]
            self.parts.clear()
            self.malformed.clear()
            self.flush()
            raise
        for e in self.malformed:
            self.log().warning(
                f"{self.skipped}: skipped a malformed entry",
                reason=e.reason,
                msg_type=e.msg_type,
                length=e.length,
            )
        self.malformed.clear()
        if len(self.parts) >= _FLUSH or self.size >= _FLUSH_CHARS:
            self.flush()
        return done

    def _walk(self, data: bytes) -> bool:
        fast = self._entry
        batch = self._batch
        general = self._general_message
        mtype_fast = self.msg_type
        size = self.min_size
        hdr = NLMSG_HDR.unpack_from
        off = 0
        total = len(data)
        done = interrupted = False
        while off < total:
            if total - off < 16:
                return self._general_rest(data, interrupted) or done
            mlen, mtype, flags, seq, pid = hdr(data, off)
            end = off + mlen
            if mlen < 16 or end > total:
                return self._general_rest(data, interrupted) or done
            if flags & NLM_F_DUMP_INTR and seq == DUMP_SEQ:
                interrupted = True
            if mtype == mtype_fast and mlen - 16 >= size:
                k = batch(data, off, mlen, total)
                if k:  # k entries of the same shape and stride (their flags: NLM_F_MULTI only)
                    off += k * mlen
                    continue
                fast(data, off + 16, end)  # (the header is read again on a miss)
            elif mtype >= 16:
                general(data, off + 16, end, mtype, seq, pid)
            elif seq == DUMP_SEQ:
                done = self._control(data, off + 16, end, mtype) or done
            if seq == DUMP_SEQ and not flags & NLM_F_MULTI:
                done = True
            nxt = off + ((mlen + 3) & ~3)
            if nxt > total and end < total:
                return self._general_rest(data, interrupted) or done
            off = nxt
        if interrupted:
            self._interrupted()
        return done

    def _batch(self, data: bytes, off: int, mlen: int, total: int) -> int:
        """The run of entries of one shape at ``off`` (the message's start) written at once
        (:class:`Batch`): how many (0: none, the entry goes the per-entry way).  The entries
        checked at once are the rest of the datagram, or after a broken run a few, doubled
        at each run that holds (a table of mixed shapes costs little more than it did).  A
        run of one goes the per-entry way (a batch of one costs more: the policies of a
        tunnel's three directions interleave in the kernel's dump) unless it starts a run of
        periods of shapes (:meth:`_periods`), and the next 1, 2, 4 ... 16 entries after runs
        of one in a row are not checked (nor written) as runs: a run of 2 found resets that."""
        if self.skip:
            self.skip -= 1
            return 0
        st = self.shapes.get(mlen - 16)
        if st is None:
            return 0
        t = self.templates.get(st.unpack_from(data, off + 16))
        if t is None or t[-1] is None:
            return 0
        b: Batch = t[-1]
        n = min((total - off) // mlen, self.window)
        k = b.matching(data, off, n) if n else 0
        if k < 2:  # a run of one (directions interleaved): the entry costs less on its own
            if k < n:
                k = self._periods(data, off, mlen, total, b, st)
                if k:
                    self.backoff = 0
                    return k
                self.window = 2  # (the next check: 2 entries)
                self.backoff = min(2 * self.backoff or 1, _BACKOFF_MAX)
                self.skip = self.backoff  # (entries not checked: runs of one cost checks)
            return 0
        self.backoff = 0
        self.window = self.window * 2 if k == n else _WINDOW
        text = b.write(data, off, k)
        self._settle()
        self.chunks.append(text)
        self.size += len(text)
        self.batched += k
        if self.table is not None:
            self.table.count += k
        return k

    def _periods(self, data: bytes, off: int, mlen: int, total: int, b: Batch, st: struct.Struct) -> int:
        """Where a run of ``b``'s shape is one entry long: the entries at ``off`` written
        at once if they come in a period of 2 to _PERIOD_MAX shapes of one stride, 2 or more
        periods of them (a gateway's policies: each tunnel's out, in, fwd); how many."""
        parts = [b]
        o = off + mlen
        while True:
            if o + mlen > total or len(parts) > _PERIOD_MAX:
                return 0
            if b.matching(data, o, 1):
                break
            if _U32.unpack_from(data, o)[0] != mlen:
                return 0
            t = self.templates.get(st.unpack_from(data, o + 16))
            if t is None or t[-1] is None:
                return 0
            parts.append(t[-1])
            o += mlen
        key = tuple(parts)
        if key not in self.periods:
            joined = Batch.joined(parts)
            one = b"".join(p.write(data, off + j * mlen, 1, inline=False) for j, p in enumerate(parts))
            try:  # (checked as each part was: written as its parts write it)
                ok = joined.matching(data, off, 1) == 1 and joined.write(data, off, 1, inline=False) == one
            except (TypeError, ValueError):
                ok = False
            if len(self.periods) >= _RUNS_MAX:
                self.periods.clear()
            self.periods[key] = joined if ok else None
        pb = self.periods[key]
        if pb is None:
            return 0
        n = (total - off) // pb.stride
        k = pb.matching(data, off, n) if n >= 2 else 0
        if k < 2:
            return 0
        text = pb.write(data, off, k)
        self._settle()
        self.chunks.append(text)
        self.size += len(text)
        k *= len(parts)
        self.batched += k
        if self.table is not None:
            self.table.count += k
        return k

    def _interrupted(self) -> None:
        raise KernelError(f"{self.what}: the kernel's table changed during the dump; run it again")

    def _control(self, data: bytes, off: int, end: int, mtype: int) -> bool:
        """NLMSG_DONE ends the dump; NLMSG_ERROR with a code is the kernel's refusal."""
        if mtype == NLMSG_ERROR:
            code = _ERR.unpack_from(data, off)[0] if end - off >= _ERR.size else -5
            if code:
                raise kernel_error(-code, self.what)
            return True
        return mtype == NLMSG_DONE

    def _shape(
        self, data: bytes, off: int, end: int, skips: tuple[tuple[int, int], ...] = ()
    ) -> tuple[bytes, ...] | None:
        """An entry's shape: the bytes of its fixed part but its own fields, and its
        attributes but the own fields there (``skips``: see :func:`_own_fields`).  One
        struct per length: None (no shape) for an entry whose own fields are elsewhere
        than those of the first entry of its length (another chain of attributes)."""
        n = end - off
        st = self.shapes.get(n)
        if st is None:
            st = self.shapes[n] = struct.Struct(_own_fields(self.layout, self.own, n - self.min_size, skips))
            self.skips[n] = skips
        elif self.skips[n] != skips:
            return None
        return st.unpack_from(data, off)

    def _v4(self, raw: bytes) -> str | None:
        """The text of a 16-byte address in IPv4 form (its last 12 bytes zero; else None),
        remembered by its bytes while there is room (the same peers recur)."""
        if raw[4:] != _ZERO12:
            return None
        text = _ntop(_AF4, raw[:4])
        if len(self.v4) < _CACHE_MAX:
            self.v4[raw] = text
        return text

    def _sel_texts(self, fam: int, saddr: bytes, daddr: bytes) -> tuple[str, str]:
        """A selector's addresses as the decoder writes them (:func:`sel_addrs`)."""
        if fam == _AF4 or fam == 0:
            src = self.v4.get(saddr) or self._v4(saddr)
            dst = self.v4.get(daddr) or self._v4(daddr)
            if src is not None and dst is not None:
                return src, dst
        return sel_addrs(fam, saddr, daddr)

    def _addr(self, fam: int, raw: bytes) -> str:
        """An address as the decoder writes it (:func:`addr`)."""
        if fam == _AF4:
            return self.v4.get(raw) or self._v4(raw) or _ntop(_AF4, raw[:4])
        return addr(fam, raw)

    # --- the general way ------------------------------------------------------------

    def _general_datagram(self, data: bytes) -> bool:
        """A whole datagram the general way (the table's first rows)."""
        done, interrupted = scan_reply(data, DUMP_SEQ, self.what)
        if interrupted:
            self._interrupted()
        rows = []
        for e in self.decoder.decode(data, 0.0, 0.0):
            if isinstance(e, ev.Malformed):
                self._malformed(e)
            elif isinstance(e, self.kind):
                rows.append(self.row(self.record_of(e)))
        assert self.table is not None
        self.flush()
        self.table.rows(rows)
        return done

    def _general_rest(self, data: bytes, interrupted: bool) -> bool:
        """A framing error: what the general decoder says of it (the entries before it are out)."""
        if interrupted:
            self._interrupted()
        for e in self.decoder.decode(data, 0.0, 0.0):
            if isinstance(e, ev.Malformed) and e.msg_type == 0:
                self._malformed(e)
        return False

    def _record(self, data: bytes, off: int, end: int, mtype: int, seq: int, pid: int) -> Any:
        e = self.decoder.decode_message(mtype, seq, pid, data, off, end, 0.0, "")
        if isinstance(e, ev.Malformed):
            self._malformed(e)
            return None
        return self.record_of(e) if isinstance(e, self.kind) else None

    def _general_message(self, data: bytes, off: int, end: int, mtype: int, seq: int, pid: int) -> None:
        record = self._record(data, off, end, mtype, seq, pid)
        if record is not None:
            self._put(self._render(record))

    def _render(self, record: Any) -> str:
        """The general way: the JSON object (with its separator), or the table's line."""
        if self.table is None:
            return self.before + self.enc.encode(record).decode() + self.after
        return self.table.line(self.row(record))

    def _put(self, line: str) -> None:
        self.parts.append(line)
        if self.table is not None:
            self.table.count += 1

    def _malformed(self, e: ev.Malformed) -> None:
        self.malformed.append(e)  # said once the datagram is through (none of it is printed on an error)

    def _shape_missed(self, data: bytes, off: int, end: int, key: tuple[bytes, ...] | None) -> None:
        """An entry of a shape without a template (its body at ``off``): the general way,
        and a template on the shape's second sighting."""
        _, mtype, _, seq, pid = NLMSG_HDR.unpack_from(data, off - 16)
        record = self._record(data, off, end, mtype, seq, pid)
        if record is None:
            return
        line = self._render(record)
        self._put(line)
        if key is None:
            return
        if key in self.seen:
            self.seen.discard(key)
            if len(self.templates) >= _SHAPES_MAX:
                self.templates.clear()
                self.periods.clear()  # (their batches were the templates')
            self.templates[key] = self.template(record, data, off, line)
        else:
            if len(self.seen) >= _SHAPES_MAX:
                self.seen.clear()
            self.seen.add(key)

    def _current(self, raw: bytes) -> Any:
        """The rendering of one current lifetime (xfrm_lifetime_cur), remembered by its bytes:
        its JSON object, or the table's (bytes, packets, added) cells."""
        cur = self.currents.get(raw)
        if cur is None:
            c = current_from(raw)
            cur = (
                self.enc.encode(c).decode() if self.table is None else (c.bytes, c.packets, c.add_time or "-")
            )
            if len(self.currents) >= _CACHE_MAX:
                self.currents.clear()
            self.currents[raw] = cur
        return cur

    def _json_current(self, raw: bytes) -> bytes:
        """:meth:`_current`'s JSON object, as bytes (a batch's)."""
        text: bytes = self._current(raw).encode()
        if len(self.json_currents) >= _CACHE_MAX:
            self.json_currents.clear()
        self.json_currents[raw] = text
        return text

    def _json_pieces(self, probe: Any, marks: Iterable[tuple[str, str]]) -> list[str] | None:
        """The JSON object of ``probe`` (a record with sentinels in its own fields), cut at them."""
        pieces = _split(self.enc.encode(probe).decode(), marks)
        if pieces is not None:
            pieces[0] = self.before + pieces[0]
            pieces[-1] += self.after
        return pieces

    # --- output ---------------------------------------------------------------------

    def _settle(self) -> None:
        """The pieces of lines so far, as one chunk of output (before a batch's)."""
        if self.parts:
            text = "".join(self.parts).encode()
            self.parts = []
            self.chunks.append(text)
            self.size += len(text)

    def flush(self) -> None:
        self._settle()
        if not self.chunks:
            return
        data = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = []
        self.size = 0
        if self.first:
            self.first = False
            data = data[len(self.before) :]
        self.out.write(data)

    def close(self) -> None:
        """The last lines (and the table's count)."""
        self.flush()
        if self.table is not None:
            self.table.close(self.noun)

    # --- per kind -----------------------------------------------------------------------

    def record_of(self, e: Any) -> Any:
        return getattr(e, self.field)

    def template(self, record: Any, data: bytes, off: int, line: str) -> Any:
        """The template of ``record``'s shape, made and checked (None: this shape goes the general way)."""
        raise NotImplementedError

    def _entry(self, data: bytes, off: int, end: int) -> None:
        raise NotImplementedError


#: a policy template's (xfrm_user_tmpl's) own fields: its destination (id.daddr), and its
#: source and reqid (one run of 20 bytes); its family tells how its addresses are written
_T_DADDR = x.field_offset(x.USER_TMPL, "id_daddr")
_T_SADDR = x.field_offset(x.USER_TMPL, "saddr")
_T_REQID = x.field_offset(x.USER_TMPL, "reqid")
_T_FAMILY = x.field_offset(x.USER_TMPL, "family")
_TMPL_SIZE = x.layout_size(x.USER_TMPL)
assert _T_REQID == _T_SADDR + 16


def _attr_chain(data: bytes, a: int, end: int) -> list[tuple[int, int, int]] | None:
    """The attributes from ``a`` to ``end``: (offset from ``a``, length, type) of each;
    None if the chain is broken (the general way says how)."""
    try:
        chain = [(o - 4 - a, n + 4, atype) for atype, o, n in iter_attrs(data, a, end)]
    except MalformedError:
        return None
    # (iter_attrs lets the last attribute's padding run past the end; an entry's shape does not)
    last = chain[-1][0] + ((chain[-1][1] + 3) & ~3) if chain else 0
    return chain if a + last == end else None


def _tmpls(data: bytes, a: int, end: int) -> tuple[int, ...] | None:
    """Where a policy's templates are (offsets from its attributes' start, ``a``): each
    xfrm_user_tmpl of its XFRMA_TMPL attributes.  None if the chain is broken."""
    chain = _attr_chain(data, a, end)
    if chain is None:
        return None
    return tuple(
        t
        for o, alen, atype in chain
        if atype == x.XFRMA_TMPL and (alen - 4) % _TMPL_SIZE == 0
        for t in range(o + 4, o + alen, _TMPL_SIZE)
    )


def _tmpl_struct(at: list[int]) -> struct.Struct:
    """A struct reading, of a policy's body, each template's (at ``at``) destination,
    source and reqid."""
    fmt, pos = "=", 0
    for a in at:
        fmt += f"{a + _T_DADDR - pos}x16s{_T_SADDR - _T_DADDR - 16}x16sI"
        pos = a + _T_REQID + 4
    return struct.Struct(fmt)


def _sel_probe(sel: ev.Selector, src: str, dst: str) -> ev.Selector | None:
    """The selector with sentinels in place of its addresses (which it must start with)."""
    if not (sel.src.startswith(src) and sel.dst.startswith(dst)):
        return None
    return msgspec.structs.replace(
        sel, src=_S + "s" + sel.src[len(src) :], dst=_S + "d" + sel.dst[len(dst) :]
    )


class PolicyLines(Lines):
    """Policies: an entry's own fields are its selector's addresses, index, priority and
    current lifetime, and its templates' addresses and reqids; the rest is its shape (a
    template's protocol, SPI, family, mode, share, optional flag and algorithms included)."""

    kind = ev.PolicyEvent
    field = "policy"
    row = staticmethod(policy_row)
    what = DUMPS["policy"][1]
    skipped = "policy dump"
    msg_type = x.XFRM_MSG_NEWPOLICY
    min_size = _POLICY_SIZE
    noun = "policies"
    layout = x.USERPOLICY_INFO
    own = _POLICY_OWN_FIELDS

    def _entry(self, data: bytes, off: int, end: int) -> None:
        # the hot path, spelled out (each call saved is some 5 % of the time)
        st = self.shapes.get(end - off)
        t = self.templates.get(st.unpack_from(data, off)) if st is not None else None
        if t is None:
            self._missed(data, off, end)
            return
        fam, sel_fmt, pieces, tm, _ = t
        daddr, saddr, cur, prio, index = _POLICY_OWN.unpack_from(data, off)
        if fam == _AF4 or fam == 0:
            v4 = self.v4
            src = v4.get(saddr) or self._v4(saddr)
            dst = v4.get(daddr) or self._v4(daddr)
            if src is None or dst is None:
                src, dst = sel_addrs(fam, saddr, daddr)
        else:
            src, dst = sel_addrs(fam, saddr, daddr)
        if sel_fmt is None:
            cur = self.currents.get(cur) or self._current(cur)
            if tm is None:
                c0, c1, c2, c3, c4, c5 = pieces
                self.parts += (c0, str(index), c1, str(prio), c2, src, c3, dst, c4, cur, c5)
                return
            parts = self.parts
            parts += (pieces[0], str(index), pieces[1], str(prio), pieces[2], src, pieces[3], dst, pieces[4], cur)
            for piece, text in zip(pieces[5:], self._tmpl_texts(tm, data, off), strict=False):
                parts += (piece, text)
            parts.append(pieces[-1])
        else:
            if tm is None:
                self.parts.append(pieces % (sel_fmt % (src, dst), prio, index))
            else:
                tmpl = tm[2] % tuple(self._tmpl_texts(tm, data, off))
                self.parts.append(pieces % (sel_fmt % (src, dst), prio, index, tmpl))
            self.table.count += 1  # type: ignore[union-attr]

    def _tmpl_texts(self, tm: tuple[struct.Struct, tuple[int, ...], Any], data: bytes, off: int) -> list[str]:
        """The own fields of an entry's templates as text: source, destination, reqid of each."""
        st, fams = tm[0], tm[1]
        vals = st.unpack_from(data, off)
        out: list[str] = []
        for j, tfam in enumerate(fams):
            d, s, r = vals[3 * j : 3 * j + 3]
            out += (self._addr(tfam, s), self._addr(tfam, d), str(r))
        return out

    def _missed(self, data: bytes, off: int, end: int) -> None:
        key = None
        if end - off <= _POLICY_SIZE + _PATTR_MAX:
            tmpls = _tmpls(data, off + _POLICY_SIZE, end)
            if tmpls is not None:
                skips = tuple(s for t in tmpls for s in ((t + _T_DADDR, 16), (t + _T_SADDR, 20)))
                key = self._shape(data, off, end, skips)
        self._shape_missed(data, off, end, key)

    def template(self, record: Any, data: bytes, off: int, line: str) -> Any:
        pol: ev.Policy = record
        fam = _U16.unpack_from(data, off + _SEL_FAMILY)[0]
        daddr, saddr, cur, prio, index = _POLICY_OWN.unpack_from(data, off)
        src, dst = self._sel_texts(fam, saddr, daddr)
        sel = _sel_probe(pol.sel, src, dst)
        if sel is None:
            return None
        mlen = NLMSG_HDR.unpack_from(data, off - 16)[0]
        toffs = _tmpls(data, off + _POLICY_SIZE, off - 16 + mlen) or ()
        if len(toffs) != len(pol.tmpl):
            return None
        tm: Any = None
        texts: list[str] = []
        tmpl = pol.tmpl
        if toffs:  # the templates' own fields (offsets from the entry's body)
            at = [_POLICY_SIZE + t for t in toffs]
            fams = tuple(_U16.unpack_from(data, off + a + _T_FAMILY)[0] for a in at)
            tm = (_tmpl_struct(at), fams, None)
            texts = self._tmpl_texts(tm, data, off)
            tmpl = [
                msgspec.structs.replace(t, src=f"{_S}t{j}s", dst=f"{_S}t{j}d", reqid=f"{_S}t{j}r")
                for j, t in enumerate(pol.tmpl)
            ]
        if self.table is None:
            probe = msgspec.structs.replace(
                pol, index=_S + "i", priority=_S + "p", sel=sel, current=_S + "c", tmpl=tmpl
            )
            t_marks = [
                m for j in range(len(toffs)) for m in ((f"{_JS}t{j}s", "%s"), (f"{_JS}t{j}d", "%s"), (f'"{_JS}t{j}r"', "%s"))
            ]
            pieces = self._json_pieces(
                probe,
                (
                    (f'"{_JS}i"', "%s"),
                    (f'"{_JS}p"', "%s"),
                    (f"{_JS}s", "%s"),
                    (f"{_JS}d", "%s"),
                    (f'"{_JS}c"', "%s"),
                    *t_marks,
                ),
            )
            if pieces is None:
                return None
            own = (str(index), str(prio), src, dst, self._current(cur), *texts)
            if "".join(p + v for p, v in zip(pieces, (*own, ""), strict=True)) != line:
                return None
            return fam, None, pieces, tm, self._policy_batch(data, off, fam, pieces, None, line, toffs, None)
        assert self.table is not None
        cells = self.row(msgspec.structs.replace(pol, index=_S + "i", priority=_S + "p", sel=sel, tmpl=tmpl))
        sel_fmt = _percent(cells[0], (f"{_S}s", f"{_S}d"))
        tmpl_pieces = None
        if tm is not None:
            marks = [(f"{_S}t{j}{k}", "%s") for j in range(len(toffs)) for k in "sdr"]
            tmpl_pieces = _split(cells[7], marks)
            if tmpl_pieces is None:
                return None
            tm = (tm[0], tm[1], "%s".join(_esc(p) for p in tmpl_pieces))
        if (
            sel_fmt is None
            or cells[3] != _S + "p"
            or cells[4] != _S + "i"
            or _S in "".join(cells[1:3] + cells[5:7] + ([] if tm else cells[7:]))
        ):
            return None
        constant = [None, *cells[1:3], None, None, *cells[5:7], None if tm else cells[7]]
        fmt = self.table.template(constant)
        tmpl_text = () if tm is None else (tm[2] % tuple(texts),)
        if fmt % (sel_fmt % (src, dst), prio, index, *tmpl_text) != line:
            return None
        sel_pieces = _split(cells[0], ((f"{_S}s", "%s"), (f"{_S}d", "%s")))
        ints = self.table.template(constant, ints=(3, 4))  # (bytes' %s takes no int)
        batch = self._policy_batch(data, off, fam, [ints], sel_pieces, line, toffs, tmpl_pieces)
        return fam, sel_fmt, fmt, tm, batch

    def _policy_batch(
        self,
        data: bytes,
        off: int,
        fam: int,
        pieces: list[str],
        sel_pieces: list[str] | None,
        line: str,
        toffs: tuple[int, ...],
        tmpl_pieces: list[str] | None,
    ) -> Batch | None:
        """The :class:`Batch` of a policy's shape (the entry's body at ``off``), checked on
        it: JSON (``pieces`` around index, priority, selector addresses, current lifetime,
        and each template's source, destination and reqid) or a table row (``[fmt]``:
        selector cell, priority, index, templates cell; ``sel_pieces`` around the
        selector's addresses, ``tmpl_pieces`` around the templates' own fields).  The
        templates at ``toffs`` (in the attributes).  None: its entries go one by one."""
        entry = _batch_entry(data, off)
        if entry is None:
            return None
        v4 = _v4_at(fam, entry, (_P_AT["sel_saddr"], _P_AT["sel_daddr"]), (_AF4, 0))
        picks = {
            "dst": _addr_pick(v4, _P_AT["sel_daddr"]),
            "src": _addr_pick(v4, _P_AT["sel_saddr"]),
            "cur": (_P_AT["cur_bytes"], "32s"),
            "prio": (_P_AT["priority"], "I"),
            "index": (_P_AT["index"], "I"),
        }
        t_v4 = []
        for j, t in enumerate(toffs):
            a = 16 + _POLICY_SIZE + t
            tfam = _U16.unpack_from(entry, a + _T_FAMILY)[0]
            t_v4.append((_v4_at(tfam, entry, (a + _T_SADDR, a + _T_DADDR), (_AF4,)), tfam))
            picks[f"t{j}d"] = _addr_pick(t_v4[-1][0], a + _T_DADDR)
            picks[f"t{j}s"] = _addr_pick(t_v4[-1][0], a + _T_SADDR)
            picks[f"t{j}r"] = (a + _T_REQID, "I")
        at = _indices(picks)
        src, src_cols = _addr_hole(v4, at["src"], fam)
        dst, dst_cols = _addr_hole(v4, at["dst"], fam)
        t_holes: list[str] = []  # each template's source, destination, reqid
        t_cols: list[Column] = []
        for j, (tv4, tfam) in enumerate(t_v4):
            ts, ts_cols = _addr_hole(tv4, at[f"t{j}s"], tfam)
            td, td_cols = _addr_hole(tv4, at[f"t{j}d"], tfam)
            t_holes += (ts, td, "%d")
            t_cols += (*ts_cols, *td_cols, ("v", at[f"t{j}r"]))
        if sel_pieces is None:
            p0, p1, p2, p3, p4, p5, *rest = (_esc(p) for p in pieces)
            fmt = f"{p0}%d{p1}%d{p2}{src}{p3}{dst}{p4}%s{p5}" + "".join(h + p for h, p in zip(t_holes, rest, strict=True))
            columns: list[Column] = [
                ("v", at["index"]), ("v", at["prio"]), *src_cols, *dst_cols,
                ("f", at["cur"], self.json_currents.get, self._json_current), *t_cols,
            ]  # fmt: skip
        else:
            if not v4 or not "".join(sel_pieces).isascii():  # (padded as bytes)
                return None
            s0, s1, s2 = (_esc(p) for p in sel_pieces)
            sel = (f"{s0}{src}{s1}{dst}{s2}", [*src_cols, *dst_cols])
            fmt = pieces[0]
            columns = [("s", *sel), ("v", at["prio"]), ("v", at["index"])]
            if tmpl_pieces is not None:  # (the last cell: not padded)
                t0, *rest = (_esc(p) for p in tmpl_pieces)
                columns.append(("s", t0 + "".join(h + p for h, p in zip(t_holes, rest, strict=True)), t_cols))
        return _checked(Batch(entry, list(picks.values()), fmt, columns), entry, line)


class SaLines(Lines):
    """SAs: an entry's own fields are its addresses, SPI, reqid, sequence number, its
    selector's addresses and its current lifetime; the rest, attributes included, is its
    shape, but the keys of its algorithms (left out, never read)."""

    kind = ev.SaEvent
    field = "sa"
    row = staticmethod(sa_row)
    what = DUMPS["state"][1]
    skipped = "state dump"
    msg_type = x.XFRM_MSG_NEWSA
    min_size = _SA_SIZE
    noun = "SAs"
    layout = x.USERSA_INFO
    own = _SA_OWN_FIELDS

    def _entry(self, data: bytes, off: int, end: int) -> None:
        # the hot path, spelled out (each call saved is some 5 % of the time); an SA's shape
        # leaves its keys out (see _keyless_shape)
        st = self.shapes.get(end - off)
        t = self.templates.get(st.unpack_from(data, off)) if st is not None else None
        if t is None:
            self._missed(data, off, end)
            return
        fam, sel_fam, table, pieces, _ = t
        sel_daddr, sel_saddr, daddr, spi, saddr, cur, seq_, reqid = _SA_OWN.unpack_from(data, off)
        v4 = self.v4
        if fam == _AF4:
            src = v4.get(saddr) or self._addr(fam, saddr)
            dst = v4.get(daddr) or self._addr(fam, daddr)
        else:
            src = addr(fam, saddr)
            dst = addr(fam, daddr)
        cur = self.currents.get(cur) or self._current(cur)
        if table:
            self.parts.append(pieces % (src, dst, f"0x{_ntohl(spi):08x}", reqid, *cur))
            self.table.count += 1  # type: ignore[union-attr]
            return
        if sel_fam == _AF4 or sel_fam == 0:
            sel_src = v4.get(sel_saddr)
            sel_dst = v4.get(sel_daddr)
            if sel_src is None or sel_dst is None:
                sel_src, sel_dst = self._sel_texts(sel_fam, sel_saddr, sel_daddr)
        else:
            sel_src, sel_dst = self._sel_texts(sel_fam, sel_saddr, sel_daddr)
        c0, c1, c2, c3, c4, c5, c6, c7, c8 = pieces
        self.parts += (
            c0, src, c1, dst, c2, f"{_ntohl(spi):08x}", c3, str(reqid), c4, str(seq_), c5, sel_src, c6, sel_dst, c7, cur, c8,
        )  # fmt: skip

    def _missed(self, data: bytes, off: int, end: int) -> None:
        self._shape_missed(data, off, end, self._keyless_shape(data, off, end))

    def _keyless_shape(self, data: bytes, off: int, end: int) -> tuple[bytes, ...] | None:
        """An SA's shape, its keys left out (None if its attributes are broken: no template)."""
        chain = _attr_chain(data, off + _SA_SIZE, end)
        if chain is None:
            return None
        skips = []
        for o, alen, atype in chain:
            key_at = _KEY_AT.get(atype)
            if key_at is not None:
                if alen < key_at:  # (malformed: the general way says so)
                    return None
                if alen > key_at:
                    skips.append((o + key_at, alen - key_at))
        return self._shape(data, off, end, tuple(skips))

    def template(self, record: Any, data: bytes, off: int, line: str) -> Any:
        sa: ev.SA = record
        fam = _U16.unpack_from(data, off + _S_FAMILY)[0]
        sel_daddr, sel_saddr, daddr, spi, saddr, cur_raw, seq, reqid = _SA_OWN.unpack_from(data, off)
        spi = _ntohl(spi)
        src = self._addr(fam, saddr)
        dst = self._addr(fam, daddr)
        if sa.src != src or sa.dst != dst:
            return None
        cur = self._current(cur_raw)
        own = {"src": _S + "a", "dst": _S + "b", "spi": _S + "x", "reqid": _S + "r"}
        if self.table is None:
            sel_fam = _U16.unpack_from(data, off + _SEL_FAMILY)[0]
            sel_src, sel_dst = self._sel_texts(sel_fam, sel_saddr, sel_daddr)
            sel = _sel_probe(sa.sel, sel_src, sel_dst)
            if sel is None:
                return None
            probe = msgspec.structs.replace(sa, **own, seq=_S + "q", sel=sel, current=_S + "c")
            pieces = self._json_pieces(
                probe,
                (
                    (f'"{_JS}a"', '"%s"'), (f'"{_JS}b"', '"%s"'), (f'"{_JS}x"', '"0x%s"'), (f'"{_JS}r"', "%s"),
                    (f'"{_JS}q"', "%s"), (f"{_JS}s", "%s"), (f"{_JS}d", "%s"), (f'"{_JS}c"', "%s"),
                ),
            )  # fmt: skip
            if pieces is None:
                return None
            values = (src, dst, f"{spi:08x}", str(reqid), str(seq), sel_src, sel_dst, cur, "")
            if "".join(p + v for p, v in zip(pieces, values, strict=True)) != line:
                return None
            return fam, sel_fam, False, pieces, self._sa_batch(data, off, fam, sel_fam, pieces, None, line)
        assert self.table is not None
        cur_probe = ev.Current(bytes=_S + "B", packets=_S + "P", add_time=_S + "A", use_time=None)  # type: ignore[arg-type]
        cells = self.row(msgspec.structs.replace(sa, **own, current=cur_probe))
        holes = {0: _S + "a", 1: _S + "b", 3: _S + "x", 4: _S + "r", 7: _S + "B", 8: _S + "P", 9: _S + "A"}
        if any(cells[i] != mark for i, mark in holes.items()):
            return None
        if any(_S in c for i, c in enumerate(cells) if i not in holes):
            return None
        fmt = self.table.template([None if i in holes else c for i, c in enumerate(cells)])
        if fmt % (src, dst, f"0x{spi:08x}", reqid, *cur) != line:
            return None
        return fam, 0, True, fmt, self._sa_batch(data, off, fam, 0, [], cells, line)

    def _sa_batch(
        self,
        data: bytes,
        off: int,
        fam: int,
        sel_fam: int,
        pieces: list[str],
        cells: list[str] | None,
        line: str,
    ) -> Batch | None:
        """The :class:`Batch` of an SA's shape (the entry's body at ``off``), checked on it:
        JSON (``pieces`` around source, destination, SPI, reqid, seq, selector addresses,
        current lifetime) or a table row (``cells``: the row with sentinels in the holes)."""
        entry = _batch_entry(data, off)
        if entry is None:
            return None
        v4 = _v4_at(fam, entry, (_S_AT["saddr"], _S_AT["id_daddr"]), (_AF4,))
        sel_v4 = cells is None and _v4_at(sel_fam, entry, (_S_AT["sel_saddr"], _S_AT["sel_daddr"]), (_AF4, 0))
        picks = {
            "sel_dst": _addr_pick(sel_v4, _S_AT["sel_daddr"]),
            "sel_src": _addr_pick(sel_v4, _S_AT["sel_saddr"]),
            "dst": _addr_pick(v4, _S_AT["id_daddr"]),
            "spi": (_S_AT["id_be_spi"], "I"),
            "src": _addr_pick(v4, _S_AT["saddr"]),
            "cur": (_S_AT["cur_bytes"], "32s"),
            "seq": (_S_AT["seq"], "I"),
            "reqid": (_S_AT["reqid"], "I"),
        }
        for j, (o, size) in enumerate(self.skips[len(entry) - 16]):  # keys: masked out, never read
            picks[f"key{j}"] = (16 + _SA_SIZE + o, f"{size}x")
        at = _indices(picks)
        src, src_cols = _addr_hole(v4, at["src"], fam)
        dst, dst_cols = _addr_hole(v4, at["dst"], fam)
        spi = "%08x"
        spi_cols: list[Column] = [("x", at["spi"])]
        if cells is None:
            sel_src, sel_src_cols = _addr_hole(sel_v4, at["sel_src"], sel_fam)
            sel_dst, sel_dst_cols = _addr_hole(sel_v4, at["sel_dst"], sel_fam)
            p0, p1, p2, p3, p4, p5, p6, p7, p8 = (_esc(p) for p in pieces)
            fmt = f"{p0}{src}{p1}{dst}{p2}{spi}{p3}%d{p4}%d{p5}{sel_src}{p6}{sel_dst}{p7}%s{p8}"
            columns: list[Column] = [
                *src_cols, *dst_cols, *spi_cols, ("v", at["reqid"]), ("v", at["seq"]), *sel_src_cols, *sel_dst_cols,
                ("f", at["cur"], self.json_currents.get, self._json_current),
            ]  # fmt: skip
        else:
            assert self.table is not None
            widths = self.table.widths
            if not v4 or widths[3] < 10:
                return None
            cur = self.table_currents
            row = [
                f"%-{widths[0]}s", f"%-{widths[1]}s", _esc(f"{cells[2]:<{widths[2]}}"), "0x" + spi + " " * (widths[3] - 10),
                f"%-{widths[4]}d", *(_esc(f"{c:<{w}}") for c, w in zip(cells[5:7], widths[5:7], strict=True)),
                "%s", _esc(f"{cells[10]:<{widths[10]}}"),
            ]  # fmt: skip
            fmt = SEP.join(row) + "\n"
            columns = [
                ("s", src, src_cols), ("s", dst, dst_cols),
                *spi_cols, ("v", at["reqid"]), ("f", at["cur"], cur.get, self._table_current),
            ]  # fmt: skip
        return _checked(Batch(entry, list(picks.values()), fmt, columns), entry, line)

    def _table_current(self, raw: bytes) -> bytes:
        """A current lifetime's three cells in a table row (bytes, packets, added), padded
        and joined, remembered by its bytes."""
        assert self.table is not None
        w = self.table.widths
        text = SEP.join(f"{c:<{w}}" for c, w in zip(self._current(raw), w[7:10], strict=True)).encode()
        if len(self.table_currents) >= _CACHE_MAX:
            self.table_currents.clear()
        self.table_currents[raw] = text
        return text


#: the reply datagrams of the dump of a kind of entry ("policy" or "state"): one dump at a
#: time (:func:`xfrmwatch.netlink.request.dump_replies` on one socket, or the head start of
#: :mod:`xfrmwatch.prefetch`)
Dumps = Callable[[str], Iterable[bytes]]


def policy_list(
    dumps: Dumps, table: bool, style: bool, out: BinaryIO, log: Callable[[], Any], *, netns: str = ""
) -> int:
    """The SPD, every policy, as JSON lines or a table (``dumps``: the dump's replies, in
    ``netns``; ``style``: a terminal's bold header; ``log``: the logger, on first need)."""
    lines = PolicyLines(policy_table(out, style=style) if table else None, out, log)
    _run(lines, dumps("policy"))
    lines.close()
    out.flush()
    return 0


def state_list(
    dumps: Dumps, table: bool, style: bool, out: BinaryIO, log: Callable[[], Any], *, netns: str = ""
) -> int:
    """The SAD, every SA, as JSON lines or a table."""
    lines = SaLines(sa_table(out, style=style) if table else None, out, log)
    _run(lines, dumps("state"))
    lines.close()
    out.flush()
    return 0


def dump(
    dumps: Dumps, table: bool, style: bool, out: BinaryIO, log: Callable[[], Any], *, netns: str = ""
) -> int:
    """SAs then policies (on one socket: the kernel sizes its replies by what the socket
    read before): two tables, or one JSON object {"netns", "sa": [...], "policy": [...]}."""
    if table:
        state_list(dumps, True, style, out, log)
        return policy_list(dumps, True, style, out, log)
    out.write(b'{"netns":' + msgspec.json.encode(netns) + b',"sa":[')
    sas = SaLines(None, out, log, sep=",")
    _run(sas, dumps("state"))
    sas.flush()
    out.write(b'],"policy":[')
    pols = PolicyLines(None, out, log, sep=",")
    _run(pols, dumps("policy"))
    pols.flush()
    out.write(b"]}\n")
    out.flush()
    return 0


def _run(lines: Lines, replies: Iterable[bytes]) -> None:
    for data in replies:
        if lines.feed(data):
            return
