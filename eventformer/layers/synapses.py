"""Synapse -> (folded BatchNorm) -> LIF layers, each choosing per step between scatter and GEMM."""

from __future__ import annotations

import numpy as np

from ..fixedpoint import Fixed, arithmetic, quantise, shift_of
from ..kernels import (conv2d_gather, conv2d_gather_int, conv2d_scatter, counters as C, densify_padded, im2col_padded,
                       linear_event_ops, linear_scatter, maxpool_flags, scatter_dense,
                       tasa_current, tasa_fixed_current)
from ..kernels.amx import AMX, amx_gemm, pack_amx
from ..kernels.igemm import INTEGER_DOT, PANEL, UINT8_ROW_MAX, int_gemm, pack_igemm
from ..kernels.pooling import maxpool_current
from ..kernels.sparse import flag_lanes, maxpool_lanes
from ..runtime import cache_aligned, engine_threads, gemm, in_part, run_parts, split
from .base import EMPTY, PathPolicy, SpikingLayer, ones, period
from .neurons import FixedLIFNeurons, LIFNeurons

# An integer GEMM runs on float BLAS, exactly: every partial sum of integers below 2^24 (float32)
# or 2^53 (float64) is an integer the float holds exactly, whatever order BLAS adds in.
FLOAT32_EXACT = 2**24

# An integer layer's dense step runs on the integer GEMM (kernels.igemm: uint8 rows x int8
# weights on vpdpbusd, int16 x int16 on vpdpwssd, exact in int32) where the CPU has AVX512-VNNI,
# else on float BLAS as above. It won at every GEMM shape of the full-size model, per step and
# T=16-batched, 1 and 2 threads (`python benchmarks/int_gemm.py`, AMD EPYC Zen 4, load ~1: GEMM
# alone, float BLAS + cast over int, int8 3.2-4.5x on 1 thread and 1.8-4.1x on 2; int16 1.8-2.3x
# against float32 and 4.2-5.0x against float64; the whole dense step 2.7-4.0x int8, 1.4-4.1x
# int16). On AVX2 without VNNI (AMD EPYC Zen 3) its vpmaddubsw / vpmaddwd form ran the model's
# GEMM shapes at 70-90 G MAC/s (uint8 rows) and 54-68 (int16) against float32 BLAS's 44-46 on
# one thread. Where neither exists (the portable form: untimed) float BLAS stays.
INT_GEMM = INTEGER_DOT
# Where the CPU has AMX int8 tiles (and Linux lets the process use them), an int8 layer's uint8
# rows multiply on them instead (kernels.amx: tdpbusd, exact in int32): 2.3-5.3x the VNNI kernel
# and 2.1-12x float32 BLAS at every GEMM shape of the full-size model on 1 thread (`python
# benchmarks/amx_gemm.py`, Intel Xeon with AMX). int16 has no AMX form.
INT_GEMM_AMX = AMX
# The largest GEMM input value each integer row dtype holds exactly on this CPU's kernel (uint8
# rows: 127 on AVX2, whose byte products saturate in pairs above it).
UINT8_ROWS, INT16_ROWS = UINT8_ROW_MAX, 32767
# Below this much work (multiply-accumulates x bytes per input value: an int16 one costs twice
# a uint8 one) the integer GEMM runs on one thread: split over 2 (benchmarks/int_gemm.py), the
# 16.7M-MAC uint8 fc1/fc2 steps ran 1.1-1.2x slower and the 37.7M RPE step 1.2x faster, int16's
# 16.7M fc1/fc2 steps 1.1x faster and its 4.2M q step 1.7x slower.
INT_PARALLEL_MIN_WORK = 24_000_000

# Offline runs stack the dense steps of a layer into one GEMM when a step alone has fewer rows
# than this: small GEMMs (64 token rows) run far below the machine's GEMM speed.
BATCH_ROWS_BELOW = 1024

# A single step (streaming) runs in bands on the engine's threads when it adds about this many
# values or more: a banded step's hand-off and Python cost ~50-100 us, 5M adds take ~150 us
# (a 0.9M-add fc2 step ran 3x slower banded on 2 threads)
BAND_STEP_MIN_OPS = 5_000_000

# How many of a GEMM's multiply-accumulates cost about one add of the event paths (the integer
# GEMM ran at 140-250 G MAC/s per thread, the gathers at 20-40 G adds/s; float BLAS and the float
# gathers about as far apart): what weighs a dense step's rows against an event step's when a
# layer's rows are split into bands.
GEMM_MACS_PER_ADD = 6

# A sample's steps (offline) run in bands when their adds reach this: below it (q, k, v, proj
# and fc2 at 5% firing: 0.3-20M adds) a band's Python per step cost more than the second thread
# saved (measured on 2 threads, full-size model: q 1.00x, proj 0.6x, fc2 0.75x, fc1 at 95M
# 1.5x, the SPS stages at 130-280M 1.4-1.7x)
BAND_MIN_OPS = 40_000_000


def _integer_rows(arith: Fixed, largest: int):
    """The dtype of an integer layer's GEMM rows on the integer GEMM, given the largest input
    value a step can carry (the layer's multiplicity, or for raw counts the largest count its
    overflow bound lets through): uint8 beside int8 weights (up to UINT8_ROWS), int16 (int8 or
    int16 weights) below 2^15; None where the values do not fit or the integer GEMM is not
    used: float BLAS."""
    if not INT_GEMM:
        return None
    if arith.bits == 8 and largest <= UINT8_ROWS:
        return np.dtype(np.uint8)
    if largest <= INT16_ROWS:
        return np.dtype(np.int16)
    return None


_NO_BIAS = np.empty(0, np.int32)


def _integer_gemm(rows, packed, out, product=int_gemm, bias=None) -> None:
    """``out = rows @ W`` on ``product`` (:func:`~eventformer.kernels.int_gemm`, or
    :func:`~eventformer.kernels.amx.amx_gemm` for weights packed by ``pack_amx``), its rows
    split over the engine's threads as :func:`~eventformer.runtime.gemm` splits float BLAS's
    (both kernels release the GIL). ``bias``: int_gemm's start per output channel (padded to
    whole panels), for ``out = rows @ W + bias``; amx_gemm takes none."""
    call = (lambda r, o: product(r, packed, o)) if bias is None else \
        (lambda r, o: product(r, packed, o, bias))
    threads = engine_threads()
    m = rows.shape[0]
    if (threads == 1 or in_part() or m < 2 * threads
            or m * rows.shape[1] * out.shape[1] * rows.itemsize < INT_PARALLEL_MIN_WORK):
        call(rows, out)
        return
    bounds = split(m, threads)
    run_parts(lambda i: call(rows[bounds[i]:bounds[i + 1]], out[bounds[i]:bounds[i + 1]]),
              threads)


def _events_per_row(inputs: list, rows: int, row_size: int) -> np.ndarray:
    """Events per input row (``row_size`` sites each) over the steps ``inputs``: by binary
    search of the sorted lists at the row starts, O(rows log n) per step, not O(n)."""
    starts = np.arange(rows + 1, dtype=np.int64) * row_size
    total = np.zeros(rows + 1, np.int64)
    for idx, _ in inputs:
        if idx.shape[0]:
            total += np.searchsorted(idx, starts)
    return np.diff(total)


