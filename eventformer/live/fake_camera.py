"""The project's own fake camera: replays a recording's events over UDP or TCP (or to standard
output), as a live camera's software would send them, so that `eventformer stream udp://...` /
``tcp://...`` / ``-`` can be tried and tested without a camera or a third-party sender.

    python -m eventformer.live.fake_camera FILE --udp HOST:PORT --format spif|faery-13|faery-8
    python -m eventformer.live.fake_camera FILE --tcp-serve PORT --format evt2|evt3 [--clients N]
    python -m eventformer.live.fake_camera FILE --stdout --format evt2|evt3 | eventformer stream - ...
    python -m eventformer.live.fake_camera FILE --dv-serve PORT [--compression lz4] [--clients N]
    python -m eventformer.live.fake_camera FILE --dv-unix PATH [--compression zstd]

DV (``--dv-serve`` on TCP, ``--dv-unix`` on a UNIX socket): what dv-processing's NetworkWriter sends
each client, an IOHeader naming the compression (``--compression none|lz4|lz4-high|zstd|zstd-high``,
default lz4 as DV's), the sensor size and camera name, then packets of ``--events-per-packet``
events (default 2048).

UDP: datagrams of ``--events-per-datagram`` records (default as the real senders: aestream's
512-byte datagrams, 64 timed or 128 untimed SPIF words; faery's 100 events). TCP: listens on
HOST:PORT (``--host``, default 127.0.0.1; port 0 picks a free one) and sends every client the whole
stream, then closes; a recording already in the wire format is sent byte for byte (its header
included), any other is encoded (EVT 2.0 / 3.0 with a ``%`` header naming the sensor size).
``--speed`` paces the replay (1: the recording's own speed, 0: as fast as possible).
``--drop-after BYTES`` resets each TCP connection after that many bytes (a camera unplugged).

It prints one line when ready (``serving tcp://HOST:PORT``, ``sending to udp://HOST:PORT``) and
one when done (events, datagrams, bytes) on standard error, so a caller can wait for the first.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import struct
import sys
import time

import numpy as np

from eventformer.errors import EventformerError
from eventformer.events import read_events
from eventformer.events.readers import detect_reader

from .wire import (DV_COMPRESSION_CODES, STREAM_FORMATS, UDP_FORMATS, encode_datagram_records,
                   encode_dv_header, encode_dv_packet, encode_evt2, encode_evt3,
                   prophesee_header, udp_record_bytes)

#: Bytes of a TCP stream sent at once (pacing checks the clock between them).
TCP_PIECE = 8192
#: aestream's largest datagram (``UDP_max_bytesize``) and faery's default events per packet.
AESTREAM_DATAGRAM_BYTES = 512
FAERY_EVENTS_PER_PACKET = 100
#: Events per DV packet the fake camera sends (a DVXplorer's packets hold a few thousand).
DV_EVENTS_PER_PACKET = 2048


class Pacer:
    """Sleeps so that recording time t is sent at wall time (t - t0) / speed after the start;
    speed 0 never sleeps."""

    def __init__(self, t0: int, speed: float):
        self.t0, self.speed, self.start = t0, speed, time.perf_counter()

    def until(self, t_us: int) -> None:
        if self.speed <= 0:
            return
        due = self.start + (t_us - self.t0) / 1e6 / self.speed
        delay = due - time.perf_counter()
        if delay > 0.001:  # below a millisecond the datagram goes now: sleep is that coarse
            time.sleep(delay)


def _events(path: str, loops: int) -> tuple[np.ndarray, tuple[int, int] | None]:
    recording = read_events(path)
    events = recording.events
    if loops > 1 and events.shape[0]:
        span = int(events["t"][-1] - events["t"][0]) + 1
        events = np.concatenate([_shifted(events, k * span) for k in range(loops)])
    return events, recording.sensor_size


def _shifted(events: np.ndarray, dt: int) -> np.ndarray:
    out = events.copy()
    out["t"] += dt
    return out


def send_udp(path: str, host: str, port: int, fmt: str, *, speed: float = 1.0,
             events_per_datagram: int | None = None, timed: bool = True, loops: int = 1,
             log=print) -> dict:
    """Send a recording as datagrams of ``fmt`` to host:port; returns what was sent."""
    events, _ = _events(path, loops)
    if events_per_datagram is None:
        events_per_datagram = (AESTREAM_DATAGRAM_BYTES // udp_record_bytes(fmt, timed)
                               if fmt == "spif" else FAERY_EVENTS_PER_PACKET)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    log(f"sending to udp://{host}:{port}")
    pacer = Pacer(int(events["t"][0]) if events.shape[0] else 0, speed)
    sent = {"events": 0, "datagrams": 0, "bytes": 0}
    # encoded once, sliced per datagram: the loop below is one sendto each, so that a sender
    # at full speed outpaces any receiver (the benchmark measures the receiver)
    data = memoryview(encode_datagram_records(events, fmt, timed))
    step = events_per_datagram * udp_record_bytes(fmt, timed)
    times = events["t"][::events_per_datagram]
    address = (host, port)
    try:
        for k, i in enumerate(range(0, len(data), step)):
            if speed > 0:
                pacer.until(int(times[k]))
            piece = data[i:i + step]
            sock.sendto(piece, address)
            sent["datagrams"] += 1
            sent["bytes"] += len(piece)
        sent["events"] = events.shape[0]
    finally:
        sock.close()
    return sent


def stream_bytes(path: str, fmt: str, loops: int = 1,
                 sensor_size: tuple[int, int] | None = None) -> tuple[bytes, np.ndarray, np.ndarray]:
    """The byte stream of a recording in ``fmt`` with, for pacing, each event's byte end and
    time: the file's own bytes when it already is ``fmt`` (header included), else encoded with a
    header naming the recording's sensor size (or ``sensor_size`` where it records none)."""
    events, sensor = _events(path, loops)
    sensor = sensor or sensor_size
    if loops == 1 and detect_reader(path).name == fmt:
        with open(path, "rb") as f:
            data = f.read()
        # the events' byte positions are not known without decoding: pace by even shares
        ends = np.linspace(0, len(data), events.shape[0] + 1)[1:].astype(np.int64)
        return data, ends, events["t"]
    width, height = sensor or (None, None)
    body = encode_evt2(events) if fmt == "evt2" else encode_evt3(events)
    data = prophesee_header(fmt, width, height) + body
    ends = np.linspace(len(data) - len(body), len(data), events.shape[0] + 1)[1:]
    return data, ends.astype(np.int64), events["t"]


