"""Scale out on Dask (``distributed``, the optional extra ``eventformer[cluster]``).

A dataset run becomes one Dask task per sample and a set of followed streams one task per stream.
The tasks take a *reference* to their input (a sample's file and segment, a stream's path), so
each worker reads its own events; nothing large travels. Each worker process keeps its engines in
a module-level cache keyed by model file, arithmetic, path policy and engine threads, so the model
is loaded, and its Numba kernels read from the shared on-disk cache, once per worker.

- `cluster_client` starts a local cluster of worker processes (loopback only) or connects to an
  existing scheduler, and closes what it started.
- `evaluate_on_cluster` is `evaluate.evaluate` on a cluster: the same records, in dataset order,
  and the same summary (one `Tally`, fed in dataset order, so even its float sums are the serial
  run's). A sample that cannot be read or framed comes back as an error record and the others go
  on; a task whose worker died is rescheduled by Dask (each sample's result is kept once, by its
  index); Ctrl-C cancels the tasks and summarises the samples finished.
- `follow_streams` runs `stream.run_stream` on several sources at once, one engine (state) per
  stream; the windows come back as they are computed, each tagged with its stream's name, through
  Dask's event topics; a stream that ends or fails does not stop the others, and one whose
  worker died is rerun from its file's start with the windows already delivered dropped.

Only this module imports ``distributed``, and only inside functions, so the rest of eventformer
runs without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from .errors import EventformerError

INSTALL_HINT = ("--workers and --scheduler run on Dask, which is not installed: "
                "pip install 'eventformer[cluster]'")


class ClusterError(EventformerError):
    """The cluster cannot be started or reached."""


def have_distributed() -> bool:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


def require_distributed() -> None:
    """One sentence saying how to install Dask when it is missing."""
    if not have_distributed():
        raise ClusterError(INSTALL_HINT)


# --- the cluster -------------------------------------------------------------------------------

@contextlib.contextmanager
def cluster_client(workers: int | None = None, scheduler: str | None = None, *,
                   threads_per_worker: int = 1, timeout: float = 10.0) -> Iterator:
    """A ``distributed.Client``: on an existing cluster (``scheduler``, e.g. tcp://HOST:PORT), or
    on a local cluster of ``workers`` worker processes on 127.0.0.1 (no dashboard), started here
    and closed on exit."""
    require_distributed()
    import logging

    from distributed import Client, LocalCluster

    if (workers is None) == (scheduler is None):
        raise ValueError("give exactly one of workers and scheduler")
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"no Dask scheduler answers at {scheduler} ({exc})") from None
        try:
            yield client
        finally:
            client.close()
        return
    if workers < 1:
        raise ValueError("workers must be at least 1")
    cluster = client = None
    # A terminal sends Ctrl-C to the whole process group: worker processes started now would
    # die of it mid start-up, each with a traceback. SIGINT stays blocked while they are
    # started (threads and processes inherit the mask, so the workers never see it); a Ctrl-C
    # pressed meanwhile is held and arrives once the cluster stands, which is then closed.
    blocked = _block_sigint()
    try:
        cluster = LocalCluster(n_workers=workers, processes=True,
                               threads_per_worker=threads_per_worker, host="127.0.0.1",
                               dashboard_address=None, silence_logs=logging.ERROR,
                               # its health endpoint too, on a free loopback port (not 8787)
                               scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                               preload=["eventformer.cluster"])  # dask_setup in each worker
        client = Client(cluster)
        blocked = _restore_sigint(blocked)  # a Ctrl-C held so far is raised here
        yield client
    finally:
        try:
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()
        finally:
            _restore_sigint(blocked)


def _block_sigint():
    """Block SIGINT in this (main) thread; the mask to restore, or None where signals cannot
    be masked (not the main thread, or no pthread_sigmask)."""
    import signal

    if threading.current_thread() is not threading.main_thread() or \
            not hasattr(signal, "pthread_sigmask"):
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def _restore_sigint(mask):
    """Put back the mask ``_block_sigint`` returned (a pending Ctrl-C is delivered now)."""
    if mask is not None:
        import signal

        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return None


def dask_setup(worker) -> None:
    """Local workers leave Ctrl-C to the client: a terminal sends it to the whole process group,
    and the client cancels the tasks and closes the cluster (no traceback from each worker)."""
    import signal

    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_count(client) -> int:
    """Workers the scheduler knows now."""
    try:
        info = client.scheduler_info(n_workers=-1)  # newer distributed lists 5 unless asked
    except TypeError:
        info = client.scheduler_info()
    return len(info["workers"])


# --- engines, one per worker process -----------------------------------------------------------

@dataclass(frozen=True)
class EngineSpec:
    """What makes an engine: the model file, the arithmetic, the kernel path policy, and the
    engine threads (None: the process's default, EVENTFORMER_THREADS or every core). Give the
    threads of the run to be matched: on the full-size model float32 sums can round differently
    on another thread count (float64 and the integer modes do not)."""

    weights: str
    dtype: str = "float32"
    path_mode: str = "auto"
    threads: int | None = None

    def build(self):
        """A new engine, its kernels loaded (from Numba's on-disk cache after the first run)."""
        from .layers import PathPolicy
        from .modelfile import load
        from .models import engine_for
        from .runtime import set_engine_threads

        if self.threads is not None:
            set_engine_threads(self.threads)
        engine = engine_for(load(self.weights), dtype=self.dtype,
                            policy=PathPolicy(mode=self.path_mode))
        engine.warm_up()
        return engine


_ENGINES: dict = {}
_ENGINES_LOCK = threading.Lock()


def worker_engine(spec: EngineSpec):
    """This process's engine for ``spec``, built on first use and kept (a changed model file,
    by its modification time and size, builds a new one)."""
    st = os.stat(spec.weights)
    key = (spec, st.st_mtime_ns, st.st_size)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            for old in [k for k in _ENGINES if k[0] == spec]:
                del _ENGINES[old]
            engine = _ENGINES[key] = spec.build()
    return engine


def warm_workers(client, spec: EngineSpec) -> None:
    """Build the engine on every worker now (a worker that joins later builds it on its first
    task)."""
    try:
        client.run(_warm, spec)
    except EventformerError:
        raise
    except Exception as exc:  # e.g. a worker that does not see the model file
        raise ClusterError(f"a worker could not load {spec.weights} ({type(exc).__name__}: "
                           f"{exc}); the model file and the data must be at the same path on "
                           "every worker") from None


def _warm(spec: EngineSpec) -> bool:
    worker_engine(spec)
    return True


# --- reading a sample on a worker --------------------------------------------------------------

@dataclass(frozen=True)
class SampleReader:
    """What a worker needs to read one sample of a dataset by its reference: the GestureSet
    without its sample list, or the name, folder and split of a tonic dataset."""

    gesture: object = None
    tonic: tuple[str, str, str] | None = None

    @classmethod
    def of(cls, data) -> "SampleReader":
        from .datasets import GestureSet

        if isinstance(data, GestureSet):
            return cls(gesture=dataclasses.replace(data, samples=[]))
        return cls(tonic=(data.name, str(data.root), data.split))

    def read(self, item):
        """(SampleRef, events) of a sample: a SampleRef of a GestureSet, an index of a tonic
        dataset."""
        if self.gesture is not None:
            return item, _gesture_events(self.gesture, item)
        return _tonic_set(self.tonic).read_sample(item)


_RECORDING: dict = {}  # the last recording a worker read, whose next segments are likely its own


def _gesture_events(data, ref):
    from .datasets import _load_sample_file
    from .events import read_events

    if ref.segment is None:
        return _load_sample_file(ref.source, data.layout)
    st = os.stat(ref.source) if os.path.exists(ref.source) else None
    key = (ref.source, st and st.st_mtime_ns, st and st.st_size)
    with _ENGINES_LOCK:
        events = _RECORDING.get(key)
    if events is None:
        events = read_events(ref.source).events
        with _ENGINES_LOCK:
            _RECORDING.clear()
            _RECORDING[key] = events
    start, end = ref.segment
    t = events["t"]
    return events[(t >= start) & (t < end)]


_TONIC: dict = {}


def _tonic_set(spec):
    from .datasets import TonicSet

    with _ENGINES_LOCK:
        data = _TONIC.get(spec)
        if data is None:
            data = _TONIC[spec] = TonicSet(*spec)
    return data


# --- one sample: the task ----------------------------------------------------------------------

@dataclass
class SampleError:
    """A sample that could not be classified, as a value: the run goes on without it."""

    ref: object
    message: str


def classify_sample(spec: EngineSpec, reader: SampleReader, item, framing: dict, energy):
    """Read, frame and classify one sample on this worker: ``(ref, Classification)``, or
    ``(ref, SampleError)`` for a sample that cannot be read, framed or labelled."""
    from .events import Recording
    from .inference import classify

    ref = item
    try:
        ref, events = reader.read(item)
        engine = worker_engine(spec)
        n_classes = engine.config.num_classes
        if ref.label >= n_classes:
            raise EventformerError(f"{ref.name}: label {ref.label} but the model has only "
                                   f"{n_classes} classes")
        data = reader.gesture if reader.gesture is not None else _tonic_set(reader.tonic)
        rec = Recording(path=ref.name, format=data.layout, events=events,
                        sensor_size=data.sensor_size)
        return ref, classify(engine, rec, energy=energy, **framing)
    except EventformerError as exc:
        return ref, SampleError(ref, str(exc))


def error_record(ref, message: str) -> dict:
    """The JSON record of a sample that failed: the file, the error, and where it came from."""
    if not hasattr(ref, "label"):  # a tonic index that could not even be read
        return {"file": f"sample {ref}", "error": message}
    return {"file": ref.name, "error": message, "label": ref.label,
            "sample": {"recording": ref.source, "segment": ref.segment, "name": ref.name}}


def evaluate_on_cluster(client, spec: EngineSpec, engine, data, *, limit: int | None = None,
                        steps: int | None = None, split_by: str | None = None, energy=None,
                        sensor_size: tuple[int, int] | None = None, transform=None,
                        on_sample: Callable | None = None, on_error: Callable | None = None,
                        on_done: Callable | None = None, retries: int = 2,
                        neurobench: bool = False) -> dict:
    """`evaluate.evaluate` with one Dask task per sample (``neurobench``: each worker adds
    NeuroBench's metrics of its samples, and the summary their mean, as serially).

    ``engine`` (the client's own, for the model's classes and arithmetic) feeds the `Tally`;
    the workers build theirs from ``spec``. ``on_sample(record, result)`` and
    ``on_error(record)`` are called in dataset order; ``on_done()`` as each task completes (a
    progress bar). Returns the summary `evaluate` returns (over the samples classified) plus
    ``failed``, the number of samples that came back as errors."""
    from distributed import as_completed

    from .evaluate import Tally, sample_record

    tally = Tally(engine, data, energy)
    reader = SampleReader.of(data)
    items = data.samples[:limit] if limit else data.samples
    framing = {"steps": steps, "split_by": split_by, "sensor_size": sensor_size,
               "transform": transform, "neurobench": neurobench}
    start = time.perf_counter()
    token = uuid.uuid4().hex[:12]
    futures = [client.submit(classify_sample, spec, reader, item, framing, energy,
                             key=f"eventformer-sample-{i}-{token}", retries=retries, pure=False)
               for i, item in enumerate(items)]
    position = {f.key: i for i, f in enumerate(futures)}
    done: dict[int, tuple] = {}
    failed = 0
    next_i = 0

    def emit(i: int) -> None:
        nonlocal failed
        ref, result = done.pop(i)
        if isinstance(result, SampleError):
            failed += 1
            if on_error is not None:
                on_error(error_record(ref, result.message))
            return
        tally.add(ref.label, result)
        if on_sample is not None:
            on_sample(sample_record(ref, result), result)

    interrupted = False
    try:
        for future in as_completed(futures):
            i = position[future.key]
            if i in done or i < next_i:  # a result is kept once
                continue
            try:
                done[i] = future.result()
            except Exception as exc:  # the worker died too often, or a bug: this sample only
                ref = items[i]
                done[i] = (ref, SampleError(ref, f"{getattr(ref, 'name', ref)}: the cluster "
                                                 f"could not run it ({type(exc).__name__}: "
                                                 f"{exc})"))
            future.release()
            if on_done is not None:
                on_done()
            while next_i in done:
                emit(next_i)
                next_i += 1
    except KeyboardInterrupt:
        interrupted = True
        client.cancel(futures)
        for i in sorted(done):  # what finished is still reported, in dataset order
            emit(i)
    summary = tally.summary(time.perf_counter() - start, interrupted)
    summary["failed"] = failed
    return summary


# --- several streams at once -------------------------------------------------------------------

@dataclass
class StreamJob:
    """One stream to follow: its name (the path as given) and `run_stream`'s options."""

    name: str
    path: str
    window: object  # a stream.WindowSpec
    follow: bool = False
    realtime: bool = False
    idle_timeout: float = 5.0
    sensor_size: tuple[int, int] | None = None
    transform: object = None
    # a live source (eventformer.live: udp://, tcp://, dv://, dv+unix://), opened on the worker
    live: bool = False
    wire_format: str | None = None
    reconnect: bool = False
    on_overload: str = "queue"


def follow_stream(spec: EngineSpec, job: StreamJob, topic: str, stop_name: str) -> dict:
    """The task for one stream: its own engine (its own state), `run_stream` on its file, each
    window published on ``topic`` as it is computed; returns the stream's summary, or
    ``{"stream", "error"}`` when it cannot be read. Stops early when the Dask Event
    ``stop_name`` is set (Ctrl-C on the client). A live source is opened here, on the worker
    (it connects to, or listens for, its camera); a connection dropped after some windows
    leaves its summary and its sentence under ``"failure"``."""
    from distributed import Event, get_worker

    from .stream import FileSource, run_stream

    worker = get_worker()
    stop = Event(stop_name)
    checked = [0.0, False]

    def should_stop() -> bool:  # ask the scheduler at most five times a second
        now = time.monotonic()
        if now - checked[0] > 0.2:
            checked[0] = now
            checked[1] = stop.is_set()
        return checked[1]

    def on_window(record: dict) -> None:
        worker.log_event(topic, {"stream": job.name, **record})

    if job.live:
        return _follow_live(spec, job, on_window, should_stop, checked)
    try:
        if not os.path.exists(job.path):
            raise EventformerError(f"{job.path}: no such file")
        engine = spec.build()  # never shared: it holds this stream's state
        source = FileSource(job.path, job.follow)
        summary = run_stream(engine, source, job.window, follow=job.follow,
                             realtime=job.realtime, idle_timeout=job.idle_timeout,
                             on_window=on_window, should_stop=should_stop,
                             sensor_size=job.sensor_size, transform=job.transform)
        leftover = source.finish()
        warnings = source.warnings + ([leftover.message] if leftover.message else [])
    except EventformerError as exc:
        return {"stream": job.name, "error": str(exc)}
    summary["interrupted"] = summary["interrupted"] or checked[1]
    return {"stream": job.name, "summary": summary, "warnings": warnings}


def _follow_live(spec: EngineSpec, job: StreamJob, on_window, should_stop, checked) -> dict:
    from .live.sources import open_live_source
    from .stream import run_stream

    try:
        engine = spec.build()  # warmed before the source opens: no event waits on a compile
        source = open_live_source(job.path, job.wire_format, job.sensor_size,
                                  reconnect=job.reconnect)
        try:
            summary = run_stream(engine, source, job.window, idle_timeout=job.idle_timeout,
                                 on_window=on_window, should_stop=should_stop,
                                 sensor_size=job.sensor_size, transform=job.transform,
                                 on_overload=job.on_overload)
        finally:
            source.close()
    except EventformerError as exc:
        return {"stream": job.name, "error": str(exc)}
    summary["interrupted"] = summary["interrupted"] or checked[1]
    result = {"stream": job.name, "summary": summary, "warnings": source.warnings}
    if source.failure:
        result["failure"] = source.failure
    return result


def follow_streams(client, spec: EngineSpec, jobs: Iterable[StreamJob], *,
                   on_window: Callable[[dict], None] | None = None,
                   on_end: Callable[[dict], None] | None = None,
                   drain_timeout: float = 10.0) -> tuple[list[dict], bool]:
    """Run every stream as its own task; ``on_window(record)`` in the calling thread for each
    window (``record["stream"]`` names it), ``on_end(result)`` as each stream ends (its summary,
    or its error). Returns the streams' results in the order given and whether Ctrl-C stopped
    them (then every stream closes its open window and reports what it did)."""
    from distributed import Event, as_completed

    jobs = list(jobs)
    token = uuid.uuid4().hex[:12]
    topic, stop_name = f"eventformer-windows-{token}", f"eventformer-stop-{token}"
    inbox: queue.Queue = queue.Queue()
    client.subscribe_topic(topic, lambda event: inbox.put(_lists(event[1])))
    stop = Event(stop_name, client=client)
    seen: dict[str, int] = {job.name: 0 for job in jobs}  # the last step delivered

    def deliver(block_s: float = 0.0) -> None:
        try:
            record = inbox.get(timeout=block_s) if block_s else inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            # a stream whose worker died is rerun from its start by Dask: it replays the same
            # windows (the engine is deterministic), and those already delivered are dropped
            if record["step"] > seen[record["stream"]]:
                seen[record["stream"]] = record["step"]
                if on_window is not None:
                    on_window(record)
            try:
                record = inbox.get_nowait()
            except queue.Empty:
                return

    def drain(result: dict) -> None:  # the stream's windows reach us before its summary
        want = result.get("summary", {}).get("windows", 0)
        deadline = time.monotonic() + drain_timeout
        while seen[result["stream"]] < want and time.monotonic() < deadline:
            deliver(0.05)

    futures = [client.submit(follow_stream, spec, job, topic, stop_name,
                             key=f"eventformer-stream-{i}-{token}", pure=False)
               for i, job in enumerate(jobs)]
    name_of = {f.key: job.name for f, job in zip(futures, jobs)}
    results: dict[str, dict] = {}
    interrupted = False
    pending = as_completed(futures)
    try:
        while len(results) < len(futures):
            deliver(0.05)
            if not pending.is_empty() and pending.has_ready():
                for future in pending.next_batch(block=False):
                    results[name_of[future.key]] = _stream_result(future, name_of)
                    drain(results[name_of[future.key]])
                    if on_end is not None:
                        on_end(results[name_of[future.key]])
    except KeyboardInterrupt:
        interrupted = True
        stop.set()  # each stream closes its open window and returns its summary
        try:
            for future in pending:
                results[name_of[future.key]] = _stream_result(future, name_of)
                drain(results[name_of[future.key]])
                if on_end is not None:
                    on_end(results[name_of[future.key]])
        except KeyboardInterrupt:  # a second Ctrl-C: do not wait for them
            client.cancel(futures)
    deliver()
    with contextlib.suppress(Exception):
        client.unsubscribe_topic(topic)
    return [results.get(job.name, {"stream": job.name, "error": "cancelled"})
            for job in jobs], interrupted


def _lists(obj):
    """A window record as run_stream made it: the event channel hands lists over as tuples."""
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_lists(v) for v in obj]
    return obj


def _stream_result(future, name_of) -> dict:
    try:
        return future.result()
    except Exception as exc:  # the task itself failed (a bug, or its worker kept dying)
        return {"stream": name_of[future.key],
                "error": f"the cluster could not run it ({type(exc).__name__}: {exc})"}
