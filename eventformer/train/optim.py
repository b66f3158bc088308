"""AdamW (torch.optim.AdamW semantics) and a cosine learning-rate schedule with linear warm-up.

The optimiser works on dicts of numpy arrays keyed like the parameters and updates them IN PLACE,
with the same float operations as torch's single-tensor (``foreach=False``) AdamW::

    p *= 1 - lr * weight_decay                      # decoupled weight decay
    m += (g - m) * (1 - beta1)                       # exp_avg.lerp_(grad, 1 - beta1)
    v = v * beta2 + g * g * (1 - beta2)
    denom = sqrt(v) / sqrt(1 - beta2**t) + eps
    p -= lr / (1 - beta1**t) * m / denom
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

__all__ = ["AdamW", "CosineSchedule", "cosine_lr", "no_decay_keys"]


def no_decay_keys(params: dict[str, np.ndarray]) -> set[str]:
    """The usual weight-decay exemptions: every 1-D tensor (biases, BatchNorm gamma/beta)."""
    return {k for k, v in params.items() if np.ndim(v) <= 1}


class AdamW:
    """``torch.optim.AdamW`` defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2,
    no amsgrad. ``no_decay``: parameter keys with weight decay 0 (torch: a second param group)."""

    def __init__(self, params: dict[str, np.ndarray], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, no_decay: Iterable[str] = ()):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError("AdamW: lr, eps and weight_decay must be non-negative")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"AdamW: betas must be in [0, 1), got {betas}")
        self.params = params
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.no_decay = set(no_decay)
        unknown = self.no_decay - set(params)
        if unknown:
            raise KeyError(f"AdamW: no_decay names unknown parameter {min(unknown)!r}")
        self.t = 0
        self.exp_avg = {k: np.zeros_like(v) for k, v in params.items()}
        self.exp_avg_sq = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, grads: dict[str, np.ndarray], lr: float | None = None) -> None:
        """One update of every parameter that has a gradient (missing keys are skipped, as torch
        skips parameters whose ``.grad`` is None; the step counter is shared)."""
        if lr is not None:
            self.lr = float(lr)
        unknown = set(grads) - set(self.params)
        if unknown:
            raise KeyError(f"AdamW: gradient for unknown parameter {min(unknown)!r}")
        self.t += 1
        b1, b2 = self.betas
        bc1 = 1.0 - b1 ** self.t
        bc2_sqrt = math.sqrt(1.0 - b2 ** self.t)
        step_size = self.lr / bc1
        for k, g in grads.items():
            p = self.params[k]
            g = np.asarray(g, p.dtype)
            wd = 0.0 if k in self.no_decay else self.weight_decay
            if wd:
                p *= 1.0 - self.lr * wd
            m, v = self.exp_avg[k], self.exp_avg_sq[k]
            m += (g - m) * (1.0 - b1)
            v *= b2
            v += g * g * (1.0 - b2)
            denom = np.sqrt(v) / bc2_sqrt + self.eps
            p -= step_size * (m / denom)

    def state_dict(self) -> dict:
        return {"t": self.t, "lr": self.lr, "betas": self.betas, "eps": self.eps,
                "weight_decay": self.weight_decay, "no_decay": sorted(self.no_decay),
                "exp_avg": {k: v.copy() for k, v in self.exp_avg.items()},
                "exp_avg_sq": {k: v.copy() for k, v in self.exp_avg_sq.items()}}

    def load_state_dict(self, sd: dict) -> None:
        self.t = int(sd["t"])
        self.lr = float(sd["lr"])
        self.betas = tuple(sd["betas"])
        self.eps = float(sd["eps"])
        self.weight_decay = float(sd["weight_decay"])
        self.no_decay = set(sd["no_decay"])
        for k in self.params:
            self.exp_avg[k][...] = sd["exp_avg"][k]
            self.exp_avg_sq[k][...] = sd["exp_avg_sq"][k]


def cosine_lr(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0,
              min_lr: float = 0.0) -> float:
    """Learning rate of (0-based) ``step``: linear warm-up ``base_lr * (step + 1) / warmup_steps``
    for the first ``warmup_steps`` steps, then cosine decay from ``base_lr`` to ``min_lr`` over the
    remaining ``total_steps - warmup_steps`` steps (``min_lr`` from then on). Without warm-up this
    is torch's ``CosineAnnealingLR(T_max=total_steps, eta_min=min_lr)``."""
    if total_steps <= 0 or warmup_steps < 0 or step < 0:
        raise ValueError("cosine_lr: total_steps must be positive, warmup_steps and step >= 0")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class CosineSchedule:
    """``schedule(step) -> lr``: :func:`cosine_lr` with fixed settings."""

    def __init__(self, base_lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0):
        if warmup_steps > total_steps:
            raise ValueError("CosineSchedule: warm-up longer than the whole schedule")
        self.base_lr, self.total_steps = float(base_lr), int(total_steps)
        self.warmup_steps, self.min_lr = int(warmup_steps), float(min_lr)
        cosine_lr(0, self.total_steps, self.base_lr, self.warmup_steps, self.min_lr)  # validates

    def __call__(self, step: int) -> float:
        return cosine_lr(step, self.total_steps, self.base_lr, self.warmup_steps, self.min_lr)