class SynapticLIF(SpikingLayer):
    """What conv and linear layers share: per step, a current by scatter or by GEMM, then LIF.

    A subclass says how events become GEMM input rows (:meth:`_gemm_rows`), how they scatter
    (:meth:`_scatter`) and what follows the LIF (:meth:`emit`). The dense path's GEMM is
    ``rows x k_dim @ k_dim x cout``.

    In an integer arithmetic (:class:`~eventformer.fixedpoint.Fixed`) the layer holds its
    weights quantised per output channel (SPEC §6): the scatter and gather add int8/int16 weights
    into int32 currents, and the GEMM multiplies the same integers exactly, on the integer GEMM
    (VNNI or AVX2) or on float BLAS.
    """

    def _arithmetic(self, params, dtype, multiplicity: int | None, window: float = 1.0,
                    unit=None):
        """The layer's weights [cout, ...] and bias as its arithmetic computes with them; sets
        the dtypes of currents (``dtype``), event-path weights (``weight_dtype``) and the GEMM
        (``gemm_dtype``). ``multiplicity``: the largest input value (None: raw counts, checked
        per step), ``window``: how many currents one step can sum (TASA), ``unit``: the
        channels' unit shared with other layers in an integer mode (None: the layer's own)."""
        arith = arithmetic(dtype)
        w = np.asarray(params.weight, np.float64)
        if not isinstance(arith, Fixed):
            self.fixed, self.quant = None, None
            self.dtype = self.weight_dtype = self.gemm_dtype = arith
            return w, np.asarray(params.bias, np.float64)
        q = quantise(w, params.bias, params.theta, params.v_reset, arith, params.name,
                     multiplicity, window, unit)
        self.shift = shift_of(params.tau, params.name)
        self.fixed, self.quant = arith, q
        self.dtype, self.weight_dtype = arith.dtype, arith.weight_dtype
        largest = multiplicity if multiplicity is not None else q.max_multiplicity
        self.gemm_dtype = _integer_rows(arith, largest)
        if self.gemm_dtype is None:  # float BLAS, exact below the float's integer range
            worst = q.worst * largest
            self.gemm_dtype = np.dtype(np.float32 if worst < FLOAT32_EXACT else np.float64)
        return q.weight, q.bias

    def _setup(self, params, *, rows: int, k_dim: int, in_sites: int, gemm_weight, dtype,
               policy: PathPolicy):
        self.rows, self.k_dim, self.in_sites = rows, k_dim, in_sites
        if self.gemm_dtype.kind == "f":
            self.gemm_weight = cache_aligned(gemm_weight, self.gemm_dtype)
        elif self.gemm_dtype == np.uint8 and INT_GEMM_AMX:  # int8 weights as AMX tiles
            self.gemm_weight = pack_amx(np.asarray(gemm_weight, np.int8))
            self._int_product = amx_gemm
        else:  # packed once for the integer GEMM: int8 weights beside uint8 rows, else int16
            self.gemm_weight = cache_aligned(pack_igemm(
                gemm_weight, np.int8 if self.gemm_dtype == np.uint8 else np.int16))
            self._int_product = int_gemm
            # the accumulators start from the bias (zero past Cout, to whole panels)
            self._gemm_bias = cache_aligned(np.pad(
                np.asarray(self._bias, np.int32),
                (0, self.gemm_weight.shape[0] * PANEL - self.cout)))
        self.bias = np.ascontiguousarray(self._bias, dtype)
        self.neurons = self._make_neurons(params, dtype)
        self.current = np.empty((rows, self.cout), dtype)
        self._bias_period = period(self.bias, rows * self.cout)
        self.neurons.steady = self._bias_period  # the current of every step without input
        self.policy = policy
        self.dense_macs_per_step = rows * k_dim * self.cout
        self._arith = "float" if self.fixed is None else self.fixed.name
        self.gather_steps = 0  # event-driven steps that gathered (also counted as sparse steps)
        self._rows_buf = None
        self._gemm_out = None

    def _make_neurons(self, params, dtype):
        """The layer's neurons: SPEC §1's LIF, in floats or in fixed point."""
        if self.fixed is None:
            return LIFNeurons.from_params(self.n_neurons, params, dtype)
        return FixedLIFNeurons(self.n_neurons, shift=self.shift, theta=self.quant.theta,
                               soft_reset=params.v_reset is None, decay_input=params.decay_input)

    def reset(self) -> None:
        self.neurons.reset()

    def _check_counts(self, cnt) -> None:
        """In an integer mode, refuse raw counts large enough to overflow (SPEC §6)."""
        if self.fixed is not None and self.weighted:
            self.quant.check_multiplicity(cnt, self.name)

    _gemm_bias = None  # the bias as int_gemm starts from it (integer modes on int_gemm)

    def _gemm_biased(self, rows, out) -> None:
        """``out = rows @ gemm_weight + bias`` (``out`` [rows, Cout]): on int_gemm the
        accumulators start from the bias (no second pass over the current), else
        :meth:`_gemm` then :meth:`_add_bias`."""
        if self._gemm_bias is not None:
            _integer_gemm(rows, self.gemm_weight, out, int_gemm, self._gemm_bias)
            return
        self._gemm(rows, out)
        self._add_bias(out)

    def _gemm(self, rows, out) -> None:
        """``out = rows @ gemm_weight``; in an integer mode on the integer GEMM, or on float
        BLAS (exact), then cast."""
        if self.fixed is None:
            gemm(rows, self.gemm_weight, out)
            return
        if self.gemm_dtype.kind != "f":
            _integer_gemm(rows, self.gemm_weight, out, self._int_product,
                          None if self._gemm_bias is None else _NO_BIAS)
            return
        if self._gemm_out is None or self._gemm_out.shape[0] != rows.shape[0]:
            self._gemm_out = np.empty((rows.shape[0], self.cout), self.gemm_dtype)
        gemm(rows, self.gemm_weight, self._gemm_out)
        np.copyto(out, self._gemm_out, casting="unsafe")

    def _dense(self, idx: np.ndarray, batched: bool = False) -> bool:
        """Whether an event step runs as a GEMM; ``batched``: among a sample's steps whose dense
        ones share one GEMM (:meth:`_batches`)."""
        return self.policy.dense(self.kind, idx.shape[0], self.in_sites,
                                 self._arith if self.can_gather else None, batched)

    def _batches(self, inputs: list) -> bool:
        """Whether the dense steps among ``inputs`` (a sample's, offline) share one GEMM."""
        return len(inputs) > 1 and self.rows < BATCH_ROWS_BELOW

    def _offline_edge(self, inputs: list) -> bool:
        """Whether ``inputs`` go dense from the policy's offline edge (``batched`` of
        :meth:`PathPolicy.dense`): a linear layer's when its dense steps share one GEMM."""
        return self._batches(inputs)

    # --- the output-stationary gather (kernels.conv2d_gather): a linear layer is a 1x1 conv
    # over a tokens x 1 grid, so both layer kinds gather through the same kernel

    can_gather = False  # set by layers whose event steps may gather (see _gather_shape)

    def _gathers(self, idx) -> bool:
        """Whether an event step's current is gathered, not scattered (the policy's band)."""
        return (idx.shape[0] > 0 and self.can_gather
                and self.policy.gather(idx.shape[0], self.in_sites, self._arith, self.kind))

    def _gather(self, idx, cnt, flat, counters, rows=None) -> None:
        """The current (bias included) of output rows ``rows`` (default all) into ``flat``."""
        h, wd, cin, k = self._gather_shape
        r0, r1 = rows if rows is not None else (0, h)
        gather = conv2d_gather if self.fixed is None else conv2d_gather_int
        gather(idx, cnt, h, wd, cin, self.gather_weight, self.bias, k, r0, r1, flat, counters,
               self.weighted)

    def warm_up(self) -> None:
        """Load (or compile) the gather kernel for this layer's dtypes: a model's warm-up steps
        need not fall in the gather's density band, and a first gather mid-stream would stall
        a window."""
        if self.can_gather:
            one = np.zeros(1, np.int32)
            self._gather(one, one + 1, np.empty(self.current.size, self.current.dtype),
                         np.zeros(C.N_COUNTERS, np.int64))

    def clear_stats(self) -> None:
        super().clear_stats()
        self.gather_steps = 0

    def stats(self) -> dict:
        out = super().stats()
        out["gather_steps"] = int(self.gather_steps)  # of the sparse (event-driven) steps
        return out

    def _dense_rows(self, idx, cnt, rows_out) -> None:
        """Fill GEMM input rows for a dense step and count its event ops and dense work."""
        self.counters[C.INPUT_SITES] += self.in_sites
        self._gemm_rows(idx, cnt, rows_out)
        self.counters[C.DENSE_MAC] += self.dense_macs_per_step
        self.counters[C.DENSE_STEPS] += 1

    def _sparse_current(self, idx, cnt, cur, counters=None) -> np.ndarray:
        """An event-driven step's current into ``cur`` (flat view returned): by gather where
        the policy says so, else by scatter. ``counters``: where its ops go (default the
        layer's)."""
        if idx.shape[0] == 0:
            return self._quiet_current()
        if counters is None:
            counters = self.counters
        counters[C.INPUT_SITES] += self.in_sites
        flat = cur.reshape(-1)
        if self._gathers(idx):
            self.gather_steps += 1
            self._gather(idx, cnt, flat, counters)
        else:
            self._fill_bias(cur)
            self._scatter(idx, cnt, flat, counters)
        counters[C.SPARSE_STEPS] += 1
        return flat

    def _quiet_current(self) -> np.ndarray:
        """A sparse step without input events: the current is the bias alone, so neither a
        scatter nor a dense fill; the neurons get one period of it (the counters are a scatter's
        of zero events). A probe still sees the dense current."""
        counters = self.counters
        counters[C.INPUT_SITES] += self.in_sites
        counters[C.SPARSE_STEPS] += 1
        if self.probe is None:
            return self._bias_period
        self._fill_bias(self.current)
        return self.current.reshape(-1)

    def _fill_bias(self, cur) -> None:
        """``cur[:] = bias`` through rows of the bias period: ~3x faster than broadcasting a
        short bias row over a large current."""
        p = self._bias_period
        flat = cur.reshape(-1)
        whole = flat.shape[0] - flat.shape[0] % p.shape[0]  # a band may end inside a period
        flat[:whole].reshape(-1, p.shape[0])[:] = p
        flat[whole:] = p[:flat.shape[0] - whole]

    def _add_bias(self, cur) -> None:
        """``cur += bias`` (a GEMM's output), the same element-wise adds, by bias periods."""
        p = self._bias_period
        cur.reshape(-1, p.shape[0])[:] += p

    def synapse(self, idx: np.ndarray, cnt: np.ndarray, dense: bool | None = None) -> np.ndarray:
        """The step's input current (flat, channel-innermost), by the path the policy picks
        (``dense``: the caller's pick, one of a sample's steps offline)."""
        cur = self.current
        self._check_counts(cnt)
        if not (self._dense(idx) if dense is None else dense):
            return self._sparse_current(idx, cnt, cur)
        if self._rows_buf is None:  # allocated on the first dense step only
            self._rows_buf = np.empty((self.rows, self.k_dim), self.gemm_dtype)
        self._dense_rows(idx, cnt, self._rows_buf)
        self._gemm_biased(self._rows_buf, cur)
        return cur.reshape(-1)

    def step(self, idx: np.ndarray, cnt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step (streaming, time-major). A step with enough work runs in bands on the
        engine's threads, as :meth:`run_steps` does (a window must not wait on one core); a quiet
        step, or a small one, runs here (the hand-off would cost more than it saves)."""
        if idx.shape[0] and self._step_work(idx) >= BAND_STEP_MIN_OPS:
            step, dense = [(idx, cnt)], [self._dense(idx)]
            bounds = self._band_bounds(step, dense)
            if bounds is not None:
                return self._run_banded(step, bounds, dense)[0]
        return self._step_here(idx, cnt)

    def _step_here(self, idx, cnt, dense: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One step on the calling thread (``dense``: see :meth:`synapse`)."""
        return self.emit(self.synapse(idx, cnt, dense))

    def _step_work(self, idx) -> int:
        """A rough count of a step's adds: its events' weight rows and the LIF's neurons."""
        return idx.shape[0] * self.cout * self._taps_per_event + self.n_neurons

    def run_steps(self, inputs: list) -> list:
        """Many steps of one sample at once (offline): the same per-step results as
        :meth:`step`. On more than one engine thread in bands of output rows, one per thread,
        each band through every step (:meth:`_run_banded`); otherwise step by step, the dense
        steps of a small layer sharing one GEMM."""
        dense = [self._dense(idx, self._offline_edge(inputs)) for idx, _ in inputs]
        bounds = self._band_bounds(inputs, dense)
        if bounds is not None:
            return self._run_banded(inputs, bounds, dense)
        n_dense = sum(dense)
        if self.rows >= BATCH_ROWS_BELOW or n_dense < 2:
            return [self._step_here(idx, cnt, d) for (idx, cnt), d in zip(inputs, dense)]
        for _, cnt in inputs:
            self._check_counts(cnt)
        currents = self._batched_synaptic(inputs, dense, n_dense, biased=True)
        out = []
        j = 0
        for (idx, cnt), is_dense in zip(inputs, dense):
            if is_dense:
                out.append(self.emit(currents[j * self.rows:(j + 1) * self.rows].reshape(-1)))
                j += 1
            else:
                out.append(self.emit(self._sparse_current(idx, cnt, self.current)))
        return out

    def _batched_synaptic(self, inputs: list, dense: list, n_dense: int,
                          biased: bool = False) -> np.ndarray:
        """The synaptic currents (no bias, or with it when ``biased``) of the dense steps of
        ``inputs``, stacked, by one GEMM of their input rows: ``[n_dense * rows, cout]``."""
        stacked = np.empty((n_dense * self.rows, self.k_dim), self.gemm_dtype)
        j = 0
        for (idx, cnt), is_dense in zip(inputs, dense):
            if is_dense:
                self._dense_rows(idx, cnt, stacked[j * self.rows:(j + 1) * self.rows])
                j += 1
        currents = np.empty((n_dense * self.rows, self.cout), self.current.dtype)
        if biased:
            self._gemm_biased(stacked, currents)
        else:
            self._gemm(stacked, currents)
        return currents

    # --- bands of output rows ---------------------------------------------------------------
    # A neuron's membrane depends only on its own current, and the current of a band of output
    # rows (conv rows, or tokens) only on the input events that reach them, so a band can run
    # through all T steps of a sample (current, then LIF) without waiting for the other bands:
    # one hand-off per layer and sample on the engine's threads, every stage (scatter, gather,
    # LIF) on every thread, and no dense current of the whole map written and read back. A
    # max-pool, which reads across band edges, follows as a second banded pass over the spike
    # flags of all steps. The kernels are a step's, so the results are :meth:`step`'s: the same
    # integers, and in float the same values for the same path.

    pool = None  # (k, stride, pad) of a max-pool after the LIF (conv layers)

    def _unit_rows(self) -> tuple[int, int]:
        """(output rows, neurons per row) of the banded layout."""
        raise NotImplementedError

    def _row_work(self, inputs: list) -> np.ndarray:
        """Per output row, the input events (times taps) that reach it over ``inputs``."""
        raise NotImplementedError

    def _band_current(self, idx, cnt, cur, counters, r0: int, r1: int, gathers: bool) -> None:
        """An event step's current of output rows r0:r1 into ``cur`` (bias included)."""
        raise NotImplementedError

    def _band_bounds(self, inputs: list, dense: list | None = None):
        """Row edges of one band per engine thread, balanced by the work each band's rows
        will see (the events that reach them, plus the LIF's neurons); None when the layer is
        to run step by step: one thread, a probe or a recorder watching its neurons (they see
        whole steps), or too few rows."""
        parts = engine_threads()
        neurons = self.neurons
        if (parts < 2 or in_part() or self.probe is not None
                or not isinstance(neurons, LIFNeurons)
                or "fire" in vars(neurons) or "fire_flags" in vars(neurons)):
            return None  # (a framework's neurons (NIR import) step whole layers only)
        rows, row_size = self._unit_rows()
        if rows < 2:
            return None
        parts = min(parts, rows)
        # a weight row of Cout per event that reaches a row, 4 ops per neuron for the LIF, and
        # a dense step's GEMM the same on every row (its MACs at GEMM_MACS_PER_ADD per add)
        if dense is None:
            dense = [self._dense(idx, self._offline_edge(inputs)) for idx, _ in inputs]
        events = [x for x, d in zip(inputs, dense) if not d]
        gemm = sum(dense) * self.n_neurons * self.k_dim // GEMM_MACS_PER_ADD
        if len(inputs) > 1:  # first a bound without the rows (a small layer's common case:
            # the per-row count costs a search per step, ~0.1 ms a layer and sample)
            most = (sum(idx.shape[0] for idx, _ in events) * self._taps_per_event * self.cout
                    + 4 * len(inputs) * self.n_neurons + gemm)
            if most < BAND_MIN_OPS:
                return None
        work = (self._row_work(events) * self.cout + 4 * len(inputs) * row_size
                + gemm // rows)
        if len(inputs) > 1 and work.sum() < BAND_MIN_OPS:
            return None
        # each cut at the row edge nearest its share of the work: rounding every cut up gave
        # the first band the row the share ends in, and at 8-16 rows (SPS3, RPE) that row is a
        # tenth of the work: the first band ran 1.2-1.4x longer than the second
        edges = np.concatenate([[0], np.cumsum(work)])
        cuts = [int(np.argmin(np.abs(edges - edges[-1] * i / parts))) for i in range(1, parts)]
        return sorted(set([0] + [min(max(c, 1), rows - 1) for c in cuts] + [rows]))

    def _run_banded(self, inputs: list, bounds: list, dense: list | None = None) -> list:
        """:meth:`run_steps` in bands of output rows ``bounds`` (see the notes above);
        ``dense``: each step's path, when the caller has it."""
        T = len(inputs)
        for _, cnt in inputs:  # refused here, not in a worker thread
            self._check_counts(cnt)
        if dense is None:
            dense = [self._dense(idx, self._offline_edge(inputs)) for idx, _ in inputs]
        dense_cur = self._dense_currents(inputs, dense)
        parts = len(bounds) - 1
        counters = np.zeros((parts, C.N_COUNTERS), np.int64)
        row = self._unit_rows()[1]
        flags = self._band_flags(T) if self.pool is not None else None
        fired = np.zeros((parts, T), np.int64)  # spikes per band and step (before a pool)
        spikes = [[EMPTY] * T for _ in range(parts)]  # without a pool: band-local indices
        gathers = [not d and self._gathers(idx) for (idx, _), d in zip(inputs, dense)]
        neurons = self.neurons
        args = neurons._args

        def band(i):
            r0, r1 = bounds[i], bounds[i + 1]
            lo, hi = r0 * row, r1 * row
            cur = self._band_buffer(i, hi - lo)
            v = neurons.v[lo:hi]
            cnt_i = counters[i]
            for t, (idx, cnt) in enumerate(inputs):
                if dense[t]:
                    current = self._band_dense(dense_cur[t], i, cur, r0, r1, lo, hi)
                elif idx.shape[0] == 0:
                    # a quiet step: the bias alone, as one period (a band starts on a whole
                    # row, so on channel 0 of the period, like the thresholds' period)
                    current = self._bias_period
                else:
                    self._band_current(idx, cnt, cur, cnt_i, r0, r1, gathers[t])
                    current = cur
                if flags is not None:
                    fired[i, t] = neurons._step_flags(v, current, *args, flags[t, lo:hi], cnt_i)
                else:
                    out = self._band_spikes(i, t, hi - lo)
                    n = neurons._step(v, current, *args, out, cnt_i)
                    fired[i, t] = n
                    spikes[i][t] = out[:n]

        run_parts(band, parts)
        neurons._settled = False  # the membranes moved outside the steady-state bookkeeping
        self.spikes_total += int(fired.sum())
        self._book_band_steps(inputs, dense, gathers, counters)
        if flags is not None:
            return self._band_pool(flags, fired.sum(axis=0))
        out = []
        for t in range(T):
            pieces = [spikes[i][t] + np.int32(bounds[i] * row) for i in range(parts)
                      if spikes[i][t].shape[0]]
            idx = np.concatenate(pieces) if pieces else EMPTY
            out.append((idx, ones(idx.shape[0])))
        return out

    def _dense_currents(self, inputs: list, dense: list) -> dict:
        """The dense steps' full currents (bias included) by GEMM, before the bands run:
        {step: flat current}."""
        n_dense = sum(dense)
        if n_dense == 0:
            return {}
        if n_dense >= 2 and self.rows < BATCH_ROWS_BELOW:
            batched = self._batched_synaptic(inputs, dense, n_dense, biased=True)
            steps = [t for t, d in enumerate(dense) if d]
            return {t: batched[j * self.rows:(j + 1) * self.rows].reshape(-1)
                    for j, t in enumerate(steps)}
        out = {}
        for t, (idx, cnt) in enumerate(inputs):
            if dense[t]:
                out[t] = self.synapse(idx, cnt, True).copy()
        return out

    def _band_dense(self, dense_cur, i: int, cur, r0: int, r1: int, lo: int, hi: int):
        """A dense step's current of band i (rows r0:r1, neurons lo:hi), from what
        :meth:`_dense_currents` gave for the step: here a slice of its full current."""
        return dense_cur[lo:hi]

    def _band_buffer(self, i: int, size: int) -> np.ndarray:
        bufs = self.__dict__.setdefault("_band_bufs", {})
        buf = bufs.get(i)
        if buf is None or buf.shape[0] < size:
            buf = bufs[i] = np.empty(self.n_neurons, self.current.dtype)
        return buf[:size]

    def _band_spikes(self, i: int, t: int, size: int) -> np.ndarray:
        """A band's spike indices of step t (a buffer kept per band and step)."""
        bufs = self.__dict__.setdefault("_band_spike_bufs", {})
        buf = bufs.get((i, t))
        if buf is None or buf.shape[0] < size:
            buf = bufs[(i, t)] = np.empty(size, np.int32)
        return buf[:size]

    def _band_flags(self, steps: int) -> np.ndarray:
        buf = getattr(self, "_flags_buf", None)
        if buf is None or buf.shape[0] < steps:
            buf = self._flags_buf = np.empty((steps, self.n_neurons), np.uint8)
        return buf

    def _book_band_steps(self, inputs, dense, gathers, counters) -> None:
        """The counters of a banded run: the bands' ops and neuron updates, plus per step what
        :meth:`step` books outside its kernels (each band booked a step's events again)."""
        total = counters.sum(axis=0)
        total[C.INPUT_EVENTS] = 0
        c = self.counters
        c += total
        for (idx, _), d, g in zip(inputs, dense, gathers):
            if d:
                continue  # booked by the GEMM's own input rows (_dense_rows)
            c[C.INPUT_SITES] += self.in_sites
            c[C.SPARSE_STEPS] += 1
            c[C.INPUT_EVENTS] += idx.shape[0]
        self.gather_steps += sum(gathers)

    def emit(self, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        spikes = self.fire(current)
        return spikes, ones(spikes.shape[0])


class Conv2dLIF(SynapticLIF):
    """Conv2d (BN folded, bias = BN shift) -> LIF, optionally followed by a spike max-pool.

    Input and output are HWC event lists. ``weighted`` inputs (raw event counts into the first
    layer) are counted as multiplies, all others as accumulates (SPEC §5).
    """

    kind = "conv2d"

    def __init__(self, params, in_shape: tuple[int, int, int], *, dtype, input_kind: str,
                 pool: tuple[int, int, int] | None, policy: PathPolicy,
                 multiplicity: int | None = 1, unit=None):
        w, self._bias = self._arithmetic(params, dtype, None if input_kind == "counts"
                                         else multiplicity, unit=unit)
        dtype = self.dtype
        cout, cin, kh, kw = w.shape
        h, wd, c = in_shape
        if c != cin:
            raise ValueError(f"{params.name}: input has {c} channels, weight expects {cin}")
        self.stride, self.pad = int(params.stride), int(params.padding)
        self.out_h = (h + 2 * self.pad - kh) // self.stride + 1
        self.out_w = (wd + 2 * self.pad - kw) // self.stride + 1
        super().__init__(params.name, self.out_h * self.out_w * cout, input_kind)
        self.in_shape, self.kh, self.kw, self.cin, self.cout = in_shape, kh, kw, cin, cout
        self.weighted = input_kind == "counts"
        # scatter rows [(c, ky, kx), Cout]; GEMM rows [(ky, kx, c), Cout] to match im2col
        self.weight_rows = cache_aligned(w.transpose(1, 2, 3, 0).reshape(-1, cout),
                                         self.weight_dtype)
        dense_rows = w.transpose(2, 3, 1, 0).reshape(-1, cout)
        self._setup(params, rows=self.out_h * self.out_w, k_dim=kh * kw * cin,
                    in_sites=h * wd * cin, dtype=dtype, policy=policy, gemm_weight=dense_rows)
        # the gather reads the dense rows in the event path's dtype (int8/int16 when integer:
        # conv2d_gather_int adds int8 weights in int16 lanes)
        self.gather_weight = (self.gemm_weight if self.fixed is None
                              else cache_aligned(dense_rows, self.weight_dtype))
        self._padded = np.empty((h + 2 * self.pad, wd + 2 * self.pad, cin), self.gemm_dtype)
        self._geometry = (wd, cin)
        # the output-stationary gather: stride 1, "same" padding, odd square kernel, not the raw
        # event counts of the first layer (their scatter is best: PERF-NOTES.md)
        self.can_gather = (self.stride == 1 and kh == kw and kh % 2 == 1 and self.pad == kh // 2
                           and not self.weighted)
        self._gather_shape = (h, wd, cin, kh)
        self._taps_per_event = kh * kw
        self._taps = (kh, kw, self.stride, self.pad, self.out_h, self.out_w)
        self.pool = pool
        if pool is not None:
            k, s, p = pool
            self.pool_h = (self.out_h + 2 * p - k) // s + 1
            self.pool_w = (self.out_w + 2 * p - k) // s + 1
            self._pooled = np.empty(self.pool_h * self.pool_w * cout, np.int32)
            self.out_shape = (self.pool_h, self.pool_w, cout)
        else:
            self.out_shape = (self.out_h, self.out_w, cout)

    def _gemm_rows(self, idx, cnt, rows_out) -> None:
        densify_padded(idx, cnt, *self._geometry, self.cout, *self._taps, self._padded,
                       self.counters, self.weighted)
        im2col_padded(self._padded, self.kh, self.kw, self.stride, self.out_h, self.out_w,
                      rows_out)

    def _unit_rows(self) -> tuple[int, int]:
        return self.out_h, self.out_w * self.cout

    def _offline_edge(self, inputs: list) -> bool:
        """A sample's steps (offline): dense from the policy's offline edge, as a dense step
        runs in the layer's bands (:meth:`_band_dense`) or, on one thread, whole."""
        return len(inputs) > 1

    # A conv's dense step in bands: the input map is densified once (its padded map), then each
    # band builds the im2col rows of its own output rows and multiplies them on its own thread.
    # Before, the whole step's im2col ran on the calling thread ahead of the bands (the GEMM
    # split over the threads, the rest waited), which made the dense path a loss on two threads
    # at densities where it won on one.

    def _bands_dense_steps(self) -> bool:
        """Whether dense steps run in bands (the float-BLAS integer GEMM writes through one
        shared buffer, so it keeps the whole-step GEMM)."""
        return self.fixed is None or self.gemm_dtype.kind != "f"

    def _dense_currents(self, inputs: list, dense: list) -> dict:
        if not self._bands_dense_steps():
            return super()._dense_currents(inputs, dense)
        steps = [t for t, d in enumerate(dense) if d]
        if not steps:
            return {}
        maps = np.empty((len(steps),) + self._padded.shape, self.gemm_dtype)
        c = self.counters
        for j, t in enumerate(steps):  # what _dense_rows books, and the padded map
            idx, cnt = inputs[t]
            c[C.INPUT_SITES] += self.in_sites
            densify_padded(idx, cnt, *self._geometry, self.cout, *self._taps, maps[j], c,
                           self.weighted)
            c[C.DENSE_MAC] += self.dense_macs_per_step
            c[C.DENSE_STEPS] += 1
        return {t: maps[j] for j, t in enumerate(steps)}

    def _band_dense(self, dense_cur, i, cur, r0, r1, lo, hi):
        if not self._bands_dense_steps():
            return dense_cur[lo:hi]
        pixels = (r1 - r0) * self.out_w
        bufs = self.__dict__.setdefault("_band_cols", {})
        cols = bufs.get(i)
        if cols is None or cols.shape[0] < pixels:
            cols = bufs[i] = np.empty((pixels, self.k_dim), self.gemm_dtype)
        cols = cols[:pixels]
        im2col_padded(dense_cur[r0 * self.stride:], self.kh, self.kw, self.stride, r1 - r0,
                      self.out_w, cols)
        out = cur.reshape(pixels, self.cout)
        if self._gemm_bias is not None:  # (on this band's thread: a part runs its GEMM whole)
            self._gemm_biased(cols, out)
            return cur
        self._gemm(cols, out)
        # + bias, by whole periods (a band starts on a pixel, so on channel 0 of the period)
        p = self._bias_period
        whole = cur.shape[0] - cur.shape[0] % p.shape[0]
        cur[:whole].reshape(-1, p.shape[0])[:] += p
        cur[whole:] += p[:cur.shape[0] - whole]
        return cur

    def _row_work(self, inputs: list) -> np.ndarray:
        h, wd, cin = self.in_shape
        events = _events_per_row(inputs, h, wd * cin)
        reach = np.zeros(self.out_h, np.int64)  # the events of the input rows a row's taps reach
        for ky in range(self.kh):
            iy = np.arange(self.out_h) * self.stride - self.pad + ky
            ok = (iy >= 0) & (iy < h)
            reach[ok] += events[iy[ok]]
        return reach * self.kw

    def _band_current(self, idx, cnt, cur, counters, r0, r1, gathers) -> None:
        if gathers:
            self._gather(idx, cnt, cur, counters, (r0, r1))
            return
        self._fill_bias(cur)
        a, b = self._reaching(idx, r0, r1)
        self._scatter(idx[a:b], cnt[a:b], cur, counters, (r0, r1))

    def _reaching(self, idx, r0, r1) -> tuple[int, int]:
        """The slice of a sorted event list whose input rows reach output rows r0:r1."""
        h, wd, cin = self.in_shape
        y0 = max(r0 * self.stride - self.pad, 0)
        y1 = min((r1 - 1) * self.stride - self.pad + self.kh, h)
        return (int(np.searchsorted(idx, y0 * wd * cin)),
                int(np.searchsorted(idx, max(y1, y0) * wd * cin)))

    def _band_pool(self, flags: np.ndarray, fired: list) -> list:
        """The max-pool of every step's spike flags, in bands of pooled rows on the engine's
        threads: per step the pooled event list."""
        T = len(fired)
        k, s, p = self.pool
        parts = min(engine_threads(), self.pool_h)
        edges = [self.pool_h * i // parts for i in range(parts + 1)]
        size = self.pool_w * self.cout
        bufs = self.__dict__.setdefault("_pool_bufs", {})
        counts = np.zeros((parts, T), np.int64)

        lanes, cl, width = flag_lanes(flags[:T], self.cout)

        def band(i):
            r0, r1 = edges[i], edges[i + 1]
            buf = bufs.get((i, T))
            if buf is None or buf.shape[1] < (r1 - r0) * size:
                buf = bufs[(i, T)] = np.empty((T, (r1 - r0) * size), np.int32)
            for t in range(T):  # (a loop here: one compiled kernel fewer on a first run)
                if fired[t]:
                    counts[i, t] = maxpool_lanes(lanes[t], self.out_h, self.out_w, cl, width, k,
                                                 s, p, self.pool_h, self.pool_w, r0, r1, buf[t])

        run_parts(band, parts)
        out = []
        for t in range(T):
            pieces = [bufs[(i, T)][t, :counts[i, t]] for i in range(parts) if counts[i, t]]
            idx = np.concatenate(pieces) if len(pieces) > 1 else (
                pieces[0].copy() if pieces else EMPTY)
            out.append((idx, ones(idx.shape[0])))
        return out

    def _scatter(self, idx, cnt, cur_flat, counters, rows=None) -> None:
        """Add the events' current of output rows ``rows`` (default all) into ``cur_flat``."""
        r0, r1 = rows if rows is not None else (0, self.out_h)
        conv2d_scatter(idx, cnt, *self._geometry, self.weight_rows, *self._taps, r0, r1,
                       cur_flat, counters, self.weighted)

    def emit(self, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.pool is None:
            return super().emit(current)
        # LIF flags straight into the max-pool: the pre-pool spike list is never needed
        if self.probe is not None:
            self.probe(self, current)
        flags, n = self.neurons.fire_flags(current, self.counters)
        self.spikes_total += n
        if n == 0:  # nothing fired: nothing to pool
            return EMPTY, EMPTY
        k, s, p = self.pool
        count = maxpool_flags(flags, self.out_h, self.out_w, self.cout, k, s, p, self.pool_h,
                              self.pool_w, 0, self.pool_h, self._pooled)
        return self._pooled[:count].copy(), ones(count)


class LinearLIF(SynapticLIF):
    """Token-wise linear map (Conv1d k1; BN folded) -> LIF over [tokens, channels] event lists."""

    kind = "linear"

    def __init__(self, params, tokens: int, *, dtype, input_kind: str, policy: PathPolicy,
                 multiplicity: int | None = 1, window: float = 1.0, unit=None):
        w, self._bias = self._arithmetic(params, dtype, None if input_kind == "counts"
                                         else multiplicity, window, unit)
        dtype = self.dtype
        cout, cin = w.shape
        super().__init__(params.name, tokens * cout, input_kind)
        self.tokens, self.cin, self.cout = tokens, cin, cout
        self.weighted = input_kind == "counts"
        self.weight = cache_aligned(w.T, self.weight_dtype)  # [Cin, Cout]: one event, one row
        self._setup(params, rows=tokens, k_dim=cin, in_sites=tokens * cin,
                    gemm_weight=self.weight if self.fixed is None else w.T, dtype=dtype,
                    policy=policy)
        self.out_shape = (tokens, cout)
        # gathered as a 1x1 conv over a tokens x 1 grid: [Cin, Cout] are its weight rows. At
        # the block's densities (q, k, v, fc1 take the residual stream at 25-35%, fc2 and proj
        # spikes at 1-5%) it beat the GEMM and the scatter in every arithmetic, 1.8-17x on one
        # thread (issue 20's notes)
        self.can_gather = not self.weighted
        self.gather_weight = self.weight
        self._gather_shape = (tokens, 1, cin, 1)
        self._taps_per_event = 1

    def _gemm_rows(self, idx, cnt, rows_out) -> None:
        scatter_dense(idx, cnt, rows_out.reshape(-1))
        linear_event_ops(cnt, self.cout, self.counters, self.weighted)

    def _scatter(self, idx, cnt, cur_flat, counters) -> None:
        linear_scatter(idx, cnt, self.cin, self.weight, cur_flat, counters, self.weighted)

    def _unit_rows(self) -> tuple[int, int]:
        return self.tokens, self.cout

    def _row_work(self, inputs: list) -> np.ndarray:
        return _events_per_row(inputs, self.tokens, self.cin)

    def _band_current(self, idx, cnt, cur, counters, r0, r1, gathers) -> None:
        """Tokens r0:r1 (scattered: their events are one slice of the sorted list)."""
        if gathers:
            self._gather(idx, cnt, cur, counters, (r0, r1))
            return
        self._fill_bias(cur)
        a = int(np.searchsorted(idx, r0 * self.cin))
        b = int(np.searchsorted(idx, r1 * self.cin))
        if b > a:
            self._scatter(idx[a:b] - np.int32(r0 * self.cin), cnt[a:b], cur, counters)


class TasaLinearLIF(LinearLIF):
    """DS2TA's TASA on a token-wise linear layer (SPEC §4): the LIF sees the attenuated current

        I_t = sum_{m=0}^{T_AW-1} J_{t-m} * 2^(-tau m) + b'

    with J_t = W' s_t the ordinary per-step current without the folded shift b' (by scatter or
    GEMM, chosen per step as in :class:`LinearLIF`) and J = 0 before the sample start. The
    currents of the last T_AW steps live in a ring (the layer's state, cleared by :meth:`reset`);
    a step without input events stores none and is skipped in later sums (adding zero changes no
    bit), and once no stored current is left in the window a quiet step's current is the bias
    alone, as for any layer. ``step`` (streaming) and ``run_steps`` (offline) compute each
    step's J the same way and combine it in the same order (:func:`tasa_current`), so they agree
    to the bit. Counts ``shift``: one per element of a stored current decayed.
    """

    def __init__(self, params, tokens: int, *, dtype, input_kind: str, policy: PathPolicy,
                 tau: int, taw: int, multiplicity: int | None = 1):
        tau, taw = int(tau), int(taw)
        if tau < 0 or taw < 1:
            raise ValueError(f"{params.name}: TASA needs tau >= 0 and T_AW >= 1, got {tau}, {taw}")
        window = sum(2.0 ** (-tau * m) for m in range(taw))  # the attenuated sum's worst case
        super().__init__(params, tokens, dtype=dtype, input_kind=input_kind, policy=policy,
                         multiplicity=multiplicity, window=window)
        dtype = self.dtype
        self.can_gather = False  # J_t is stored without the bias, which the gather adds
        self.tau_exp, self.taw = tau, taw
        size = self.rows * self.cout
        self._ring = np.zeros((taw, size), dtype)  # J of step t in row t % T_AW
        self._live = np.zeros(taw, bool)  # the row holds the current of a step with input
        if self.fixed is None:  # J_{t-m} * 2^(-tau m): exact powers of two
            self._decay = np.array([2.0 ** (-tau * m) for m in range(taw)], dtype)
            self._tasa = tasa_current
        else:  # J_{t-m} >> (tau m): arithmetic shifts (SPEC §6)
            self._decay = np.array([tau * m for m in range(taw)], np.int64)
            self._tasa = tasa_fixed_current
        self._slots = np.empty(taw, np.int64)
        self._factors = np.empty(taw, self._decay.dtype)
        self._zeros = None  # J of a step without input, when earlier steps still count
        self._t = 0  # steps since the sample start

    def reset(self) -> None:
        self.neurons.reset()
        self._live[:] = False
        self._t = 0

    def _sparse_current(self, idx, cnt, cur, counters=None):
        """J_t by scatter into ``cur`` (flat), or None for a step without input events."""
        if counters is None:
            counters = self.counters
        counters[C.INPUT_SITES] += self.in_sites
        counters[C.SPARSE_STEPS] += 1
        if idx.shape[0] == 0:
            return None
        cur[:] = 0
        self._scatter(idx, cnt, cur, counters)
        return cur

    def synaptic(self, idx: np.ndarray, cnt: np.ndarray):
        """This step's J_t (flat, no bias) in its ring row, or None without input events."""
        row = self._ring[self._t % self.taw]
        if not self._dense(idx):
            return self._sparse_current(idx, cnt, row)
        if self._rows_buf is None:
            self._rows_buf = np.empty((self.rows, self.k_dim), self.gemm_dtype)
        self._dense_rows(idx, cnt, self._rows_buf)
        self._gemm(self._rows_buf, row.reshape(self.rows, self.cout))
        return row if idx.shape[0] else None  # a forced GEMM of no input stores no current

    def attenuate(self, j) -> np.ndarray:
        """I_t from J_t (``j``, None for a step without input) and the stored earlier currents;
        stores J_t and advances the window."""
        t, taw = self._t, self.taw
        m = 0
        for back in range(1, min(t, taw - 1) + 1):
            slot = (t - back) % taw
            if self._live[slot]:
                self._slots[m] = slot
                self._factors[m] = self._decay[back]
                m += 1
        row = t % taw
        self._t = t + 1
        if j is None:
            self._live[row] = False
            if m == 0:  # nothing to attenuate: the bias alone, as any quiet step
                if self.probe is None:
                    return self._bias_period
                self._fill_bias(self.current)
                return self.current.reshape(-1)
            if self._zeros is None:
                self._zeros = np.zeros(self._ring.shape[1], self._ring.dtype)
            j = self._zeros
        else:
            if j is not self._ring[row]:
                self._ring[row] = j
            self._live[row] = True
        out = self.current.reshape(-1)
        self._tasa(j, self._ring, self._slots[:m], self._factors[:m], self._bias_period, out,
                   self.counters)
        return out

    def step(self, idx: np.ndarray, cnt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.emit(self.attenuate(self.synaptic(idx, cnt)))

    def run_steps(self, inputs: list) -> list:
        """Many steps at once (offline): the dense steps' J share one GEMM, then every step is
        attenuated and fired in time order, exactly as :meth:`step` does it."""
        dense = [self._dense(idx, self._offline_edge(inputs)) for idx, _ in inputs]
        n_dense = sum(dense)
        if self.rows >= BATCH_ROWS_BELOW or n_dense < 2:
            return [self.step(idx, cnt) for idx, cnt in inputs]
        currents = self._batched_synaptic(inputs, dense, n_dense)
        out = []
        j = 0
        for (idx, cnt), is_dense in zip(inputs, dense):
            if is_dense:
                cur = currents[j * self.rows:(j + 1) * self.rows].reshape(-1)
                cur = cur if idx.shape[0] else None
                j += 1
            else:
                cur = self._sparse_current(idx, cnt, self._ring[self._t % self.taw])
            out.append(self.emit(self.attenuate(cur)))
        return out


# --- embedding stages beyond conv -> LIF -> pool (model descriptions) --------------------------

def _valid_taps(size: int, k: int, stride: int, pad: int, out: int) -> np.ndarray:
    """Per input coordinate, how many output coordinates it reaches (a tap's fan-out)."""
    pos = np.arange(size)[:, None] + pad - np.arange(k)[None, :]
    o = pos // stride
    return ((pos >= 0) & (pos % stride == 0) & (o < out)).sum(axis=1)


class Conv2dStage(Conv2dLIF):
    """An embedding stage that :class:`Conv2dLIF` cannot express: the real current max-pooled
    BEFORE the LIF (QKFormer, the Spike-driven Transformer; ``pool_before``), no LIF at all
    (``lif`` False: the stage outputs its real current, SDT's RPE), the current that reaches the
    LIF kept for a later stage (``keep_current``: SDT's ``x_feat``), and real-valued input
    (``input_kind`` "real": pixels, or a real map) through the dense path, :meth:`step_real`.

    A pooled or kept current is a whole map, so this layer runs step by step, never in bands of
    rows; its dense steps still share one GEMM offline. Real outputs and kept currents are dense
    flat HWC arrays. In an integer mode a max over one channel's currents is exact in the
    channel's unit, so ``pool_before`` runs there too. Real inputs are refused there (their values
    have no integer unit); a current given out (no LIF, or kept) is an integer in the unit
    ``unit`` it shares with the currents it is added to (SDT's membrane stream), and refused
    without one.
    """

    def __init__(self, params, in_shape: tuple[int, int, int], *, dtype, input_kind: str,
                 policy: PathPolicy, multiplicity: int | None = 1,
                 pool: tuple[int, int, int] | None = None,
                 pool_before: tuple[int, int, int] | None = None, lif: bool = True,
                 keep_current: bool = False, unit=None):
        real = input_kind == "real"
        # a current given out (no LIF, or kept) is an integer only in a unit its reader shares
        if isinstance(arithmetic(dtype), Fixed) and (real or (unit is None
                                                              and (not lif or keep_current))):
            from ..fixedpoint import FixedPointError

            what = ("takes real values" if real else "outputs its real current" if not lif
                    else "keeps its real current")
            raise FixedPointError(f"{params.name}: {what}, which the integer modes cannot carry "
                                  "exactly; run it in a float --dtype")
        if pool is not None and (pool_before is not None or not lif):
            raise ValueError(f"{params.name}: a max-pool after the LIF needs a LIF and no pool "
                             "before it")
        super().__init__(params, in_shape, dtype=dtype, input_kind=input_kind, pool=pool,
                         policy=policy, multiplicity=multiplicity, unit=unit)
        self.lif, self.keep_current, self.pool_before = lif, keep_current, pool_before
        self.kept: list = []  # the kept currents of the steps run, for the caller to take
        cout = self.cout
        if pool_before is not None:
            k, s, p = pool_before
            self.cur_pool_h = (self.out_h + 2 * p - k) // s + 1
            self.cur_pool_w = (self.out_w + 2 * p - k) // s + 1
            self.out_shape = (self.cur_pool_h, self.cur_pool_w, cout)
            self._pooled = np.empty(self.cur_pool_h * self.cur_pool_w * cout, self.dtype)
        sites = self.out_shape[0] * self.out_shape[1] * cout if pool is None else \
            self.out_h * self.out_w * cout
        # a quiet step's current is the bias everywhere, and so is its max-pool
        self._lif_period = period(self.bias, sites)
        if not lif:
            self.neurons = None
            self.n_neurons = 0
        elif pool_before is not None:  # the LIF runs on the pooled map
            self.n_neurons = sites
            self.neurons = self._make_neurons(params, self.dtype)
            self.neurons.steady = self._lif_period
        self.real_input = real
        if real:
            self.can_gather = False
            h, wd, _ = in_shape
            self._real_padded = np.zeros((h + 2 * self.pad, wd + 2 * self.pad, self.cin),
                                         self.dtype)
            self._real_rows = np.empty((self.rows, self.k_dim), self.dtype)
            self._real_current = np.empty((self.rows, cout), self.dtype)
            self._last_real = None
            # fan-out of an input pixel: what a weighted scatter would count as multiplies
            self._pixel_taps = np.outer(
                _valid_taps(h, self.kh, self.stride, self.pad, self.out_h),
                _valid_taps(wd, self.kw, self.stride, self.pad, self.out_w)) * cout

    def reset(self) -> None:
        if self.neurons is not None:
            self.neurons.reset()
        if self.real_input:
            self._last_real = None
        self.kept.clear()

    def _band_bounds(self, inputs: list, dense: list | None = None):
        return None  # whole maps only: a pool before the LIF reads across rows

    def _whole(self, current: np.ndarray, size: int) -> np.ndarray:
        """A dense copy of a current (a quiet step's is one period of it)."""
        if current.shape[0] == size:
            return current.copy()
        return np.tile(current, size // current.shape[0])

    def emit(self, current: np.ndarray):
        if self.pool_before is not None:
            if current is self._bias_period:  # a quiet step: pooling the bias changes nothing
                current = self._lif_period
            else:
                k, s, p = self.pool_before
                maxpool_current(current, self.out_h, self.out_w, self.cout, k, s, p,
                                self.cur_pool_h, self.cur_pool_w, self._pooled, self.counters)
                current = self._pooled
        size = self.out_shape[0] * self.out_shape[1] * self.cout if self.pool is None else \
            self.out_h * self.out_w * self.cout
        if self.keep_current:
            self.kept.append(self._whole(current, size))
        if not self.lif:
            if self.probe is not None:
                self.probe(self, current)
            return self._whole(current, size)
        return super().emit(current)

    # --- real-valued input (pixels, a real map): the dense path, every step --------------------

    def real_current(self, x: np.ndarray) -> np.ndarray:
        """The current of a real-valued input map ``x`` (flat HWC): im2col and one GEMM. The
        same input as the step before (direct encoding repeats the image) reuses its current:
        nothing is recomputed, and no multiply is counted for it."""
        x = np.asarray(x).reshape(-1)
        c = self.counters
        c[C.INPUT_SITES] += self.in_sites
        nonzero = x != 0
        c[C.INPUT_EVENTS] += int(np.count_nonzero(nonzero))
        cur = self._real_current
        if self._last_real is not None and np.array_equal(x, self._last_real):
            return cur.reshape(-1)
        self._last_real = x.copy()
        h, wd, cin = self.in_shape
        p = self.pad
        self._real_padded[p:p + h, p:p + wd] = x.reshape(h, wd, cin)
        im2col_padded(self._real_padded, self.kh, self.kw, self.stride, self.out_h, self.out_w,
                      self._real_rows)
        gemm(self._real_rows, self.gemm_weight, cur)
        self._add_bias(cur)
        c[C.MAC] += int((nonzero.reshape(h, wd, cin).sum(axis=2) * self._pixel_taps).sum())
        c[C.DENSE_MAC] += self.dense_macs_per_step
        c[C.DENSE_STEPS] += 1
        return cur.reshape(-1)

    def step_real(self, x: np.ndarray):
        """One step on a real-valued input map: its output (spikes, or a real map)."""
        return self.emit(self.real_current(x))
