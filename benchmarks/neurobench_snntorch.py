"""The README's imported SNN in NeuroBench's terms: train it, import it, count it both ways.

    python benchmarks/neurobench_snntorch.py [--out DIR] [--epochs 30]

Makes the snnTorch net of the README's NIR section (``torch.manual_seed(0)``; Leaky layers with
per-neuron beta and threshold, as snnTorch 1.0.0's NIR export needs), trains it with snnTorch
(BPTT, Adam 2e-3, batches of 16, cross-entropy on the output spike counts) on the embedded
synthetic set's train split as eventformer frames it (T 8, 2x32x32), writes it to NIR, imports
it with ``eventformer export --framework snntorch -T 8`` and prints, over the test split:

- the engine's ``"neurobench"`` object (``eventformer compare ... --neurobench``'s mean per
  sample), with its own counters beside it (the README table's last row);
- NeuroBench 2.3's own ``Benchmark`` on the trained torch net over the same frames (equal but for
  ``Footprint``, where NeuroBench adds the torch buffers);
- NeuroBench's ``Benchmark`` running the engine through ``eventformer.neurobench_model``.

Needs the test extra (snntorch, nir, neurobench). Files go to ``--out`` (default: a temporary
folder). Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np


def make_net():
    import snntorch as snn
    import torch

    def leaky(shape, **kw):
        return snn.Leaky(beta=torch.full(shape, 0.9), threshold=torch.ones(shape),
                         init_hidden=True, **kw)

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 8, 3, padding=1), leaky((8, 32, 32)),
        torch.nn.AvgPool2d(2),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), leaky((16, 8, 8)),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 8 * 8, 11), leaky((11,), output=True),
    )


def export(net, folder: str, name: str) -> str:
    """``net`` to NIR, then imported by ``eventformer export``: the model file's path."""
    import nir
    import torch
    from snntorch.export_nir import export_to_nir

    graph, model = os.path.join(folder, name + ".nir"), os.path.join(folder, name + ".h5")
    with torch.no_grad():
        nir.write(graph, export_to_nir(net, torch.zeros(1, 2, 32, 32), ignore_dims=[0]))
    subprocess.run([sys.executable, "-m", "eventformer_cli.main", "export", graph, "-o", model,
                    "--framework", "snntorch", "-T", "8", "--force"], check=True,
                   capture_output=True)
    return model


def framed(model_file: str, split: str):
    """The split's samples as eventformer frames them for ``model_file``: dense counts
    [samples, T, 2, 32, 32] and labels."""
    import torch

    from eventformer.datasets import open_dataset
    from eventformer.events import Recording
    from eventformer.inference import classify
    from eventformer.modelfile import load
    from eventformer.models import engine_for

    engine = engine_for(load(model_file))
    data = open_dataset("synthetic-gesture", None, split)
    xs, ys = [], []
    for ref, events in data.iter_events(None):
        r = classify(engine, Recording(path=ref.name, format=data.layout, events=events,
                                       sensor_size=data.sensor_size), keep_frames=True)
        dense = np.zeros((len(r.frames), 32 * 32 * 2), np.float32)
        for t, (idx, cnt) in enumerate(r.frames):
            dense[t, idx] = cnt
        xs.append(dense.reshape(-1, 32, 32, 2).transpose(0, 3, 1, 2))
        ys.append(ref.label)
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys)


def train(net, x, y, epochs: int) -> None:
    import torch
    from snntorch import utils

    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for epoch in range(epochs):
        correct, loss = 0, None
        for batch in torch.randperm(len(x)).split(16):
            utils.reset(net)
            counts = sum(net(x[batch, t])[0] for t in range(x.shape[1]))
            loss = torch.nn.functional.cross_entropy(counts, y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct += int((counts.argmax(1) == y[batch]).sum())
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, train accuracy "
              f"{correct / len(x):.2f}", file=sys.stderr, flush=True)
    utils.reset(net)
    net.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="folder for the net's files (default: a temporary one)")
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    folder = args.out or tempfile.mkdtemp(prefix="eventformer-nb-")
    os.makedirs(folder, exist_ok=True)

    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.static import ConnectionSparsity, Footprint, ParameterCount
    from neurobench.metrics.workload import (ActivationSparsity, ClassificationAccuracy,
                                             MembraneUpdates, SynapticOperations)
    from neurobench.models import SNNTorchModel
    from neurobench.processors.postprocessors import ChooseMaxCount
    from torch.utils.data import DataLoader, TensorDataset

    from eventformer.compare import compare
    from eventformer.datasets import open_dataset
    from eventformer.neurobench_model import METRIC_LIST, EngineModel

    net = make_net()
    untrained = export(net, folder, "untrained")  # only its framing is used
    x, y = framed(untrained, "train")
    train(net, x, y, args.epochs)
    model_file = export(net, folder, "gesture-snntorch")
    tx, ty = framed(model_file, "test")
    loader = DataLoader(TensorDataset(tx, ty), batch_size=4)

    result = compare([("snnTorch via NIR", model_file)], open_dataset("synthetic-gesture", None,
                                                                      "test"),
                     dtypes=["float32"], neurobench=True)
    (run,) = result["runs"]
    print(json.dumps({"engine (compare --neurobench, mean per sample)": {
        "accuracy": run["accuracy"], "ops_per_sample": run["ops_per_sample"],
        "neurobench": run["neurobench"]}}, indent=1))
    static, workload = METRIC_LIST
    print("NeuroBench's Benchmark running the engine:",
          Benchmark(EngineModel.from_file(model_file), loader, [], [],
                    [static, workload + [ClassificationAccuracy]]).run(quiet=True))
    print("NeuroBench's Benchmark on the torch net:",
          Benchmark(SNNTorchModel(net), loader, [], [ChooseMaxCount()],
                    [[Footprint, ConnectionSparsity, ParameterCount],
                     [SynapticOperations, ActivationSparsity, MembraneUpdates,
                      ClassificationAccuracy]]).run(quiet=True))
    print(f"files in {folder}", file=sys.stderr)


if __name__ == "__main__":
    main()
