"""The framework half of the NIR round-trip tests (issue 13): small conv SNNs built, run and
exported by snnTorch, sinabs and Norse themselves (and a small MLP SNN by Rockpool).

Not a test file: ``tests/test_nir.py`` imports it. For each framework F that imports here:

* ``build_F(seed, in_shape=(2, 32, 32), classes=11, dtype=torch.float64)`` -- a small conv SNN in
  F's own idiom and F's own neuron classes, seeded, whose every spiking layer fires on the real
  DVS Gesture segments (``gesture_frames``) without saturating;
* ``export_F(model, path, in_shape)`` -- F's own NIR exporter, then ``nir.write``;
* ``run_F(model, frames)`` -- F's forward over ``frames`` ``[T, C, H, W]`` (batch 1, state reset
  first) exactly as a user runs it; returns the output layer's spike counts summed over the steps,
  float64 ``[classes]``;
* ``run_F_layers(model, frames)`` -- spike totals per spiking layer, keyed by the layer's index in
  the ``nn.Sequential``, which is also its node name in the exported NIR graph.

Exactness. Everything runs in float64, and every weight and bias is a multiple of 2**-12
(``QUANTUM``) and every threshold is float32-exact: with integer event counts and 0/1 (or small
integer) spikes, every Conv / Linear / pooling output is then an exact float64 sum whatever the
summation order, so the only roundings left are the neurons' own update steps -- the thing the
engine must reproduce. Leaks are chosen so that each framework's NIR parameters map back to its
discrete constants without rounding (snnTorch beta = 1 - 1e-4/tau, Norse tau_mem_inv = 1e-3/tau,
sinabs exp(-1/tau) equal in torch and libm, Rockpool exp(fl(1/tau) * -dt) equal in torch and
libm; see the note in the issue).

Float64 needs one documented hook in two frameworks: snnTorch's spike function and sinabs'
MultiSpike end in ``.float()``, so a float64 model would crash at its next layer ("Input type
(float) and weight type (double)"). ``spike_grad=heaviside`` (snnTorch) and
``spike_fn=MultiSpike64`` (sinabs) compute the same spikes in the membrane's dtype; the forward
arithmetic is otherwise the framework's own. Norse is float64 throughout as it is. Rockpool needs
two: its StepPWL spikes end in ``.float()`` too (``spike_generation_fn=StepPWL64``), and it
allocates its output record and, on ``reset_state``, its state in torch's default dtype, so its
models run with ``torch.set_default_dtype(torch.float64)`` in force (`_DefaultDtype`).

What each exporter can express decides the architectures: snnTorch exports Conv2d, AvgPool2d,
Flatten, Linear and Leaky; sinabs Conv2d, SumPool2d, Flatten, Linear, IAF and LIF; Norse only
Conv2d, Linear and its cells (no pooling, no Flatten), so the Norse net downsamples with strided
convolutions and reads out with a full-size convolution. Rockpool exports only LinearTorch
(Linear / Affine), LIFTorch (CubaLIF), LIFNeuronTorch (LIF) and ExpSynTorch (LI): no convolution,
pooling or Flatten at all, so its model is an MLP on the C-major flattened frame (Input node
``[C*H*W]``), run over the whole sequence ``(1, T, C*H*W)`` in one call.

``python tests/nir_frameworks.py`` runs a self-check on the real segments (firing rates,
outputs, export and re-read).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
GESTURE_DIR = ROOT.parent / "shared" / "data" / "events" / "dvs-gesture"
SEGMENTS = sorted(GESTURE_DIR.glob("*.bs2")) if GESTURE_DIR.is_dir() else []

#: every weight and bias is a multiple of this (see the module docstring)
QUANTUM = 2.0 ** -12

#: the frameworks importable here, in a fixed order
FRAMEWORKS = tuple(name for name in ("snntorch", "sinabs", "norse", "rockpool")
                   if importlib.util.find_spec(name) is not None)


# --------------------------------------------------------------------------------------------------
# Input: our own framing, dense
# --------------------------------------------------------------------------------------------------


def gesture_frames(path, steps: int = 8, size: int = 32) -> np.ndarray:
    """A real recording framed as the engine frames it, as float64 ``[steps, 2, size, size]``.

    ``read_events`` -> coordinates divided by the sensor / size factor (128 -> 32 sums 4x4 pixel
    blocks, ``eventformer.inference.downsample``) -> ``frame_events(..., split_by="number")``,
    whose sparse steps ``(idx, cnt)`` index a channel-innermost ``[size, size, 2]`` map,
    ``idx = (y * size + x) * 2 + p``; scattered here into PyTorch's ``[T, C, H, W]``
    (channel 0 = OFF, 1 = ON). Equal to ``dense_frames`` on the same events.
    """
    from eventformer.events import frame_events, read_events
    from eventformer.inference import downsample

    rec = read_events(path)
    sensor = rec.sensor_size or (128, 128)
    factor = max(1, sensor[0] // size)
    events = downsample(rec.events, factor)
    out = np.zeros((steps, size, size, 2), dtype=np.float64)
    for t, (idx, cnt) in enumerate(frame_events(events, steps, size, size, split_by="number")):
        out[t].reshape(-1)[idx] = cnt
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------


def _conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _dyadic(a: np.ndarray) -> np.ndarray:
    return np.round(a / QUANTUM) * QUANTUM


def _init_(layer: torch.nn.Module, rng: np.random.Generator, gain: float, mean: float = 0.0,
           bias_mean: float = 0.0, bias_std: float = 0.0) -> None:
    """Seeded weights ``N(mean, 1) * gain / sqrt(fan_in)`` and biases ``N(bias_mean, bias_std)``,
    both rounded to multiples of `QUANTUM`."""
    w = layer.weight
    fan_in = int(np.prod(w.shape[1:]))
    with torch.no_grad():
        w.copy_(torch.from_numpy(_dyadic((rng.standard_normal(tuple(w.shape)) + mean) * gain
                                         / np.sqrt(fan_in))))
        if layer.bias is not None:
            b = rng.normal(bias_mean, bias_std, tuple(layer.bias.shape)) if bias_std else \
                np.full(tuple(layer.bias.shape), bias_mean)
            layer.bias.copy_(torch.from_numpy(_dyadic(b)))


def _per_channel(values, channels: int, shape: tuple[int, ...], dtype) -> torch.Tensor:
    """A per-neuron parameter tensor of ``shape`` ([C, H, W] or [N]) whose value cycles through
    ``values`` along the channel axis."""
    v = torch.tensor([values[c % len(values)] for c in range(channels)], dtype=dtype)
    return v.reshape((channels,) + (1,) * (len(shape) - 1)).expand(shape).clone()


def _spike_count(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _collect(model: torch.nn.Module, neuron_types: tuple) -> tuple[dict, dict, list]:
    """Forward hooks summing each spiking layer's output: ``(totals, sizes, handles)``, keyed by
    the Sequential indices (sizes: neurons per sample)."""
    totals: dict[str, float] = {}
    sizes: dict[str, int] = {}
    handles = []
    for name, mod in model.named_children():
        if isinstance(mod, neuron_types):
            totals[name] = 0.0

            def hook(_m, _inp, out, _name=name):
                s = _spike_count(out)
                totals[_name] += float(s.double().sum())
                sizes[_name] = int(s[0].numel()) if s.dim() > 1 else int(s.numel())
            handles.append(mod.register_forward_hook(hook))
    return totals, sizes, handles


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 4:
        raise ValueError(f"frames must be [T, C, H, W], got shape {frames.shape}")
    return frames


# --------------------------------------------------------------------------------------------------
# snnTorch
# --------------------------------------------------------------------------------------------------


def heaviside(z: torch.Tensor) -> torch.Tensor:
    """snnTorch's forward spike ``(z > 0)`` (``surrogate.atan`` forward) in ``z``'s dtype
    instead of float32 (given as ``spike_grad``; inference only, no surrogate gradient)."""
    return (z > 0).to(z.dtype)


#: (gain, mean) of the three weighted layers' weights, N(mean, 1) * gain / sqrt(fan_in), set so that every spiking layer
#: fires on the real segments without saturating (see the self-check)
SNNTORCH_GAINS = ((0.4, 0.1), (2.0, 0.0), (1.0, 0.0))

#: snnTorch leaks, one per channel (each round-trips exactly through tau = 1e-4 / (1 - beta))
SNNTORCH_BETAS = (0.875, 0.9, 0.9375, 0.8)


def build_snntorch(seed: int, in_shape=(2, 32, 32), classes: int = 11,
                   dtype=torch.float64) -> torch.nn.Module:
    """Conv(2->8, 3, pad 1) -> Leaky -> AvgPool2d(2) -> Conv(8->16, 3, stride 2, pad 1) -> Leaky
    -> Flatten -> Linear(->classes) -> Leaky(output=True); ``init_hidden=True``, default reset
    (subtract, delayed by one step). Per-neuron beta (cycling through `SNNTORCH_BETAS` over the
    channels) and thresholds (1.25 on the first layer, 1.0 then 0.75): snnTorch's exporter needs
    per-neuron arrays on conv layers (a scalar beta exports 0-d LIF arrays that fail NIR's type
    inference)."""
    import snntorch as snn

    rng = np.random.default_rng(seed)
    c, h, w = in_shape
    h1, w1 = h, w
    h2, w2 = h1 // 2, w1 // 2
    h3, w3 = _conv_out(h2, 3, 2, 1), _conv_out(w2, 3, 2, 1)

    def leaky(shape, thr, **kw):
        return snn.Leaky(beta=_per_channel(SNNTORCH_BETAS, shape[0], shape, dtype),
                         threshold=torch.full(shape, thr, dtype=dtype), spike_grad=heaviside,
                         init_hidden=True, **kw)

    conv1 = torch.nn.Conv2d(c, 8, 3, padding=1)
    conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
    fc = torch.nn.Linear(16 * h3 * w3, classes)
    model = torch.nn.Sequential(
        conv1, leaky((8, h1, w1), 1.25),
        torch.nn.AvgPool2d(2),
        conv2, leaky((16, h3, w3), 1.0),
        torch.nn.Flatten(),
        fc, leaky((classes,), 0.75, output=True),
    )
    g = SNNTORCH_GAINS
    _init_(conv1, rng, *g[0], bias_mean=-0.25, bias_std=0.25)
    _init_(conv2, rng, *g[1], bias_mean=0.0, bias_std=0.25)
    _init_(fc, rng, *g[2], bias_mean=0.0, bias_std=0.25)
    return model.to(dtype).eval()


def export_snntorch(model: torch.nn.Module, path, in_shape=(2, 32, 32)) -> None:
    """``snntorch.export_nir.export_to_nir`` (batch dim given and ignored) and ``nir.write``."""
    import nir
    from snntorch.export_nir import export_to_nir

    dtype = next(model.parameters()).dtype
    _reset_snntorch(model)
    with torch.no_grad():
        graph = export_to_nir(model, torch.zeros((1, *in_shape), dtype=dtype), ignore_dims=[0])
    _reset_snntorch(model)
    nir.write(str(path), graph)


def _reset_snntorch(model: torch.nn.Module) -> None:
    import snntorch as snn

    for mod in model.modules():
        if isinstance(mod, snn.SpikingNeuron) and hasattr(mod, "mem"):
            mod.mem = torch.zeros(0, dtype=mod.mem.dtype)  # re-initialised to zeros_like(input)


def _run_snntorch(model, frames):
    frames = torch.from_numpy(_check_frames(frames)).to(next(model.parameters()).dtype)
    _reset_snntorch(model)
    total = None
    with torch.no_grad():
        for x in frames:
            spk = _spike_count(model(x[None]))[0]
            total = spk.double().clone() if total is None else total + spk.double()
    _reset_snntorch(model)
    return total.numpy()


def run_snntorch(model: torch.nn.Module, frames: np.ndarray) -> np.ndarray:
    return _run_snntorch(model, frames)


def run_snntorch_layers(model: torch.nn.Module, frames: np.ndarray) -> dict:
    import snntorch as snn

    totals, _, handles = _collect(model, (snn.SpikingNeuron,))
    try:
        _run_snntorch(model, frames)
    finally:
        for h in handles:
            h.remove()
    return totals


# --------------------------------------------------------------------------------------------------
# sinabs
# --------------------------------------------------------------------------------------------------


def _multispike64():
    from sinabs.activation import MultiSpike

    class MultiSpike64(MultiSpike):
        """sinabs' MultiSpike, ``(v > 0) * trunc(v / theta)``, without its final ``.float()``."""

        @staticmethod
        def forward(ctx, v_mem, spike_threshold, surrogate_grad_fn):
            ctx.save_for_backward(v_mem.clone())
            ctx.spike_threshold = spike_threshold
            ctx.surrogate_grad_fn = surrogate_grad_fn
            return (v_mem > 0) * torch.div(v_mem, spike_threshold, rounding_mode="trunc")

    return MultiSpike64


