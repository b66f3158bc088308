"""NeuroBench's metrics (PyPI ``neurobench`` 2.3) from what the engine really did, per sample.

NeuroBench measures a torch network through hooks: every call of a ``Linear`` / ``Conv`` layer
and every output of a spiking neuron module. Its rules, read from its source
(``neurobench/metrics``), and how they map onto the engine:

* ``SynapticOperations``: per layer call, the input and the weights are made binary (non-zero ->
  1) and the layer is run without bias: the effective operations are the (non-zero input,
  non-zero weight) pairs that reach an output. The whole call counts as ACs when its input holds
  only 0 and +-1, otherwise every one of its operations is a MAC. ``Dense`` is the same with every
  input and weight set to 1 (a convolution's zero padding still counts nothing). Only Linear,
  Conv and recurrent layers are synaptic: pooling, normalisation, residual adds, bias and bare
  matmuls (the attention products) are not counted. Totals are per sample.
  Here a layer call is one step of one synaptic layer: its input event list ``(idx, cnt)`` and
  a table of each input site's non-zero fan-out (:func:`fan_out`) give the effective count of the
  step, ``cnt`` says whether it was binary. Multiplicities count once, as in NeuroBench.
* ``ActivationSparsity``: zero outputs over all outputs of the spiking layers, over all steps.
* ``MembraneUpdates``: per spiking layer, every neuron at the first step, then per step the
  neurons whose membrane changed.
* ``Footprint``, ``ParameterCount``, ``ConnectionSparsity``: static, from the weights the engine
  holds (BatchNorm folded, in the engine's arithmetic).

The engine's own counters (``ac`` counts multiplicity x fan-out including zero weights, neuron
updates count every membrane every step, the attention work) stay as they are: these are a second
vocabulary beside them, not a replacement.

:class:`NeuroBenchWatch` observes an engine without changing any result or path: it wraps the
synaptic layers' ``step`` / ``run_steps`` (to see each step's input) and the neurons' step
kernels (to see each membrane before and after), as instance attributes.
"""

from __future__ import annotations

import threading

import numpy as np

from .layers.synapses import Conv2dLIF, SynapticLIF

#: The keys of the ``"neurobench"`` object: NeuroBench's metric class names.
METRICS = ("SynapticOperations", "ActivationSparsity", "MembraneUpdates", "Footprint",
           "ConnectionSparsity", "ParameterCount")