def dv_stream_bytes(path: str, compression: str = "lz4", loops: int = 1,
                    sensor_size: tuple[int, int] | None = None,
                    events_per_packet: int = DV_EVENTS_PER_PACKET,
                    camera: str = "eventformer-fake-camera"):
    """A recording as a DV network stream: (bytes, each event's byte end, each event's time)."""
    events, sensor = _events(path, loops)
    sensor = sensor or sensor_size
    if sensor is None:
        raise EventformerError(f"{path}: records no sensor size, and a DV stream's header names "
                               "one: give --sensor-size WxH")
    parts = [encode_dv_header(*sensor, camera, compression)]
    ends = np.empty(events.shape[0], np.int64)
    pos = len(parts[0])
    for i in range(0, events.shape[0], events_per_packet):
        parts.append(encode_dv_packet(events[i:i + events_per_packet], compression, name=path))
        pos += len(parts[-1])
        ends[i:i + events_per_packet] = pos  # the packet's events are readable once it is whole
    return b"".join(parts), ends, events["t"]


def serve_dv(path: str, port: int | None = None, *, unix: str | None = None,
             host: str = "127.0.0.1", compression: str = "lz4", speed: float = 1.0,
             clients: int = 1, drop_after: int | None = None, loops: int = 1,
             sensor_size: tuple[int, int] | None = None,
             events_per_packet: int = DV_EVENTS_PER_PACKET, log=print) -> dict:
    """Serve a recording as DV's network stream on host:port or a UNIX socket, to ``clients``
    clients in turn."""
    data, ends, times = dv_stream_bytes(path, compression, loops, sensor_size, events_per_packet)
    if unix is not None:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(unix)
        server.listen(1)
        log(f"serving dv+unix://{unix}")
    else:
        server = socket.create_server((host, port))
        log(f"serving dv://{host}:{server.getsockname()[1]}")
    try:
        return _serve_clients(server, clients, data, ends, times, speed, drop_after)
    finally:
        server.close()
        if unix is not None:
            import os

            with contextlib.suppress(OSError):
                os.unlink(unix)