SINABS_GAINS = ((0.02, 0.25), (0.8, 0.25), (1.6, 0.0))

#: sinabs LIF time constants (in steps), one per channel: float32-exact, torch.exp == math.exp
SINABS_TAUS = (4.0, 8.0, 16.0)


def build_sinabs(seed: int, in_shape=(2, 32, 32), classes: int = 11,
                 dtype=torch.float64, floor: bool = False) -> torch.nn.Module:
    """Conv(2->8, 3, pad 1) -> IAFSqueeze -> SumPool2d(2) -> Conv(8->16, 3, stride 2, pad 1,
    no bias) -> LIFSqueeze -> Flatten -> Linear(->classes) -> IAFSqueeze, batch_size=1 (the
    squeezed layers take the whole sequence ``[T, C, H, W]`` in one call). Defaults otherwise:
    multi-spike, subtract reset, no min_v_mem, LIF with norm_input=True. Thresholds 1.0, 0.75
    (per neuron, as the LIF export needs) and 1.5; LIF tau per channel from `SINABS_TAUS`.
    ``floor``: the IAF layers get ``min_v_mem`` = minus their threshold, as sinabs' own
    importer reads an IF node back (the LIF keeps none, as that importer reads a LIF)."""
    import sinabs.layers as sl

    def iaf(threshold):
        return sl.IAFSqueeze(batch_size=1, spike_threshold=threshold, spike_fn=spike_fn,
                             min_v_mem=-threshold if floor else None)

    spike_fn = _multispike64()
    rng = np.random.default_rng(seed)
    c, h, w = in_shape
    h2, w2 = h // 2, w // 2
    h3, w3 = _conv_out(h2, 3, 2, 1), _conv_out(w2, 3, 2, 1)
    lif_shape = (16, h3, w3)

    conv1 = torch.nn.Conv2d(c, 8, 3, padding=1)
    conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
    fc = torch.nn.Linear(16 * h3 * w3, classes)
    model = torch.nn.Sequential(
        conv1, iaf(1.0),
        sl.SumPool2d(2),
        conv2, sl.LIFSqueeze(tau_mem=_per_channel(SINABS_TAUS, 16, lif_shape, torch.float32),
                             spike_threshold=torch.full(lif_shape, 0.75), batch_size=1,
                             spike_fn=spike_fn),
        torch.nn.Flatten(),
        fc, iaf(1.5),
    )
    g = SINABS_GAINS
    _init_(conv1, rng, *g[0], bias_mean=-0.25, bias_std=0.25)
    _init_(conv2, rng, *g[1])
    _init_(fc, rng, *g[2], bias_mean=0.0, bias_std=0.25)
    return model.to(dtype).eval()


