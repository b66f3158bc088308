"""Operation counts -> the op report: kernel-counted work beside the paper-style estimate.

Real counts (``ac``, ``mac``, ...) come from the kernels (SPEC §5). The paper convention
(Spikformer and successors) is SOP = fr x T x FLOPs per layer, with fr the layer's mean input
firing rate and FLOPs the dense MACs of one step, and energy = E_AC x SOPs + E_MAC x (first layer
FLOPs x T). Both energies use the same table, which is a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

ENERGY_45NM_PJ = {"ac": 0.9, "mac": 4.6}  # Horowitz, 45 nm, 32-bit float (the papers' table)


@dataclass
class EnergyTable:
    ac_pj: float = ENERGY_45NM_PJ["ac"]
    mac_pj: float = ENERGY_45NM_PJ["mac"]

    def energy_uj(self, ac: float, mac: float) -> float:
        return (ac * self.ac_pj + mac * self.mac_pj) * 1e-6


def layer_sop(stats: dict, steps: int) -> float:
    """Paper-style SOPs of one layer: fr x T x dense FLOPs of a step."""
    return stats["input_density"] * steps * stats["dense_macs_per_step"]


#: The attention operators' own work (SPEC §5): NSAD look-ups, TASA shifts, binary compares,
#: map entries formed and left non-zero. Reported for every model (zeros where an operator has
#: none), so reports of different operators line up.
ATTENTION_COUNTERS = ("lut", "shift", "compare", "attn_entries", "attn_nonzero")


def summarize(layer_stats: list[dict], steps: int, table: EnergyTable | None = None) -> dict:
    """Totals over layers: real counts, the paper estimate, and both energies in microjoules."""
    table = table or EnergyTable()
    ac = sum(s["ac"] for s in layer_stats)
    mac = sum(s["mac"] for s in layer_stats)
    sop = 0.0
    paper_mac = 0.0
    for s in layer_stats:
        if s.get("input") == "counts":  # first layer: dense multiplies in the paper convention
            paper_mac += steps * s["dense_macs_per_step"]
        else:
            sop += layer_sop(s, steps)
    return {
        "ac": int(ac),
        "mac": int(mac),
        "dense_mac": int(sum(s.get("dense_mac", 0) for s in layer_stats)),
        "neuron_updates": int(sum(s.get("neuron_updates", 0) for s in layer_stats)),
        **{k: int(sum(s.get(k, 0) for s in layer_stats)) for k in ATTENTION_COUNTERS},
        "sop_paper": float(sop),
        "energy_uj": table.energy_uj(ac, mac),
        "energy_uj_paper": table.energy_uj(sop, paper_mac),
    }


def layer_rows(layer_stats: list[dict], steps: int) -> list[dict]:
    """Per-layer report rows: counts, spikes, path taken, input density, paper SOPs."""
    rows = []
    for s in layer_stats:
        sparse, dense = s.get("sparse_steps", 0), s.get("dense_steps", 0)
        path = "sparse" if dense == 0 else ("dense" if sparse == 0 else f"mixed {sparse}/{dense}")
        if s["kind"] == "head":
            path = "dense"
        rows.append({
            "name": s["name"], "neurons": s["neurons"], "spikes": s["spikes"],
            "firing_rate": (s["spikes"] / (s["neurons"] * steps)) if s["neurons"] and steps else 0.0,
            "ac": s["ac"], "mac": s["mac"], "dense_mac": s.get("dense_mac", 0),
            "neuron_updates": s.get("neuron_updates", 0),
            **{k: s.get(k, 0) for k in ATTENTION_COUNTERS},
            "input": s.get("input", ""), "input_density": round(s["input_density"], 6),
            "path": path, "sparse_steps": sparse, "dense_steps": dense,
            "sop_paper": layer_sop(s, steps) if s.get("input") != "counts" else 0.0,
        })
    return rows
