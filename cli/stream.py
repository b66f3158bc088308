"""`eventformer stream`: classify a live or recorded stream window by window."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .common import (
    CENTER_CROP_HELP,
    CROP_HELP,
    PLOT_FORMAT_HELP,
    PLOT_HELP,
    SENSOR_SIZE_HELP,
    WEIGHTS_DEFAULT,
    WEIGHTS_HELP,
    DTYPE_HELP,
    DType,
    announce_model,
    check_number,
    err,
    load_engine,
    parse_size,
    plot_options,
    report_written,
    resolve_weights,
    waiting,
)
from .errors import fail, user_errors


@user_errors
def stream(
    files: List[str] = typer.Argument(..., metavar="FILE|udp://HOST:PORT|tcp://HOST:PORT|"
                                                   "dv://HOST:PORT|dv+unix:///PATH|-",
                                      help="Event file to classify window by window; with "
                                           "--follow it may still be being written. Several "
                                           "files, or live sources, need --workers or "
                                           "--scheduler (one stream per task). Or "
                                           "a live source (give --format): udp://HOST:PORT "
                                           "listens for datagrams there (port 0: any free "
                                           "one), tcp://HOST:PORT connects to a camera's "
                                           "server, - reads standard input; dv://HOST:PORT "
                                           "and dv+unix:///PATH connect to a DV / "
                                           "dv-processing network output (its header gives "
                                           "the format and sensor size)."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help=WEIGHTS_HELP,
                                           show_default=WEIGHTS_DEFAULT),
    follow: bool = typer.Option(False, "--follow", "-f",
                                help="Keep reading as the file grows (until --idle-timeout "
                                     "or Ctrl-C)."),
    window_ms: Optional[float] = typer.Option(None, "--window-ms",
                                              help="Fixed time windows of this many ms.",
                                              show_default="100 ms"),
    window_events: Optional[int] = typer.Option(None, "--window-events", min=1,
                                                help="Or a fixed number of events per window."),
    realtime: bool = typer.Option(False, "--realtime",
                                  help="Replay a finished file at recording speed."),
    idle_timeout: float = typer.Option(5.0, "--idle-timeout", min=0.0,
                                       help="With --follow: stop after this many seconds "
                                            "without growth; a live source: without events "
                                            "(from the start, reconnection attempts "
                                            "included)."),
    dtype: DType = typer.Option(DType.float32, "--dtype", help=DTYPE_HELP),
    sensor_size: Optional[str] = typer.Option(None, "--sensor-size", metavar="WxH",
                                              help=SENSOR_SIZE_HELP),
    crop: Optional[str] = typer.Option(None, "--crop", metavar="X,Y,W,H", help=CROP_HELP),
    center_crop: bool = typer.Option(False, "--center-crop", help=CENTER_CROP_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON line per window on stdout, "
                                                       "then a summary line."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1,
                                          help="Follow the streams on a local Dask cluster of N "
                                               "worker processes, all streams at once (needs "
                                               "eventformer\\[cluster]).",
                                          show_default="one stream, here"),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", metavar="tcp://HOST:PORT",
                                            help="Follow the streams on an existing Dask "
                                                 "cluster.", show_default="none"),
    plot: Optional[Path] = typer.Option(None, "--plot", metavar="DIR",
                                        help=PLOT_HELP + " One per stream: its logits and class "
                                             "probabilities window by window, the final "
                                             "decision marked."),
    plot_format: str = typer.Option("png", "--plot-format", metavar="png|svg",
                                     help=PLOT_FORMAT_HELP),
    wire_format: Optional[str] = typer.Option(
        None, "--format", metavar="spif|faery-13|faery-8|evt2|evt3",
        help="Live sources: what the bytes are. UDP: aestream's SPIF words (with or without "
             "timestamps; without, events get their arrival time), faery's 13-byte "
             "(t64_x16_y16_on8) or 8-byte (t32_x16_y15_on1) records; TCP and standard input: "
             "Prophesee EVT 2.0 / 3.0 (no EVT 3.0 over UDP: a lost datagram would corrupt its "
             "running state). dv:// needs none (pip install 'eventformer\\[live]' for its "
             "flatbuffers and LZ4 / Zstd).",
        show_default="none: required for udp://, tcp:// and -"),
    reconnect: bool = typer.Option(False, "--reconnect",
                                   help="tcp://, dv://: when the connection is refused or dropped, "
                                        "retry with back-off (0.5 s doubling to 8 s), each try "
                                        "said on stderr, until --idle-timeout passes without "
                                        "events."),
    on_overload: Optional[str] = typer.Option(
        None, "--on-overload", metavar="queue|drop",
        help="Live sources, when the engine falls behind the camera: queue classifies every "
             "window in order (events wait, latency grows, nothing lost); drop classifies only "
             "the newest complete window and reports each one dropped. The summary says which "
             "and why, with the largest backlog.", show_default="queue"),
    record: Optional[Path] = typer.Option(None, "--record", metavar="FILE",
                                          help="Live sources: write every event received "
                                               "(those not classified too) while classifying: "
                                               "FILE.aedat4 an AEDAT 4.0 file (LZ4 packets, as "
                                               "DV records; needs the sensor size from the "
                                               "stream's header or --sensor-size), FILE.h5 an "
                                               "eventformer HDF5 event file.",
                                          show_default="none"),
):
    """Classify a live or recorded event stream in causal windows, state carried across them.

    Each window advances the model one time step, so the prediction evolves as the gesture
    unfolds; --follow keeps reading a file that is still being written; udp://, tcp:// and -
    read a live camera's events as they arrive (windows follow the events' own timestamps). With
    --workers or
    --scheduler several streams run at once on Dask, one engine state each, every window
    tagged with its stream's name; a stream that ends or fails does not stop the others."""
    from eventformer.events import SpatialTransform
    from eventformer.stream import FileSource, WindowSpec, describe_gap, run_stream

    transform = SpatialTransform.from_options(crop, center_crop)
    plots = plot_options(plot, plot_format)
    windows: dict = {}  # stream -> its window records, kept for --plot

    if window_ms is not None and window_events is not None:
        fail("give either --window-ms or --window-events, not both")
    if window_ms is not None:
        check_number("--window-ms", window_ms, low=0.001)  # windows are whole microseconds
    spec = WindowSpec(window_events=window_events) if window_events else \
        WindowSpec(window_us=int(round((window_ms or 100.0) * 1000)))
    if workers is not None and scheduler is not None:
        fail("give either --workers (a local cluster) or --scheduler (an existing one), not both")
    from eventformer.live import is_live

    if any(is_live(f) for f in files):
        on_cluster = workers is not None or scheduler is not None
        if len(files) > 1 and not on_cluster:
            fail(f"{len(files)} live sources: several run at once on Dask, one per task, give "
                 "--workers N (pip install 'eventformer[cluster]')")
        if not all(is_live(f) for f in files):
            fail("give either files or live sources (udp://, tcp://, dv://, dv+unix://, -), "
                 "not both")
        for given, option in ((follow, "--follow (a live source is always followed)"),
                              (realtime, "--realtime (a live source arrives at its own speed)")):
            if given:
                fail(f"{files[0]}: {option} does not apply to a live source")
        if on_overload not in (None, "queue", "drop"):
            fail(f"--on-overload must be queue or drop, got {on_overload!r}")
        if on_cluster:
            if record is not None:
                fail("--record writes one live source's events, here: with --workers or "
                     "--scheduler record each camera in a command of its own")
            _stream_on_cluster(files, workers, scheduler, weights, dtype.value, spec, False,
                               False, idle_timeout, parse_size(sensor_size), transform, as_json,
                               plots, live=(wire_format, reconnect, on_overload or "queue"))
            return
        _stream_live(files[0], wire_format, reconnect, on_overload or "queue", record, weights,
                     dtype.value, spec, idle_timeout, parse_size(sensor_size), transform,
                     as_json, plots)
        return
    for given, option in ((wire_format is not None, "--format"), (reconnect, "--reconnect"),
                          (on_overload is not None, "--on-overload"),
                          (record is not None, "--record")):
        if given:
            fail(f"{option} applies to live sources (udp://, tcp://, -), not to files")
    if workers is not None or scheduler is not None:
        _stream_on_cluster(files, workers, scheduler, weights, dtype.value, spec, follow,
                           realtime, idle_timeout, parse_size(sensor_size), transform, as_json,
                           plots)
        return
    if len(files) > 1:
        fail(f"{len(files)} streams: several streams run at once on Dask, give --workers N "
             "(pip install 'eventformer[cluster]')")
    file = Path(files[0])
    if not file.exists():
        fail(f"{file}: no such file")
    weights = resolve_weights(weights)
    engine = load_engine(weights, dtype.value, "auto", quiet=as_json)
    names = [n.strip() for n in engine.config.class_names]
    source = FileSource(str(file), follow)
    live = None
    if not as_json and err.is_terminal:
        from rich.live import Live

        live = Live(console=err, refresh_per_second=8, transient=False)
        live.start()

    announced = []

    def on_window(w):
        if plots:
            windows.setdefault(str(file), []).append(w)
        if "gap" in w:  # said on stderr in either mode: a jump in the recording's time
            err.print(f"{file}: {describe_gap(w)}", markup=False, highlight=False,
                      soft_wrap=True)
        if as_json:
            sys.stdout.write(json.dumps(w) + "\n")
            sys.stdout.flush()
        elif "gap" not in w:  # a live line on a terminal, one line per window otherwise
            if not announced:
                announced.append(announce_model(weights))
            k = w["prediction"]
            line = (f"t {w['t_start_us'] / 1e6:8.3f}-{w['t_end_us'] / 1e6:8.3f} s  "
                    f"{w['events']:7d} events  prediction {k} "
                    f"{names[k] if k < len(names) else ''}  latency {w['latency_ms']:.1f} ms"
                    f"  backlog {w['backlog_events']}")
            if live is not None:
                live.update(line)
            else:
                err.print(line, markup=False, highlight=False)

    try:
        summary = run_stream(engine, source, spec, follow=follow, realtime=realtime,
                             idle_timeout=idle_timeout, on_window=on_window,
                             sensor_size=parse_size(sensor_size), transform=transform)
    finally:
        if live is not None:
            live.stop()
    leftover = source.finish()
    for w in source.warnings + ([leftover.message] if leftover.message else []):
        err.print(f"warning: {file}: {w}", markup=False, highlight=False, soft_wrap=True)
    _plot_streams(plots, windows, names)
    if as_json:
        sys.stdout.write(json.dumps({"summary": True, **summary}) + "\n")
        sys.stdout.flush()
    else:
        k = summary["final_prediction"]
        final = "-" if k is None else f"{k} {names[k] if k < len(names) else ''}"
        n_gaps = summary["gaps"]
        gaps = (f" ({summary['gap_windows']:,} of them empty, skipped in {n_gaps} "
                f"gap{'' if n_gaps == 1 else 's'})" if n_gaps else "")
        err.print(f"{summary['windows']:,} windows{gaps}, {summary['events']:,} events, final "
                  f"prediction {final}; latency p50 {summary['latency_ms_p50']:.1f} ms, p99 "
                  f"{summary['latency_ms_p99']:.1f} ms; engine busy {summary['compute_s']:.2f} s "
                  f"of {summary['wall_s']:.2f} s wall time", markup=False, highlight=False)
    if summary["interrupted"]:  # as every command: what was done is reported, exit code 130
        err.print(f"interrupted: the results above cover {summary['windows']} windows; "
                  f"{summary['unprocessed_events']:,} events read ahead were not reached",
                  markup=False, highlight=False)
        raise typer.Exit(code=130)