#: (gain, mean) of the converted ANN's layers' weights (see `convert_sinabs`)
SINABS_ANN_GAINS = ((0.02, 0.25), (0.6, 0.25), (1.6, 0.0))


def convert_sinabs(seed: int, in_shape=(2, 32, 32), classes: int = 11,
                   dtype=torch.float64) -> torch.nn.Module:
    """sinabs' documented ANN-to-SNN path: the ANN Conv(2->8, 3, pad 1) -> ReLU -> SumPool2d(2)
    -> Conv(8->16, 3, stride 2, pad 1) -> ReLU -> Flatten -> Linear(->classes), with negative
    mean biases (membranes below the floor where a site is quiet), converted by
    ``sinabs.from_torch.from_model`` with its defaults (IAFSqueeze, threshold 1, ``min_v_mem``
    -1.0, multi-spike, subtract reset) and a spiking output layer; returns its spiking model."""
    import sinabs.layers as sl
    from sinabs.from_torch import from_model

    rng = np.random.default_rng(seed)
    c, h, w = in_shape
    h3, w3 = _conv_out(h // 2, 3, 2, 1), _conv_out(w // 2, 3, 2, 1)
    conv1 = torch.nn.Conv2d(c, 8, 3, padding=1)
    conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
    fc = torch.nn.Linear(16 * h3 * w3, classes)
    ann = torch.nn.Sequential(conv1, torch.nn.ReLU(), sl.SumPool2d(2), conv2, torch.nn.ReLU(),
                              torch.nn.Flatten(), fc)
    g = SINABS_ANN_GAINS
    _init_(conv1, rng, *g[0], bias_mean=-0.25, bias_std=0.25)
    _init_(conv2, rng, *g[1], bias_mean=-0.25, bias_std=0.125)
    _init_(fc, rng, *g[2], bias_mean=-0.125, bias_std=0.25)
    net = from_model(ann.to(dtype), batch_size=1,
                     spike_fn=_multispike64(), add_spiking_output=True)
    return net.spiking_model.to(dtype).eval()


def sinabs_membranes(model: torch.nn.Module, frames: np.ndarray) -> dict:
    """Each spiking layer's membranes after sinabs' forward over ``frames`` (state reset
    before and after), keyed by the Sequential index: float64 arrays of the layer's shape."""
    import sinabs
    from sinabs.layers import StatefulLayer

    frames = torch.from_numpy(_check_frames(frames)).to(next(model.parameters()).dtype)
    sinabs.reset_states(model)
    with torch.no_grad():
        model(frames)
    out = {name: mod.v_mem[0].double().numpy().copy() for name, mod in model.named_children()
           if isinstance(mod, StatefulLayer)}
    sinabs.reset_states(model)
    return out


def export_sinabs(model: torch.nn.Module, path, in_shape=(2, 32, 32)) -> None:
    """``sinabs.to_nir`` on one step of input (it ignores dim 0), ``infer_types`` (sinabs leaves
    the conv / pool / flatten types undefined and ``nir.write`` refuses them), ``nir.write``."""
    import nir
    import sinabs

    dtype = next(model.parameters()).dtype
    sinabs.reset_states(model)
    with torch.no_grad():
        graph = sinabs.to_nir(model, torch.zeros((1, *in_shape), dtype=dtype))
    sinabs.reset_states(model)
    graph.infer_types()
    nir.write(str(path), graph)


def _run_sinabs(model, frames):
    import sinabs

    frames = torch.from_numpy(_check_frames(frames)).to(next(model.parameters()).dtype)
    sinabs.reset_states(model)
    with torch.no_grad():
        out = model(frames)  # [B*T, classes] with B = 1
    sinabs.reset_states(model)
    return out.double().sum(0).numpy()


def run_sinabs(model: torch.nn.Module, frames: np.ndarray) -> np.ndarray:
    return _run_sinabs(model, frames)


def run_sinabs_layers(model: torch.nn.Module, frames: np.ndarray) -> dict:
    from sinabs.layers import StatefulLayer

    totals, _, handles = _collect(model, (StatefulLayer,))
    try:
        _run_sinabs(model, frames)
    finally:
        for h in handles:
            h.remove()
    return totals


# --------------------------------------------------------------------------------------------------
# Norse
# --------------------------------------------------------------------------------------------------

#: Norse's integration step (its default; to_nir writes tau = dt / tau_mem_inv)
NORSE_DT = 1e-3
#: inverse membrane time constants (1/s), one per channel: 1e-3 / (1e-3 / x) == x for each
NORSE_TAU_MEM_INV = (100.0, 200.0, 50.0)
NORSE_TAU_SYN_INV = 200.0
NORSE_GAINS = ((3.0, 0.0), (12.0, 0.0), (8.0, 0.0))


def build_norse(seed: int, in_shape=(2, 32, 32), classes: int = 11,
                dtype=torch.float64) -> torch.nn.Module:
    """SequentialState: Conv(2->8, 3, pad 1) -> LIFBoxCell -> Conv(8->16, 3, stride 2, pad 1) ->
    LIFCell (current-based) -> Conv(16->classes, full size) -> LIFBoxCell; output
    ``[classes, 1, 1]``. Norse's exporter maps pooling and Flatten to nothing, hence the strided
    conv and the full-size readout conv. Per-neuron float64 parameters (Norse keeps them in a
    NamedTuple that ``.double()`` does not reach): tau_mem_inv per channel from
    `NORSE_TAU_MEM_INV`, tau_syn_inv 200, thresholds 1.25 / 1.0 / 0.75, v_leak = v_reset = 0."""
    import norse.torch as norse

    rng = np.random.default_rng(seed)
    c, h, w = in_shape
    h1, w1 = h, w
    h2, w2 = _conv_out(h1, 3, 2, 1), _conv_out(w1, 3, 2, 1)

    def full(shape, v):
        return torch.full(shape, v, dtype=dtype)

    def box(shape, thr):
        return norse.LIFBoxCell(norse.LIFBoxParameters(
            tau_mem_inv=_per_channel(NORSE_TAU_MEM_INV, shape[0], shape, dtype),
            v_leak=full(shape, 0.0), v_th=full(shape, thr), v_reset=full(shape, 0.0)),
            dt=NORSE_DT)

    s2 = (16, h2, w2)
    cuba = norse.LIFCell(norse.LIFParameters(
        tau_syn_inv=full(s2, NORSE_TAU_SYN_INV),
        tau_mem_inv=_per_channel(NORSE_TAU_MEM_INV, 16, s2, dtype),
        v_leak=full(s2, 0.0), v_th=full(s2, 1.0), v_reset=full(s2, 0.0)), dt=NORSE_DT)

    conv1 = torch.nn.Conv2d(c, 8, 3, padding=1)
    conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
    conv3 = torch.nn.Conv2d(16, classes, (h2, w2))
    model = norse.SequentialState(
        conv1, box((8, h1, w1), 1.25),
        conv2, cuba,
        conv3, box((classes, 1, 1), 0.75),
    )
    g = NORSE_GAINS
    _init_(conv1, rng, *g[0], bias_mean=-0.5, bias_std=0.5)
    _init_(conv2, rng, *g[1], bias_mean=0.0, bias_std=0.5)
    _init_(conv3, rng, *g[2], bias_mean=0.0, bias_std=0.5)
    return model.to(dtype).eval()


def export_norse(model: torch.nn.Module, path, in_shape=(2, 32, 32)) -> None:
    """``norse.torch.to_nir`` on a batchless sample ``[C, H, W]`` (it keeps every dim it is
    given), ``infer_types`` (``nir.write`` refuses the undefined conv types), ``nir.write``."""
    import nir
    import norse.torch as norse

    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        graph = norse.to_nir(model, torch.zeros(tuple(in_shape), dtype=dtype), dt=NORSE_DT)
    graph.infer_types()
    nir.write(str(path), graph)


def _run_norse(model, frames):
    frames = torch.from_numpy(_check_frames(frames)).to(next(model.parameters()).dtype)
    state = None  # every cell starts from its initial state (v = v_leak, i = 0)
    total = None
    with torch.no_grad():
        for x in frames:
            out, state = model(x[None], state)
            z = out[0].reshape(-1).double()
            total = z.clone() if total is None else total + z
    return total.numpy()


def run_norse(model: torch.nn.Module, frames: np.ndarray) -> np.ndarray:
    return _run_norse(model, frames)


def run_norse_layers(model: torch.nn.Module, frames: np.ndarray) -> dict:
    from norse.torch.module.snn import SNNCell

    totals, _, handles = _collect(model, (SNNCell,))
    try:
        _run_norse(model, frames)
    finally:
        for h in handles:
            h.remove()
    return totals


# --------------------------------------------------------------------------------------------------
# Rockpool
# --------------------------------------------------------------------------------------------------

#: Rockpool's integration step (LIFTorch / LIFNeuronTorch default; NOT written to the NIR file)
ROCKPOOL_DT = 1e-3
#: membrane / synaptic time constants (s), one per neuron, cycling: float32-exact (Rockpool casts
#: its parameters to float32 on construction) except 0.02 and 0.01, Rockpool's kind of value,
#: stored float32-rounded; for every one torch.exp(-dt / tau) == math.exp(fl(1 / tau) * -dt)
ROCKPOOL_TAU_MEM = (2.0 ** -5, 2.0 ** -6, 0.02, 2.0 ** -4)
ROCKPOOL_TAU_SYN = (2.0 ** -7, 2.0 ** -8, 0.01)
#: hidden layer sizes of the MLP
ROCKPOOL_HIDDEN = (128, 64)
#: (gain, mean) of the three LinearTorch layers' weights (as `SNNTORCH_GAINS`): every spiking layer
#: fires on the real segments without saturating (see the self-check)
ROCKPOOL_GAINS = ((0.12, 0.0), (0.8, 0.1), (0.8, 0.0))
#: random-current scale (x threshold) of `neuron_state_check` for LIF / CubaLIF
ROCKPOOL_CHECK_SCALE = (0.8, 0.2)


def _import_rockpool():
    """``import rockpool`` without its samna probe: rockpool's backend check imports samna at
    import time (utilities/backend_management.py:30-48, 67), and the PyPI samna that sinabs pulls
    is a stub whose ``__init__`` runs ``pip install samna --index-url=gitlab`` (~8 s offline, then
    fails). If that stub is what is installed, samna is made unimportable in this process."""
    import sys

    if "samna" not in sys.modules:
        spec = importlib.util.find_spec("samna")
        if spec is not None and spec.origin and "PYPI_SAMNA" in Path(spec.origin).read_text():
            sys.modules["samna"] = None  # `import samna` -> ImportError, rockpool: no samna
    import rockpool

    return rockpool


class _DefaultDtype:
    """``torch.set_default_dtype`` for the duration of a ``with`` block. Rockpool allocates its
    output record, noise trace, batch copies of the state and (on ``reset_state``) the state
    itself with plain ``torch.zeros`` / ``ones`` / ``randn``, i.e. in torch's default dtype: a
    float64 model must run (and be reset) with float64 as the default."""

    def __init__(self, dtype):
        self.dtype, self.old = dtype, None

    def __enter__(self):
        self.old = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.old)


