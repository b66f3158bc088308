"""Training speed of the numpy trainer beside torch autograd on CPU, same model, same run.

    python benchmarks/train_speed.py [--model tiny|small] [--batch 16] [--steps 8]
                                     [--resolution 32] [--iters 10] [--threads 2]
                                     [--numpy-threading engine|blas] [--json]

One training step = forward + cross-entropy + backward + AdamW step, float32, BatchNorm in
training mode. The numpy side is the steps of ``eventformer.train.model.loss_and_grads`` +
``eventformer.train.optim.AdamW``; the torch side is ``tests/torch_reference.SpikformerRef`` with
the same sigmoid-surrogate LIF and detached reset as ``tests/test_train_model.py``, trained with
``torch.optim.AdamW`` (``torch.set_num_threads(threads)``). Input: random Poisson event counts at
``--density`` events per pixel per step.

Both sides get ``--threads`` threads. ``--numpy-threading engine`` (default): the trainer splits
its large GEMMs and its Numba kernels over ``threads`` engine threads
(:func:`eventformer.runtime.set_engine_threads`), each BLAS call single-threaded, as the engine
runs; ``blas``: one engine thread, BLAS under ``threadpool_limits(threads)``.

The two trainers alternate step by step (numpy, torch, numpy, ...) after one warm-up step each,
so that both see the same machine load; each reports the best of ``--iters`` timed steps, in
samples/s, and the ratio numpy/torch. The numpy side's best step is also split into its phases
(forward + loss, backward, optimiser).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import torch_reference as R  # noqa: E402

from eventformer import runtime  # noqa: E402
from eventformer.train import layers as L  # noqa: E402
from eventformer.train import model as M  # noqa: E402
from eventformer.train.optim import AdamW, no_decay_keys  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(M.CONFIGS), default="tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8, help="time steps T")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--iters", type=int, default=10,
                    help="timed steps of each trainer, alternating (best is reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--density", type=float, default=0.1,
                    help="mean events per pixel per polarity per step (Poisson rate)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--numpy-threading", choices=["engine", "blas"], default="engine",
                    help="engine: the trainer's own threads, BLAS on one; blas: BLAS threads only")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    cfg = M.config_by_name(args.model, image_size=args.resolution, steps=args.steps)
    T, B = args.steps, args.batch
    rng = np.random.default_rng(args.seed)
    frames = rng.poisson(args.density, size=(T, B, cfg.in_channels, cfg.image_size,
                                             cfg.image_size)).astype(np.float32)
    labels = rng.integers(0, cfg.num_classes, B)

    # numpy trainer
    params = M.init_params(cfg, args.seed, np.float32)
    state = M.init_state(cfg, np.float32)
    no_decay = no_decay_keys(params)
    opt = AdamW(params, lr=1e-3, no_decay=no_decay)

    def np_step():
        """One numpy training step; returns its phases' wall times (s)."""
        t0 = time.perf_counter()
        logits, cache = M.forward(params, state, frames, True, cfg)
        _, dlogits = L.cross_entropy(logits, labels, 0.1)
        t1 = time.perf_counter()
        grads = M.backward(dlogits, cache)
        t2 = time.perf_counter()
        opt.step(grads)
        t3 = time.perf_counter()
        return {"forward": t1 - t0, "backward": t2 - t1, "optimiser": t3 - t2}

    # torch reference, same initial weights
    torch.set_num_threads(args.threads)
    R.LIF.forward = R.surrogate_lif_forward
    ref = R.SpikformerRef(R.ref_config(cfg)).float()
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                         M.state_dict(M.init_params(cfg, args.seed, np.float32),
                                      M.init_state(cfg, np.float32)).items()}, strict=False)
    ref.train()
    named = dict(ref.named_parameters())
    groups = [{"params": [named[k] for k in sorted(params) if k not in no_decay]},
              {"params": [named[k] for k in sorted(no_decay)], "weight_decay": 0.0}]
    topt = torch.optim.AdamW(groups, lr=1e-3, weight_decay=1e-2)
    tframes = torch.from_numpy(frames)
    tlabels = torch.from_numpy(labels)

    def torch_step():
        topt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(ref(tframes), tlabels, label_smoothing=0.1)
        loss.backward()
        topt.step()

    engine = args.numpy_threading == "engine"
    runtime.set_engine_threads(args.threads if engine else 1)
    blas_threads = 1 if engine else args.threads
    best_np, t_torch = None, float("inf")
    for it in range(args.iters + 1):  # the first round is the warm-up
        with threadpool_limits(blas_threads, user_api="blas"):
            phases = np_step()
        start = time.perf_counter()
        torch_step()
        tt = time.perf_counter() - start
        if it == 0:
            continue
        if best_np is None or sum(phases.values()) < sum(best_np.values()):
            best_np = phases
        t_torch = min(t_torch, tt)
    t_np = sum(best_np.values())

    res = {"model": args.model, "batch": B, "steps": T, "resolution": args.resolution,
           "density": args.density, "threads": args.threads, "iters": args.iters,
           "numpy_threading": args.numpy_threading,
           "input_density_measured": float((frames > 0).mean()),
           "numpy_samples_per_s": B / t_np, "torch_samples_per_s": B / t_torch,
           "numpy_step_s": t_np, "torch_step_s": t_torch,
           "numpy_phases_s": best_np,
           "ratio_numpy_over_torch": t_torch / t_np,
           "torch_version": torch.__version__, "numpy_version": np.__version__}
    if args.json:
        print(json.dumps(res, indent=2))
        return res
    print(f"train step ({args.model}, B={B}, T={T}, {args.resolution}x{args.resolution}, float32, "
          f"density {args.density}, threads {args.threads} (numpy: {args.numpy_threading}), "
          f"best of {args.iters}, alternating)")
    print(f"{'trainer':<22}{'step ms':>10}{'samples/s':>12}")
    print(f"{'numpy (eventformer)':<22}{t_np * 1e3:>10.1f}{B / t_np:>12.1f}")
    print(f"{'torch autograd (CPU)':<22}{t_torch * 1e3:>10.1f}{B / t_torch:>12.1f}")
    print("numpy phases (ms): " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in best_np.items()))
    print(f"ratio numpy/torch (samples/s): {t_torch / t_np:.2f}x")
    return res


if __name__ == "__main__":
    main()