def fan_out(layer) -> tuple[np.ndarray, int]:
    """(per input site, the non-zero weights its value reaches; the dense operations of one
    step) of a conv or linear layer of the engine, sites in the engine's flat input order."""
    if isinstance(layer, Conv2dLIF):  # weight rows (c, ky, kx) x cout
        h, w, cin = layer.in_shape
        kh, kw, s, p = layer.kh, layer.kw, layer.stride, layer.pad
        nz = np.count_nonzero(layer.weight_rows, axis=1).reshape(cin, kh, kw).astype(np.int64)

        def reach(size, k, out):  # [k, size]: does input row y feed an output through tap ky?
            y = np.arange(size)[None, :] + p - np.arange(k)[:, None]
            return ((y % s == 0) & (y >= 0) & (y // s < out)).astype(np.int64)

        ry, rx = reach(h, kh, layer.out_h), reach(w, kw, layer.out_w)
        table = np.einsum("ay,bx,cab->yxc", ry, rx, nz).reshape(-1)
        dense = int((ry.sum(axis=1)[:, None] * rx.sum(axis=1)[None, :]).sum()) * cin * layer.cout
        return table, dense
    weight = layer.weight  # LinearLIF: [cin, cout], applied to every token
    nz = np.count_nonzero(weight, axis=1).astype(np.int64)
    return np.tile(nz, layer.tokens), int(layer.tokens * weight.size)


def input_units(engine) -> dict[str, int]:
    """Per synaptic layer of a sequential SNN, the integer input value that stands for 1 in the
    framework's network: k*k after an average pool (whose 1/k^2 the engine folds into the next
    weights), else 1."""
    stages = getattr(getattr(engine, "model_file", None), "stages", None)
    if stages is None:
        return {}
    units, unit = {}, 1
    for st in stages:
        if st.op == "avgpool":
            unit *= st.kernel * st.kernel
        elif st.weight is not None:
            units[st.name] = unit
            unit = 1
    return units


class _Synapses:
    """One synaptic layer's NeuroBench tally."""

    def __init__(self, layer, unit: int):
        self.layer = layer
        self.table, self.dense_step = fan_out(layer)
        self.spikes = layer.input_kind == "spikes"
        self.unit = unit
        self.ac = self.mac = self.dense = 0

    def see(self, idx, cnt) -> None:
        self.dense += self.dense_step
        if idx.shape[0] == 0:
            return
        ops = int(self.table[idx].sum())
        if self.spikes or bool(np.all(np.abs(cnt) == self.unit)):
            self.ac += ops
        else:
            self.mac += ops


class _Membranes:
    """One spiking layer's membrane updates and non-zero outputs, seen through its neurons'
    step kernels (called on the whole membrane, or on one band of it per engine thread)."""

    def __init__(self, layer, lock):
        self.layer, self.neurons, self.lock = layer, layer.neurons, lock
        self.size = int(layer.n_neurons)
        self.updates = self.fired = 0
        self.seen: set[int] = set()  # offsets of membrane slices stepped since the reset

    def see(self, v: np.ndarray, before: np.ndarray, fired: int) -> None:
        offset = (v.ctypes.data - self.neurons.v.ctypes.data) // v.itemsize
        with self.lock:
            if offset in self.seen:
                self.updates += int(np.count_nonzero(v != before))
            else:  # NeuroBench counts every neuron of a layer's first step
                self.seen.add(offset)
                self.updates += v.shape[0]
            self.fired += fired


def _spiked(result) -> int:
    """Spiking neurons of a step kernel's return: n, or (n, settled) for a quiet step."""
    return int(result[0] if isinstance(result, tuple) else result)


class NeuroBenchWatch:
    """NeuroBench's per-sample metrics of one engine (:func:`watch` installs it once)."""

    def __init__(self, engine):
        self.engine = engine
        self.lock = threading.Lock()
        units = input_units(engine)
        self.synapses = [_Synapses(layer, units.get(layer.name, 1)) for layer in engine.layers
                         if isinstance(layer, SynapticLIF)]
        self.membranes = [_Membranes(layer, self.lock) for layer in engine.layers
                          if getattr(layer, "neurons", None) is not None
                          and hasattr(layer.neurons, "v")]
        self.static = static_metrics(engine)
        self._installed: list = []  # (object, its own attributes before the wrappers)

    def shares_neurons(self) -> bool:
        """Whether another observer (a `~eventformer.record.Recorder`) wraps the neurons: a
        second pass over a sample would then be recorded twice."""
        return any("fire" in m.neurons.__dict__ or "fire_flags" in m.neurons.__dict__
                   for m in self.membranes)

    def __enter__(self) -> "NeuroBenchWatch":
        """Observe the engine (the wrappers are removed again on exit, so an engine runs
        without them, at full speed, outside the block)."""
        if not self._installed:
            for s in self.synapses:
                self._installed.append((s.layer, dict(s.layer.__dict__)))
                self._wrap_synapses(s)
            for m in self.membranes:
                self._installed.append((m.neurons, dict(m.neurons.__dict__)))
                self._wrap_neurons(m)
        return self

    def __exit__(self, *exc) -> None:
        for obj, before in reversed(self._installed):
            for name in ("step", "run_steps", "_step", "_step_flags", "_quiet", "reset"):
                obj.__dict__.pop(name, None)
                if name in before:  # a kernel bound on the instance, or another observer's
                    obj.__dict__[name] = before[name]
        self._installed = []

    @staticmethod
    def _wrap_synapses(tally: _Synapses) -> None:
        layer = tally.layer
        step, run_steps = layer.step, layer.run_steps

        # a layer's run_steps may call its own step (DS2TA's TASA layers): each input once
        inside = [False]

        def seen_step(idx, cnt):
            if not inside[0]:
                tally.see(idx, cnt)
            return step(idx, cnt)

        def seen_run_steps(inputs):
            for idx, cnt in inputs:
                tally.see(idx, cnt)
            inside[0] = True
            try:
                return run_steps(inputs)
            finally:
                inside[0] = False

        layer.step, layer.run_steps = seen_step, seen_run_steps
        return ("step", "run_steps")

    @staticmethod
    def _wrap_neurons(tally: _Membranes) -> None:
        neurons = tally.neurons
        names = []
        for name in ("_step", "_step_flags", "_quiet"):
            kernel = neurons.__dict__.get(name)
            if kernel is None:
                continue

            def seen(v, *args, _kernel=kernel):
                before = v.copy()
                result = _kernel(v, *args)
                tally.see(v, before, _spiked(result))
                return result

            setattr(neurons, name, seen)
            names.append(name)
        reset = neurons.reset

        def seen_reset():
            reset()
            tally.seen.clear()

        neurons.reset = seen_reset
        return (*names, "reset")

    def clear(self) -> None:
        """Start a sample's tally (call before the engine runs it)."""
        for s in self.synapses:
            s.ac = s.mac = s.dense = 0
        for m in self.membranes:
            m.updates = m.fired = 0

    def activations(self, steps: int) -> tuple[int, int]:
        """(outputs, non-zero outputs) of the spiking layers over the sample's ``steps`` steps:
        ``ActivationSparsity``'s integers, which NeuroBench pools over a batch."""
        return (sum(m.size for m in self.membranes) * steps,
                sum(m.fired for m in self.membranes))

    def sample(self, steps: int) -> dict:
        """The ``"neurobench"`` object of the sample run since :meth:`clear` (``steps`` steps)."""
        ac = sum(s.ac for s in self.synapses)
        mac = sum(s.mac for s in self.synapses)
        dense = sum(s.dense for s in self.synapses)
        head = getattr(self.engine, "head", None)
        if hasattr(head, "sums") and hasattr(head, "weight"):  # one Linear call on the means
            h_mac, h_ac, h_dense = head_operations(head)
            ac, mac, dense = ac + h_ac, mac + h_mac, dense + h_dense
        sites, fired = self.activations(steps)
        return {
            "SynapticOperations": {"Effective_MACs": mac, "Effective_ACs": ac, "Dense": dense},
            "ActivationSparsity": (sites - fired) / sites if sites else 0.0,
            "MembraneUpdates": sum(m.updates for m in self.membranes),
            **self.static,
        }


def head_operations(head) -> tuple[int, int, int]:
    """(MACs, ACs, dense) of a mean-then-linear head's one call: its input, the channel means
    over tokens and steps, is binary only where every non-zero mean is +-1."""
    weight = np.asarray(head.weight)  # [classes, D]
    nz = np.count_nonzero(weight, axis=0)
    active = head.sums != 0
    ops = int(nz[active].sum())
    whole = head.tokens * max(head.steps, 1)
    binary = bool(np.all(np.abs(head.sums[active]) == whole))
    return (0, ops, weight.size) if binary else (ops, 0, weight.size)


def static_metrics(engine) -> dict:
    """``Footprint`` (bytes of the weights and biases as the engine holds them),
    ``ConnectionSparsity`` (zero weights over weights, 4 decimals, as NeuroBench rounds) and
    ``ParameterCount`` (weights and biases) of the engine's synaptic layers and head."""
    count = zeros = weights = footprint = 0
    arrays = []
    for layer in engine.layers:
        if not isinstance(layer, SynapticLIF):
            continue
        w = layer.weight_rows if isinstance(layer, Conv2dLIF) else layer.weight
        arrays.append((w, np.asarray(layer.bias)[:layer.cout]))
    head = getattr(engine, "head", None)
    if hasattr(head, "weight"):
        arrays.append((np.asarray(head.weight), np.asarray(head.bias)))
    for w, b in arrays:
        count += w.size + b.size
        zeros += int(np.count_nonzero(w == 0))
        weights += w.size
        footprint += w.nbytes + b.nbytes
    return {"Footprint": int(footprint),
            "ConnectionSparsity": round(zeros / weights, 4) if weights else 0.0,
            "ParameterCount": int(count)}


def watch(engine) -> NeuroBenchWatch:
    """The engine's :class:`NeuroBenchWatch` (made on the first call; observing only inside
    its ``with`` block)."""
    found = engine.__dict__.get("_neurobench_watch")
    if found is None:
        found = engine.__dict__["_neurobench_watch"] = NeuroBenchWatch(engine)
    return found


def mean_per_sample(objects: list[dict]) -> dict:
    """The mean ``"neurobench"`` object of several samples (NeuroBench's dataset figures: each
    metric averaged per sample; the static ones are the model's)."""
    if not objects:
        return {}
    n = len(objects)
    syn = {k: sum(o["SynapticOperations"][k] for o in objects) / n
           for k in ("Effective_MACs", "Effective_ACs", "Dense")}
    out = {"SynapticOperations": syn}
    for key in ("ActivationSparsity", "MembraneUpdates"):
        out[key] = sum(o[key] for o in objects) / n
    for key in ("Footprint", "ConnectionSparsity", "ParameterCount"):
        out[key] = objects[-1][key]
    return out


def describe(nb: dict) -> str:
    """One line for the human tables."""
    syn = nb["SynapticOperations"]
    return (f"NeuroBench: {syn['Effective_ACs']:,.0f} ACs, {syn['Effective_MACs']:,.0f} MACs "
            f"(dense {syn['Dense']:,.0f}), activation sparsity {nb['ActivationSparsity']:.4f}, "
            f"{nb['MembraneUpdates']:,.0f} membrane updates, {nb['ParameterCount']:,} "
            f"parameters ({nb['Footprint']:,} bytes, connection sparsity "
            f"{nb['ConnectionSparsity']:.4f})")