def _step_pwl64():
    _import_rockpool()
    from rockpool.nn.modules.torch.lif_torch import StepPWL

    class StepPWL64(StepPWL):
        """Rockpool's StepPWL forward, ``(x >= thr) * floor(x / thr)`` clamped to
        ``max_spikes_per_dt``, without its ``.float()`` (whose float32 spikes crash LIFTorch's
        own recurrent product ``F.linear(spikes, w_rec.T)`` in a float64 model)."""

        @staticmethod
        def forward(ctx, x, threshold, window, max_spikes_per_dt):  # all four always passed
            ctx.save_for_backward(x, threshold)
            ctx.window = window
            nr_spikes = ((x >= threshold) * torch.floor(x / threshold)).to(x.dtype)
            clamp_bool = (nr_spikes > max_spikes_per_dt).to(x.dtype)
            nr_spikes -= (nr_spikes - max_spikes_per_dt.to(x.dtype)) * clamp_bool
            return nr_spikes

    return StepPWL64


def _rockpool_dtype(model) -> torch.dtype:
    # Rockpool's ``parameters()`` returns its own nested dict; torch's is the iterator
    return next(torch.nn.Module.parameters(model)).dtype


def build_rockpool(seed: int, in_shape=(2, 32, 32), classes: int = 11,
                   dtype=torch.float64) -> torch.nn.Module:
    """Rockpool ``Sequential``: LinearTorch(C*H*W -> 128, bias) -> LIFTorch(128) ->
    LinearTorch(128 -> 64, no bias) -> LIFNeuronTorch(64) -> LinearTorch(64 -> classes, bias) ->
    LIFTorch(classes). An MLP: Rockpool's exporter writes only Linear/Affine, CubaLIF (LIFTorch),
    LIF (LIFNeuronTorch) and LI (ExpSynTorch), no Conv, pooling or Flatten (they become ``None``
    and ``nir.write`` fails), so ``run_rockpool`` flattens each ``[C, H, W]`` frame C-major and the
    graph's Input is ``[C*H*W]``. Neuron bias 0 (Rockpool exports LIF bias as v_leak = 0, i.e.
    drops it; the biases live in the LinearTorch layers), noise 0, dt 1 ms, per-neuron taus from
    `ROCKPOOL_TAU_MEM` / `ROCKPOOL_TAU_SYN`, thresholds 8.0 / 1.5 / 1.0 (float32-exact, per
    neuron), multi-spike StepPWL semantics via ``spike_generation_fn=StepPWL64``."""
    _import_rockpool()
    from rockpool.nn.combinators import Sequential
    from rockpool.nn.modules import LIFNeuronTorch, LIFTorch, LinearTorch

    spike_fn = _step_pwl64()
    rng = np.random.default_rng(seed)
    n_in = int(np.prod(in_shape))
    h1, h2 = ROCKPOOL_HIDDEN

    def taus(values, n):
        return _per_channel(values, n, (n,), torch.float64)

    def lif(n, thr):
        return LIFTorch(n, tau_mem=taus(ROCKPOOL_TAU_MEM, n), tau_syn=taus(ROCKPOOL_TAU_SYN, n),
                        threshold=torch.full((n,), thr), bias=torch.zeros(n), dt=ROCKPOOL_DT,
                        noise_std=0.0, spike_generation_fn=spike_fn)

    fc1 = LinearTorch((n_in, h1), has_bias=True)
    fc2 = LinearTorch((h1, h2), has_bias=False)
    fc3 = LinearTorch((h2, classes), has_bias=True)
    model = Sequential(
        fc1, lif(h1, 8.0),
        fc2, LIFNeuronTorch(h2, tau_mem=taus(ROCKPOOL_TAU_MEM, h2),
                            threshold=torch.full((h2,), 1.5), bias=torch.zeros(h2),
                            dt=ROCKPOOL_DT, noise_std=0.0, spike_generation_fn=spike_fn),
        fc3, lif(classes, 1.0),
    )
    model = model.to(dtype)
    g = ROCKPOOL_GAINS
    for layer, (gain, mean), bias in ((fc1, g[0], (-0.4, 0.4)), (fc2, g[1], None),
                                       (fc3, g[2], (0.0, 0.1))):
        # LinearTorch stores weight as [in, out]: fan_in = shape[0]
        fan_in = layer.weight.shape[0]
        w = (rng.standard_normal(tuple(layer.weight.shape)) + mean) * gain / np.sqrt(fan_in)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(_dyadic(w)))
            if bias is not None:
                layer.bias.copy_(torch.from_numpy(_dyadic(rng.normal(bias[0], bias[1],
                                                                     tuple(layer.bias.shape)))))
    with _DefaultDtype(dtype):
        model.reset_state()
    return model.eval()


