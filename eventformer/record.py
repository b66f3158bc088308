"""What the engine did, step by step, kept for pictures: the spikes of chosen layers, and the
attention maps formed from the q and k spikes of a block.

:class:`Recorder` wraps the neurons of the layers it watches (instance attributes on their
``fire`` / ``fire_flags``, removed again on exit), so it sees exactly the spikes the engine's LIF
kernels emitted, on whatever path a step took, without changing any result or path. It keeps, per
step, the spike indices (before an SPS stage's max-pool: the layer's neurons, as the report counts
them) and a copy of the layer's op counters at that moment.

The attention map of a step (SPEC §4) is formed here in numpy from the recorded q and k spikes:
``(Q K^T)[i, j]`` per head, the count of channels query token i and key token j share, then
DS2TA's NSAD table or SSA_Bin's threshold. Nothing is recomputed for the logits: the map is only
drawn, and :func:`map_entries` checks it against the counters the engine's kernels kept
(``attn_entries``, ``attn_nonzero`` of the attention LIF layer) for that step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Self

import numpy as np

from .errors import EventformerError
from .kernels import counters as C


@dataclass
class LayerTrace:
    """The recorded steps of one layer: ``spikes[t]`` the neurons that fired at step t (sorted
    flat indices, channel-innermost) and ``counters[t]`` the layer's op counters (cumulative since
    its stats were last cleared) at that step, taken after the step's synaptic work."""

    name: str
    neurons: int
    channels: int
    spikes: list = field(default_factory=list)
    counters: list = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.spikes)

    def step_counts(self, key: str) -> np.ndarray:
        """Per-step increments of one counter (``"attn_entries"``, ``"ac"``, ...), assuming the
        stats were cleared before the first recorded step (as a classification does)."""
        if not self.counters:
            return np.zeros(0, np.int64)
        col = np.array([c[C.NAMES.index(key)] for c in self.counters], np.int64)
        return np.diff(col, prepend=0)


def layer_names(engine) -> list[str]:
    """The engine's spiking layers, in forward order (the report's rows, without the head)."""
    return [layer.name for layer in engine.layers]


def find_layer(engine, name: str):
    """The engine's layer called ``name``; an unknown name is one sentence listing the valid
    ones."""
    for layer in engine.layers:
        if layer.name == name:
            return layer
    raise EventformerError(f"no layer {name!r} in this model; its layers: "
                           f"{', '.join(layer_names(engine))}")


def default_layer(engine) -> str:
    """The layer whose raster is drawn unless one is chosen: the first block's attention LIF, or
    the last patch-embedding stage when the model has no block, else its last spiking layer."""
    names = [layer.name for layer in engine.layers if _neurons(layer) is not None]
    for n in names:
        if n.endswith(".attn.attn_lif"):
            return n
    sps = [n for n in names if n.startswith("patch_embed.proj_lif")]
    return sps[-1] if sps else names[-1]


def _neurons(layer):
    """A layer's neurons object, or None for a stage without neurons (a pooling stage)."""
    neurons = getattr(layer, "neurons", None)
    return neurons if neurons is not None and hasattr(neurons, "fire") else None


def channels_of(layer) -> int:
    """The innermost (channel) axis of a layer's neurons."""
    for attr in ("cout", "dim"):
        value = getattr(layer, attr, None)
        if value:
            return int(value)
    return 1


class Recorder:
    """Record the spikes (and op counters) of the named layers of ``engine`` while in the
    ``with`` block; :meth:`take` hands over what was recorded since the last take.

    >>> with Recorder(engine, ["block.0.attn.q_lif"]) as rec:
    ...     classify(engine, recording)
    ...     trace = rec.take()["block.0.attn.q_lif"]
    """

    def __init__(self, engine, names):
        self.layers = [find_layer(engine, n) for n in dict.fromkeys(names)]
        for layer in self.layers:
            if _neurons(layer) is None:
                spiking = [x.name for x in engine.layers if _neurons(x) is not None]
                raise EventformerError(f"{layer.name} has no neurons to record (a pooling "
                                       f"stage); layers with neurons: {', '.join(spiking)}")
        self.traces: dict[str, LayerTrace] = {}
        self._installed: list = []
        self._clear()

    def _clear(self) -> None:
        self.traces = {layer.name: LayerTrace(layer.name, int(layer.n_neurons),
                                              channels_of(layer)) for layer in self.layers}

    def take(self) -> dict[str, LayerTrace]:
        out = self.traces
        self._clear()
        return out

    def __enter__(self) -> Self:
        for layer in self.layers:
            neurons = layer.neurons
            saved = {k: neurons.__dict__[k] for k in ("fire", "fire_flags")
                     if k in neurons.__dict__}
            self._installed.append((neurons, saved))

            def rec_fire(current, counters, _fire=neurons.fire, _layer=layer):
                snapshot = _layer.counters.copy()
                out = _fire(current, counters)
                idx = out[0] if isinstance(out, tuple) else out  # (idx, cnt): multi-spike neurons
                self._keep(_layer, np.array(idx, np.int32), snapshot)
                return out

            neurons.fire = rec_fire
            if not hasattr(neurons, "fire_flags"):
                continue

            def rec_fire_flags(current, counters, _fire=neurons.fire_flags, _layer=layer,
                               _size=neurons.size):
                snapshot = _layer.counters.copy()
                flags, n = _fire(current, counters)
                spikes = np.flatnonzero(flags[:_size]).astype(np.int32) if n else \
                    np.empty(0, np.int32)
                self._keep(_layer, spikes, snapshot)
                return flags, n

            neurons.fire_flags = rec_fire_flags
        return self

    def _keep(self, layer, spikes, snapshot) -> None:
        trace = self.traces[layer.name]
        trace.spikes.append(spikes)
        trace.counters.append(snapshot)

    def __exit__(self, *exc) -> None:
        for neurons, saved in reversed(self._installed):
            for key in ("fire", "fire_flags"):
                neurons.__dict__.pop(key, None)
            neurons.__dict__.update(saved)
        self._installed = []


