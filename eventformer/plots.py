"""Pictures of what the engine saw and did, as figures for a paper (``--plot DIR``).

Needs matplotlib (``pip install 'eventformer[plot]'``), imported only when a figure is drawn,
always on the Agg canvas (no pyplot, no display, no global state). Each ``plot_*`` function takes
plain data (arrays, dicts, lists), writes one file (PNG or SVG, from the path's suffix) and
returns its path. Sizes are fixed (in pixels at :data:`DPI`; :func:`figure_size`), so a figure's
size never depends on its content, except the input frames, whose rows follow the step count.

The figure sets (:class:`ClassificationPlotter` for ``infer FILE``, :func:`dataset_figures`,
:func:`stream_figures`, :func:`compare_figure`) gather the engine's data into those calls.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np

from .errors import EventformerError

INSTALL_HINT = "--plot needs matplotlib: pip install 'eventformer[plot]'"
FORMATS = ("png", "svg")
DPI = 100

#: Figure sizes in pixels (width, height) at :data:`DPI`.
SIZES = {
    "layers": (1200, 650),
    "raster": (1000, 600),
    "attention": (1150, 640),
    "confusion": (800, 720),
    "per-class": (1000, 520),
    "stream": (1100, 750),
    "compare": (900, 600),
}

#: Okabe & Ito's colour-blind-safe palette (black omitted).
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
             "#999999")
ON_COLOUR, OFF_COLOUR = "#D55E00", "#0072B2"  # vermillion / blue: told apart by every viewer
RASTER_MAX_ROWS = 4096


def require() -> None:
    """Raise the one-sentence install hint when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EventformerError(INSTALL_HINT) from None