def export_rockpool(model: torch.nn.Module, path, in_shape=(2, 32, 32)) -> None:
    """``rockpool.nn.modules.torch.nir.to_nir`` on a ``(batch 1, time 1, C*H*W)`` sample, then
    ``nir.write``. Rockpool's exporter keeps the sample's shape in the Input node and the traced
    output's ``(batch, time, N)`` in the Output node, which ``nir.read`` (type check) refuses
    ("type mismatch: input.output: [[1 1 2048]] -> 0_LinearTorch.input: [[2048]]"); the batch and
    time dims are dropped from both here (as snnTorch's ``ignore_dims=[0]`` does) and the types
    inferred before writing."""
    import nir

    _import_rockpool()
    from rockpool.nn.modules.torch.nir import to_nir

    dtype = _rockpool_dtype(model)
    with _DefaultDtype(dtype), torch.no_grad():
        model.reset_state()
        graph = to_nir(model, torch.zeros((1, 1, int(np.prod(in_shape))), dtype=dtype))
        model.reset_state()
    for key, cls in (("input", nir.Input), ("output", nir.Output)):
        node = graph.nodes[key]
        shape = np.asarray(next(iter((node.input_type if key == "input"
                                      else node.output_type).values())))
        graph.nodes[key] = cls(np.asarray(shape[2:]))
    graph.infer_types()
    nir.write(str(path), graph)


