"""Small numpy trainer for Spikformer-family models: hand-written forward/backward pairs, no autograd.

:mod:`eventformer.train.layers` holds the layer pairs (cs231n style): ``*_forward(x, params, ...) ->
(y, cache)`` and ``*_backward(dy, cache) -> (dx, grads)``, with ``params`` / ``grads`` dicts keyed like
the torch state dict (``weight``, ``bias``).
"""

from . import layers

__all__ = ["layers"]
