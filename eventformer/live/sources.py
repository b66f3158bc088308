"""Live event sources for `eventformer.stream.run_stream`: UDP datagrams, a TCP byte stream,
standard input.

Each source reads on a thread of its own, so the socket is emptied while the engine computes a
window (a UDP socket that is not read drops datagrams; a TCP peer that is not read stalls the
camera), decodes as it goes and queues the events with the moment they arrived. ``read`` hands
over everything queued, in arrival order, and remembers when each batch arrived, so a window's
latency can be taken from the arrival of its last event (`arrival_of`).

What the source cannot decode is never fatal and never silent: rejected datagrams and their
records are counted (`counters`) and each kind of fault is said once through ``on_note``. A
refused connection is one sentence (`EventformerError`) unless ``reconnect`` is set, which
retries with back-off (0.5 s, doubling, at most 8 s) and says so; a connection dropped by the
peer ends the stream (the open window is classified) and leaves its sentence in ``failure``. A
reconnected stream starts a new ``epoch``: its timestamps start afresh (a restarted server), so
the stream closes the open window before its first event.
"""

from __future__ import annotations

import collections
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import numpy as np

from eventformer.errors import EventformerError
from eventformer.events import EVENT_DTYPE

from .wire import STREAM_FORMATS, UDP_FORMATS, Batch, datagram_decoder

#: Back-off between reconnection attempts: first wait, factor, longest wait (seconds).
BACKOFF = (0.5, 2.0, 8.0)
#: Bytes of datagrams decoded together (a batch also closes when the socket runs dry).
BATCH_BYTES = 1 << 20
#: A batch is decoded at least this often under a steady flood (seconds), bounding the delay a
#: batch adds to the latency of its first events.
BATCH_SECONDS = 0.002
#: How long a blocked read waits before looking whether it was asked to stop (seconds).
STOP_CHECK_S = 0.25
#: Kernel receive buffer asked for a UDP socket: datagrams that arrive while the reader thread
#: waits for the interpreter wait here (Linux grants at most net.core.rmem_max).
UDP_RCVBUF = 8 << 20

LIVE_SCHEMES = ("udp", "tcp", "dv", "dv+unix")
#: The format a scheme implies (a DV stream says what it is in its header).
SCHEME_FORMATS = {"dv": "dv", "dv+unix": "dv"}


def is_live(name: str) -> bool:
    """Whether a stream argument names a live source (``udp://``, ``tcp://``, ``dv://``,
    ``dv+unix://``, ``-``)."""
    return name == "-" or name.split("://", 1)[0].lower() in LIVE_SCHEMES and "://" in name