def _run_rockpool(model, frames):
    frames = _check_frames(frames)
    dtype = _rockpool_dtype(model)
    x = torch.from_numpy(frames.reshape(1, frames.shape[0], -1)).to(dtype)  # (batch, T, C*H*W)
    with _DefaultDtype(dtype), torch.no_grad():
        model.reset_state()
        out, _, _ = model(x)  # the whole sequence in one call: spikes (batch, T, classes)
        model.reset_state()
    return out[0].double().sum(0).numpy()


def run_rockpool(model: torch.nn.Module, frames: np.ndarray) -> np.ndarray:
    return _run_rockpool(model, frames)


def _rockpool_neurons() -> tuple:
    _import_rockpool()
    from rockpool.nn.modules import LIFNeuronTorch, LIFTorch

    return (LIFTorch, LIFNeuronTorch)


def run_rockpool_layers(model: torch.nn.Module, frames: np.ndarray) -> dict:
    totals, _, handles = _collect(model, _rockpool_neurons())
    try:
        _run_rockpool(model, frames)
    finally:
        for h in handles:
            h.remove()
    return totals


# --------------------------------------------------------------------------------------------------
# The discretisation rules, straight from a NIR file (an oracle for the rules, not the engine)
# --------------------------------------------------------------------------------------------------

#: dt each exporter assumed (snnTorch: hard-coded in export_nir.py; Norse: to_nir's default;
#: Rockpool: the modules' default, not in the file but checked against its r = tau e^(-dt/tau) / dt)
EXPORT_DT = {"snntorch": 1e-4, "norse": NORSE_DT, "rockpool": ROCKPOOL_DT}


def _rockpool_decay(tau, dt: float) -> np.ndarray:
    """Rockpool's ``torch.exp(-dt / tau)`` (lif_torch.py:128-129, lif_neuron_torch.py:54-55):
    a Python scalar over a tensor is ``tau.reciprocal() * (-dt)`` in torch (Tensor.__rdiv__),
    i.e. ``fl(fl(1 / tau) * -dt)``, not ``fl(-dt / tau)`` (they differ for 25% of random taus);
    then exp, here libm's (== torch.exp for every tau this module uses)."""
    import math

    return np.vectorize(math.exp, otypes=[np.float64])((1.0 / np.asarray(tau, np.float64)) * -dt)


def _neuron_step(framework: str, node, state: dict, x: np.ndarray) -> np.ndarray:
    """One step of ``framework``'s own discrete neuron for NIR ``node``, in that framework's
    floating-point operation order; ``state`` is updated in place, spikes returned."""
    import math

    import nir

    f64 = np.float64
    if framework == "snntorch" and isinstance(node, nir.LIF):
        # Leaky, reset_mechanism="subtract", reset_delay=True: beta = 1 - dt/tau
        beta = state.setdefault("beta", 1 - EXPORT_DT["snntorch"] / np.asarray(node.tau, f64))
        thr = np.asarray(node.v_threshold, f64)
        mem = state.get("mem", np.zeros_like(x))
        reset = (mem - thr > 0).astype(f64)
        mem = (beta * mem + x) - reset * thr
        state["mem"] = mem
        return (mem - thr > 0).astype(f64)
    if framework == "sinabs" and isinstance(node, (nir.IF, nir.LIF)):
        # IAF / LIF: MultiSpike, MembraneSubtract, no min_v_mem; LIF with norm_input=True
        thr = np.asarray(node.v_threshold, f64)
        v = state.get("v", np.zeros_like(x))
        if isinstance(node, nir.LIF):
            alpha = state.setdefault("alpha", np.vectorize(math.exp)(
                -1.0 / np.asarray(node.tau, f64)))
            v = alpha * v + (1 - alpha) * x
        else:
            v = 1.0 * v + x
        s = (v > 0) * np.trunc(v / thr)
        state["v"] = v - s * thr
        return s
    if framework == "norse" and isinstance(node, (nir.LIF, nir.CubaLIF)):
        dt = EXPORT_DT["norse"]
        th, leak = np.asarray(node.v_threshold, f64), np.asarray(node.v_leak, f64)
        reset = np.asarray(node.v_reset, f64)
        v = state.get("v", np.broadcast_to(leak, x.shape).copy())  # initial v = v_leak
        if isinstance(node, nir.LIF):  # LIFBoxCell
            k = state.setdefault("k", dt * (dt / np.asarray(node.tau, f64)))
            v = v + k * ((x + leak) - v)
        else:  # LIFCell
            km = state.setdefault("km", dt * (dt / np.asarray(node.tau_mem, f64)))
            ks = state.setdefault("ks", -dt * (dt / np.asarray(node.tau_syn, f64)))
            i = state.get("i", np.zeros_like(x)) + x
            v = v + km * ((leak - v) + i)
            state["i"] = i + ks * i
        z = (v - th > 0).astype(f64)
        state["v"] = np.where(z > 0, reset, v)
        return z
    if framework == "rockpool" and isinstance(node, (nir.LIF, nir.CubaLIF)):
        # LIFNeuronTorch (-> LIF) / LIFTorch (-> CubaLIF), lif_neuron_torch.py:256-272,
        # lif_torch.py:685-709: bias = noise = 0 (not exported), w_in = 1, multi-spike StepPWL
        # ``(v >= thr) * floor(v / thr)`` clamped at max_spikes_per_dt = 2**16, subtract reset
        dt = EXPORT_DT["rockpool"]
        thr = np.asarray(node.v_threshold, f64)
        tau = np.asarray(node.tau if isinstance(node, nir.LIF) else node.tau_mem, f64)
        if "alpha" not in state:
            state["alpha"] = _rockpool_decay(tau, dt)
            # dt is not in the file: the exporter's r = tau * exp(-dt / tau) / dt (nir.py:267,
            # 288) confirms the one assumed here, bit for bit
            assert np.array_equal(np.asarray(node.r, f64), tau * state["alpha"] / dt), "dt"
            if isinstance(node, nir.CubaLIF):
                state["beta"] = _rockpool_decay(node.tau_syn, dt)
        v = state.get("v", np.zeros_like(x))
        if isinstance(node, nir.LIF):
            v = state["alpha"] * v  # vmem *= alpha
            v = v + x  # vmem += input
        else:
            i = state.get("i", np.zeros_like(x)) + x  # isyn = isyn + input (before the decay)
            v = state["alpha"] * v  # vmem *= alpha
            i = state["beta"] * i  # isyn *= beta
            v = v + i  # vmem = vmem + isyn.sum(2) (+ noise 0 + bias 0)
            state["i"] = i
        n = (v >= thr) * np.floor(v / thr)
        n = np.where(n > 2.0 ** 16, 2.0 ** 16, n)
        state["v"] = v - n * thr
        return n
    raise NotImplementedError(f"{framework}: no rule for {type(node).__name__}")