def _serve_clients(server, clients: int, data: bytes, ends, times, speed: float,
                   drop_after: int | None) -> dict:
    """Accept ``clients`` clients in turn on a listening ``server`` and send each the stream;
    ``drop_after`` bytes cut it with a reset (RST), not an orderly close."""
    sent = {"clients": 0, "bytes": 0}
    for _ in range(clients):
        conn, _ = server.accept()
        with conn:
            sent["bytes"] += _send_paced(conn.sendall, data, ends, times, speed, drop_after)
            sent["clients"] += 1
            if drop_after is not None:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return sent


def _send_paced(send, data: bytes, ends: np.ndarray, times: np.ndarray, speed: float,
                limit: int | None) -> int:
    """Send ``data`` in pieces, each when the replay clock reaches its last event; returns the
    bytes sent (fewer than all when ``limit`` cuts the stream)."""
    pacer = Pacer(int(times[0]) if times.shape[0] else 0, speed)
    total = len(data) if limit is None else min(limit, len(data))
    pos = 0
    while pos < total:
        stop = min(pos + TCP_PIECE, total)
        k = int(np.searchsorted(ends, stop, side="right")) - 1
        if k >= 0:
            pacer.until(int(times[k]))
        send(data[pos:stop])
        pos = stop
    return pos


