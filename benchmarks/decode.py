"""Decode speed of eventformer's readers beside the reference decoders, on the real recordings.

    python benchmarks/decode.py [--data DIR] [--repeat 5] [--json] [--fresh-numba-cache]

For every real file in ``../shared/data/events`` (``formats/`` and ``dvs-gesture/1..5.bs2``) it
times, in the same run and on the same file:

- ``read_events(path)``: the whole-file read (format detected from the first bytes);
- the incremental path: an `EventStream` read 64 KiB at a time until the file's end, then
  ``finish()``, which is what following a growing file (``stream --follow``) costs;
- each reference decoder that exists for the format: expelliarmus ``Wizard`` (EVT 2.0, EVT 3.0,
  DAT), tonic's ``tonic.io.read_*`` functions (N-MNIST/bs2, AEDAT 4, AEDAT 2 via
  ``read_davis_346``), the ``aedat`` package (AEDAT 4) and ``numpy.load`` (.npy).

Timings are the best of ``--repeat`` calls after one warm-up call. The warm-up call of
``read_events`` is printed as "cold": it pays for loading the Numba kernels (from Numba's on-disk
cache; with ``--fresh-numba-cache`` from an empty one, so it includes compiling them).

Every M ev/s figure counts the events eventformer reads from the file (the DVS events), so the
ratio column, eventformer's speed over the reference's, is the ratio of their times on the same
work: above 1 eventformer is faster. Where a reference returns a different number of records
(tonic's AEDAT 2 reader keeps IMU records), a note under the table says so; the "same" column says
whether the reference's t, x, y, p equal eventformer's ("xyp": all but t). A reference whose package is not installed
shows "n/a".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INCREMENTAL_BYTES = 64 << 10
FIELDS = ("t", "x", "y", "p")


@dataclass
class Reference:
    name: str
    package: str  # the importable module that must exist, else "n/a"
    read: Callable[[str], np.ndarray]
    comparable: bool = True  # same events as eventformer expected (else no "same" check)
    note: str = ""


def _expelliarmus(encoding: str) -> Callable[[str], np.ndarray]:
    def read(path: str) -> np.ndarray:
        from expelliarmus import Wizard

        return Wizard(encoding=encoding).read(path)
    return read


def _aedat_package(path: str) -> np.ndarray:
    """The `aedat` package directly: the polarity packets of the first event stream."""
    import aedat

    decoder = aedat.Decoder(path)
    ids = [i for i, s in decoder.id_to_stream().items() if s["type"] == "events"]
    target = min(ids)
    parts = [packet["events"] for packet in decoder
             if packet["stream_id"] == target and "events" in packet]
    return np.concatenate(parts)


def _tonic_aedat4(path: str) -> np.ndarray:
    import tonic.io

    return tonic.io.read_aedat4(path)


def _tonic_mnist(path: str) -> np.ndarray:
    import tonic.io

    return tonic.io.read_mnist_file(path, dtype=tonic.io.events_struct)


def _tonic_davis(path: str) -> np.ndarray:
    import tonic.io

    return tonic.io.read_davis_346(path)[2]


REFERENCES: dict[str, list[Reference]] = {
    "evt2": [Reference("expelliarmus", "expelliarmus", _expelliarmus("evt2"))],
    "evt3": [Reference("expelliarmus", "expelliarmus", _expelliarmus("evt3"),
                       note="expelliarmus 1.1 adds 4096 us at every TIME_LOW decrease, so only "
                            "x, y, p and the order agree (see eventformer/events/formats/evt3.py)")],
    "dat": [Reference("expelliarmus", "expelliarmus", _expelliarmus("dat"))],
    "aedat4": [Reference("aedat", "aedat", _aedat_package),
               Reference("tonic read_aedat4", "tonic", _tonic_aedat4)],
    "bs2": [Reference("tonic read_mnist_file", "tonic", _tonic_mnist)],
    "aedat2": [Reference("tonic read_davis_346", "tonic", _tonic_davis, comparable=False,
                         note="tonic has no DAVIS240 reader; read_davis_346 does the same "
                              "per-record work with 346x260 constants and keeps IMU records")],
    "npy": [Reference("numpy.load", "numpy", np.load)],
}


def find_data(arg: str | None) -> Path | None:
    if arg:
        return Path(arg)
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *here.parents):
        cand = base / ".." / "shared" / "data" / "events"
        if (cand / "formats").is_dir():
            return cand.resolve()
    return None


def real_files(data: Path) -> list[Path]:
    files = sorted(p for p in (data / "formats").iterdir() if p.is_file())
    files += [data / "dvs-gesture" / f"{i}.bs2" for i in range(1, 6)]
    return [f for f in files if f.is_file()]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_of(fn, repeat: int) -> float:
    fn()  # warm-up
    return min(timed(fn) for _ in range(repeat))


def agreement(ours: np.ndarray, theirs: np.ndarray) -> str:
    """"yes" when t, x, y, p all agree, else the fields that do ("xyp"), "NO" when none does."""
    if len(ours) != len(theirs):
        return "NO"
    equal = [f for f in FIELDS
             if np.array_equal(ours[f].astype(np.int64), np.asarray(theirs[f]).astype(np.int64))]
    return "yes" if len(equal) == len(FIELDS) else ("".join(equal) or "NO")


def measure(path: Path, repeat: int) -> dict:
    from eventformer.events import EventStream, read_events

    p = str(path)
    start = time.perf_counter()
    rec = read_events(p)
    cold = time.perf_counter() - start
    n = len(rec.events)
    warm = min(timed(lambda: read_events(p)) for _ in range(repeat))

    def incremental():
        stream = EventStream(p)
        parts = [stream.read_available(INCREMENTAL_BYTES)]
        end = stream.finish()
        if len(end.events):
            parts.append(end.events)
        return np.concatenate(parts)

    inc_events = incremental()
    inc = best_of(incremental, repeat)

    def mev(seconds):
        return n / seconds / 1e6 if n and seconds else None

    row = {"file": f"{path.parent.name}/{path.name}", "format": rec.format, "events": n,
           "bytes": path.stat().st_size, "cold_s": cold, "eventformer_s": warm,
           "eventformer_mev_s": mev(warm), "incremental_s": inc, "incremental_mev_s": mev(inc),
           "incremental_same": agreement(rec.events, inc_events), "references": []}
    for ref in REFERENCES.get(rec.format, []):
        entry = {"name": ref.name, "seconds": None, "mev_s": None, "ratio": None,
                 "events": None, "same": None, "note": ref.note}
        if importlib.util.find_spec(ref.package) is None:
            entry["note"] = f"{ref.package} is not installed"
        else:
            try:
                out = ref.read(p)
                t_ref = best_of(lambda read=ref.read: read(p), repeat)
            except Exception as exc:  # noqa: BLE001  (a reference that cannot read the file is a finding)
                entry["note"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
            else:
                entry.update(seconds=t_ref, mev_s=mev(t_ref), ratio=t_ref / warm,
                             events=len(out),
                             same=agreement(rec.events, out) if ref.comparable else None)
        row["references"].append(entry)
    return row


def fmt(value, spec=".1f", missing="-"):
    return missing if value is None else format(value, spec)


def print_table(rows: list[dict], repeat: int) -> None:
    head = (f"{'file':34s} {'format':7s} {'events':>8s} {'cold ms':>8s} {'warm ms':>8s} "
            f"{'ef M ev/s':>9s} {'inc M ev/s':>10s}  {'reference':22s} {'M ev/s':>7s} "
            f"{'ef/ref':>7s} {'same':>4s}")
    print(f"decode speed, best of {repeat} after one warm-up (ef = eventformer read_events, "
          f"inc = EventStream {INCREMENTAL_BYTES >> 10} KiB reads; ef/ref > 1: eventformer faster)")
    print(head)
    print("-" * len(head))
    notes = []
    for row in rows:
        refs = row["references"] or [{"name": "(none)", "mev_s": None, "ratio": None,
                                      "same": None, "seconds": None, "note": ""}]
        for i, ref in enumerate(refs):
            if i == 0:
                left = (f"{row['file']:34s} {row['format']:7s} {row['events']:>8,d} "
                        f"{row['cold_s'] * 1e3:8.2f} {row['eventformer_s'] * 1e3:8.2f} "
                        f"{fmt(row['eventformer_mev_s']):>9s} {fmt(row['incremental_mev_s']):>10s}")
            else:
                left = " " * (34 + 1 + 7 + 1 + 8 + 1 + 8 + 1 + 8 + 1 + 9 + 1 + 10)
            installed = ref["seconds"] is not None
            mev = fmt(ref["mev_s"]) if installed else "n/a"
            if installed and row["events"] == 0:
                mev = f"{ref['seconds'] * 1e3:.2f}ms"
            ratio = fmt(ref["ratio"], ".2f") if installed else "n/a"
            same = ref["same"] or "-"
            print(f"{left}  {ref['name']:22s} {mev:>7s} {ratio:>7s} {same:>4s}")
            if ref.get("note"):
                notes.append(f"{ref['name']} ({row['format']}): {ref['note']}")
            if installed and ref["events"] != row["events"]:
                notes.append(f"{row['file']}, {ref['name']}: returns {ref['events']:,} records "
                             f"against eventformer's {row['events']:,} events")
        if row["incremental_same"] != "yes":
            notes.append(f"{row['file']}: the incremental read returned different events")
    for note in dict.fromkeys(notes):
        print(f"note: {note}")
    print("M ev/s count eventformer's events for every decoder (ratio = time ratio); "
          "a 0-event file shows the reference's time instead.")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="folder holding formats/ and dvs-gesture/ "
                                       "[default: ../shared/data/events beside the checkout]")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per decoder (best kept)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--fresh-numba-cache", action="store_true",
                        help="use an empty Numba cache so 'cold' includes compiling the kernels")
    args = parser.parse_args(argv)
    data = find_data(args.data)
    if data is None or not (data / "formats").is_dir():
        sys.exit("the real recordings (../shared/data/events) are not here; pass --data DIR")
    with tempfile.TemporaryDirectory() as cache:
        if args.fresh_numba_cache:
            if "numba" in sys.modules:
                sys.exit("--fresh-numba-cache must be set before Numba is imported")
            os.environ["NUMBA_CACHE_DIR"] = cache
        rows = [measure(f, args.repeat) for f in real_files(data)]
    result = {"repeat": args.repeat, "incremental_bytes": INCREMENTAL_BYTES,
              "fresh_numba_cache": args.fresh_numba_cache, "cpus": os.cpu_count(), "files": rows}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(rows, args.repeat)


if __name__ == "__main__":
    main()
