"""Event-camera recordings on disk -> events in memory, whole or piece by piece: the reader
interface, the registry of formats, and the two ways of reading through it (`read_events` for a
whole file, `EventStream` for one that may still be growing).

The formats themselves live in `eventformer.events.formats`, one module each; they import this
module, never the reverse, and ``eventformer.events.formats`` registers them all, in detection
order, when ``eventformer.events`` is imported. Kept here besides the interface (`EventReader`,
`Decoder`, `Leftover`, `IncrementalSource`, `Recording`, `EventFileError`): what several formats
share (`events_from_fields` and the field checks, user-facing file errors) and `write_npy`.

Every format sits behind the same small interface (`EventReader`) and is found through a registry,
so new formats slot in without touching callers. A format with a header is recognised from the
file's first bytes, whatever its extension: recordings get renamed, and datasets reuse ``.bin``,
``.raw`` and ``.aedat`` for unrelated layouts. A headerless format (bs2 / N-MNIST ``.bin``: bare
5-byte records, no magic number) cannot be told from junk by its bytes, so it is accepted only by
its extension (``.bs2``, ``.bin``), and only after every format with a magic number has declined
the file; anything else is "unknown event file format". An empty file (0 bytes) is an error for
every reader, since it holds neither a header nor events; a file that decodes to no events (a
header and nothing after it) is read with a "no events" warning. ``format="bs2"`` forces a reader
by name where the extension is wrong.

Every format decodes INCREMENTALLY: ``reader.decoder()`` returns a stateful `Decoder` that is fed
bytes in pieces of any size and returns the events of every complete record so far, holding back a
record (or header, or compressed packet) cut in half until the rest arrives. Whole-file reading
(`read_events`) is that decoder fed a few MB at a time, and `EventStream` is the same decoder fed
from a file that may still be growing (a camera writing it), so one decoding path serves both and
memory stays bounded by the chunk size plus the result. Formats that are not byte streams (HDF5,
whose library reads the file itself) instead provide ``reader.open_incremental(path)``, an
`IncrementalSource` that `EventStream` reads in place of a decoder.

Every user mistake (missing file, unknown or corrupt format, bad fields) surfaces as one
`EventFileError` whose message is a single sentence naming the file and the problem, so a command
line front end can print it as is. Oddities that do not stop a read (a torn last record, timestamps
going backwards, coordinates outside the sensor, no events at all) become one warning sentence
each on the `Recording`: the data is kept, and the caller decides.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, ClassVar, Self

import numpy as np

from eventformer.errors import EventformerError
from eventformer.events.sensors import KnownSensor, check_sensor_size

__all__ = [
    "EVENT_DTYPE",
    "CHUNK_BYTES",
    "EventFileError",
    "Recording",
    "EventReader",
    "Decoder",
    "Leftover",
    "IncrementalSource",
    "EventStream",
    "register_reader",
    "registered_readers",
    "detect_reader",
    "read_events",
    "write_npy",
    "events_from_fields",
    "empty_file_error",
    "NO_EVENTS_WARNING",
]

#: One event: timestamp in microseconds, pixel column, pixel row, polarity (1 = ON, 0 = OFF).
EVENT_DTYPE = np.dtype([("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")])

#: How many leading bytes a reader gets to recognise its format.
HEAD_BYTES = 4096

#: Bytes read from disk per step of a whole-file read: large enough that per-call overhead
#: vanishes, small enough that the raw bytes never dominate memory.
CHUNK_BYTES = 4 << 20

_EVENT_FIELDS = ("t", "x", "y", "p")
_NO_EVENTS = np.empty(0, dtype=EVENT_DTYPE)


class EventFileError(EventformerError):
    """A recording could not be read; the message is one sentence naming the file and the
    problem."""


def open_for_writing(path, opener):
    """``opener(path)`` for a new event file, its failures one sentence naming the file."""
    try:
        return opener(path)
    except FileNotFoundError:
        raise EventFileError(f"{path}: cannot be written (its folder does not exist)") from None
    except IsADirectoryError:
        raise EventFileError(f"{path}: is a directory, not an event file") from None
    except OSError as exc:
        raise EventFileError(f"{path}: cannot be written ({_first_line(exc)})") from None


def no_events() -> np.ndarray:
    """A fresh empty `EVENT_DTYPE` array (callers may keep it; it shares nothing)."""
    return _NO_EVENTS.copy()


@dataclass
class Recording:
    """The events of one file, as stored (not re-sorted), plus what the reader noticed on the way.

    ``sensor_size`` is ``(width, height)`` when the format records it and ``None`` when it has no
    header (bs2, npy): callers must then be told the size, or assume one and say so
    (`eventformer.events.sensors.assume_sensor`), since the largest coordinate seen is only a
    lower bound. ``sensor_hint`` is a sensor the header names only indirectly (a Prophesee
    ``plugin_name``), with the words saying where: a better guess than the coordinates, still a
    guess. ``warnings`` holds one sentence per oddity that did not stop the read (for example
    timestamps that go backwards, or a torn last record). ``complete`` is False when only the
    start of the file was read (`read_events`'s ``until_us``).
    """

    path: str
    format: str
    events: np.ndarray
    sensor_size: tuple[int, int] | None = None
    warnings: list[str] = field(default_factory=list)
    sensor_hint: tuple[KnownSensor, str] | None = None
    complete: bool = True

    @property
    def duration_us(self) -> int:
        """Time spanned by the events in microseconds; 0 for fewer than two events."""
        if len(self.events) < 2:
            return 0
        t = self.events["t"]
        return int(t.max() - t.min())

    def __len__(self) -> int:
        return len(self.events)


# --------------------------------------------------------------------------------------------------
# Incremental decoding
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leftover:
    """How a decoded stream ended, returned by `Decoder.finish`.

    ``events`` holds events only a finished stream can yield (formats such as zip archives that
    cannot be decoded before their end); for every streaming format it is empty. ``torn_bytes``
    counts the bytes of an incomplete last record that were held back and never decoded, and
    ``header_complete`` is False when the stream ended inside its header.
    """

    events: np.ndarray
    decoded: int
    torn_bytes: int
    header_complete: bool

    @property
    def message(self) -> str | None:
        """One warning sentence about the end of the stream, or None when it ended cleanly."""
        if not self.header_complete:
            return f"the stream ended inside its header ({self.torn_bytes} bytes of header)"
        if self.torn_bytes:
            total = self.decoded + len(self.events)
            return (f"read {total} events; the last {self.torn_bytes} "
                    f"byte{'s' if self.torn_bytes != 1 else ''} are an incomplete record")
        return None


class Decoder(ABC):
    """Stateful decoder of one format: bytes in, in pieces of any size; events out.

    ``feed`` returns the events of every record completed by the bytes fed so far; a record cut at
    the end of a piece is held back until the rest arrives, so feeding a stream in any split
    yields exactly the events of one whole feed, none decoded twice or skipped. The header, when
    the format has one, is parsed inside: bytes fed before it is complete produce no events, and
    ``sensor_size`` is set from it when it records one.

    Subclasses implement `_parse_header` (when the format has a header) and `_decode`, and set
    ``_wanted`` to the number of held bytes below which another decoding attempt cannot make
    progress: feeding a stream one byte at a time then costs O(bytes), not O(bytes x record).
    """

    format: ClassVar[str] = "?"
    #: Bytes per record for fixed-size formats; the default `_wanted` after each decode.
    record_bytes: ClassVar[int] = 1
    #: For formats with no magic number (any bytes decode into events): the largest fraction of
    #: successive timestamps that may go backwards before the content is refused as not this
    #: format (see `_judge_plausibility`); None for formats whose header vouches for the content.
    max_backwards_fraction: ClassVar[float | None] = None
    #: Successive-timestamp pairs seen before a growing stream is judged; a finished stream is
    #: judged from `_JUDGE_AT_FINISH` pairs on.
    _JUDGE_AFTER: ClassVar[int] = 1000
    _JUDGE_AT_FINISH: ClassVar[int] = 10

    def __init__(self, name: str = "<stream>") -> None:
        #: Shown in error messages and warnings: the file path, usually.
        self.name = name
        #: ``(width, height)`` when the header records it, else None.
        self.sensor_size: tuple[int, int] | None = None
        #: A sensor the header names only indirectly, and where (see `Recording.sensor_hint`).
        self.sensor_hint: tuple[KnownSensor, str] | None = None
        self.header_complete = False
        #: Stream bytes consumed so far (header and decoded records); decoding resumes here.
        self.offset = 0
        #: Stream bytes fed so far; ``bytes_fed - offset`` are held back, waiting for the rest.
        self.bytes_fed = 0
        #: Events returned so far.
        self.decoded = 0
        self._pending = bytearray()
        self._wanted = 1
        self._finished = False
        self._broken = False
        self._notes: dict[str, None] = {}
        self._last_t: int | None = None
        self._backwards = 0
        self._pairs = 0
        self._outside = 0

    # -- the public protocol ---------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> np.ndarray:
        """Events of every record completed by ``data`` (an `EVENT_DTYPE` array, maybe empty)."""
        if self._finished or self._broken:
            raise ValueError(f"{self.name}: feed() after finish() or after a decoding error")
        if len(data):
            self._pending += data
            self.bytes_fed += len(data)
        if len(self._pending) < self._wanted:
            return no_events()
        return self._advance(final=False)

    def finish(self) -> Leftover:
        """Declare the stream complete and say how it ended (see `Leftover`).

        Formats whose header ends implicitly (at the first non-header byte) close it here, so a
        file that holds only a header reads as an empty stream. Raises `EventFileError` when the
        format can tell the stream is cut short in a way that is not a torn last record.
        """
        if self._broken:
            raise ValueError(f"{self.name}: finish() after a decoding error")
        if not self._finished:
            final = self._advance(final=True) if not self.header_complete else no_events()
            tail = self._final_events()
            self._observe(tail)
            self._judge_plausibility(self._JUDGE_AT_FINISH)
            if len(final):
                tail = np.concatenate([final, tail])
            self._end = Leftover(events=tail, decoded=self.decoded - len(tail),
                                 torn_bytes=len(self._pending),
                                 header_complete=self.header_complete)
            self._finished = True
        return self._end

    @property
    def pending_bytes(self) -> int:
        """Bytes held back: an incomplete header, record or packet waiting for the rest."""
        return len(self._pending)

    @property
    def warnings(self) -> list[str]:
        """One sentence per oddity seen so far (format notes, coordinates outside the sensor,
        timestamps going backwards); the events concerned are kept."""
        found = list(self._notes)
        if self._outside and self.sensor_size is not None:
            width, height = self.sensor_size
            found.append(f"{self._outside} event(s) lie outside the {width}x{height} sensor named "
                         "in the header; they are kept")
        if self._backwards:
            found.append(f"timestamps go backwards {self._backwards} time(s); events are kept in "
                         "stored order")
        return found

    # -- what formats implement ------------------------------------------------------------------

    def _parse_header(self, buf: bytearray, final: bool) -> int | None:
        """Length of the header once ``buf`` holds all of it, else None (more bytes needed).

        ``final`` is True when no more bytes will come, so a header that ends implicitly (at the
        first byte that is not a header line) ends with the stream. Headerless formats: 0.
        """
        return 0

    @abstractmethod
    def _decode(self, buf: memoryview) -> tuple[np.ndarray, int]:
        """Decode the complete records at the start of ``buf``: (events, bytes consumed).

        The returned events must not view ``buf`` (it is released and reused afterwards).
        """

    def _final_events(self) -> np.ndarray:
        """Events only a finished stream can yield (archives); empty for streaming formats."""
        return no_events()

    # -- shared machinery ------------------------------------------------------------------------

    def note(self, message: str) -> None:
        """Add a warning sentence once, however many chunks run into the same oddity."""
        self._notes.setdefault(message, None)

    def _advance(self, final: bool) -> np.ndarray:
        if not self.header_complete:
            size = self._parse_header(self._pending, final)
            if size is None:
                self._wanted = max(self._wanted, len(self._pending) + 1)
                return no_events()
            self._consume(size)
            self.header_complete = True
            if self.sensor_size is not None:  # a corrupt header must not reach the transforms
                self.sensor_size = check_sensor_size(self.sensor_size, f"{self.name}: its header",
                                                     EventFileError)
            self._wanted = self.record_bytes
            if len(self._pending) < self._wanted:
                return no_events()
        view = memoryview(self._pending)
        try:
            events, used = self._decode(view)
        except BaseException:
            self._broken = True  # the traceback may still view the held bytes; this decoder is done
            raise
        view.release()
        self._consume(used)
        self._observe(events)
        self.decoded += len(events)
        return events

    def _consume(self, size: int) -> None:
        del self._pending[:size]
        self.offset += size

    def _observe(self, events: np.ndarray) -> None:
        """Count (never fix) timestamps going backwards and coordinates outside the sensor,
        across chunk boundaries, so warnings do not depend on how the stream was split."""
        if not len(events):
            return
        t = events["t"]
        if self._last_t is not None:
            self._pairs += 1
            if t[0] < self._last_t:
                self._backwards += 1
        self._pairs += len(t) - 1
        self._backwards += int(np.count_nonzero(t[1:] < t[:-1]))
        self._last_t = int(t[-1])
        self._judge_plausibility(self._JUDGE_AFTER)
        if self.sensor_size is not None:
            width, height = self.sensor_size
            self._outside += int(np.count_nonzero((events["x"] >= width) | (events["y"] >= height)))


    def _judge_plausibility(self, min_pairs: int) -> None:
        """Refuse headerless content that is not events, once ``min_pairs`` timestamps are seen.

        A camera's clock only runs forward: in a real recording a timestamp goes backwards only
        where two streams were merged or the clock wrapped (none in the bs2 and N-MNIST files
        of ../shared/data/events), while in bytes that are not records of this format every
        other one does (random 23-bit timestamps: half). A threshold far from both ends
        (`max_backwards_fraction`, 10% for bs2) tells them apart without tuning."""
        limit = self.max_backwards_fraction
        if limit is None or self._pairs < min_pairs or self._backwards <= limit * self._pairs:
            return
        self._broken = True
        share = self._backwards / self._pairs
        raise EventFileError(
            f"{self.name}: does not look like {self.format} events: timestamps go backwards at "
            f"{share:.0%} of {self._pairs + 1} successive events, where a camera's clock runs "
            f"forward (a headerless file is refused above {limit:.0%})")


class IncrementalSource(ABC):
    """Incremental reading of one file for formats that are not byte streams (HDF5).

    `EventStream` uses it in place of a `Decoder` for readers whose ``open_incremental`` returns
    one: ``read`` returns the events the file gained since the previous call (none while it is not
    readable yet, e.g. locked by a writer still setting it up), and over all calls exactly the
    file's events. ``offset`` is a progress counter in the source's own unit (events, for HDF5)
    that grows whenever ``read`` consumed something; ``total`` is where it would stand once the
    file is read to its current end, when known.
    """

    #: Progress so far, in the source's unit; unchanged by a read that found nothing new.
    offset: int = 0
    #: ``(width, height)`` when the file records it, else None.
    sensor_size: tuple[int, int] | None = None

    @property
    def total(self) -> int | None:
        """The ``offset`` reached by reading everything the file holds now, when known."""
        return None

    @property
    @abstractmethod
    def warnings(self) -> list[str]:
        """One sentence per oddity seen so far (as `Decoder.warnings`)."""

    @abstractmethod
    def read(self, max_bytes: int = CHUNK_BYTES) -> np.ndarray:
        """Events appended since the previous call, about ``max_bytes`` of them at most."""

    @abstractmethod
    def finish(self) -> Leftover:
        """The file is complete: say how it ended, then release it."""

    @abstractmethod
    def close(self) -> None:
        """Release the file (idempotent)."""


# --------------------------------------------------------------------------------------------------
# The reader interface and registry
# --------------------------------------------------------------------------------------------------


class EventReader(ABC):
    """One on-disk format.

    ``sniff`` looks only at the first `HEAD_BYTES` bytes (fewer for short files) and the file size,
    so detection is cheap; for a format with a magic number it never depends on the extension.
    A headerless (fallback) reader is consulted only for files whose name ends in one of its
    ``extensions``; its ``sniff`` then merely rules out content that is plainly something else.
    ``decoder`` returns a fresh incremental `Decoder`; ``read`` decodes a whole file through it, a
    chunk at a time, and raises `EventFileError` for anything wrong with it.
    """

    name: ClassVar[str]
    #: File name endings (lower case, with the dot) the format is known by. Informative for formats
    #: with a magic number; for a headerless (fallback) format the only way it is recognised.
    extensions: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def sniff(self, head: bytes, size: int) -> bool:
        """True when the file starting with ``head`` (total ``size`` bytes) is in this format
        (for a fallback reader: may be, given that the file carries one of its extensions)."""

    def decoder(self, name: str = "<stream>") -> Decoder:
        """A fresh incremental decoder; ``name`` (the file path) appears in its messages."""
        raise EventFileError(f"{name}: the {self.name} reader cannot decode incrementally")

    def open_incremental(self, path: str | os.PathLike[str]) -> IncrementalSource | None:
        """For formats that cannot be decoded from bytes fed in pieces (HDF5): an
        `IncrementalSource` reading ``path`` in place, used by `EventStream` instead of
        ``decoder``. None (the default) for byte-stream formats."""
        return None

    def read(self, path: str | os.PathLike[str]) -> Recording:
        """Decode the file into a `Recording`."""
        return decode_file(self, path)


_readers: list[EventReader] = []
_fallback_readers: list[EventReader] = []


def register_reader(reader: EventReader, *, fallback: bool = False) -> None:
    """Add a reader. Fallback readers (headerless formats) are consulted only after every reader
    that recognises a magic number has declined, so a format with a signature always wins, and
    only for files named with one of their ``extensions``: bytes alone never select them."""
    if fallback and not reader.extensions:
        raise ValueError(f"the fallback reader {reader.name!r} needs extensions to be recognised "
                         "by")
    if any(r.name == reader.name for r in (*_readers, *_fallback_readers)):
        raise ValueError(f"an event reader named {reader.name!r} is already registered")
    (_fallback_readers if fallback else _readers).append(reader)


def registered_readers() -> tuple[EventReader, ...]:
    """All readers in the order they are consulted."""
    return (*_readers, *_fallback_readers)


def _reader_by_name(name: str, path: str) -> EventReader:
    for reader in registered_readers():
        if reader.name == name:
            return reader
    known = ", ".join(r.name for r in registered_readers())
    raise EventFileError(f"{path}: cannot force unknown event format {name!r} (known formats: "
                         f"{known})")


def empty_file_error(shown: str) -> EventFileError:
    """The one sentence for a 0-byte file, whatever reader was asked to read it."""
    return EventFileError(f"{shown}: empty file: no header and no events")


#: The warning of a recording that was read without error but holds no events.
NO_EVENTS_WARNING = "no events: nothing in the recording decodes to an event"


def _extension(shown: str) -> str:
    return os.path.splitext(shown)[1].lower()


def _reader_for_head(head: bytes, size: int, shown: str) -> EventReader:
    """The reader for a file whose first bytes are ``head`` (of ``size``) and whose name is
    ``shown``: a format with a magic number from the bytes alone, else a headerless format from
    the extension, else one sentence saying why none fits."""
    if size == 0 and not head:
        raise empty_file_error(shown)
    for reader in _readers:
        if reader.sniff(head, size):
            return reader
    extension = _extension(shown)
    for reader in _fallback_readers:
        if extension and extension in reader.extensions:
            if reader.sniff(head, size):
                return reader
            raise EventFileError(f"{shown}: named like a headerless {reader.name} recording "
                                 f"({extension}), but {_describe_head(head)}: the text header of "
                                 f"an unsupported format, not {reader.name} events")
    by_bytes = ", ".join(r.name for r in _readers)
    by_name = ", ".join(f"{r.name} by the extension {' or '.join(r.extensions)}"
                        for r in _fallback_readers)
    raise EventFileError(f"{shown}: unknown event file format ({_describe_head(head)}; known: "
                         f"{by_bytes} by their first bytes, {by_name})")


def detect_reader(path: str | os.PathLike[str]) -> EventReader:
    """The reader for a complete file: judged from its header bytes, or for a headerless format
    from its extension (see `_reader_for_head`). An empty file is an `EventFileError`."""
    head, size = _read_head(path)
    return _reader_for_head(head, size, os.fspath(path))


def read_events(path: str | os.PathLike[str], format: str | None = None, *,
                until_us: int | None = None) -> Recording:
    """Read a recording, detecting its format from its first bytes (a headerless bs2 / N-MNIST
    recording from its ``.bs2`` / ``.bin`` extension).

    ``format`` forces a reader by name (e.g. ``"bs2"``): for a headerless recording with another
    extension, or whose first event happens to spell another format's magic number. An empty
    file is an error; a recording without events reads as an empty one with a warning.

    ``until_us`` reads only the start of the recording (see `read_start`): memory then holds
    the events of ``until_us`` microseconds, however large the file.
    """
    if until_us is not None:
        return read_start(path, until_us, format)
    shown = os.fspath(path)
    if format is None:
        reader = detect_reader(path)
    else:
        _, size = _read_head(path)  # same checks and messages for missing files and directories
        if size == 0:
            raise empty_file_error(shown)
        reader = _reader_by_name(format, shown)
    recording = reader.read(path)
    if not len(recording.events) and NO_EVENTS_WARNING not in recording.warnings:
        recording.warnings.append(NO_EVENTS_WARNING)
    return recording


def decode_file(reader: EventReader, path: str | os.PathLike[str],
                chunk_bytes: int = CHUNK_BYTES) -> Recording:
    """Whole-file read through ``reader``'s incremental decoder, `CHUNK_BYTES` at a time.

    A torn last record is not an error: the events before it are returned and a warning says how
    many bytes were left over (a recording cut by a crash or a full disk is still worth reading).
    A stream that ends inside its header is an error: it holds no events and no valid header; so
    is an empty file.
    """
    shown = os.fspath(path)
    _check_regular_file(path)
    decoder = reader.decoder(shown)
    parts: list[np.ndarray] = []
    try:
        with open(path, "rb") as f:
            while chunk := f.read(chunk_bytes):
                events = decoder.feed(chunk)
                if len(events):
                    parts.append(events)
    except OSError as exc:
        raise _open_problem(path, exc) from None
    if decoder.bytes_fed == 0:
        raise empty_file_error(shown)
    end = decoder.finish()
    _check_header_complete(end, reader.name, shown)
    if len(end.events):
        parts.append(end.events)
    events = np.concatenate(parts) if len(parts) > 1 else (parts[0] if parts else no_events())
    warnings = decoder.warnings
    if end.message:
        warnings.append(end.message)
    return Recording(path=shown, format=reader.name, events=events, sensor_size=decoder.sensor_size,
                     warnings=warnings, sensor_hint=decoder.sensor_hint)


def read_start(path: str | os.PathLike[str], until_us: int, format: str | None = None, *,
               chunk_bytes: int | None = None) -> Recording:
    """The events of a recording from its first one up to, not including, the first event at or
    after ``t0 + until_us`` (t0: the first event's time), decoded a chunk at a time; reading stops
    there, so memory holds about ``until_us`` of events and one chunk whatever the file's size.

    On a recording in time order these are exactly the events of ``[t0, t0 + until_us)``
    (`eventformer.events.framing.clip_events` of the whole file). ``complete`` on the result
    says whether the file was read to its end (then torn-record warnings are known too).
    ``chunk_bytes`` defaults to `CHUNK_BYTES`, looked up at call time.
    """
    if until_us <= 0:
        raise ValueError(f"until_us must be positive, got {until_us}")
    shown = os.fspath(path)
    parts: list[np.ndarray] = []
    complete = True
    with EventStream(path, format=format) as stream:
        end_us: int | None = None
        while True:
            before = stream.offset
            events = stream.read(chunk_bytes or CHUNK_BYTES)
            if len(events):
                if end_us is None:
                    end_us = int(events["t"][0]) + int(until_us)
                past = np.flatnonzero(events["t"] >= end_us)
                if len(past):
                    parts.append(events[:past[0]].copy())  # not a view pinning the whole chunk
                    complete = False
                    break
                parts.append(events)
            if stream.offset == before:
                break
        if complete:
            end = stream.finish()
            _check_header_complete(end, stream.format or "?", shown)
            if len(end.events):
                parts.append(end.events)
        warnings = list(stream.warnings)
        if complete and stream.leftover is not None and stream.leftover.message:
            warnings.append(stream.leftover.message)
        hint = stream.decoder.sensor_hint if stream.decoder is not None else None
        recording = Recording(path=shown, format=stream.format or "?",
                              events=np.concatenate(parts) if parts else no_events(),
                              sensor_size=stream.sensor_size, warnings=warnings,
                              sensor_hint=hint, complete=complete)
    return recording


def _check_header_complete(end: Leftover, format_name: str, shown: str) -> None:
    if not end.header_complete:
        raise EventFileError(f"{shown}: truncated inside its {format_name} header "
                             f"({end.torn_bytes} bytes and no end of header)")


# --------------------------------------------------------------------------------------------------
# Streaming a file that may still be growing
# --------------------------------------------------------------------------------------------------


def _ready_to_sniff(head: bytes, size: int) -> bool:
    """Enough of a (possibly still growing) file to decide its format without guessing.

    Text-headed formats are recognised by their first line, so wait for it; a file that does not
    start like a text header needs only its magic number (8 bytes cover npy and zip).
    """
    if size >= HEAD_BYTES:
        return True
    if head[:1] == b"%":
        # Prophesee headers may open with '% Date ...'; the line that names the encoding
        # ('% evt 3.0', '% format EVT3') can come later, so wait for the header's end:
        # '% end', or the first line that does not start with '%' (the binary data).
        return _prophesee_header_done(head)
    if head[:1] == b"#":
        return b"\n" in head[:256] or size >= 256
    return size >= 8


def _prophesee_header_done(head: bytes) -> bool:
    start = 0
    while True:
        newline = head.find(b"\n", start)
        if newline < 0:
            return False
        line = head[start:newline].rstrip(b"\r")
        if line.strip().lower() == b"% end":
            return True
        if newline + 1 < len(head) and head[newline + 1:newline + 2] != b"%":
            return True
        start = newline + 1


class EventStream:
    """The events of one file, read piece by piece from where the last read stopped.

    Made for files that are still being written (a camera recording to disk): ``read`` decodes
    what was appended since the previous call, holding back a record cut at the current end of the
    file until the writer completes it, so over all calls it returns exactly the file's events.
    ``finish`` declares the file complete and reports a torn last record, if any. The format is
    detected from the first bytes once enough of them exist (see `_ready_to_sniff`; a headerless
    format from the file's extension); until then ``read`` returns no events. Formats that are not
    byte streams (HDF5) are read through their reader's `IncrementalSource` instead of a decoder;
    ``offset`` then follows the source's progress counter (events, for HDF5) rather than file bytes.

    An empty file is only an error when the read is final (``finish``, or ``chunks()`` to the
    end): a file that is about to be written may well be empty when it is first opened.
    `chunks` is the loop every whole-file consumer uses (``read_available``, conversion).
    """

    def __init__(self, path: str | os.PathLike[str], format: str | None = None) -> None:
        self.path = os.fspath(path)
        _check_regular_file(path)
        try:
            self._file: BinaryIO | None = open(path, "rb")  # noqa: SIM115  (kept open across reads)
        except OSError as exc:
            raise _open_problem(path, exc) from None
        self._reader: EventReader | None = None
        self.decoder: Decoder | None = None
        self._source: IncrementalSource | None = None
        #: File bytes read so far (the source's progress for non-byte formats); reads resume here.
        self.offset = 0
        #: Events returned so far (by ``read`` and ``finish``'s leftover).
        self.events_read = 0
        #: How the file ended, once ``finish`` (or ``chunks()`` to the end) has run.
        self.leftover: Leftover | None = None
        self._finished = False
        if format is not None:
            try:
                self._start(_reader_by_name(format, self.path))
            except BaseException:
                self.close()
                raise

    @property
    def format(self) -> str | None:
        """The format's name, once detected."""
        return self._reader.name if self._reader else None

    @property
    def sensor_size(self) -> tuple[int, int] | None:
        if self._source is not None:
            return self._source.sensor_size
        return self.decoder.sensor_size if self.decoder else None

    @property
    def warnings(self) -> list[str]:
        """One sentence per oddity so far; once finished, also `NO_EVENTS_WARNING` if no event
        came."""
        if self._source is not None:
            found = self._source.warnings
        else:
            found = self.decoder.warnings if self.decoder else []
        if self._finished and self.events_read == 0:
            found = [*found, NO_EVENTS_WARNING]
        return found

    @property
    def total(self) -> int | None:
        """The ``offset`` that reading everything the file holds now would reach, when known:
        the file's size for byte formats (for progress bars)."""
        if self._source is not None:
            return self._source.total
        if self._file is None:
            return None
        try:
            return os.fstat(self._file.fileno()).st_size
        except OSError:
            return None

    def read(self, max_bytes: int = CHUNK_BYTES) -> np.ndarray:
        """Events completed by up to ``max_bytes`` more bytes of the file (maybe none yet)."""
        if self._file is None:
            raise ValueError(f"{self.path}: read() on a closed EventStream")
        if self._reader is None and not self._detect():
            return no_events()
        if self._source is not None:
            events = self._source.read(max_bytes)
            self.offset = self._source.offset
        else:
            assert self.decoder is not None
            try:
                self._file.seek(self.offset)
                data = self._file.read(max_bytes)
            except OSError as exc:
                raise _open_problem(self.path, exc) from None
            self.offset += len(data)
            events = self.decoder.feed(data)
        self.events_read += len(events)
        return events

    def chunks(self, chunk_bytes: int = CHUNK_BYTES, *, final: bool = True) -> Iterator[np.ndarray]:
        """The events of everything the file holds now, one non-empty array per read of up to
        ``chunk_bytes`` (memory: one chunk at a time).

        With ``final`` (a finished file) the stream is then finished: its leftover events come
        last, ``leftover`` holds the `Leftover` (whose ``message`` tells of a torn last record),
        and an empty file or one cut inside its header is an `EventFileError`. Without ``final``
        the stream stays open for the file to grow.
        """
        while True:
            before = self.offset
            events = self.read(chunk_bytes)
            if len(events):
                yield events
            if self.offset == before:
                break
        if final:
            end = self.finish()
            _check_header_complete(end, self.format or "?", self.path)
            if len(end.events):
                yield end.events

    def read_available(self, chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
        """Events of everything the file holds now (reads until its current end)."""
        parts = list(self.chunks(chunk_bytes, final=False))
        return np.concatenate(parts) if len(parts) > 1 else (parts[0] if parts else no_events())

    def finish(self) -> Leftover:
        """The file is complete: say how it ended (its `Leftover`), then close it.

        An empty file is an `EventFileError` here (and only here: while a file may still grow,
        empty just means nothing was written yet)."""
        if self._finished:
            assert self.leftover is not None
            return self.leftover
        try:
            if self._file is not None and self._size() == 0:
                raise empty_file_error(self.path)
            if self._reader is None:
                self._detect(final=True)
            if self._source is not None:
                end = self._source.finish()
            else:
                assert self.decoder is not None
                end = self.decoder.finish()
        finally:
            self.close()
        self.events_read += len(end.events)
        self.leftover = end
        self._finished = True
        return end

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _size(self) -> int:
        assert self._file is not None
        try:
            return os.fstat(self._file.fileno()).st_size
        except OSError as exc:
            raise _open_problem(self.path, exc) from None

    def _detect(self, final: bool = False) -> bool:
        assert self._file is not None
        try:
            size = os.fstat(self._file.fileno()).st_size
            self._file.seek(0)
            head = self._file.read(HEAD_BYTES)
        except OSError as exc:
            raise _open_problem(self.path, exc) from None
        if not final and not _ready_to_sniff(head, size):
            return False
        # final and empty: the empty-file error
        self._start(_reader_for_head(head, size, self.path))
        return True

    def _start(self, reader: EventReader) -> None:
        """Read through ``reader``: its `IncrementalSource` when it has one, else its decoder."""
        self._source = reader.open_incremental(self.path)
        if self._source is None:
            self.decoder = reader.decoder(self.path)
        self._reader = reader


# --------------------------------------------------------------------------------------------------
# File access with user-facing errors
# --------------------------------------------------------------------------------------------------


def _open_problem(path: str | os.PathLike[str], exc: OSError) -> EventFileError:
    shown = os.fspath(path)
    if isinstance(exc, FileNotFoundError):
        return EventFileError(f"{shown}: no such file")
    if isinstance(exc, IsADirectoryError) or os.path.isdir(path):
        return EventFileError(f"{shown}: is a directory, not an event file")
    if isinstance(exc, PermissionError):
        return EventFileError(f"{shown}: cannot be read (permission denied)")
    return EventFileError(f"{shown}: cannot be read ({exc.strerror or exc})")


def _check_regular_file(path: str | os.PathLike[str]) -> None:
    """Refuse directories and special files (FIFOs, devices) before opening: reading those would
    fail obscurely or never end."""
    shown = os.fspath(path)
    if os.path.isdir(path):
        raise EventFileError(f"{shown}: is a directory, not an event file")
    if os.path.exists(path) and not os.path.isfile(path):
        raise EventFileError(f"{shown}: is not a regular file")


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, to quote inside a one-sentence error."""
    text = str(exc).strip().splitlines()
    return text[0].rstrip(".") if text else type(exc).__name__


def _read_head(path: str | os.PathLike[str]) -> tuple[bytes, int]:
    """First `HEAD_BYTES` bytes and the size of a regular file."""
    _check_regular_file(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(HEAD_BYTES)
    except OSError as exc:
        raise _open_problem(path, exc) from None
    return head, size


def _describe_head(head: bytes) -> str:
    if not head:
        return "the file is empty"
    first_line = head.split(b"\n", 1)[0][:40].rstrip(b"\r")
    if _is_printable_ascii(first_line):
        return f"it starts with the text line {first_line.decode('ascii')!r}"
    return f"it starts with the bytes {head[:8].hex(' ')}"


def _is_printable_ascii(data: bytes) -> bool:
    return all(0x20 <= b < 0x7F or b == 0x09 for b in data)


# --------------------------------------------------------------------------------------------------
# Normalising arrays from any source into EVENT_DTYPE
# --------------------------------------------------------------------------------------------------


def _check_integer_field(name: str, values: np.ndarray, path: str) -> None:
    if values.dtype.kind not in "iub":
        raise EventFileError(
            f"{path}: field {name!r} has dtype {values.dtype}, but events need integer (or bool) "
            "fields")


def _check_range(name: str, values: np.ndarray, low: int, high: int, path: str) -> None:
    if values.size == 0:
        return
    vmin, vmax = int(values.min()), int(values.max())
    if vmin < low or vmax > high:
        bad = vmin if vmin < low else vmax
        raise EventFileError(f"{path}: field {name!r} holds {bad}, outside the allowed range "
                             f"{low}..{high}")


def _polarity_to_on_off(p: np.ndarray, path: str, warnings: list[str],
                        seen: set[int] | None = None) -> np.ndarray:
    """Polarity as 0 (OFF) / 1 (ON); -1 is accepted as OFF since several datasets store it so.

    ``seen`` carries the polarity values met in earlier chunks of the same stream, so a file that
    mixes -1 and 0 is refused however it is split.
    """
    if p.dtype.kind == "b" or p.size == 0:
        return p.astype(np.uint8)
    values = np.unique(p)
    if not np.isin(values, (-1, 0, 1)).all():
        bad = int(values[~np.isin(values, (-1, 0, 1))][0])
        raise EventFileError(f"{path}: field 'p' holds {bad}, but polarity must be 0/1 (or -1/1)")
    if seen is None:
        seen = set()
    seen.update(int(v) for v in values)
    if -1 in seen:
        if 0 in seen:
            raise EventFileError(f"{path}: field 'p' mixes -1, 0 and 1, so OFF events are "
                                 "ambiguous")
        if (values == -1).any():
            warnings.append("polarity -1 was read as OFF (0)")
    return (p > 0).astype(np.uint8)


def events_from_fields(t: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray,
                       path: str, warnings: list[str], *,
                       seen_polarity: set[int] | None = None) -> np.ndarray:
    """Validate four parallel 1-D arrays and pack them into `EVENT_DTYPE`.

    Negative or oversized coordinates are refused here, once, so every reader and every framer
    downstream can rely on them; non-integer fields are refused rather than silently truncated.
    """
    columns = {"t": np.asarray(t), "x": np.asarray(x), "y": np.asarray(y), "p": np.asarray(p)}
    lengths = {name: col.shape for name, col in columns.items()}
    if any(col.ndim != 1 for col in columns.values()) or len({s for s in lengths.values()}) != 1:
        raise EventFileError(f"{path}: fields t, x, y, p must be 1-D arrays of one length, got "
                             "shapes " + ", ".join(f"{k}={v}" for k, v in lengths.items()))
    for name, col in columns.items():
        _check_integer_field(name, col, path)
    _check_range("x", columns["x"], 0, np.iinfo(np.int16).max, path)
    _check_range("y", columns["y"], 0, np.iinfo(np.int16).max, path)
    if columns["t"].dtype == np.uint64:
        _check_range("t", columns["t"], 0, np.iinfo(np.int64).max, path)
    events = np.empty(len(columns["t"]), dtype=EVENT_DTYPE)
    events["t"] = columns["t"]
    events["x"] = columns["x"]
    events["y"] = columns["y"]
    events["p"] = _polarity_to_on_off(columns["p"], path, warnings, seen_polarity)
    return events


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def write_npy(path: str | os.PathLike[str], events: np.ndarray) -> None:
    """Save events as an `EVENT_DTYPE` .npy file (the format ``read_events`` reads back exactly).

    Writes through an open file handle so numpy does not append ``.npy`` to the name.
    """
    events = np.asarray(events)
    if events.dtype != EVENT_DTYPE:
        if events.dtype.names is None or any(f not in events.dtype.names for f in _EVENT_FIELDS):
            raise ValueError("write_npy needs a structured array with fields t, x, y, p, got "
                             f"dtype {events.dtype}")
        converted = np.empty(events.shape, dtype=EVENT_DTYPE)
        for name in _EVENT_FIELDS:
            converted[name] = events[name]
        events = converted
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(events.reshape(-1)), allow_pickle=False)