# --- attention maps --------------------------------------------------------------------------

#: The operators whose block forms a (query, key) map (SAFormer forms none: a channel gate).
MAP_OPERATORS = ("ssa", "ds2ta", "ssa_bin")


def block_of(name: str) -> int | None:
    """The block index of a layer name such as ``block.1.attn.q_lif``, else None."""
    parts = name.split(".")
    if len(parts) > 1 and parts[0] == "block" and parts[1].isdigit():
        return int(parts[1])
    return None


def attention_layers(block: int) -> tuple[str, str, str]:
    """The names of a block's q LIF, k LIF and attention LIF."""
    p = f"block.{block}.attn"
    return f"{p}.q_lif", f"{p}.k_lif", f"{p}.attn_lif"


def attention_counts(q_idx: np.ndarray, k_idx: np.ndarray, tokens: int, dim: int,
                     heads: int) -> np.ndarray:
    """The raw attention map of one step, ``int64 [heads, tokens (query), tokens (key)]``:
    entry [h, i, j] counts the channels of head h on which query token i and key token j both
    spiked, (Q_h K_h^T)[i, j] (SPEC §2). ``q_idx``, ``k_idx``: the step's spikes of the q and k
    LIF, flat ``token * dim + channel``."""
    d = dim // heads

    def dense(idx):
        m = np.zeros(tokens * dim, np.int64)
        m[np.asarray(idx, np.int64)] = 1
        return m.reshape(tokens, heads, d).transpose(1, 0, 2)  # [H, N, d]

    q, k = dense(q_idx), dense(k_idx)
    return q @ k.transpose(0, 2, 1)


def mapped_attention(counts: np.ndarray, attention: str, params: dict) -> np.ndarray | None:
    """The map after the operator's entry-wise step: DS2TA's NSAD table (``AD_h[count]``),
    SSA_Bin's binary threshold (``1(count > delta_h)``); None for SSA (no denoiser: the raw map
    is what the core uses)."""
    if attention == "ds2ta":
        table = np.asarray(params["nsad_table"], np.int64)
        return np.stack([table[h][counts[h]] for h in range(counts.shape[0])])
    if attention == "ssa_bin":
        delta = np.asarray(params["delta"], np.int64).reshape(-1)
        return (counts > delta[:, None, None]).astype(np.int64)
    if attention == "ssa":
        return None
    raise EventformerError(f"the {attention} operator forms no attention map")


def map_entries(counts: np.ndarray, mapped: np.ndarray | None) -> tuple[int, int]:
    """(entries formed, entries left non-zero) of a step's maps, as the engine counts them:
    formed where query and key share an active channel, non-zero after the table / threshold."""
    formed = counts > 0
    kept = formed if mapped is None else formed & (mapped != 0)
    return int(formed.sum()), int(kept.sum())


def step_maps(traces: dict[str, LayerTrace], block: int, config, attention: str,
              params: dict) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """For each recorded step, (raw count maps [H, N, N], mapped maps or None) of a block, from
    its recorded q and k spikes."""
    q_name, k_name, _ = attention_layers(block)
    q, k = traces[q_name], traces[k_name]
    out = []
    for q_idx, k_idx in zip(q.spikes, k.spikes):
        counts = attention_counts(q_idx, k_idx, config.tokens, config.dim, config.heads)
        out.append((counts, mapped_attention(counts, attention, params)))
    return out
