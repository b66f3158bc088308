"""Which counted accumulates the sparse paths really did, and how long those paths took.

The layers' ``ac`` counter (SPEC §5) also counts, on steps that ran as a GEMM, the accumulates a
scatter *would* have done (``densify_padded`` / ``linear_event_ops`` book them so the op report
does not depend on the path). Those were done by the GEMM, inside ``dense_mac``: dividing all of
``ac`` by the engine's time credits GEMM work to the scatter and can beat the scatter roofline.

:class:`PathMeter` splits ``ac`` without changing the layers: on one engine instance it wraps each
synaptic layer's event-path kernels (``_scatter`` and, on convs that can, ``_gather``: whether a
layer runs step by step or in bands of rows on several threads, its event-driven currents go
through them), the dense step's ``_dense_rows`` and the attention core's ``attend``, reading the
counters each call is given and a clock around it (:func:`.hooks.override`: the engine does not
see the wrappers). It is meant for one untimed accounting run; :meth:`close` removes them.
"""

from __future__ import annotations

import threading
import time

from ..kernels import counters as C
from .hooks import Meter, override


class PathMeter(Meter):
    """Per-path split of an engine's counted work over the runs made while it is attached.

    - ``scatter_ac`` / ``scatter_s``: accumulates booked by event-driven (scatter or gather) steps
      of layers with spike or integer input, and the time spent in those steps (summed over the
      engine's threads when an offline run computes several steps at once);
    - ``scatter_mac`` / ``scatter_mac_s``: the same for weighted input (raw event counts: the first
      conv, whose scatter multiplies);
    - ``gemm_step_ac``: accumulates booked on steps that ran as a GEMM (their work is dense_mac);
    - ``attention_ac`` / ``attention_s``: the event-driven attention core (spike-pair adds).
    """

    def __init__(self, engine, clock=time.perf_counter):
        self.clock = clock
        self._lock = threading.Lock()  # parallel offline steps are metered from worker threads
        self.scatter_ac = self.scatter_mac = self.gemm_step_ac = self.attention_ac = 0
        self.scatter_s = self.scatter_mac_s = self.attention_s = 0.0
        self.unmetered: list[str] = []  # synaptic layers without the expected step methods
        self._undo: list = []
        for layer in engine.layers:
            wrappers = {}
            if hasattr(layer, "_scatter") and hasattr(layer, "_dense_rows"):
                weighted = bool(getattr(layer, "weighted", False))
                for method in ("_scatter", "_gather"):
                    if hasattr(layer, method):
                        wrappers[method] = self._wrap(
                            layer, method, "scatter_mac" if weighted else "scatter_ac",
                            "scatter_mac_s" if weighted else "scatter_s")
                wrappers["_dense_rows"] = self._wrap(layer, "_dense_rows", "gemm_step_ac", None,
                                                     counters_arg=None)
            elif hasattr(layer, "_core_current"):  # a step's attention core, counters last
                wrappers["_core_current"] = self._wrap(layer, "_core_current", "attention_ac",
                                                       "attention_s", counters_arg=-1)
            elif hasattr(layer, "attend"):
                wrappers["attend"] = self._wrap(layer, "attend", "attention_ac", "attention_s",
                                                counters_arg=None)
            elif getattr(layer, "dense_macs_per_step", 0):
                self.unmetered.append(layer.name)
            if wrappers:
                self._undo.append(override(layer, wrappers))

    def _wrap(self, layer, method: str, ops_field: str, time_field: str | None,
              counters_arg: int | None = 3):
        original = getattr(layer, method)
        slot = C.MAC if ops_field == "scatter_mac" else C.AC
        counters = layer.counters
        clock = self.clock

        def metered(*args, **kwargs):
            # the kernels' wrappers are given the counters to book into (a worker thread of a
            # parallel offline run has its own array): the 4th argument
            given = None
            if counters_arg == -1:
                given = args[-1] if args else None
            elif counters_arg is not None:
                given = (args[counters_arg] if len(args) > counters_arg
                         else kwargs.get("counters"))
            target = counters if given is None else given
            before = int(target[slot])
            start = clock()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = clock() - start
                with self._lock:
                    setattr(self, ops_field,
                            getattr(self, ops_field) + int(target[slot]) - before)
                    if time_field is not None:
                        setattr(self, time_field, getattr(self, time_field) + elapsed)

        return metered


    def summary(self) -> dict:
        return {
            "ac_scatter": self.scatter_ac, "scatter_s": self.scatter_s,
            "scatter_ac_per_s": self.scatter_ac / self.scatter_s if self.scatter_s > 0 else None,
            "mac_scatter": self.scatter_mac, "scatter_mac_s": self.scatter_mac_s,
            "ac_gemm_steps": self.gemm_step_ac,
            "ac_attention": self.attention_ac, "attention_s": self.attention_s,
            "unmetered_layers": list(self.unmetered),
        }
