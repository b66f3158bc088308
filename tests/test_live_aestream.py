"""aestream's own command line as a live peer: it reads an AEDAT 4 recording and sends it over UDP
in SpiNNaker's SPIF words, with or without timestamps; ``stream udp:// --format spif`` must read
every event exactly. Skipped where aestream is not installed (the ``live-peers`` extra).

aestream reads LZ4-compressed AEDAT 4 files only (a file in another compression sends nothing),
so the recording is written by the project's own AEDAT 4 writer with LZ4, its default.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from eventformer.events import read_events
from eventformer.events.aedat4_writer import write_aedat4
from eventformer.live.sources import UdpSource

GESTURE = Path(__file__).resolve().parents[2] / "shared" / "data" / "events" / "dvs-gesture" / "1.bs2"
PATIENCE_S = 120  # a process stopped for a minute on a loaded machine still passes


@pytest.mark.parametrize("timestamps", [False, True], ids=["untimed", "timed"])
def test_aestreams_udp_sender_is_read_exactly(tmp_path, timestamps):
    aestream = shutil.which("aestream")
    if aestream is None:
        pytest.skip("aestream is not installed (pip install 'eventformer[live-peers]')")
    if not GESTURE.is_file():
        pytest.skip(f"{GESTURE} is not here")
    ev = read_events(GESTURE).events[:20000]
    path = tmp_path / "gesture.aedat4"
    write_aedat4(path, ev, 128, 128)
    source = UdpSource("udp://127.0.0.1:0", "spif", (128, 128)).start()
    got, n = [], 0
    try:
        sender = subprocess.run([aestream, "input", "file", str(path), "output", "udp",
                                 "127.0.0.1", str(source.port), "--include-timestamp",
                                 "true" if timestamps else "false"],
                                capture_output=True, text=True, timeout=PATIENCE_S)
        assert sender.returncode == 0, sender.stderr
        assert f"Sent a total of {len(ev)} events" in sender.stdout
        for _ in range(PATIENCE_S * 10):  # bounded; the datagrams wait in the socket's buffer
            if n >= len(ev):
                break
            source.wait(0.1)
            got.append(source.read())
            n += got[-1].shape[0]
    finally:
        source.close()
    counters = source.counters()
    assert counters["datagrams_rejected"] == 0 and counters["events_decoded"] == len(ev)
    got = np.concatenate(got)
    for field in ("x", "y", "p"):
        np.testing.assert_array_equal(got[field], ev[field])
    if timestamps:  # SPIF's 32-bit microseconds, unwrapped: the recording's own times
        np.testing.assert_array_equal(got["t"], ev["t"])
