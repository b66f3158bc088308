"""The Spike-driven Transformer at its released DVS Gesture size on the real gesture segments.

``presets.sdt_gesture`` (``conf/gesture/2_256_200E_t16.yml``: 128x128 events, MS_SPS widths
32-64-128-256 with pooling_stat "0111", 16x16 = 256 tokens, 2 blocks of D 256 in 8 heads, MLP
1024, T 16, no Erode), its convs and head on the 2^-6 grid of tests/test_sdt_engine.py and every
BatchNorm calibrated on the real segments (framed as tests/test_qkformer.py frames them: by
number, T 16, the 128x128 sensor as it is) so that each LIF it drives fires:

- float32, the BatchNorms as calibration leaves them (they fold with rounding): the exported
  float32 file, run by the float32 engine, is no further from the float64 reference than the
  reference's own float32 realisations are (tests/torch_reference.Float32Spread);
- float64, the BatchNorms then moved to where their folding is exact (test_sdt_engine's
  ``exact_batchnorms``): the engine (the float64 model file of the one builder) spikes as the
  float64 reference at every LIF and step, and its logits agree to 1e-9.

Every LIF fires on each segment first, in both. Slow (about 60 s of CPU time, most of it the
calibration and the reference's float32 realisations), so two segments, 1.bs2 and 2.bs2 (the
shortest two).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import record_spikes  # noqa: E402
from test_qkformer import event_steps, gesture_frames  # noqa: E402
from test_sdt_engine import (assert_same_spikes, calibrated_grid_state_dict,  # noqa: E402
                             exact_batchnorms, reference)
from torch_reference import (Outputs, float32_spread, reference_outputs,  # noqa: E402
                             torch_threads)

from eventformer.modelfile import build_model_file  # noqa: E402
from eventformer.modelfile.export import export_checkpoint  # noqa: E402
from eventformer.models import Spikformer  # noqa: E402
from eventformer.models.presets import sdt_gesture  # noqa: E402
from eventformer.torch_successors import SDTConfig, SpikeDrivenTransformerRef  # noqa: E402

SEGMENTS = 2  # of the five, in name order: the calibration's cost grows with them


@pytest.mark.slow
def test_released_gesture_layout_on_real_gestures(tmp_path):
    cfg = SDTConfig.gesture()
    assert (cfg.depth, cfg.dim, cfg.heads, cfg.steps, cfg.pooling_stat, cfg.dvs) == \
        (2, 256, 8, 16, "0111", False)
    frames = gesture_frames(cfg.image_size, cfg.steps)[:SEGMENTS]
    with torch_threads(1):
        sd32 = calibrated_grid_state_dict(cfg, seed=1,
                                          frames=torch.from_numpy(np.stack(frames, 1)))

    # float32: the exported file (the released layout, told from the keys) within the spread
    path = tmp_path / "sdt-gesture.pth"
    torch.save({"model": sd32}, path)
    model32, _ = export_checkpoint(path, pooling_stat=cfg.pooling_stat, steps=cfg.steps)
    assert model32.config == sdt_gesture()
    ref32 = SpikeDrivenTransformerRef(cfg).eval()
    ref32.load_state_dict(sd32)
    truth64 = SpikeDrivenTransformerRef(cfg).double().eval()
    truth64.load_state_dict(sd32)
    truth = reference_outputs(truth64, frames, torch.float64)
    silent = [n for t in truth for n, c in t.counts.items() if c == 0]
    assert not silent, f"silent LIFs: {silent}"
    spread = float32_spread(ref32, frames, truth)
    engine32 = Spikformer(model32, dtype="float32")
    outs = []
    for f in frames:
        engine32.clear_stats()
        logits = engine32.run(event_steps(f))
        outs.append(Outputs.of(logits, {s["name"]: s["spikes"] for s in engine32.layer_stats()
                                        if s["name"] in truth[0].counts}))
    spread.check(outs, "engine float32")

    # float64: spike for spike, every LIF firing on every segment
    sd64 = exact_batchnorms(sd32)
    ref64 = SpikeDrivenTransformerRef(cfg).double().eval()
    ref64.load_state_dict(sd64)
    model64 = build_model_file(sdt_gesture(), {k: v.numpy() for k, v in sd64.items()},
                               source="exact SDT", dtype=np.float64)
    engine = Spikformer(model64, dtype="float64")
    got = record_spikes(engine)
    for f in frames:
        with torch_threads(1):
            want_logits, want = reference(ref64, torch.from_numpy(f).double()[:, None])
        got.clear()
        logits = engine.run(event_steps(f))
        assert_same_spikes(got, want)  # asserts first that every LIF fires
        np.testing.assert_allclose(logits, want_logits, rtol=0, atol=1e-9)
