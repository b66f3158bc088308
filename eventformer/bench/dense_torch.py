"""The dense baseline: the same model file run as a plain PyTorch CPU forward.

This is what a GPU framework does on a CPU: every layer as a dense tensor op over all T steps at
once (batch T x 1). The model is :class:`eventformer.torch_model.SpikformerRef`, the plain-torch
Spikformer the tests hold the engine to, built from the model file by
:func:`~eventformer.torch_model.folded_reference` (BatchNorm folded as the file holds it: each
conv carries the folded weight, its BatchNorm is the identity plus the folded bias), for every
attention operator the file may name (ssa, ds2ta, ssa_bin, saformer). Batch 1, eval mode, no
autograd; float32 unless asked otherwise. torch is imported only when a forward is built, so that
``eventformer bench`` can time both engines on identical weights in one run.

For QKFormer and the Spike-driven Transformer (``--model qkformer|sdt``) the dense model is their
plain-torch reference (:mod:`eventformer.torch_successors`) holding the state_dict the model file
was built from (:class:`.networks.SuccessorWeights`): BatchNorms unfolded, as the released code
runs them.

:func:`build_compiled_forward` gives the same model through ``torch.compile`` (inductor, default
mode): the best dense forward a PyTorch user gets on a CPU without changing the model.
"""

from __future__ import annotations

import os
import time

import numpy as np

from ..modelfile import ModelFile
from .networks import SuccessorWeights


def build_dense_model(model: ModelFile | SuccessorWeights, dtype: str = "float32"):
    """The plain-torch model of ``model`` (eval mode, in ``dtype``): the Spikformer of a model
    file, or a successor's reference holding its state_dict."""
    import torch

    from ..torch_model import folded_reference

    if dtype not in ("float32", "float64"):
        raise ValueError(f"the dense baseline runs in float32 or float64, not {dtype!r}")
    if isinstance(model, SuccessorWeights):
        return model.torch_model(getattr(torch, dtype))
    return folded_reference(model, dtype=getattr(torch, dtype)).eval()


def build_dense_forward(model: ModelFile | SuccessorWeights, dtype: str = "float32"):
    """Return ``forward(frames [T, C, H, W] numpy) -> logits [classes] numpy`` using torch.

    The forward runs on torch's current thread count (the bench sets it)."""
    return _numpy_forward(build_dense_model(model, dtype), dtype)


def _numpy_forward(net, dtype: str):
    """``forward(frames [T, C, H, W] numpy) -> logits numpy`` through ``net`` (batch 1)."""
    import torch

    tdt = getattr(torch, dtype)

    def forward(frames: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.asarray(frames)).to(tdt).unsqueeze(1)  # [T, 1, C, H, W]
            return net(x)[0].numpy()

    return forward


class CompileUnavailable(Exception):
    """torch.compile cannot run here; the message is one sentence saying why."""


def compile_prerequisite() -> str | None:
    """Why torch.compile's CPU backend (inductor) cannot run here, or None: it needs torch 2 and
    a C++ compiler to build its kernels."""
    import shutil

    import torch

    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile (torch 2 or later has)"
    cxx = os.environ.get("CXX")
    if not ((cxx and shutil.which(cxx)) or any(shutil.which(c) for c in ("g++", "c++",
                                                                          "clang++"))):
        return "torch.compile (inductor) needs a C++ compiler (g++ or clang++) on PATH"
    return None


def build_compiled_forward(model: ModelFile | SuccessorWeights, dtype: str = "float32"):
    """Like :func:`build_dense_forward`, but the plain-torch model goes through
    ``torch.compile`` (inductor, default mode). Compiling happens on the first call (minutes the
    first time; inductor caches its kernels on disk, so a rerun compiles in seconds): the caller
    makes that call apart and times it as the compile time. Raises :class:`CompileUnavailable`
    when the backend cannot run here."""
    import torch

    reason = compile_prerequisite()
    if reason is not None:
        raise CompileUnavailable(reason)
    # the default mode: mode=None, backend="inductor"
    return _numpy_forward(torch.compile(build_dense_model(model, dtype)), dtype)


def first_call(forward, frames: np.ndarray, clock=time.perf_counter) -> float:
    """Seconds of ``forward``'s first call (a compiled forward compiles in it); any failure of
    torch.compile becomes :class:`CompileUnavailable` with its first line."""
    start = clock()
    try:
        forward(frames)
    except CompileUnavailable:
        raise
    except Exception as exc:  # inductor fails in many ways: no headers, a broken toolchain...
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        what = lines[0] if lines else type(exc).__name__
        raise CompileUnavailable(f"torch.compile failed ({type(exc).__name__}: "
                                 f"{what[:160]})") from None
    return clock() - start
