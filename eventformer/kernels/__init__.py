"""Numba kernels: arrays in, arrays and op counters out. No classes, no I/O, no model knowledge.

Each kernel has a naive numpy twin in ``tests/kernel_twins.py`` that it is tested against.
"""

from . import counters
from .attention import nsad_step, ssa_bin_step, ssa_step
from .conv import conv2d_scatter, densify_padded, im2col_padded
from .fixed import (lif_fixed_kernels, lif_fixed_quiet_step, lif_fixed_step,
                    lif_fixed_step_flags, saformer_step_fixed, ssa_bin_step_fixed,
                    tasa_fixed_current)
from .gather import conv2d_gather, conv2d_gather_int
from .igemm import int_gemm
from .linear import linear_event_ops, linear_scatter
from .neurons import lif_kernels, lif_params, lif_quiet_step, lif_step, lif_step_flags
from .saformer import depthwise3x3_scatter, saformer_step
from .snn import (norse_step, norse_step_fixed, sinabs_step, sinabs_step_fixed, snntorch_step,
                  snntorch_step_fixed, sumpool_events)
from .sparse import channel_sums, maxpool_flags, merge_add, scatter_dense
from .tasa import tasa_current

__all__ = [
    "channel_sums",
    "counters",
    "conv2d_gather",
    "conv2d_gather_int",
    "conv2d_scatter",
    "densify_padded",
    "depthwise3x3_scatter",
    "im2col_padded",
    "int_gemm",
    "lif_fixed_quiet_step",
    "lif_fixed_step",
    "lif_fixed_step_flags",
    "lif_params",
    "lif_quiet_step",
    "lif_step",
    "lif_step_flags",
    "linear_event_ops",
    "linear_scatter",
    "maxpool_flags",
    "merge_add",
    "norse_step",
    "norse_step_fixed",
    "nsad_step",
    "saformer_step",
    "saformer_step_fixed",
    "scatter_dense",
    "sinabs_step",
    "sinabs_step_fixed",
    "snntorch_step",
    "snntorch_step_fixed",
    "ssa_bin_step",
    "ssa_bin_step_fixed",
    "ssa_step",
    "sumpool_events",
    "tasa_current",
    "tasa_fixed_current",
]