def serve_tcp(path: str, port: int, fmt: str, *, host: str = "127.0.0.1", speed: float = 1.0,
              clients: int = 1, drop_after: int | None = None, loops: int = 1,
              sensor_size: tuple[int, int] | None = None, log=print) -> dict:
    """Listen on host:port and send each of ``clients`` clients the stream in turn."""
    data, ends, times = stream_bytes(path, fmt, loops, sensor_size)
    server = socket.create_server((host, port))
    log(f"serving tcp://{host}:{server.getsockname()[1]}")
    try:
        return _serve_clients(server, clients, data, ends, times, speed, drop_after)
    finally:
        server.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eventformer.live.fake_camera",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="the recording to replay (any format eventformer reads)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--udp", metavar="HOST:PORT", help="send datagrams there")
    where.add_argument("--tcp-serve", metavar="PORT", type=int,
                       help="listen on this port (0: any free one, said on stderr)")
    where.add_argument("--stdout", action="store_true", help="write the byte stream to stdout")
    where.add_argument("--dv-serve", metavar="PORT", type=int,
                       help="serve DV's network stream on this TCP port (0: any free one)")
    where.add_argument("--dv-unix", metavar="PATH", help="serve DV's network stream on this "
                                                         "UNIX socket")
    parser.add_argument("--format", choices=UDP_FORMATS + STREAM_FORMATS,
                        help="UDP / TCP / stdout: the wire format (DV streams need none)")
    parser.add_argument("--compression", choices=tuple(DV_COMPRESSION_CODES), default="lz4",
                        help="DV streams: how packets are compressed [lz4]")
    parser.add_argument("--events-per-packet", type=int, default=DV_EVENTS_PER_PACKET,
                        help=f"DV streams: events per packet [{DV_EVENTS_PER_PACKET}]")
    parser.add_argument("--host", default="127.0.0.1", help="--tcp-serve: address to listen on "
                                                           "[127.0.0.1]")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="replay speed: 1 the recording's own, 0 as fast as possible [1]")
    parser.add_argument("--events-per-datagram", type=int, default=None,
                        help="UDP records per datagram [aestream's 512 bytes; faery's 100]")
    parser.add_argument("--untimed", action="store_true",
                        help="spif: words without timestamps (aestream without --include-time)")
    parser.add_argument("--clients", type=int, default=1,
                        help="--tcp-serve: serve this many clients, one after another [1]")
    parser.add_argument("--drop-after", type=int, default=None, metavar="BYTES",
                        help="--tcp-serve: reset each connection after this many bytes")
    parser.add_argument("--sensor-size", metavar="WxH", default=None,
                        help="EVT streams: the sensor size their header names when the "
                             "recording records none")
    parser.add_argument("--loops", type=int, default=1,
                        help="replay the recording this many times, its clock running on [1]")
    args = parser.parse_args(argv)

    def log(line):
        print(line, file=sys.stderr, flush=True)

    def bad(message):
        print(f"error: {message}", file=sys.stderr)
        return 2

    if args.speed < 0 or not np.isfinite(args.speed):
        return bad("--speed must be 0 (as fast as possible) or a positive factor")
    if args.loops < 1 or args.clients < 1:
        return bad("--loops and --clients must be at least 1")
    if args.events_per_datagram is not None and args.events_per_datagram < 1:
        return bad("--events-per-datagram must be at least 1")
    sensor_size = None
    if args.sensor_size is not None:
        try:
            sensor_size = tuple(int(v) for v in args.sensor_size.lower().split("x"))
            if len(sensor_size) != 2 or min(sensor_size) < 1:
                raise ValueError
        except ValueError:
            return bad(f"--sensor-size must look like 128x128, got {args.sensor_size!r}")
    try:
        if args.dv_serve is not None or args.dv_unix is not None:
            if args.events_per_packet < 1:
                return bad("--events-per-packet must be at least 1")
            sent = serve_dv(args.file, args.dv_serve, unix=args.dv_unix, host=args.host,
                            compression=args.compression, speed=args.speed,
                            clients=args.clients, drop_after=args.drop_after, loops=args.loops,
                            sensor_size=sensor_size, events_per_packet=args.events_per_packet,
                            log=log)
            log(f"served {sent['clients']} client(s) {sent['bytes']} bytes")
            return 0
        if args.format is None:
            return bad("--format is needed for --udp, --tcp-serve and --stdout")
        if args.udp is not None:
            if args.format not in UDP_FORMATS:
                return bad(f"--udp sends {', '.join(UDP_FORMATS)}, not {args.format} (EVT "
                           "streams go over --tcp-serve or --stdout)")
            host, _, port = args.udp.rpartition(":")
            if not host or not port.isdigit():
                return bad(f"--udp must be HOST:PORT, got {args.udp!r}")
            sent = send_udp(args.file, host.strip("[]"), int(port), args.format,
                            speed=args.speed, events_per_datagram=args.events_per_datagram,
                            timed=not args.untimed, loops=args.loops, log=log)
            log(f"sent {sent['events']} events in {sent['datagrams']} datagrams "
                f"({sent['bytes']} bytes)")
            return 0
        if args.format not in STREAM_FORMATS:
            return bad(f"a byte stream is {', '.join(STREAM_FORMATS)}, not {args.format} "
                       "(datagram layouts go over --udp)")
        if args.stdout:
            data, ends, times = stream_bytes(args.file, args.format, args.loops, sensor_size)
            out = sys.stdout.buffer

            def write(piece):
                out.write(piece)
                out.flush()

            n = _send_paced(write, data, ends, times, args.speed, None)
            log(f"wrote {n} bytes")
            return 0
        sent = serve_tcp(args.file, args.tcp_serve, args.format, host=args.host,
                         speed=args.speed, clients=args.clients, drop_after=args.drop_after,
                         loops=args.loops, sensor_size=sensor_size, log=log)
        log(f"served {sent['clients']} client(s) {sent['bytes']} bytes")
        return 0
    except EventformerError as exc:
        return bad(str(exc))
    except (BrokenPipeError, ConnectionError) as exc:
        return bad(f"the receiver went away ({exc.strerror or exc})")
    except OSError as exc:
        return bad(exc.strerror or str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
