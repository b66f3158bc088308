"""Operation counts -> the op report: kernel-counted work beside the paper-style estimate.

Real counts (``ac``, ``mac``, ...) come from the kernels (SPEC §5). The paper convention
(Spikformer and successors) is SOP = fr x T x FLOPs per layer, with fr the layer's mean input
firing rate and FLOPs the dense MACs of one step, and energy = E_AC x SOPs + E_MAC x (first layer
FLOPs x T). Both energies use the same table, which is a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

ENERGY_45NM_PJ = {"ac": 0.9, "mac": 4.6}  # Horowitz, 45 nm, 32-bit float (the papers' table)

# Horowitz (ISSCC 2014), 45 nm, pJ per operation (SPEC §6); int16 add interpolated.
OP_ENERGY_45NM_PJ = {"int8 add": 0.03, "int16 add": 0.05, "int32 add": 0.1,
                     "int8 multiply": 0.2, "int32 multiply": 3.1,
                     "fp32 add": 0.9, "fp32 multiply": 3.7}

#: What one counted accumulate and one counted multiply are in each arithmetic: an accumulate
#: adds a weight at the weights' width; a multiply is a weight times an input, summed into the
#: int32 accumulator. The table has no int16 multiply: int16 products are charged as int32
#: multiplies (an upper bound).
ARITHMETIC_OPS = {
    "float32": (("fp32 add",), ("fp32 multiply", "fp32 add")),
    "float64": (("fp64 add",), ("fp64 multiply", "fp64 add")),
    "int16": (("int16 add",), ("int32 multiply", "int32 add")),
    "int8": (("int8 add",), ("int8 multiply", "int32 add")),
}

#: Operations the 45 nm table has no entry for, and the entry they are priced at. Horowitz's
#: table stops at 32-bit floats: float64 work is priced as float32's (the papers' table), an
#: underestimate, and the report says so rather than calling it fp32 work.
PRICED_AS = {"fp64 add": "fp32 add", "fp64 multiply": "fp32 multiply"}


@dataclass
class EnergyTable:
    ac_pj: float = ENERGY_45NM_PJ["ac"]
    mac_pj: float = ENERGY_45NM_PJ["mac"]
    arithmetic: str = "float32"  # what the entries price (see ARITHMETIC_OPS)

    @classmethod
    def for_arithmetic(cls, name: str) -> "EnergyTable":
        """The 45 nm table of an arithmetic (float32, float64, int16, int8)."""
        ac, mac = ARITHMETIC_OPS[name]
        return cls(ac_pj=_price(ac), mac_pj=_price(mac), arithmetic=name)

    def energy_uj(self, ac: float, mac: float) -> float:
        return (ac * self.ac_pj + mac * self.mac_pj) * 1e-6

    def describe(self) -> dict:
        """The arithmetic, the operations one counted AC and MAC are in it, and their prices
        (for the op report). ``ac_priced_as`` / ``mac_priced_as`` name the table entries used
        where the table has none for the operations run (float64), with the table's price."""
        ac, mac = ARITHMETIC_OPS.get(self.arithmetic, ARITHMETIC_OPS["float32"])
        out = {"arithmetic": self.arithmetic, "ac": " + ".join(ac), "mac": " + ".join(mac),
               "ac_pj": self.ac_pj, "mac_pj": self.mac_pj}
        for key, ops, pj in (("ac", ac, self.ac_pj), ("mac", mac, self.mac_pj)):
            priced = tuple(PRICED_AS.get(o, o) for o in ops)
            if priced != ops and pj == _price(ops):  # a price given by the user is its own
                out[f"{key}_priced_as"] = " + ".join(priced)
        return out


def _price(ops) -> float:
    """pJ of one of each operation in ``ops`` (45 nm table, :data:`PRICED_AS` where it has no
    entry)."""
    return round(sum(OP_ENERGY_45NM_PJ[PRICED_AS.get(o, o)] for o in ops), 6)


def energy_sentence(e: dict) -> str:
    """What the energy of a report counts, in one line, from `EnergyTable.describe`."""
    line = (f"arithmetic {e['arithmetic']}: energy counts an AC as {e['ac']} ({e['ac_pj']:g} pJ), "
            f"a MAC as {e['mac']} ({e['mac_pj']:g} pJ); 45 nm, Horowitz 2014")
    priced = [f"the {k.upper()} as {e[f'{k}_priced_as']}" for k in ("ac", "mac")
              if f"{k}_priced_as" in e]
    if priced:
        line += f", whose table has no such entries: priced {', '.join(priced)}"
    return line


def layer_sop(stats: dict, steps: int) -> float:
    """Paper-style SOPs of one layer: fr x T x dense FLOPs of a step."""
    return stats["input_density"] * steps * stats["dense_macs_per_step"]


#: The attention operators' own work (SPEC §5): NSAD look-ups, TASA shifts, binary compares,
#: map entries formed and left non-zero, the spike masks and ANDs of the Spike-driven Transformer
#: and QKFormer, and the window maxima of SDT's spike max-pools. Reported for every model (zeros
#: where an operator has none), so reports of different operators line up.
ATTENTION_COUNTERS = ("lut", "shift", "compare", "attn_entries", "attn_nonzero", "mask",
                      "maxima")


def summarize(layer_stats: list[dict], steps: int, table: EnergyTable | None = None,
              paper_table: EnergyTable | None = None) -> dict:
    """Totals over layers: real counts, the paper estimate, and both energies in microjoules.

    ``table`` prices the counted ops (the engine's arithmetic); ``paper_table`` the paper
    estimate (default: the papers' float32 table, or ``table`` when that is a float one)."""
    table = table or EnergyTable()
    if paper_table is None:
        paper_table = table if table.arithmetic.startswith("float") else EnergyTable()
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
        "energy_uj_paper": paper_table.energy_uj(sop, paper_mac),
        "energy_table": table.describe(),
    }


def step_paths(sparse: int, dense: int, gather: int = 0) -> str:
    """How a layer's steps ran: "sparse" (scatter), "gather", "dense", or "mixed" with the
    counts (event-driven steps include the gathered ones)."""
    scatter = sparse - gather
    used = [(n, name) for n, name in ((scatter, "sparse"), (gather, "gather"), (dense, "dense"))
            if n]
    if len(used) <= 1:
        return used[0][1] if used else "sparse"
    if not gather:
        return f"mixed {sparse}/{dense}"
    return "mixed " + "/".join(f"{n} {name}" for n, name in used)


def layer_rows(layer_stats: list[dict], steps: int) -> list[dict]:
    """Per-layer report rows: counts, spikes, path taken, input density, paper SOPs."""
    rows = []
    for s in layer_stats:
        sparse, dense = s.get("sparse_steps", 0), s.get("dense_steps", 0)
        path = step_paths(sparse, dense, s.get("gather_steps", 0))
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