def prepare_dir(outdir) -> Path:
    """``outdir``, created when missing; one sentence when it cannot be."""
    path = Path(outdir)
    if path.exists() and not path.is_dir():
        raise EventformerError(f"--plot {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EventformerError(f"--plot {path}: cannot create the folder ({exc.strerror})") \
            from None
    return path


#: Panels per row of the input-frames figure: four keep each frame large enough to read when
#: the figure is shown at a page's column width.
INPUT_COLUMNS = 4


def _input_grid(steps: int) -> tuple[int, int]:
    cols = min(max(steps, 1), INPUT_COLUMNS)
    return math.ceil(max(steps, 1) / cols), cols


def input_size(steps: int) -> tuple[int, int]:
    """Pixel size of the input-frames figure of ``steps`` panels (:data:`INPUT_COLUMNS` per
    row)."""
    rows, cols = _input_grid(steps)
    return 235 * cols + 70, 230 * rows + 150


def figure_size(kind: str, steps: int | None = None) -> tuple[int, int]:
    """Pixel size (width, height) of a figure kind: ``input`` (needs ``steps``), ``layers``,
    ``raster``, ``attention``, ``confusion``, ``per-class``, ``stream``, ``compare``."""
    if kind == "input":
        return input_size(steps or 1)
    return SIZES[kind]


def _figure(pixels: tuple[int, int]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(pixels[0] / DPI, pixels[1] / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    import matplotlib

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise EventformerError(f"{path}: figures are written as {' or '.join(FORMATS)}")
    # no dates or random ids in the files: the same data gives the same bytes
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    with matplotlib.rc_context({"svg.hashsalt": "eventformer", "svg.fonttype": "none"}):
        fig.savefig(path, format=fmt, dpi=DPI, metadata=metadata)
    return path


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def safe_name(text: str) -> str:
    """A file-name-safe form of a layer or model name (dots kept, other specials to '-')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def unique_stems(paths) -> list[str]:
    """The file stem of each path, made unique by a counter where two coincide (a/1.bs2 and
    b/1.bs2 give 1 and 1-2)."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = safe_name(Path(str(p)).stem)
        n = seen.get(stem, 0) + 1
        seen[stem] = n
        out.append(stem if n == 1 else f"{stem}-{n}")
    return out


# --- the figures -------------------------------------------------------------------------------

def plot_input(frames, size: int, path, *, title: str) -> Path:
    """The input the engine ran: one panel per time step, the step's event counts per pixel of
    the model's ``size`` x ``size`` input, ON events in vermillion, OFF in blue (a pixel with
    both: their mix by share, as the legend shows), colour strength by count (a square-root scale shared by the panels,
    saturating at the 99th percentile of the non-zero counts).

    ``frames``: the framed steps ``[(idx, cnt), ...]``, flat channel-innermost sites
    ``(y * size + x) * 2 + polarity`` (polarity 1 = ON), as `frame_recording` gives them."""
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Patch

    steps = len(frames)
    counts = np.zeros((steps, size * size * 2), np.int64)
    for t, (idx, cnt) in enumerate(frames):
        np.add.at(counts[t], np.asarray(idx, np.int64), np.asarray(cnt, np.int64))
    counts = counts.reshape(steps, size, size, 2)
    nonzero = counts[counts > 0]
    vmax = max(1.0, float(np.percentile(nonzero, 99))) if nonzero.size else 1.0
    on_rgb, off_rgb = np.array(to_rgb(ON_COLOUR)), np.array(to_rgb(OFF_COLOUR))
    fig = _figure(input_size(steps))
    rows, cols = _input_grid(steps)
    fig.get_layout_engine().set(hspace=0.05)  # room between a row's axes and the next's titles
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    for t in range(rows * cols):
        ax = axes[t // cols][t % cols]
        if t >= steps:
            ax.axis("off")
            continue
        on = counts[t, :, :, 1][..., None].astype(float)
        off = counts[t, :, :, 0][..., None].astype(float)
        total = on + off
        mix = (on * on_rgb + off * off_rgb) / np.maximum(total, 1)  # the pixel's hue
        strength = np.sqrt(np.clip(total / vmax, 0.0, 1.0))  # square-root scale: faint shows
        img = 1.0 - strength * (1.0 - mix)
        ax.imshow(img, origin="upper", interpolation="nearest",
                  extent=(-0.5, size - 0.5, size - 0.5, -0.5))
        n = int(counts[t].sum())
        ax.set_title(f"step {t}: {n:,} events", fontsize=10)
        if t % cols == 0:
            ax.set_ylabel("y (pixel)")
        if t // cols == rows - 1 or t + cols >= steps:
            ax.set_xlabel("x (pixel)")
    fig.suptitle(title, fontsize=11)
    both = tuple((on_rgb + off_rgb) / 2)
    fig.legend(handles=[Patch(color=ON_COLOUR, label="ON events"),
                        Patch(color=OFF_COLOUR, label="OFF events"),
                        Patch(color=both, label="ON and OFF in one pixel (hue by their shares)")],
               loc="outside lower center", ncols=3, fontsize=9, frameon=False,
               title=f"colour strength: events per pixel in the step, square-root scale, full "
                     f"colour at {vmax:.0f} or more; white: none", title_fontsize=9)
    return _save(fig, path)


#: The operation kinds of the per-layer figure: (row key, label).
OP_KINDS = (("ac", "AC"), ("mac", "MAC"), ("lut", "LUT (NSAD)"), ("shift", "shift (TASA)"),
            ("compare", "compare (binary)"))


def plot_layers(rows: list[dict], path, *, title: str) -> Path:
    """The network at work, per layer (the report's rows, `layer_rows`): left, the firing rate
    (spikes / (neurons x steps)); right, the operations the kernels counted, AC, MAC, NSAD
    look-ups, TASA shifts and binary compares, as grouped bars on a log scale. Kinds the model
    never did are left out of the legend."""
    names = [r["name"] for r in rows]
    y = np.arange(len(rows))
    fig = _figure(SIZES["layers"])
    ax_rate, ax_ops = fig.subplots(1, 2, sharey=True, width_ratios=[1, 2.2])
    rate = np.array([r["firing_rate"] if r["neurons"] else np.nan for r in rows])
    ax_rate.barh(y, np.nan_to_num(rate), color=OKABE_ITO[4])
    for yi, r in zip(y, rate):
        ax_rate.text(0 if np.isnan(r) else r, yi, "  no neurons" if np.isnan(r) else f" {r:.3f}",
                     va="center", fontsize=7)
    ax_rate.set_xlabel("firing rate (spikes per neuron per step)")
    ax_rate.set_yticks(y, [_short(n, 32) for n in names], fontsize=8)
    ax_rate.invert_yaxis()
    ax_rate.set_xlim(0, max(0.05, float(np.nanmax(rate, initial=0)) * 1.35))
    ax_rate.set_title("firing rate")
    kinds = [(k, label) for k, label in OP_KINDS if any(r.get(k, 0) for r in rows)]
    width = 0.8 / max(len(kinds), 1)
    colours = dict(zip([k for k, _ in OP_KINDS], (OKABE_ITO[0], OKABE_ITO[5], OKABE_ITO[2],
                                                   OKABE_ITO[6], OKABE_ITO[1])))
    for j, (key, label) in enumerate(kinds):
        values = np.array([float(r.get(key, 0)) for r in rows])
        ax_ops.barh(y - 0.4 + width * (j + 0.5), np.where(values > 0, values, np.nan), width,
                    label=label, color=colours[key])
    ax_ops.set_xscale("log")
    ax_ops.set_xlabel("operations per sample (counted by the kernels; log scale)")
    ax_ops.set_title("operations")
    ax_ops.grid(axis="x", which="major", alpha=0.3)
    if kinds:
        ax_ops.legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def plot_raster(spikes: list, neurons: int, channels: int, path, *, layer: str, title: str,
                max_rows: int = RASTER_MAX_ROWS) -> Path:
    """The spike raster of one layer: a black cell at (step, neuron) for every spike.
    ``spikes[t]``: the flat indices (channel-innermost) that fired at step t. A layer of more than
    ``max_rows`` neurons shows only those that fired (the most active ``max_rows`` of them if
    still too many), sorted by channel then position, and the title says so."""
    steps = len(spikes)
    counts = np.zeros(neurons, np.int64)
    for s in spikes:
        np.add.at(counts, np.asarray(s, np.int64), 1)
    total = int(counts.sum())
    if neurons > max_rows:
        fired = np.flatnonzero(counts)
        if fired.size > max_rows:
            fired = np.sort(fired[np.argsort(-counts[fired], kind="stable")[:max_rows]])
        order = fired[np.lexsort((fired // channels, fired % channels))]
        row_of = np.full(neurons, -1, np.int64)
        row_of[order] = np.arange(order.size)
        n_rows = order.size
        ylabel = f"neuron (the {n_rows:,} of {neurons:,} shown, sorted by channel)"
        subset = (f"{n_rows:,} of {neurons:,} neurons: those that fired"
                  + (f", the {max_rows:,} most active" if n_rows == max_rows else "")
                  + ", sorted by channel")
    else:
        row_of = np.arange(neurons)
        n_rows = neurons
        ylabel = f"neuron index (channel-innermost, {channels} channels)"
        subset = f"all {neurons:,} neurons"
    grid = np.zeros((max(n_rows, 1), max(steps, 1)), np.float32)  # [neuron row, step]
    for t, s in enumerate(spikes):
        rows_t = row_of[np.asarray(s, np.int64)]
        grid[rows_t[rows_t >= 0], t] = 1.0
    # one cell per (step, neuron); where rows outnumber the pixels, each drawn row is a band of
    # neurons, grey by the share of them that spiked but never lighter than 0.35 when one did,
    # so no spike vanishes in the scaling
    band = max(1, math.ceil(grid.shape[0] / 480))
    if band > 1:
        pad = (-grid.shape[0]) % band
        share = np.pad(grid, ((0, pad), (0, 0))).reshape(-1, band, grid.shape[1]).mean(axis=1)
        grid = np.where(share > 0, 0.35 + 0.65 * share, 0.0)
    fig = _figure(SIZES["raster"])
    ax = fig.subplots()
    ax.imshow(grid, aspect="auto", cmap="Greys", vmin=0.0, vmax=1.0, interpolation="nearest",
              extent=(-0.5, steps - 0.5, grid.shape[0] * band - 0.5, -0.5))
    ax.set_xlim(-0.5, steps - 0.5)
    ax.set_ylim(n_rows - 0.5, -0.5)
    if steps <= 40:
        ax.set_xticks(range(steps))
    ax.set_xlabel("time step")
    ax.set_ylabel(ylabel)
    rate = total / (neurons * steps) if neurons and steps else 0.0
    banded = (f"; each row a band of {band} neurons, darker the more of them spiked"
              if band > 1 else "")
    ax.set_title(f"{layer}: {total:,} spikes in {steps} steps, firing rate {rate:.3f}\n"
                 f"({subset}{banded})", fontsize=9)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


#: Maps of at most this many tokens a side carry each formed entry's value in its cell; larger
#: ones would need a font too small to read, and show the colours only.
ANNOTATED_TOKENS = 16


def plot_attention(before: np.ndarray, after: np.ndarray | None, path, *, title: str,
                   before_label: str, after_label: str | None = None,
                   head: int | None = None) -> Path:
    """One head's attention map at one step: left, the raw map (Q K^T)[i, j], the number of
    channels query token i and key token j share; right (when ``after`` is given), the map after
    the operator's table or threshold, on the same colour scale. White cells: no entry formed
    (no shared channel); formed entries a table or threshold zeroed show in the scale's 0.
    Each panel counts the entries of this head (``head``, named in the panel) formed and left
    non-zero; maps of up to :data:`ANNOTATED_TOKENS` tokens show the values in the cells."""
    before = np.asarray(before)
    n = before.shape[0]
    formed = before > 0
    panels = [(before, before_label)] + ([(np.asarray(after), after_label)]
                                         if after is not None else [])
    vmax = max([1.0] + [float(m[formed].max()) if formed.any() else 0.0 for m, _ in panels])
    vmin = min([0.0] + [float(m[formed].min()) if formed.any() else 0.0 for m, _ in panels])
    fig = _figure(SIZES["attention"])
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for ax, (m, label) in zip(axes, panels):
        shown = np.ma.masked_where(~formed, m.astype(float))
        image = ax.imshow(shown, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest",
                          origin="upper")
        ax.set_facecolor("white")
        if n <= ANNOTATED_TOKENS:  # small maps: the values themselves
            for i, j in zip(*np.nonzero(formed)):
                v = m[i, j]
                ax.text(j, i, f"{v:g}", ha="center", va="center", fontsize=9,
                        color="white" if v < vmin + 0.6 * (vmax - vmin) else "black")
        ax.set_xlabel("key token j")
        ax.set_ylabel("query token i")
        kept = int((formed & (m != 0)).sum())
        whose = "" if head is None else f"head {head}: "
        ax.set_title(f"{label}\n{whose}{int(formed.sum())} of {n * n} entries formed, {kept} "
                     "non-zero", fontsize=10)
    fig.colorbar(image, ax=list(axes), shrink=0.85,
                 label="shared active channels" if after is None else
                 "map value (shared active channels before; mapped value after)")
    fig.suptitle(title, fontsize=11)
    fig.supxlabel("white: no entry formed (query and key share no active channel)"
                  + ("" if n <= ANNOTATED_TOKENS else "; values by colour only (a large map)"),
                  fontsize=9)
    return _save(fig, path)


def plot_confusion(confusion, class_names, path, *, title: str) -> Path:
    """The confusion matrix: rows the true class, columns the predicted one, each cell the
    number of samples (annotated), classes by name."""
    m = np.asarray(confusion, np.int64)
    k = m.shape[0]
    names = [_short(str(n), 30) for n in _names(class_names, k)]
    fig = _figure(SIZES["confusion"])
    ax = fig.subplots()
    image = ax.imshow(m, cmap="Blues", vmin=0, vmax=max(1, int(m.max())),
                      interpolation="nearest")
    for i in range(k):
        for j in range(k):
            if m[i, j]:
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] > 0.6 * m.max() else "black")
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    from matplotlib.ticker import MaxNLocator

    bar = fig.colorbar(image, ax=ax, shrink=0.8, label="samples")
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def plot_per_class(per_class: dict, support, class_names, path, *, overall: float,
                   title: str) -> Path:
    """Accuracy per class as bars (``per_class``: {class: accuracy in 0..1}, classes without a
    sample absent and marked "no sample"), the number of samples of each class above its bar,
    and the overall accuracy as a dashed line."""
    k = len(support)
    names = [_short(str(n), 30) for n in _names(class_names, k)]
    acc = np.array([per_class.get(c, per_class.get(str(c), np.nan)) for c in range(k)], float)
    fig = _figure(SIZES["per-class"])
    ax = fig.subplots()
    x = np.arange(k)
    ax.bar(x, np.nan_to_num(acc) * 100, color=OKABE_ITO[2])
    for xi, a, n in zip(x, acc, support):
        ax.text(xi, (0 if np.isnan(a) else a * 100) + 1.5,
                "no sample" if np.isnan(a) else f"{a:.0%}\n(n={int(n)})", ha="center",
                va="bottom", fontsize=7)
    ax.axhline(overall * 100, color="#000000", linestyle="--", linewidth=1,
               label=f"overall {overall:.1%}")
    ax.set_ylim(0, 119)
    ax.set_xticks(x, names, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_xlabel("class")
    ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def plot_stream(windows: list[dict], class_names, path, *, title: str) -> Path:
    """A stream's prediction over time: the logits (top) and their softmax probabilities
    (bottom) after each window, at the window's end in ms from the stream's first window, thin
    grey lines at the window boundaries, and the final decision marked (a star and its name).
    ``windows``: the stream's per-window records (``t_start_us``, ``t_end_us``, ``logits``)."""
    if not windows:
        raise EventformerError("no window to plot")
    t0 = windows[0]["t_start_us"]
    ends = np.array([(w["t_end_us"] - t0) / 1000 for w in windows])
    bounds = np.array([0.0] + [(w["t_end_us"] - t0) / 1000 for w in windows])
    logits = np.array([w["logits"] for w in windows], float)
    probs = _softmax(logits)
    k = logits.shape[1]
    names = _names(class_names, k)
    final = int(np.argmax(logits[-1]))
    palette = list(OKABE_ITO[:7]) + ["#000000", "#8C564B", "#17BECF", "#BCBD22", "#999999"]
    fig = _figure(SIZES["stream"])
    ax_l, ax_p = fig.subplots(2, 1, sharex=True)
    for ax, values, label in ((ax_l, logits, "logit (mean since the stream's start)"),
                              (ax_p, probs, "softmax probability")):
        ax.vlines(bounds, 0, 1, transform=ax.get_xaxis_transform(), colors="#BBBBBB",
                  linewidth=0.5, zorder=0)
        for c in range(k):
            ax.plot(ends, values[:, c], marker="." if len(windows) <= 60 else None, markersize=3,
                    linewidth=2.2 if c == final else 1.0, color=palette[c % len(palette)],
                    label=f"{c} {names[c]}")
        ax.plot([ends[-1]], [values[-1, final]], marker="*", markersize=14, color="#000000",
                zorder=5)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    ax_p.set_ylim(0, 1.02)
    ax_p.annotate(f"final: {final} {names[final]}", (ends[-1], probs[-1, final]),
                  xytext=(-10, -18), textcoords="offset points", ha="right", fontsize=9)
    ax_p.set_xlabel(f"time since the stream's start (ms); {len(windows)} windows, boundaries "
                    "in grey")
    fig.legend(*ax_l.get_legend_handles_labels(), loc="outside right upper", fontsize=7,
               title="class", title_fontsize=8)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


#: Points of compare.png closer than this (pixels) would hide one another: they are drawn side by
#: side, this far apart, and each gets its own label.
COINCIDE_PX = 14


def plot_compare(runs: list[dict], path, *, title: str) -> Path:
    """Accuracy against energy per sample for compared models: one point per (model,
    arithmetic) run, colour by model and marker by arithmetic (both in the legend), each point
    labelled; a log energy axis when the energies span more than a factor 10. Points that would
    cover one another (three models at 100% and nearly the same energy) are drawn side by side
    around where they lie, in the order of their energies, each with its own label joined to it
    by a thin line, and label blocks are placed where they overlap no other label or point.
    ``runs``: `compare`'s rows (``model``, ``dtype``, ``accuracy``, ``samples``,
    ``ops_per_sample["energy_uj"]``)."""
    from matplotlib.lines import Line2D
    from matplotlib.transforms import offset_copy

    runs = [r for r in runs if r.get("samples")]
    if not runs:
        raise EventformerError("no compared run to plot")
    models = list(dict.fromkeys(r["model"] for r in runs))
    dtypes = list(dict.fromkeys(r["dtype"] for r in runs))
    markers = dict(zip(dtypes, "osD^vP"))
    colours = [c for c in OKABE_ITO if c not in ("#F0E442", "#999999")] + ["#000000"]
    colour_of = {m: colours[i % len(colours)] for i, m in enumerate(models)}
    energy = np.array([r["ops_per_sample"]["energy_uj"] for r in runs], float)
    acc = np.array([r["accuracy"] * 100 for r in runs])
    fig = _figure(SIZES["compare"])
    ax = fig.subplots()
    positive = energy[energy > 0]
    if positive.size and positive.max() / positive.min() > 10:
        ax.set_xscale("log")
        ax.set_xlim(positive.min() / 2, positive.max() * 3)
        ax.set_xlabel("energy per sample (µJ, counted AC and MAC at 45 nm; log scale)")
    else:
        span = float(energy.max() - energy.min()) or max(float(energy.max()), 1.0)
        ax.set_xlim(max(0.0, energy.min() - 0.3 * span), energy.max() + 0.6 * span)
        ax.set_xlabel("energy per sample (µJ, counted AC and MAC at 45 nm)")
    lo, hi = float(acc.min()), float(acc.max())
    ax.set_ylim(max(0.0, lo - 10), min(101.5, hi + 8))
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    fig.legend(handles=[Line2D([], [], linestyle="", marker=markers[d], color="#777777",
                               markeredgecolor="#000000", label=d) for d in dtypes],
               title="arithmetic (marker)", loc="outside right upper", fontsize=8,
               title_fontsize=8)
    fig.legend(handles=[Line2D([], [], linestyle="", marker="o", color=colour_of[m],
                               markeredgecolor="#000000", label=m) for m in models],
               title="model (colour)", loc="outside right lower", fontsize=8, title_fontsize=8)
    n = runs[0]["samples"]
    fig.suptitle(title, fontsize=11)
    fig.canvas.draw()  # the layout settles: from here on, data map to their final pixels
    pixels = ax.transData.transform(np.column_stack([energy, acc]))
    groups = _coinciding(pixels, COINCIDE_PX)
    pt = 72 / DPI  # points per pixel
    renderer = fig.canvas.get_renderer()
    taken = [_box(x - COINCIDE_PX, y - COINCIDE_PX / 2, x + COINCIDE_PX, y + COINCIDE_PX / 2)
             for group in groups for x, y in _dodged(pixels, group)]
    for group in groups:
        spots = _dodged(pixels, group)
        for i, (x, y) in zip(group, spots):  # each point drawn at its spot in the row
            where = offset_copy(ax.transData, fig=fig, x=(x - pixels[i, 0]) * pt,
                                y=(y - pixels[i, 1]) * pt, units="points")
            ax.scatter([energy[i]], [acc[i]], s=70, marker=markers[runs[i]["dtype"]],
                       color=colour_of[runs[i]["model"]], edgecolors="#000000", linewidths=0.6,
                       zorder=3, transform=where)
        taken.append(_place_labels(ax, renderer, [runs[i] for i in group],
                                   [(energy[i], acc[i]) for i in group], group, pixels, spots,
                                   taken))
    together = any(len(g) > 1 for g in groups)
    ax.set_title(f"{n} sample{'' if n == 1 else 's'} per run"
                 + ("; points that would cover one another are drawn side by side, in the "
                    "order of their energies" if together else ""), fontsize=9)
    return _save(fig, path)


def _box(x0, y0, x1, y1):
    from matplotlib.transforms import Bbox

    return Bbox([[x0, y0], [x1, y1]])


def _coinciding(pixels: np.ndarray, near: float) -> list[list[int]]:
    """Groups of points (indices) joined by chains of pairs closer than ``near`` pixels, each
    group in the order of x."""
    n = len(pixels)
    group_of = list(range(n))

    def root(i):
        while group_of[i] != i:
            i = group_of[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if np.hypot(*(pixels[i] - pixels[j])) < near:
                group_of[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return [sorted(g, key=lambda i: (pixels[i, 0], i)) for g in groups.values()]


def _dodged(pixels: np.ndarray, group: list[int]) -> list[tuple[float, float]]:
    """Where each point of a group is drawn: its own place when alone, else in a row centred on
    the group's mean, :data:`COINCIDE_PX` apart."""
    if len(group) == 1:
        return [tuple(pixels[group[0]])]
    cx, cy = pixels[group].mean(axis=0)
    return [(cx + (k - (len(group) - 1) / 2) * COINCIDE_PX, cy) for k in range(len(group))]


def _place_labels(ax, renderer, runs, points, group, pixels, spots, taken):
    """One label per point of a group, stacked in a block beside the group's row, each joined to
    its point by a thin line (the top label to the rightmost point, so lines never cross); the
    block goes to the first side where it overlaps nothing already drawn. Returns its box."""
    from matplotlib.text import Text
    from matplotlib.transforms import offset_copy

    pt = 72 / DPI
    order = list(range(len(group)))[::-1]  # rightmost point first: top line
    right = max(x for x, _ in spots) + 10
    left = min(x for x, _ in spots) - 10
    y = spots[0][1]
    axes_box = ax.get_window_extent(renderer)
    line = 11 / pt  # pixels per line of 8-point text
    height = line * len(group)
    candidates = [(right, y - 8, "left"), (right, y + 8 + height, "left"),
                  (left, y - 8, "right"), (left, y + 8 + height, "right"),
                  (right, y - 8 - 2 * height, "left")]

    def draw(x0, y0, ha):
        texts = []
        for row, k in enumerate(order):
            i = group[k]
            px, py = spots[k]
            text = ax.annotate(
                f"{runs[k]['model']} {runs[k]['dtype']}", xy=points[k],
                xycoords=offset_copy(ax.transData, fig=ax.figure, x=(px - pixels[i, 0]) * pt,
                                     y=(py - pixels[i, 1]) * pt, units="points"),
                xytext=((x0 - px) * pt, (y0 - row * line - py) * pt),
                textcoords="offset points", ha=ha, va="top", fontsize=8,
                annotation_clip=False,
                arrowprops=dict(arrowstyle="-", color="#888888", linewidth=0.6, shrinkA=1,
                                shrinkB=5) if len(group) > 1 else None)
            text.set_in_layout(False)
            texts.append(text)
        boxes = [Text.get_window_extent(t, renderer) for t in texts]  # the words, no line
        return texts, _box(min(b.x0 for b in boxes), min(b.y0 for b in boxes),
                           max(b.x1 for b in boxes), max(b.y1 for b in boxes))

    for x0, y0, ha in candidates:
        texts, block = draw(x0, y0, ha)
        inside = (block.x0 >= axes_box.x0 and block.x1 <= axes_box.x1
                  and block.y0 >= axes_box.y0 and block.y1 <= axes_box.y1)
        if inside and not any(block.overlaps(b) for b in taken):
            return block
        for t in texts:
            t.remove()
    return draw(*candidates[0])[1]  # nowhere free: the first side, as good as any


def _names(class_names, k: int) -> list[str]:
    names = [str(n).strip() for n in (class_names or ())]
    return [names[c] if c < len(names) and names[c] else str(c) for c in range(k)]


# --- figure sets -------------------------------------------------------------------------------

@dataclass
class PlotOptions:
    """What ``--plot`` asked for: the folder, the format, and the choices of layer (raster and
    attention block), head and step (None: the defaults)."""

    outdir: Path
    fmt: str = "png"
    layer: str | None = None
    head: int | None = None
    step: int | None = None

    def __post_init__(self):
        if self.fmt not in FORMATS:
            raise EventformerError(f"--plot-format must be png or svg, got {self.fmt!r}")


def attention_note(attention: str | None) -> str | None:
    """Why a model gets no attention figure (SAFormer forms no map; a model without attention
    has none to draw), else None."""
    from .record import MAP_OPERATORS

    if attention in MAP_OPERATORS:
        return None
    if attention is None or attention == "none":  # a sequential SNN (NIR import)
        return "no attention figure: the model has no attention blocks"
    return (f"no attention figure: the {attention} operator forms no (query, key) map "
            "(SAFormer's attention is a pooled channel gate)")


class ClassificationPlotter:
    """The figures of each classified recording (``infer FILE --plot DIR``): its input frames,
    the per-layer firing rates and operations, the spike raster of the chosen layer and the
    attention map of the chosen head and step (before and after NSAD / the binary threshold).

    Construct it after the engine is loaded: the choices are checked then (an unknown layer,
    head or step is one sentence), before any recording is read. Within ``with plotter:`` the
    engine's chosen layers are recorded; classify with ``keep_frames=True`` and pass each result
    to :meth:`write` (or :meth:`skip` for a recording that failed).
    """

    def __init__(self, engine, options: PlotOptions, steps: int | None = None):
        from .record import (
            MAP_OPERATORS,
            Recorder,
            attention_layers,
            block_of,
            default_layer,
            find_layer,
        )

        self.engine, self.options = engine, options
        cfg = engine.config
        self.steps = steps or cfg.steps
        self.layer = options.layer or default_layer(engine)
        find_layer(engine, self.layer)
        self.attention = getattr(cfg, "attention", None)
        self.block = None
        if self.attention in MAP_OPERATORS and getattr(cfg, "depth", 0):
            b = block_of(self.layer)
            self.block = 0 if b is None else b
        #: One line for stderr when no attention figure is drawn, else None.
        if self.block is not None:
            self.note = None
        elif self.attention in MAP_OPERATORS:  # a map operator, but no block to draw
            self.note = attention_note(None)
        else:
            self.note = attention_note(self.attention)
        if self.block is not None and options.head is not None and \
                not 0 <= options.head < cfg.heads:
            raise EventformerError(f"--plot-head must be from 0 to {cfg.heads - 1} (the model "
                                   f"has {cfg.heads} heads), got {options.head}")
        if options.step is not None and not 0 <= options.step < self.steps:
            raise EventformerError(f"--plot-step must be from 0 to {self.steps - 1} (each "
                                   f"sample runs {self.steps} steps), got {options.step}")
        names = [self.layer]
        if self.block is not None:
            names += attention_layers(self.block)
        self.params = (engine.model_file.attention[self.block].params
                       if self.block is not None and engine.model_file.attention else {})
        prepare_dir(options.outdir)
        self.recorder = Recorder(engine, names)
        self._stems: dict[str, int] = {}

    def __enter__(self) -> Self:
        self.recorder.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.recorder.__exit__(*exc)

    def skip(self) -> None:
        """Forget what was recorded for a recording that could not be classified."""
        self.recorder.take()

    def _stem(self, file: str) -> str:
        stem = safe_name(Path(file).stem)
        n = self._stems.get(stem, 0) + 1
        self._stems[stem] = n
        return stem if n == 1 else f"{stem}-{n}"

    def write(self, result) -> list[Path]:
        """The figures of one classification (``result.frames`` needed); returns their paths."""
        traces = self.recorder.take()
        o, cfg = self.options, self.engine.config
        out, ext = Path(o.outdir), o.fmt
        stem = self._stem(result.file)
        name = Path(result.file).name
        size = cfg.image_size
        paths = []
        if result.frames is not None:
            sensor = (f"{result.sensor_size[0]}x{result.sensor_size[1]} sensor"
                      if result.sensor_size else "sensor size unknown")
            paths.append(plot_input(
                result.frames, size, out / f"{stem}-input.{ext}",
                title=f"{name}: the input the engine ran, {len(result.frames)} steps, "
                      f"{sensor} onto the model's {size}x{size} input\n"
                      f"({result.spatial or 'events as they are'})"))
        paths.append(plot_layers(
            result.layers, out / f"{stem}-layers.{ext}",
            title=f"{name}: per layer, attention {result.attention}, {result.steps} steps, "
                  f"prediction {result.prediction} {result.class_name}"))
        trace = traces[self.layer]
        paths.append(plot_raster(
            trace.spikes, trace.neurons, trace.channels,
            out / f"{stem}-raster-{safe_name(self.layer)}.{ext}", layer=self.layer,
            title=f"{name}: spike raster"))
        if self.block is not None:
            paths.append(self._attention(traces, out, stem, name, ext))
        return paths

    def _attention(self, traces, out, stem, name, ext) -> Path:
        from .record import attention_layers, step_maps

        maps = step_maps(traces, self.block, self.engine.config, self.attention, self.params)
        o = self.options
        head = o.head or 0
        per_step = [int((c[head] > 0).sum()) for c, _ in maps]
        if o.step is not None:
            step, why = o.step, "--plot-step"
        else:
            step = int(np.argmax(per_step)) if per_step else 0
            why = f"the step with the most entries of head {head}"
        counts, mapped = maps[step]
        core = traces[attention_layers(self.block)[2]]
        engine_formed = int(core.step_counts("attn_entries")[step])
        engine_kept = int(core.step_counts("attn_nonzero")[step])
        if self.attention == "ds2ta":
            before, after = "raw map Q K^T (before NSAD)", "after the NSAD table AD_h[count]"
        elif self.attention == "ssa_bin":
            delta = int(np.asarray(self.params["delta"]).reshape(-1)[head])
            before, after = "raw map Q K^T", f"after the threshold: 1(count > {delta})"
        else:
            before, after = "raw map Q K^T (SSA: no denoiser)", None
        heads = self.engine.config.heads
        # the title counts what the engine did at this step over every head; each panel, the
        # head drawn: the two differ unless the model has one head
        counted = (f"; the engine's counters at step {step}, all {heads} heads together: "
                   f"{engine_formed} entries formed, {engine_kept} non-zero"
                   if self.attention != "ssa" else "")
        return plot_attention(
            counts[head], None if mapped is None else mapped[head],
            out / f"{stem}-attention-block{self.block}-head{head}-step{step}.{ext}",
            title=f"{name}: block {self.block} attention ({self.attention}), head {head}, "
                  f"step {step}\n(step {step}: {why}{counted})",
            before_label=before, after_label=after, head=head)


def dataset_figures(summary: dict, class_names, outdir, fmt: str = "png", *,
                    title: str) -> list[Path]:
    """``confusion`` and ``per-class-accuracy`` of an ``infer --dataset`` summary (serial or
    Dask: the same keys, ``confusion`` and ``per_class_accuracy``)."""
    out = prepare_dir(outdir)
    confusion = np.asarray(summary["confusion"], np.int64)
    per_class = {int(k): float(v) for k, v in summary["per_class_accuracy"].items()}
    n, correct = summary["samples"], summary["correct"]
    return [
        plot_confusion(confusion, class_names, out / f"confusion.{fmt}",
                       title=f"{title}\nconfusion matrix, {n} samples, accuracy "
                             f"{summary['accuracy']:.1%} ({correct}/{n})"),
        plot_per_class(per_class, confusion.sum(axis=1), class_names,
                       out / f"per-class-accuracy.{fmt}", overall=summary["accuracy"],
                       title=f"{title}\naccuracy per class, {n} samples"),
    ]


def stream_figures(windows_by_stream: dict, class_names, outdir, fmt: str = "png", *,
                   title: str = "") -> list[Path]:
    """``<stream-stem>-logits`` for each stream with at least one window
    (``{stream path: [window records]}``)."""
    out = prepare_dir(outdir)
    names = [n for n, w in windows_by_stream.items() if w]
    paths = []
    for name, stem in zip(names, unique_stems(names)):
        windows = windows_by_stream[name]
        span = (windows[-1]["t_end_us"] - windows[0]["t_start_us"]) / 1000
        paths.append(plot_stream(windows, class_names, out / f"{stem}-logits.{fmt}",
                                 title=f"{Path(name).name}: prediction over {len(windows)} "
                                       f"windows ({span:,.0f} ms){title}"))
    return paths


def compare_figure(result: dict, outdir, fmt: str = "png") -> Path:
    """``compare``: accuracy vs energy per sample of every compared run."""
    out = prepare_dir(outdir)
    d = result["dataset"]
    where = "embedded synthetic set" if d["synthetic"] else d["convention"]
    return plot_compare(result["runs"], out / f"compare.{fmt}",
                        title=f"accuracy vs energy per sample, {d['split']} split ({where})")
