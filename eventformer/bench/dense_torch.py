"""The dense baseline: the same model file run as a plain PyTorch CPU forward.

This is what a GPU framework does on a CPU: every layer as a dense tensor op over all T steps at
once (batch T x 1), BatchNorm already folded as in the model file. It imports torch lazily and
exists only so ``eventformer bench`` can time both engines on identical weights in one run.
"""

from __future__ import annotations

import numpy as np

from ..modelfile import ModelFile
from ..models.config import sps_suffix


def build_dense_forward(model: ModelFile, dtype: str = "float32"):
    """Return ``forward(frames [T, C, H, W] numpy) -> logits numpy`` using torch."""
    import torch
    import torch.nn.functional as F

    cfg = model.config
    tdt = torch.float32 if dtype == "float32" else torch.float64
    L = model.layers

    def t(a):
        return torch.from_numpy(np.asarray(a)).to(tdt)

    def lif(x, p):
        """Multi-step LIF over the leading T axis, SPEC §1 (hard reset, decay_input)."""
        v = torch.zeros_like(x[0])
        inv = torch.tensor(1.0 / p.tau, dtype=tdt)
        out = torch.empty_like(x)
        for k in range(x.shape[0]):
            h = v + (x[k] - v) * inv
            s = (h >= p.theta).to(tdt)
            out[k] = s
            v = h * (1 - s) if p.v_reset is not None else h - s * p.theta
        return out

    convs = [(t(L[f"patch_embed.proj_lif{sps_suffix(i)}"].weight),
              t(L[f"patch_embed.proj_lif{sps_suffix(i)}"].bias),
              L[f"patch_embed.proj_lif{sps_suffix(i)}"], cfg.sps_pool[i])
             for i in range(len(cfg.sps_channels))]
    rpe = (t(L["patch_embed.rpe_lif"].weight), t(L["patch_embed.rpe_lif"].bias),
           L["patch_embed.rpe_lif"])
    blocks = []
    for b in range(cfg.depth):
        pre = f"block.{b}"
        blocks.append({n: (t(L[f"{pre}.{n}"].weight), t(L[f"{pre}.{n}"].bias), L[f"{pre}.{n}"])
                       for n in ("attn.q_lif", "attn.k_lif", "attn.v_lif", "attn.proj_lif",
                                 "mlp.fc1_lif", "mlp.fc2_lif")})
        blocks[-1]["attn_lif"] = L[f"{pre}.attn.attn_lif"]
    head_w, head_b = t(L["head"].weight), t(L["head"].bias)
    heads, d, scale = cfg.heads, cfg.head_dim, cfg.scale

    def linear_lif(x, wbp):
        w, b, p = wbp  # x [T, N, Cin]
        return lif(torch.matmul(x, w.T) + b, p)

    @torch.no_grad()
    def forward(frames: np.ndarray) -> np.ndarray:
        x = t(frames)  # [T, C, H, W]
        T = x.shape[0]
        for w, b, p, pooled in convs:
            x = lif(F.conv2d(x, w, b, padding=p.padding, stride=p.stride), p)
            if pooled:
                x = F.max_pool2d(x, 3, 2, 1)
        w, b, p = rpe
        x = x + lif(F.conv2d(x, w, b, padding=1), p)
        x = x.flatten(2).transpose(1, 2)  # [T, N, D], token n = row * W + col
        n_tok = x.shape[1]
        for blk in blocks:
            q = linear_lif(x, blk["attn.q_lif"]).reshape(T, n_tok, heads, d).transpose(1, 2)
            k = linear_lif(x, blk["attn.k_lif"]).reshape(T, n_tok, heads, d).transpose(1, 2)
            v = linear_lif(x, blk["attn.v_lif"]).reshape(T, n_tok, heads, d).transpose(1, 2)
            y = ((q @ k.transpose(-2, -1)) * scale) @ v  # [T, H, N, d]
            y = lif(y.transpose(1, 2).reshape(T, n_tok, heads * d), blk["attn_lif"])
            x = x + linear_lif(y, blk["attn.proj_lif"])
            x = x + linear_lif(linear_lif(x, blk["mlp.fc1_lif"]), blk["mlp.fc2_lif"])
        feat = x.mean(1).mean(0)
        return (head_w @ feat + head_b).numpy()

    return forward
