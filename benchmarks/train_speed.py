"""Training speed of the numpy trainer beside torch autograd on CPU, same model, same run.

    python benchmarks/train_speed.py [--model tiny|small] [--batch 16] [--steps 8]
                                     [--resolution 32] [--iters 10] [--threads 2] [--json]

One training step = forward + cross-entropy + backward + AdamW step, float32, BatchNorm in
training mode. The numpy side is ``eventformer.train.model.loss_and_grads`` +
``eventformer.train.optim.AdamW`` (under ``threadpool_limits(threads)``); the torch side is
``tests/torch_reference.SpikformerRef`` with the same sigmoid-surrogate LIF and detached reset
as ``tests/test_train_model.py``, trained with ``torch.optim.AdamW`` (``torch.set_num_threads``).
Input: random Poisson event counts at ``--density`` events per pixel per step. Reports the best
of ``--iters`` timed steps after warm-up, in samples/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import torch_reference as R  # noqa: E402

from eventformer.bench.run import time_best  # noqa: E402
from eventformer.train import model as M  # noqa: E402
from eventformer.train.optim import AdamW, no_decay_keys  # noqa: E402


def best_time(step, iters, warmup=1):
    for _ in range(warmup):
        step()
    return time_best(step, iters)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(M.CONFIGS), default="tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8, help="time steps T")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--iters", type=int, default=10, help="timed iterations (best is reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--density", type=float, default=0.1,
                    help="mean events per pixel per polarity per step (Poisson rate)")
    ap.add_argument("--seed", type=int, default=0)
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
        _, grads, _ = M.loss_and_grads(params, state, frames, labels, cfg, label_smoothing=0.1)
        opt.step(grads)

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

    with threadpool_limits(args.threads):
        t_np = best_time(np_step, args.iters)
    t_torch = best_time(torch_step, args.iters)

    res = {"model": args.model, "batch": B, "steps": T, "resolution": args.resolution,
           "density": args.density, "threads": args.threads, "iters": args.iters,
           "input_density_measured": float((frames > 0).mean()),
           "numpy_samples_per_s": B / t_np, "torch_samples_per_s": B / t_torch,
           "numpy_step_s": t_np, "torch_step_s": t_torch,
           "ratio_numpy_over_torch": t_torch / t_np,
           "torch_version": torch.__version__, "numpy_version": np.__version__}
    if args.json:
        print(json.dumps(res, indent=2))
        return res
    print(f"train step ({args.model}, B={B}, T={T}, {args.resolution}x{args.resolution}, float32, "
          f"density {args.density}, threads {args.threads}, best of {args.iters})")
    print(f"{'trainer':<22}{'step ms':>10}{'samples/s':>12}")
    print(f"{'numpy (eventformer)':<22}{t_np * 1e3:>10.1f}{B / t_np:>12.1f}")
    print(f"{'torch autograd (CPU)':<22}{t_torch * 1e3:>10.1f}{B / t_torch:>12.1f}")
    print(f"ratio numpy/torch (samples/s): {t_torch / t_np:.2f}x")
    return res


if __name__ == "__main__":
    main()
