"""The dense baseline: the same model file run as a plain PyTorch CPU forward.

This is what a GPU framework does on a CPU: every layer as a dense tensor op over all T steps at
once (batch T x 1). The model is :class:`eventformer.torch_model.SpikformerRef`, the plain-torch
Spikformer the tests hold the engine to, built from the model file by
:func:`~eventformer.torch_model.folded_reference` (BatchNorm folded as the file holds it: each
conv carries the folded weight, its BatchNorm is the identity plus the folded bias), for every
attention operator the file may name (ssa, ds2ta, ssa_bin, saformer). Batch 1, eval mode, no
autograd; float32 unless asked otherwise. torch is imported only when a forward is built, so that
``eventformer bench`` can time both engines on identical weights in one run.
"""

from __future__ import annotations

import numpy as np

from ..modelfile import ModelFile


def build_dense_model(model: ModelFile, dtype: str = "float32"):
    """The plain-torch Spikformer of ``model`` (eval mode, in ``dtype``)."""
    import torch

    from ..torch_model import folded_reference

    if dtype not in ("float32", "float64"):
        raise ValueError(f"the dense baseline runs in float32 or float64, not {dtype!r}")
    return folded_reference(model, dtype=getattr(torch, dtype)).eval()


def build_dense_forward(model: ModelFile, dtype: str = "float32"):
    """Return ``forward(frames [T, C, H, W] numpy) -> logits [classes] numpy`` using torch.

    The forward runs on torch's current thread count (the bench sets it)."""
    import torch

    net = build_dense_model(model, dtype)
    tdt = getattr(torch, dtype)

    def forward(frames: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.asarray(frames)).to(tdt).unsqueeze(1)  # [T, 1, C, H, W]
            return net(x)[0].numpy()

    return forward