def parse_address(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of ``udp://HOST:PORT``, ``tcp://HOST:PORT`` or ``dv://HOST:PORT``;
    for ``dv+unix:///PATH`` (scheme, PATH, 0). Anything else is one sentence."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "dv+unix":
        path = url.split("://", 1)[1]
        if not path.startswith("/") or len(path) < 2:
            raise EventformerError(f"{url}: a DV UNIX socket is dv+unix:///ABSOLUTE/PATH (three "
                                   "slashes: the path after dv+unix://)")
        return scheme, path, 0
    try:
        port = parts.port
    except ValueError:
        port = None
    if scheme not in LIVE_SCHEMES or not parts.hostname or port is None or \
            parts.path not in ("", "/") or parts.query:
        raise EventformerError(f"{url}: a live source is udp://HOST:PORT, tcp://HOST:PORT, "
                               "dv://HOST:PORT, dv+unix:///PATH (or - for standard input)")
    if not (0 if scheme == "udp" else 1) <= port < 65536:  # udp://HOST:0 listens on any port
        raise EventformerError(f"{url}: the port must be between 1 and 65535")
    return scheme, parts.hostname, port


class LiveSource:
    """What the three live sources share: the reader thread's queue, arrival bookkeeping,
    counters, the --record file. Subclasses implement `_run` (the thread's body)."""

    live = True

    def __init__(self, url: str, fmt: str, sensor_size: tuple[int, int] | None = None,
                 on_note: Callable[[str], None] | None = None):
        self.path = url  # the name run_stream and the CLI show
        self.format = fmt
        self.given_sensor_size = sensor_size
        self.on_note = on_note
        self.notes: list[str] = []
        self.failure: str | None = None  # a dropped connection, said after the summary
        self.decoder = None
        self.reconnecting = False
        self.epoch = 0  # of the events the last read returned
        self._epoch_in = 0  # of the connection the reader thread reads now
        self._queue: collections.deque = collections.deque()  # (epoch, events, arrival_s)
        self._queued = 0
        self._lock = threading.Lock()
        self._arrived = threading.Event()
        self._stop = threading.Event()
        self._ended = False
        self._error: EventformerError | None = None
        self._arrivals: collections.deque = collections.deque()  # (end index, arrival_s)
        self._handed = 0
        self._thread: threading.Thread | None = None
        self._recorder = None
        self._record_path: str | None = None
        self._record_failed = self._record_closed = False
        self.recorded = 0
        self.clock_start = time.perf_counter()
        self.stats: dict = {}

    # -- the thread's side -----------------------------------------------------------------------

    def start(self) -> "LiveSource":
        self._thread = threading.Thread(target=self._guarded, name=f"eventformer {self.path}",
                                        daemon=True)
        self._thread.start()
        return self

    def _guarded(self):
        try:
            self._run()
        except EventformerError as exc:
            self._error = exc
        except OSError as exc:  # a socket failing in a way _run does not expect
            self._error = EventformerError(f"{self.path}: {exc.strerror or exc}")
        finally:
            self._ended = True
            self._arrived.set()

    def _run(self) -> None:
        raise NotImplementedError

    def _put(self, events: np.ndarray, arrival_s: float) -> None:
        if not events.shape[0]:
            return
        with self._lock:
            self._queue.append((self._epoch_in, events, arrival_s))
            self._queued += events.shape[0]
        self._arrived.set()

    def note(self, sentence: str) -> None:
        if sentence in self.notes:
            return
        self.notes.append(sentence)
        if self.on_note is not None:
            self.on_note(sentence)

    # -- run_stream's side -----------------------------------------------------------------------

    def read(self) -> np.ndarray:
        """Every event queued (of one connection: a reconnected stream's events come in a later
        read, with ``epoch`` moved on), in arrival order."""
        with self._lock:
            if not self._queue:
                self._arrived.clear()
                if self._error is not None and self._ended:
                    error, self._error = self._error, None
                    raise error
                return np.empty(0, EVENT_DTYPE)
            epoch = self._queue[0][0]
            parts = []
            while self._queue and self._queue[0][0] == epoch:
                _, events, arrival = self._queue.popleft()
                self._queued -= events.shape[0]
                parts.append(events)
                self._handed += events.shape[0]
                self._arrivals.append((self._handed, arrival))
        self.epoch = epoch
        events = parts[0] if len(parts) == 1 else np.concatenate(parts)
        self._record(events)
        return events

    def wait(self, timeout: float) -> None:
        """Block until events (or the end) arrive, at most ``timeout`` seconds."""
        self._arrived.wait(timeout)

    def arrival_of(self, index: int) -> float | None:
        """When the event ``index`` (counted over all reads) arrived (`time.perf_counter`);
        earlier batches are forgotten, so indices must be asked in increasing order."""
        while self._arrivals and self._arrivals[0][0] <= index:
            self._arrivals.popleft()
        return self._arrivals[0][1] if self._arrivals else None

    @property
    def exhausted(self) -> bool:
        return self._ended and not self._queue and self._error is None

    @property
    def queued_events(self) -> int:
        """Events received and decoded but not yet read."""
        return self._queued

    @property
    def sensor_size(self) -> tuple[int, int] | None:
        header = getattr(self.decoder, "sensor_size", None)
        return header or self.given_sensor_size

    def counters(self) -> dict:
        return {"source": self.path, "format": self.format, **self.stats,
                **({"recorded_events": self.recorded, "record": self._record_path}
                   if self._record_path else {})}

    @property
    def warnings(self) -> list[str]:
        extra = list(getattr(self.decoder, "warnings", []) or [])
        return self.notes + [w for w in extra if w not in self.notes]

    # -- --record --------------------------------------------------------------------------------

    def record_to(self, path: str) -> None:
        """Write every event received to an event file: AEDAT 4.0 for ``.aedat4``, eventformer
        HDF5 for ``.h5`` / ``.hdf5`` (`check_record_path`). It is created at the first events,
        when the sensor size is known: a stream's header may bring it."""
        self._record_path = path

    def _record(self, events: np.ndarray) -> None:
        if self._record_path is None or not events.shape[0]:
            return
        if self._recorder is None:
            self._record_failed = True  # said once, by the exception; close does not retry
            self._open_recorder()
            self._record_failed = False
        self._recorder.append(events)
        self.recorded += events.shape[0]

    def _open_recorder(self):
        if record_format(self._record_path) == "aedat4":
            from eventformer.events.aedat4_writer import Aedat4Writer

            size = self.sensor_size
            if size is None:
                # the file's header carries the sensor size and is written first
                where = "standard input" if self.path == "-" else self.path
                raise EventformerError(f"{self._record_path}: an AEDAT 4 recording's header "
                                       f"carries the sensor size, which {where} did not say: "
                                       "give --sensor-size WxH")
            camera = getattr(self.decoder, "camera", "") or f"eventformer {self.format}"
            self._recorder = Aedat4Writer(self._record_path, *size, camera=camera)
            return
        from eventformer.events import EventFileWriter

        width, height = self.sensor_size or (None, None)
        self._recorder = EventFileWriter(self._record_path, width, height,
                                         source=f"{self.path} ({self.format})")

    def close(self) -> None:
        """Stop reading; what was received and not read (Ctrl-C) still goes to --record."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * STOP_CHECK_S + 1)
        if self._record_path is None or self._record_closed:
            return
        self._record_closed = True
        with self._lock:
            rest = [events for _, events, _ in self._queue]
        try:
            if not self._record_failed:
                for events in rest:
                    self._record(events)
                if self._recorder is None:
                    self._open_recorder()  # an empty recording, still a valid file
        finally:
            if self._recorder is not None:
                self._recorder.close()

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless asked to stop; False when stopped."""
        return not self._stop.wait(seconds)


def check_udp(name: str, fmt: str, sensor_size) -> None:
    """A UDP source's options: one of the datagram layouts, and the sensor size it cannot say."""
    if fmt not in UDP_FORMATS:
        hint = (" (EVT 2.0 / 3.0 go over tcp:// or standard input: a lost datagram would "
                "corrupt EVT 3.0's running state)" if fmt in STREAM_FORMATS else "")
        raise EventformerError(f"{name}: --format must be one of {', '.join(UDP_FORMATS)} for "
                               f"UDP, got {fmt!r}{hint}")
    if sensor_size is None:
        raise EventformerError(f"{name}: UDP datagrams carry no sensor size, so give "
                               "--sensor-size WxH (the camera's resolution)")


class UdpSource(LiveSource):
    """Datagrams of one UDP layout (`eventformer.live.wire`) received on HOST:PORT."""

    def __init__(self, url: str, fmt: str, sensor_size: tuple[int, int] | None,
                 on_note: Callable[[str], None] | None = None):
        check_udp(url, fmt, sensor_size)
        super().__init__(url, fmt, sensor_size, on_note)
        _, host, port = parse_address(url)
        self.wire = datagram_decoder(fmt, *sensor_size)
        self.stats = {"datagrams_received": 0, "datagrams_rejected": 0, "events_received": 0,
                      "events_decoded": 0, "events_rejected": 0, "bytes_received": 0}
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
            except OSError:
                pass  # the default buffer works, only a burst is less well absorbed
            self.sock.bind((host, port))
        except OSError as exc:
            raise EventformerError(f"{url}: cannot listen there ({exc.strerror or exc})") from None
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def _run(self):
        sock, wire, stats = self.sock, self.wire, self.stats
        buf = bytearray(BATCH_BYTES + 65536)
        view = memoryview(buf)
        lengths: list[int] = []
        arrivals: list[float] = []
        pos = 0
        clock0 = self.clock_start
        record = wire.record_bytes
        spif = wire.name == "spif"
        recv_into, clock, stopped = sock.recv_into, time.perf_counter, self._stop.is_set

        def flush():
            nonlocal pos
            sizes = np.array(lengths, np.int64)
            arrived = np.array(arrivals)
            decoded = wire.decode(Batch(view[:pos], sizes, ((arrived - clock0) * 1e6)
                                        .astype(np.int64)))
            stats["datagrams_received"] += sizes.shape[0]
            stats["bytes_received"] += pos
            stats["events_received"] += decoded.events.shape[0] + decoded.rejected_events
            stats["datagrams_rejected"] += decoded.rejected_datagrams
            stats["events_rejected"] += decoded.rejected_events
            stats["events_decoded"] += decoded.events.shape[0]
            for reason in decoded.reasons:
                self.note(f"{reason}: rejected (counted in the summary)")
            self._put(decoded.events, arrivals[-1])
            lengths.clear()
            arrivals.clear()
            pos = 0

        # the loop runs once per datagram (aestream's hold 64 events): only what must be done
        # per datagram is done here; counting and decoding are per batch
        try:
            while not stopped():
                try:
                    n = recv_into(view[pos:pos + 65536])
                except BlockingIOError:
                    if pos:
                        flush()
                    select.select([sock], [], [], STOP_CHECK_S)
                    continue
                except OSError as exc:
                    raise EventformerError(f"{self.path}: receiving failed "
                                           f"({exc.strerror or exc})") from None
                now = clock()
                if n == 0 or n % record or (spif and n % 8 and not buf[pos + 3] & 0x80):
                    whole = n // (8 if spif and not buf[pos + 3] & 0x80 else record)
                    stats["datagrams_received"] += 1
                    stats["datagrams_rejected"] += 1
                    stats["bytes_received"] += n
                    stats["events_received"] += whole
                    stats["events_rejected"] += whole
                    self.note(f"a datagram of {n} bytes is not whole {wire.name} records: "
                              "rejected (counted in the summary)")
                    continue
                lengths.append(n)
                arrivals.append(now)
                pos += n
                if pos >= BATCH_BYTES or now - arrivals[0] > BATCH_SECONDS:
                    flush()
            if pos:
                flush()
        finally:
            sock.close()


class ByteStreamSource(LiveSource):
    """EVT 2.0 / 3.0 bytes from a TCP peer (``tcp://HOST:PORT``) or standard input (``-``),
    decoded by the file decoders as they arrive; or a DV network stream (``dv://HOST:PORT``,
    ``dv+unix:///PATH``: format ``dv``), its IOHeader and packets decoded as they arrive."""

    def __init__(self, url: str, fmt: str, sensor_size: tuple[int, int] | None = None,
                 on_note: Callable[[str], None] | None = None, *, reconnect: bool = False,
                 stdin=None, connect_timeout: float = 10.0):
        if fmt not in STREAM_FORMATS + ("dv",):
            raise EventformerError(f"{url}: --format must be one of {', '.join(STREAM_FORMATS)} "
                                   f"for a byte stream, got {fmt!r}")
        super().__init__(url, fmt, sensor_size, on_note)
        self.reconnect = reconnect
        self.stdin = stdin
        self.connect_timeout = connect_timeout
        self.stats = {"bytes_received": 0, "events_decoded": 0, "bytes_torn": 0}
        self.sock = None
        self._packets_before = self._skipped_before = 0
        if fmt == "dv":
            self.stats.update(packets=0, packets_other_streams=0)
        if stdin is None:
            self.scheme, self.host, self.port = parse_address(url)
            self.stats.update(connections=0, reconnects=0)
            if not reconnect:  # a refused connection is said at once, before any work
                self.sock = self._connect()
        self.decoder = self._new_decoder()

    def _new_decoder(self):
        from eventformer.events.formats import Evt2Decoder, Evt3Decoder

        from .wire import dv_stream_decoder

        return {"evt2": Evt2Decoder, "evt3": Evt3Decoder,
                "dv": dv_stream_decoder}[self.format](self.path)

    def _connect(self):
        try:
            if self.scheme == "dv+unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.connect_timeout)
                try:
                    sock.connect(self.host)
                except OSError:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection((self.host, self.port),
                                                timeout=self.connect_timeout)
        except (ConnectionRefusedError, FileNotFoundError):
            raise EventformerError(f"{self.path}: connection refused (nothing listens there: is "
                                   "the camera's server running? --reconnect keeps trying)") \
                from None
        except (TimeoutError, socket.timeout):
            raise EventformerError(f"{self.path}: no answer within {self.connect_timeout:g} s") \
                from None
        except OSError as exc:
            raise EventformerError(f"{self.path}: cannot connect ({exc.strerror or exc})") \
                from None
        sock.settimeout(STOP_CHECK_S)
        self.stats["connections"] += 1
        return sock

    def _run(self):
        if self.stdin is not None:
            self._pump_stdin()
            return
        wait = BACKOFF[0]
        while not self._stop.is_set():
            if self.sock is None:
                try:
                    self.sock = self._connect()
                    self.reconnecting = False
                    wait = BACKOFF[0]
                    if self.stats["connections"] > 1:
                        self.note_now(f"reconnected (connection {self.stats['connections']})")
                except EventformerError as exc:
                    if not self.reconnect:
                        raise
                    self.reconnecting = True
                    self.note_now(f"{str(exc).split(': ', 1)[1].split(' (')[0]}; retrying in "
                                  f"{wait:g} s")
                    if not self._sleep(wait):
                        return
                    wait = min(wait * BACKOFF[1], BACKOFF[2])
                    continue
            try:
                ended = self._pump_socket(self.sock)
            except EventformerError as exc:  # garbage on the wire: a retry when asked
                if not self.reconnect:
                    raise
                self.note_now(f"{str(exc).split(': ', 1)[-1]}; reconnecting")
                ended = "garbage"
            self.sock.close()
            self.sock = None
            if ended == "stopped":
                return
            if ended != "garbage":
                leftover = self.decoder.finish()
                self.stats["bytes_torn"] += leftover.torn_bytes
                if leftover.message:
                    self.note(leftover.message)
            if ended == "dropped" and not self.reconnect:
                self.failure = (f"{self.path}: the connection was dropped by the peer after "
                                f"{self.stats['bytes_received']:,} bytes (--reconnect retries)")
                return
            if not self.reconnect:
                return  # the peer closed the stream: its end
            self.stats["reconnects"] += 1
            self.reconnecting = True
            self.note_now(f"the connection was {'dropped' if ended == 'dropped' else 'closed'} "
                          f"by the peer; reconnecting in {wait:g} s")
            if self.format == "dv":
                self._packets_before = self.stats["packets"]
                self._skipped_before = self.stats["packets_other_streams"]
            self.decoder = self._new_decoder()
            self._epoch_in += 1
            if not self._sleep(wait):
                return

    def note_now(self, sentence: str) -> None:
        """Said every time (a retry), not once."""
        if self.on_note is not None:
            self.on_note(sentence)

    def _feed(self, data) -> None:
        self.stats["bytes_received"] += len(data)
        events = self.decoder.feed(data)
        self.stats["events_decoded"] += events.shape[0]
        if self.format == "dv":
            if self.decoder.compression is not None:
                self.stats.update(compression=self.decoder.compression,
                                  camera=self.decoder.camera)
            self.stats["packets"] = self._packets_before + self.decoder.packets
            self.stats["packets_other_streams"] = self._skipped_before + \
                self.decoder.packets_skipped
        self._put(events, time.perf_counter())

    def _pump_socket(self, sock) -> str:
        """Read until the peer closes ("closed"), resets ("dropped") or we stop ("stopped")."""
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while not self._stop.is_set():
            try:
                n = sock.recv_into(view)
            except (TimeoutError, socket.timeout):
                continue
            except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
                return "dropped"
            if n == 0:
                return "closed"
            self._feed(view[:n])
        return "stopped"

    def _pump_stdin(self) -> None:
        stream = getattr(self.stdin, "buffer", self.stdin)
        read = getattr(stream, "read1", None) or stream.read
        while not self._stop.is_set():
            data = read(1 << 20)
            if not data:
                break
            self._feed(data)
        leftover = self.decoder.finish()
        self.stats["bytes_torn"] += leftover.torn_bytes
        if leftover.message:
            self.note(leftover.message)


#: --record's formats, by the file's suffix.
RECORD_SUFFIXES = {".aedat4": "aedat4", ".h5": "h5", ".hdf5": "h5"}


def record_format(path) -> str:
    """The format a --record path asks for, by its suffix (`check_record_path` refused others)."""
    return RECORD_SUFFIXES.get(os.path.splitext(str(path))[1].lower(), "h5")


def check_record_path(path) -> str:
    """One sentence, before any work, for a --record path that cannot be written; its format."""
    suffix = os.path.splitext(str(path))[1].lower()
    if suffix not in RECORD_SUFFIXES:
        raise EventformerError(f"{path}: --record writes AEDAT 4 (.aedat4) or eventformer HDF5 "
                               "(.h5, .hdf5), chosen by the file's suffix")
    folder = os.path.dirname(os.path.abspath(str(path)))
    if not os.path.isdir(folder):
        raise EventformerError(f"{path}: cannot be written (its folder does not exist)")
    if RECORD_SUFFIXES[suffix] == "aedat4":
        from eventformer.events.aedat4_writer import check_aedat4_writable

        check_aedat4_writable(name=str(path))
    return RECORD_SUFFIXES[suffix]


def check_live_options(name: str, fmt: str | None, sensor_size: tuple[int, int] | None,
                       reconnect: bool) -> str:
    """One sentence for options a live source cannot take, before any work; its scheme."""
    scheme = "stdin" if name == "-" else parse_address(name)[0]
    if scheme in SCHEME_FORMATS:
        if fmt not in (None, SCHEME_FORMATS[scheme]):
            raise EventformerError(f"{name}: a DV network stream says its own format in its "
                                   f"header; --format {fmt} does not apply")
        return scheme
    if fmt is None:
        kinds = (f"{', '.join(UDP_FORMATS)} for udp://" if scheme == "udp"
                 else f"{', '.join(STREAM_FORMATS)} for {'tcp://' if name != '-' else 'standard input'}")
        raise EventformerError(f"{name}: a live source needs --format ({kinds}): the bytes "
                               "themselves do not say")
    if reconnect and scheme != "tcp":
        raise EventformerError(f"{name}: --reconnect applies to tcp:// and dv:// sources "
                               f"({'UDP has no connection to lose' if scheme == 'udp' else 'not standard input'})")
    if scheme == "udp":
        check_udp(name, fmt, sensor_size)
    elif fmt not in STREAM_FORMATS:
        raise EventformerError(f"{name}: --format must be one of {', '.join(STREAM_FORMATS)} "
                               f"for a byte stream, got {fmt!r}")
    return scheme


def open_live_source(name: str, fmt: str | None, sensor_size: tuple[int, int] | None = None, *,
                     reconnect: bool = False, on_note: Callable[[str], None] | None = None,
                     stdin=None) -> LiveSource:
    """The live source a stream argument names, started (its reader thread running)."""
    scheme = check_live_options(name, fmt, sensor_size, reconnect)
    if scheme == "stdin":
        import sys

        source = ByteStreamSource("-", fmt, sensor_size, on_note,
                                  stdin=stdin if stdin is not None else sys.stdin)
    elif scheme == "udp":
        source = UdpSource(name, fmt, sensor_size, on_note)
    else:
        source = ByteStreamSource(name, SCHEME_FORMATS.get(scheme, fmt), sensor_size, on_note,
                                  reconnect=reconnect)
    return source.start()


__all__ = ["ByteStreamSource", "LiveSource", "UdpSource", "check_live_options",
           "check_record_path", "is_live", "open_live_source", "parse_address", "record_format"]
