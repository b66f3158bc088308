"""Event-camera file formats beyond numpy and bs2, one module each, registered with the reader
registry on import (``eventformer.events.readers`` imports this package).

Every format decodes incrementally (see `eventformer.events.readers.Decoder`): numpy over whole
chunks where records are independent (AEDAT 2.0, AEDAT 3.1 packets, EVT 2.0, DAT), Numba word by
word where the decoder is a state machine (EVT 3.0), and the optional ``aedat`` package for the
compressed payloads of AEDAT 4.0.
"""

from eventformer.events.formats.aedat2 import Aedat2Decoder, Aedat2Reader
from eventformer.events.formats.aedat3 import Aedat3Decoder, Aedat3Reader
from eventformer.events.formats.aedat4 import INSTALL_HINT as AEDAT4_INSTALL_HINT
from eventformer.events.formats.aedat4 import Aedat4Decoder, Aedat4Reader, aedat4_available
from eventformer.events.formats.dat import DatDecoder, DatReader
from eventformer.events.formats.evt2 import Evt2Decoder, Evt2Reader
from eventformer.events.formats.evt3 import Evt3Decoder, Evt3Reader
from eventformer.events.readers import register_reader

__all__ = [
    "AEDAT4_INSTALL_HINT",
    "Aedat2Decoder",
    "Aedat2Reader",
    "Aedat3Decoder",
    "Aedat3Reader",
    "Aedat4Decoder",
    "Aedat4Reader",
    "DatDecoder",
    "DatReader",
    "Evt2Decoder",
    "Evt2Reader",
    "Evt3Decoder",
    "Evt3Reader",
    "aedat4_available",
]

for _reader in (Aedat2Reader(), Aedat3Reader(), Aedat4Reader(), Evt2Reader(), Evt3Reader(), DatReader()):
    register_reader(_reader)
