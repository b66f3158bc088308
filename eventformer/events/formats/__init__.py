"""Every event file format eventformer reads, one module each, and the one place where their
readers are registered, in the order detection consults them.

``npy``, ``npz`` (numpy), ``aedat2``, ``aedat3``, ``aedat4`` (iniVation), ``evt2``, ``evt3``,
``dat`` (Prophesee), ``h5`` (eventformer's own HDF5 event file) are recognised by their first bytes
and tried in that order; ``bs2`` (headerless N-MNIST ``.bin``) is registered last as the fallback,
taken only by its extension after all of them declined. ``_header`` holds what the text-headed
camera formats share. Each module imports the interface from `eventformer.events.readers`, which
imports none of them; importing ``eventformer.events`` imports this package, so the registry is
complete whichever module a caller imports.

Every byte-stream format decodes incrementally (see `eventformer.events.readers.Decoder`): numpy
over whole chunks where records are independent (npy, bs2, AEDAT 2.0, AEDAT 3.1 packets, EVT 2.0,
DAT), Numba word by word where the decoder is a state machine (EVT 3.0), the optional ``aedat``
package for the compressed payloads of AEDAT 4.0, and ``.npz`` archives once complete. HDF5 is
read in place by h5py (an `eventformer.events.readers.IncrementalSource`).
"""

from eventformer.events.formats.aedat2 import Aedat2Decoder, Aedat2Reader
from eventformer.events.formats.aedat3 import Aedat3Decoder, Aedat3Reader
from eventformer.events.formats.aedat4 import INSTALL_HINT as AEDAT4_INSTALL_HINT
from eventformer.events.formats.aedat4 import Aedat4Decoder, Aedat4Reader, aedat4_available
from eventformer.events.formats.bs2 import Bs2Decoder, Bs2Reader, FixedRecordDecoder, decode_bs2
from eventformer.events.formats.dat import DatDecoder, DatReader
from eventformer.events.formats.evt2 import Evt2Decoder, Evt2Reader
from eventformer.events.formats.evt3 import Evt3Decoder, Evt3Reader
from eventformer.events.formats.h5 import H5EventSource, H5Reader
from eventformer.events.formats.npy import NpyDecoder, NpyReader
from eventformer.events.formats.npz import NpzDecoder, NpzReader
from eventformer.events.readers import register_reader

__all__ = [
    "AEDAT4_INSTALL_HINT",
    "Aedat2Decoder",
    "Aedat2Reader",
    "Aedat3Decoder",
    "Aedat3Reader",
    "Aedat4Decoder",
    "Aedat4Reader",
    "Bs2Decoder",
    "Bs2Reader",
    "DatDecoder",
    "DatReader",
    "Evt2Decoder",
    "Evt2Reader",
    "Evt3Decoder",
    "Evt3Reader",
    "FixedRecordDecoder",
    "H5EventSource",
    "H5Reader",
    "NpyDecoder",
    "NpyReader",
    "NpzDecoder",
    "NpzReader",
    "aedat4_available",
    "decode_bs2",
]

# Formats with a magic number, consulted in this order.
for _reader in (NpyReader(), NpzReader(), Aedat2Reader(), Aedat3Reader(), Aedat4Reader(),
                Evt2Reader(), Evt3Reader(), DatReader(), H5Reader()):
    register_reader(_reader)
# The headerless fallback: only by extension, after every reader above declined.
register_reader(Bs2Reader(), fallback=True)
del _reader
