"""Live event cameras: events classified as they arrive over the network or a pipe.

- `sources`: the live sources `eventformer.stream.run_stream` reads (``udp://HOST:PORT``,
  ``tcp://HOST:PORT``, ``-`` for standard input), each read on a thread of its own;
- `wire`: the wire formats (aestream's SPIF words, faery's two packed UDP layouts; EVT 2.0 / 3.0
  byte streams through the file decoders) and their encoders;
- `fake_camera`: a small server that replays a recording over UDP or TCP, so that tests and
  demonstrations need no camera and no third-party sender.
"""

from .sources import (ByteStreamSource, LiveSource, UdpSource, is_live, open_live_source,
                      parse_address)
from .wire import STREAM_FORMATS, UDP_FORMATS

__all__ = ["ByteStreamSource", "LiveSource", "STREAM_FORMATS", "UDP_FORMATS", "UdpSource",
           "is_live", "open_live_source", "parse_address"]