def _stream_live(name, wire_format, reconnect, on_overload, record, weights, dtype, spec,
                 idle_timeout, sensor_size, transform, as_json, plots) -> None:
    """One live source (eventformer.live): engine loaded and warmed first, so that no event
    waits on a kernel load; then the source is opened and read until it ends, goes silent for
    --idle-timeout seconds, or Ctrl-C."""
    import typer

    from eventformer.live.sources import (check_live_options, check_record_path,
                                          open_live_source)
    from eventformer.stream import describe_gap, run_stream

    check_live_options(name, wire_format, sensor_size, reconnect)
    if record is not None:
        check_record_path(record)
    weights = resolve_weights(weights)
    engine = load_engine(weights, dtype, "auto", quiet=as_json)
    names = [n.strip() for n in engine.config.class_names]
    with waiting("loading the model's kernels"):
        engine.warm_up()

    def say(sentence):
        err.print(f"{name}: {sentence}", markup=False, highlight=False, soft_wrap=True)

    source = open_live_source(name, wire_format, sensor_size, reconnect=reconnect, on_note=say)
    windows = []
    try:
        if record is not None:
            source.record_to(str(record))
        where = (f"listening on udp://{name.split('://', 1)[1].rsplit(':', 1)[0]}:{source.port}"
                 if name.lower().startswith("udp://") else "reading standard input"
                 if name == "-" else f"{'connecting to' if reconnect else 'connected to'} {name}")
        err.print(f"{where} ({source.format}); Ctrl-C stops, and the stream ends after "
                  f"{idle_timeout:g} s without events", markup=False, highlight=False)
        if not as_json:
            announce_model(weights)

        def on_window(w):
            if plots and "dropped" not in w:
                windows.append(w)
            if "gap" in w:
                say(describe_gap(w))
            if as_json:
                sys.stdout.write(json.dumps(w) + "\n")
                sys.stdout.flush()
                return
            if "gap" in w:
                return
            span = f"t {w['t_start_us'] / 1e6:8.3f}-{w['t_end_us'] / 1e6:8.3f} s  "
            if "dropped" in w:
                err.print(f"{span}{w['events']:7d} events  dropped (the engine is "
                          f"{w['behind_windows']} window(s) behind)  backlog "
                          f"{w['backlog_events']}", markup=False, highlight=False)
                return
            k = w["prediction"]
            arrival = w.get("arrival_latency_ms")
            err.print(f"{span}{w['events']:7d} events  prediction {k} "
                      f"{names[k] if k < len(names) else ''}  latency {w['latency_ms']:.1f} ms"
                      + ("" if arrival is None else f" ({arrival:.1f} ms since its last event "
                                                    "arrived)")
                      + f"  backlog {w['backlog_events']}", markup=False, highlight=False)

        summary = run_stream(engine, source, spec, idle_timeout=idle_timeout,
                             on_window=on_window, sensor_size=sensor_size, transform=transform,
                             on_overload=on_overload)
    finally:
        source.close()  # what was received and not read still goes to --record
    if record is not None:
        summary["live"]["recorded_events"] = source.recorded
    for w in source.warnings:
        err.print(f"warning: {name}: {w}", markup=False, highlight=False, soft_wrap=True)
    _plot_streams(plots, {name: windows}, names)
    if as_json:
        sys.stdout.write(json.dumps({"summary": True, **summary}) + "\n")
        sys.stdout.flush()
    else:
        _print_live_summary(name, summary, names)
    if summary["interrupted"]:
        err.print(f"interrupted: the results above cover {summary['windows']} windows; "
                  f"{summary['unprocessed_events']:,} events received were not reached",
                  markup=False, highlight=False)
        raise typer.Exit(code=130)
    if source.failure:  # a dropped connection: what came before it is reported above
        err.print(f"error: {source.failure}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=2)


def _print_live_summary(name, s, names) -> None:
    k = s["final_prediction"]
    final = "-" if k is None else f"{k} {names[k] if k < len(names) else ''}"
    arrival = ("" if s["arrival_latency_ms_p50"] is None else
               f"; from a window's last event to its decision p50 "
               f"{s['arrival_latency_ms_p50']:.1f} ms, p99 {s['arrival_latency_ms_p99']:.1f} ms")
    lines = [f"{s['windows']:,} windows, {s['events']:,} events classified, final prediction "
             f"{final}; latency p50 {s['latency_ms_p50']:.1f} ms, p99 "
             f"{s['latency_ms_p99']:.1f} ms{arrival}; engine busy {s['compute_s']:.2f} s of "
             f"{s['wall_s']:.2f} s wall time",
             f"on overload: {s['on_overload']} ({s['on_overload_reason']}); "
             f"{s['dropped_windows']:,} windows ({s['dropped_events']:,} events) dropped; largest "
             f"backlog {s['backlog_events_max']:,} events, {s['waiting_windows_max']:,} complete "
             "windows waiting"]
    c = s["live"]
    if "datagrams_received" in c:
        lines.append(f"{name}: {c['datagrams_received']:,} datagrams received, "
                     f"{c['datagrams_rejected']:,} rejected; {c['events_received']:,} events "
                     f"received, {c['events_decoded']:,} decoded, {c['events_rejected']:,} "
                     "rejected")
    else:
        lines.append(f"{name}: {c['bytes_received']:,} bytes received, {c['events_decoded']:,} "
                     f"events decoded, {c['bytes_torn']:,} bytes of a torn last record"
                     + (f"; {c['connections']} connection(s), {c['reconnects']} reconnection(s)"
                        if "connections" in c else ""))
    if s["restarts"]:
        lines.append(f"{s['restarts']} restart(s) of the stream's clock after reconnecting: "
                     "the open window was closed each time")
    if c.get("record"):
        lines.append(f"recorded {c['recorded_events']:,} events to {c['record']}")
    for line in lines:
        err.print(line, markup=False, highlight=False, soft_wrap=True)


def _is_dv(name: str) -> bool:
    return name.split("://", 1)[0].lower() in ("dv", "dv+unix")


def _plot_streams(plots, windows: dict, class_names) -> None:
    """--plot: one figure per stream that had a window."""
    if not plots:
        return
    from eventformer.plots import stream_figures

    report_written(stream_figures(windows, class_names, plots.outdir, plots.fmt))


def _stream_on_cluster(files, workers, scheduler, weights, dtype, spec, follow, realtime,
                       idle_timeout, sensor_size, transform, as_json, plots=None,
                       live=None) -> None:
    """Every stream a Dask task with its own engine (see eventformer.cluster.follow_streams):
    one line per window tagged with the stream's name, then one summary (or error) per stream.
    ``live``: (format, reconnect, on_overload) when the streams are live sources, each opened
    on the worker that runs it."""
    import math

    from eventformer.cluster import (INSTALL_HINT, EngineSpec, StreamJob, cluster_client,
                                     follow_streams, have_distributed)
    from eventformer.stream import describe_gap

    if not have_distributed():
        fail(INSTALL_HINT)
    names = list(files) if live else [str(Path(f)) for f in files]
    if len(set(names)) < len(names):
        fail("a stream is given twice; each file is one stream" if not live else
             f"{next(n for n in names if names.count(n) > 1)} is given twice; each live source "
             "is one stream")
    if live:
        from eventformer.live.sources import check_live_options, parse_address

        for name in names:
            if name == "-":
                fail("-: standard input cannot be read by a Dask worker: give it alone, without "
                     "--workers/--scheduler")
            # --format names the bytes of udp://, tcp:// sources; dv:// ones say their own
            check_live_options(name, None if _is_dv(name) else live[0], sensor_size, live[1])
            if parse_address(name)[2] == 0 and name.lower().startswith("udp://"):
                fail(f"{name}: give a port: with --workers/--scheduler the source listens on a "
                     "worker, where port 0 would be one no camera knows")
    missing = [] if live else [n for n in names if not Path(n).exists()]
    if missing and not follow:
        fail(f"{missing[0]}: no such file")
    weights = resolve_weights(weights)
    # validates the model, fills Numba's cache
    class_names = load_engine(weights, dtype, "auto", quiet=as_json).config.class_names
    windows = {} if plots else None  # stream -> its window records, for --plot
    from eventformer.runtime import engine_threads

    # as many engine threads as `stream FILE` here: float32 sums may depend on their number
    engine_spec = EngineSpec(str(Path(weights).resolve()), dtype, "auto",
                             threads=engine_threads())
    if live:
        jobs = [StreamJob(name, name, spec, idle_timeout=idle_timeout, sensor_size=sensor_size,
                          transform=transform, live=True,
                          wire_format=None if _is_dv(name) else live[0],
                          reconnect=live[1], on_overload=live[2]) for name in names]
    else:
        jobs = [StreamJob(name, str(Path(name).resolve()), spec, follow=follow,
                          realtime=realtime, idle_timeout=idle_timeout, sensor_size=sensor_size,
                          transform=transform) for name in names]
    if not as_json:
        announce_model(weights)
    # said in either mode: the start-up is a wait of several seconds
    what = f"{len(jobs)} live sources, each read by its worker," if live else \
        f"{len(jobs)} streams"
    err.print(f"following {what} on a local Dask cluster of {workers} worker "
              "processes (its start-up takes several seconds)" if workers else
              f"following {what} on the Dask cluster at {scheduler}",
              markup=False, highlight=False)

    def on_window(w):
        if windows is not None and "dropped" not in w:
            windows.setdefault(w["stream"], []).append(w)
        if "gap" in w:
            err.print(f"{w['stream']}: {describe_gap(w)}", markup=False, highlight=False,
                      soft_wrap=True)
        if as_json:
            sys.stdout.write(json.dumps(w) + "\n")
            sys.stdout.flush()
        elif "dropped" in w:
            err.print(f"{w['stream']}: t {w['t_start_us'] / 1e6:8.3f}-{w['t_end_us'] / 1e6:8.3f} s"
                      f"  {w['events']:7d} events  dropped (the engine is "
                      f"{w['behind_windows']} window(s) behind)", markup=False, highlight=False)
        elif "gap" not in w:
            err.print(f"{w['stream']}: t {w['t_start_us'] / 1e6:8.3f}-{w['t_end_us'] / 1e6:8.3f} s"
                      f"  {w['events']:7d} events  prediction {w['prediction']}  latency "
                      f"{w['latency_ms']:.1f} ms  backlog {w['backlog_events']}", markup=False,
                      highlight=False)

    def on_end(result):
        name = result["stream"]
        if "error" in result:
            err.print(f"error: {result['error']}", markup=False, highlight=False, soft_wrap=True)
            if as_json:
                on_window_line({"stream": name, "error": result["error"]})
            return
        for w in result["warnings"]:
            err.print(f"warning: {name}: {w}", markup=False, highlight=False, soft_wrap=True)
        s = result["summary"]
        if as_json:
            on_window_line({"summary": True, "stream": name, **s})
        else:
            err.print(f"{name}: {s['windows']} windows, {s['events']:,} events, final prediction "
                      f"{'-' if s['final_prediction'] is None else s['final_prediction']}; "
                      f"latency p50 {s['latency_ms_p50']:.1f} ms, p99 {s['latency_ms_p99']:.1f} ms"
                      + (f"; {s['dropped_windows']:,} windows dropped ({s['on_overload']})"
                         if "live" in s else "")
                      + (" (interrupted)" if s["interrupted"] else ""), markup=False,
                      highlight=False)
        if "failure" in result:  # a dropped connection, after the windows reported above
            err.print(f"error: {result['failure']}", markup=False, highlight=False,
                      soft_wrap=True)
            if as_json:
                on_window_line({"stream": name, "error": result["failure"]})

    def on_window_line(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    # every stream runs at once: a local cluster gets threads enough for all of them
    threads = math.ceil(len(jobs) / workers) if workers else 1
    with contextlib.ExitStack() as running:
        with waiting("starting the cluster" if workers else "connecting"):
            client = running.enter_context(cluster_client(workers, scheduler,
                                                          threads_per_worker=threads))
        results, interrupted = follow_streams(client, engine_spec, jobs, on_window=on_window,
                                              on_end=on_end)
    _plot_streams(plots, windows, class_names)
    failed = sum(1 for r in results if "error" in r or "failure" in r)
    if failed:
        err.print(f"{failed} of {len(results)} streams failed", markup=False, highlight=False)
    if interrupted:
        done = sum(r["summary"]["windows"] for r in results if "summary" in r)
        err.print(f"interrupted: the results above cover {done} windows of {len(results)} "
                  "streams", markup=False, highlight=False)
        raise typer.Exit(code=130)
    if failed:
        raise typer.Exit(code=2)
