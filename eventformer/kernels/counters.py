"""Slots of the per-layer operation counter array.

Every kernel takes an ``int64`` array ``counters`` of length :data:`N_COUNTERS` and adds to it the
work it really did (SPEC §5). Layers own one such array each; :mod:`eventformer.report` turns the
slots into names. Plain integer constants (not an enum) so that Numba treats them as literals.
"""

AC = 0  # accumulates driven by events (multiplicity x valid fan-out)
MAC = 1  # multiplies: weighted (non-spike) inputs, the head
NEURON_UPDATES = 2  # membrane updates (each neuron of a layer, every step: leak and bias are dense)
LUT = 3  # NSAD table look-ups (DS2TA)
SHIFT = 4  # TASA decay shifts (DS2TA)
COMPARE = 5  # binary-attention threshold compares (SSA_Bin)
ATTN_ENTRIES = 6  # attention-map entries formed (active query/key pairs)
ATTN_NONZERO = 7  # attention-map entries left non-zero
DENSE_MAC = 8  # multiply-accumulates done by a dense path (GEMM), all of them, zeros included
SPARSE_STEPS = 9  # steps this layer ran event-driven
DENSE_STEPS = 10  # steps this layer ran dense
INPUT_EVENTS = 11  # active input sites seen (for densities)
INPUT_SITES = 12  # input sites offered (dense size x steps)
MASK = 13  # binary masks and ANDs of spike lists: flags tested, index compares (SDT, QKFormer)
MAXIMA = 14  # window maxima of spike max-pools formed, one per output spike (SDT's Erode)
N_COUNTERS = 15

NAMES = (
    "ac",
    "mac",
    "neuron_updates",
    "lut",
    "shift",
    "compare",
    "attn_entries",
    "attn_nonzero",
    "dense_mac",
    "sparse_steps",
    "dense_steps",
    "input_events",
    "input_sites",
    "mask",
    "maxima",
)

assert len(NAMES) == N_COUNTERS
