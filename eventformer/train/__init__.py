"""Small numpy trainer for Spikformer-family models: hand-written forward/backward pairs, no autograd.

:mod:`eventformer.train.layers` holds the layer pairs (cs231n style): ``*_forward(x, params, ...) ->
(y, cache)`` and ``*_backward(dy, cache) -> (dx, grads)``, with ``params`` / ``grads`` dicts keyed like
the torch state dict (``weight``, ``bias``).

:mod:`eventformer.train.attention` holds the pairs of the SPEC §4 attention operators (``ds2ta``,
``ssa_bin``, ``saformer``; ``ssa``'s core is in ``layers``); :mod:`eventformer.train.successors`
those of the Spike-driven Transformer (SDSA, Erode, membrane-shortcut block and head) and QKFormer
(token QK attention, conv stages with pools before or after the LIF and strided shortcuts).

:mod:`eventformer.train.model` runs a model description (:mod:`eventformer.models.description`:
Spikformer, the Spike-driven Transformer, QKFormer) from these pairs (``forward`` / ``backward`` on
official-checkpoint-keyed parameter dicts), :mod:`eventformer.train.optim` holds AdamW and the
cosine schedule, :mod:`eventformer.train.export` turns trained parameters into a model file or an
official-layout state dict.
"""

from . import attention, export, layers, model, optim, successors

__all__ = ["attention", "export", "layers", "model", "optim", "successors"]