def nir_reference(graph, framework: str, frames: np.ndarray) -> tuple[np.ndarray, dict]:
    """Run a NIR graph written by ``framework`` with that framework's discretisation rules
    (the research note's pseudo-code, in numpy; synapses through torch float64, exact here
    because the weights are dyadic). Returns the output spike counts summed over the steps,
    flattened, and the per-neuron-node spike totals. Only the node kinds the three exporters
    write for this module's models; a check of the written-down rules, not an importer."""
    import nir
    import torch.nn.functional as F

    frames = _check_frames(frames)
    order = _topo(graph)
    preds = {k: [a for a, b in graph.edges if b == k] for k in graph.nodes}
    states = {k: {} for k in graph.nodes}
    totals = {k: 0.0 for k, n in graph.nodes.items()
              if isinstance(n, (nir.LIF, nir.IF, nir.CubaLIF))}
    out = None
    for x_t in frames:
        vals = {}
        for key in order:
            node = graph.nodes[key]
            if isinstance(node, nir.Input):  # C-major flatten where the Input is [C*H*W] (Rockpool)
                x = x_t.reshape(np.asarray(next(iter(node.input_type.values()))).tolist())
            else:
                x = vals[preds[key][0]]
            if isinstance(node, (nir.Input, nir.Output)):
                y = x
            elif isinstance(node, nir.Conv2d):
                y = F.conv2d(torch.from_numpy(x)[None], torch.as_tensor(node.weight, dtype=torch.float64),
                             torch.as_tensor(node.bias, dtype=torch.float64), tuple(np.asarray(node.stride)),
                             tuple(np.asarray(node.padding)), tuple(np.asarray(node.dilation)),
                             int(node.groups))[0].numpy()
            elif isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
                k = tuple(np.broadcast_to(np.asarray(node.kernel_size), (2,)).tolist())
                st = tuple(np.broadcast_to(np.asarray(node.stride), (2,)).tolist())
                y = F.avg_pool2d(torch.from_numpy(x)[None], k, st)[0].numpy()
                if isinstance(node, nir.SumPool2d):
                    y = y * (k[0] * k[1])
            elif isinstance(node, nir.Flatten):
                y = x.reshape(-1)
            elif isinstance(node, nir.Affine):
                y = np.asarray(node.weight, np.float64) @ x + np.asarray(node.bias, np.float64)
            elif isinstance(node, nir.Linear):
                y = np.asarray(node.weight, np.float64) @ x
            else:
                y = _neuron_step(framework, node, states[key], x)
                totals[key] += float(y.sum())
            vals[key] = y
        o = vals["output"].reshape(-1)
        out = o.copy() if out is None else out + o
    return out, totals


def neuron_state_check(framework: str, model: torch.nn.Module, graph, steps: int = 60,
                       seed: int = 1) -> dict:
    """Feed random, non-dyadic float64 currents straight into each spiking layer of ``model``
    and into `_neuron_step` with the exported node's parameters; returns, per layer, how many
    steps differ in spikes or in the membrane state (bit for bit). A check of the operation
    order at the last-ulp level, which the dyadic end-to-end runs cannot see."""
    import nir

    rng = np.random.default_rng(seed)
    mods = dict(model.named_children())
    result = {}
    for key, node in graph.nodes.items():
        if not isinstance(node, (nir.LIF, nir.IF, nir.CubaLIF)):
            continue
        mod = mods[key]
        shape = tuple(np.asarray(next(iter(node.input_type.values()))).tolist())
        # currents scaled to each neuron kind's gain so that it fires ~10-30% of the time
        scale = {("sinabs", nir.LIF): 6.0, ("norse", nir.LIF): 10.0,
                 ("rockpool", nir.LIF): ROCKPOOL_CHECK_SCALE[0],
                 ("rockpool", nir.CubaLIF): ROCKPOOL_CHECK_SCALE[1]}.get(
            (framework, type(node)), 1.0) * (float(np.max(node.v_threshold))
                                             if framework == "rockpool" else 1.0)
        xs = (rng.standard_normal((steps, *shape)) * 0.8 + 0.3) * scale
        st: dict = {}
        bad = 0
        with torch.no_grad():
            if framework == "sinabs":
                import sinabs

                sinabs.reset_states(mod)
                out = mod(torch.from_numpy(xs)).numpy()
            elif framework == "snntorch":
                _reset_snntorch(mod)
            elif framework == "rockpool":
                f64 = _DefaultDtype(torch.float64)
                with f64:
                    mod.reset_state()
            state = None
            for t in range(steps):
                s_ref = _neuron_step(framework, node, st, xs[t])
                x = torch.from_numpy(xs[t])[None]
                if framework == "snntorch":
                    s, v, v_ref = _spike_count(mod(x))[0].numpy(), mod.mem[0].numpy(), st["mem"]
                elif framework == "norse":
                    z, state = mod(x, state)
                    s, v, v_ref = z[0].numpy(), state.v[0].numpy(), st["v"]
                elif framework == "rockpool":  # one step per call, (batch 1, T 1, N)
                    with f64:
                        z, _, _ = mod(x[None])
                    s, v, v_ref = z[0, 0].numpy(), mod.vmem.numpy(), st["v"]
                    if "i" in st:  # LIFTorch: the synaptic current too
                        v, v_ref = np.stack([v, mod.isyn[:, 0].numpy()]), np.stack([v_ref, st["i"]])
                else:
                    s, v, v_ref = out[t], None, None
                bad += int(not np.array_equal(s, s_ref) or
                           (v is not None and not np.array_equal(v, v_ref)))
            if framework == "sinabs":
                bad += int(not np.array_equal(mod.v_mem[0].numpy(), st["v"]))
                sinabs.reset_states(mod)
            elif framework == "snntorch":
                _reset_snntorch(mod)
            elif framework == "rockpool":
                with f64:
                    mod.reset_state()
        result[key] = bad
    return result


# --------------------------------------------------------------------------------------------------
# Lookup by name, and the self-check
# --------------------------------------------------------------------------------------------------


def functions(framework: str):
    """``(build, export, run, run_layers)`` of ``framework``."""
    g = globals()
    return (g[f"build_{framework}"], g[f"export_{framework}"], g[f"run_{framework}"],
            g[f"run_{framework}_layers"])


def layer_sizes(model: torch.nn.Module, framework: str, in_shape=(2, 32, 32)) -> dict:
    """Neurons per spiking layer (same keys as ``run_<F>_layers``)."""
    frames = np.zeros((1, *in_shape))
    neuron_types = {
        "snntorch": lambda: __import__("snntorch").SpikingNeuron,
        "sinabs": lambda: __import__("sinabs.layers", fromlist=["StatefulLayer"]).StatefulLayer,
        "norse": lambda: __import__("norse.torch.module.snn", fromlist=["SNNCell"]).SNNCell,
        "rockpool": _rockpool_neurons,
    }[framework]()
    _, sizes, handles = _collect(model, (neuron_types,))
    try:
        {"snntorch": _run_snntorch, "sinabs": _run_sinabs, "norse": _run_norse,
         "rockpool": _run_rockpool}[framework](model, frames)
    finally:
        for h in handles:
            h.remove()
    return sizes


def _topo(graph) -> list:
    """Node keys in topological order (the exporters write their edges in set order)."""
    order = []
    succ: dict[str, list] = {}
    for a, b in graph.edges:
        succ.setdefault(a, []).append(b)
    indeg = {k: 0 for k in graph.nodes}
    for _, b in graph.edges:
        indeg[b] += 1
    stack = [k for k, d in indeg.items() if d == 0]
    while stack:
        k = stack.pop()
        order.append(k)
        for b in sorted(succ.get(k, [])):
            indeg[b] -= 1
            if indeg[b] == 0:
                stack.append(b)
    return order


def _describe(node) -> str:
    import nir

    def arr(name):
        v = np.asarray(getattr(node, name))
        u = np.unique(v)
        vals = ", ".join(f"{x:.6g}" for x in u[:4]) + (" ..." if len(u) > 4 else "")
        return f"{name}{list(v.shape)} {v.dtype} {{{vals}}}"

    if isinstance(node, (nir.Conv2d,)):
        return (f"weight{list(node.weight.shape)} {node.weight.dtype} stride={np.asarray(node.stride).tolist()} "
                f"padding={np.asarray(node.padding).tolist()} groups={node.groups} "
                f"bias{list(node.bias.shape)}")
    if isinstance(node, (nir.Affine, nir.Linear)):
        return f"weight{list(node.weight.shape)} {node.weight.dtype}"
    if isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
        return (f"kernel={np.asarray(node.kernel_size).tolist()} "
                f"stride={np.asarray(node.stride).tolist()} "
                f"padding={np.asarray(node.padding).tolist()}")
    if isinstance(node, nir.Flatten):
        return f"start_dim={int(node.start_dim)} end_dim={int(node.end_dim)}"
    if isinstance(node, nir.CubaLIF):
        return "; ".join(arr(a) for a in ("tau_mem", "tau_syn", "r", "w_in", "v_threshold",
                                          "v_leak", "v_reset"))
    if isinstance(node, nir.LIF):
        return "; ".join(arr(a) for a in ("tau", "r", "v_threshold", "v_leak", "v_reset"))
    if isinstance(node, nir.IF):
        return "; ".join(arr(a) for a in ("r", "v_threshold", "v_reset"))
    if isinstance(node, (nir.Input, nir.Output)):
        t = node.input_type if isinstance(node, nir.Input) else node.output_type
        return f"shape={[np.asarray(v).tolist() for v in t.values()]}"
    return ""


def self_check(out_dir="/tmp/nir_frameworks_check", seed: int = 0, steps: int = 8) -> None:
    import tempfile
    import time

    import nir

    if not SEGMENTS:
        raise SystemExit(f"no DVS Gesture segments at {GESTURE_DIR}")
    out_dir = Path(out_dir or tempfile.mkdtemp())
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = {p.name: gesture_frames(p, steps) for p in SEGMENTS}
    from eventformer.events import dense_frames, read_events
    from eventformer.inference import downsample
    for p in SEGMENTS:  # our sparse framing scattered == the engine's dense framing
        dense = dense_frames(downsample(read_events(p).events, 4), steps, 32, 32)
        assert np.array_equal(dense, frames[p.name]), p
    print(f"segments: {[p.name for p in SEGMENTS]}, frames [T={steps}, 2, 32, 32], "
          f"events per step {[int(f.sum()) // steps for f in frames.values()]}")
    print(f"frameworks importable: {FRAMEWORKS}")
    for fw in FRAMEWORKS:
        build, export, run, run_layers = functions(fw)
        t0 = time.perf_counter()
        model = build(seed)
        sizes = layer_sizes(model, fw)
        print(f"\n=== {fw} (seed {seed}) ===")
        print(" -> ".join(f"{k}:{type(m).__name__}" for k, m in model.named_children()))
        for name, f in frames.items():
            layers = run_layers(model, f)
            out = run(model, f)
            rates = "  ".join(f"{k}: {v / (sizes[k] * steps):.3f}" for k, v in layers.items())
            print(f"{name}: spikes/neuron/step {rates} | out {out.astype(int).tolist()} "
                  f"pred {int(np.argmax(out))}")
            assert out.dtype == np.float64
            # the output count equals the last layer's total
            assert abs(out.sum() - list(layers.values())[-1]) < 1e-9
        path = out_dir / f"{fw}.nir"
        export(model, path)
        graph = nir.read(str(path))
        print(f"exported {path} ({path.stat().st_size} bytes); nir.read -> "
              f"graph metadata {graph.metadata}")
        for key in _topo(graph):
            node = graph.nodes[key]
            meta = f" metadata={node.metadata}" if node.metadata else ""
            print(f"  {key:>6}: {type(node).__name__:<9} {_describe(node)}{meta}")
        print(f"  edges: {sorted(graph.edges, key=lambda e: _topo(graph).index(e[0]))}")
        same = []
        for name, f in frames.items():  # the written-down rules reproduce the framework exactly
            ref_out, ref_layers = nir_reference(graph, fw, f)
            same.append(np.array_equal(ref_out, run(model, f))
                        and ref_layers == run_layers(model, f))
        print(f"  rules of the note, run on the NIR file, equal {fw}'s own spikes bit for bit "
              f"on every segment and layer: {all(same)} {same}")
        assert all(same), fw
        bad = neuron_state_check(fw, model, graph)
        print(f"  random non-dyadic currents into each spiking layer, 60 steps: steps whose "
              f"spikes or membrane differ from the rules, per layer: {bad}")
        assert not any(bad.values()), fw
        print(f"  ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    self_check()
