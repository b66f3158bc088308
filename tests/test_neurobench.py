"""NeuroBench's metrics from the engine's activity (issue 21): equal to NeuroBench 2.3's own
result on the same snnTorch network and inputs, and present in infer / compare JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import nir_frameworks as fw
from eventformer.neurobench_metrics import METRICS, watch
from eventformer_cli.main import app

pytest.importorskip("neurobench")
pytest.importorskip("snntorch")

STEPS = 6
SHAPE = (2, 16, 16)
runner = CliRunner()


@pytest.fixture(scope="module")
def snntorch_pair(tmp_path_factory):
    """An snnTorch conv SNN (float64) and the engine running its NIR export, float64."""
    from eventformer.modelfile.nir_import import import_nir
    from eventformer.models.snn import SpikingNet

    net = fw.build_snntorch(3, in_shape=SHAPE, classes=5)
    path = tmp_path_factory.mktemp("nb") / "snntorch.nir"
    fw.export_snntorch(net, path, in_shape=SHAPE)
    model, _ = import_nir(path, framework="snntorch", steps=STEPS)
    return net, SpikingNet(model, dtype="float64")


def _frames(binary: bool, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = (rng.random((STEPS, *SHAPE)) < 0.3).astype(np.float64)
    if not binary:  # event counts: the first layer's input then holds values above 1
        frames *= rng.integers(1, 4, frames.shape)
    return frames


def _engine_metrics(engine, frames: np.ndarray) -> dict:
    steps = []
    for f in frames:  # [C, H, W] -> the engine's HWC event list
        flat = f.transpose(1, 2, 0).reshape(-1)
        idx = np.flatnonzero(flat).astype(np.int32)
        steps.append((idx, flat[idx].astype(np.int32)))
    nb = watch(engine)
    nb.clear()
    with nb:
        engine.run(steps)
    return nb.sample(len(steps))


def _neurobench_metrics(net, frames: np.ndarray) -> dict:
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.static import ConnectionSparsity, Footprint, ParameterCount
    from neurobench.metrics.workload import (
        ActivationSparsity,
        MembraneUpdates,
        SynapticOperations,
    )
    from neurobench.models import SNNTorchModel
    from torch.utils.data import DataLoader, TensorDataset

    fw._reset_snntorch(net)
    data = TensorDataset(torch.from_numpy(frames)[None], torch.zeros(1, dtype=torch.long))
    bench = Benchmark(SNNTorchModel(net), DataLoader(data, batch_size=1), [], [],
                      [[Footprint, ConnectionSparsity, ParameterCount],
                       [SynapticOperations, ActivationSparsity, MembraneUpdates]])
    out = bench.run(quiet=True)
    fw._reset_snntorch(net)
    return out


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "event-counts"])
def test_equals_neurobench_on_the_same_snntorch_net(snntorch_pair, binary):
    net, engine = snntorch_pair
    frames = _frames(binary, seed=1 if binary else 2)
    ours = _engine_metrics(engine, frames)
    theirs = _neurobench_metrics(net, frames)
    syn = theirs["SynapticOperations"]
    assert ours["SynapticOperations"] == {k: int(v) for k, v in syn.items()}
    assert ours["SynapticOperations"]["Effective_ACs"] > 0
    if binary:  # only the layer after the average pool sees values other than 0 and 1
        assert 0 < syn["Effective_MACs"] < syn["Effective_ACs"]
    else:
        assert syn["Effective_MACs"] > syn["Effective_ACs"]
    assert ours["ActivationSparsity"] == theirs["ActivationSparsity"]
    assert ours["MembraneUpdates"] == theirs["MembraneUpdates"]
    assert ours["ParameterCount"] == theirs["ParameterCount"]
    assert ours["ConnectionSparsity"] == theirs["ConnectionSparsity"]
    # NeuroBench's footprint adds the torch buffers (snnTorch's beta, threshold, membranes);
    # the engine's is its weights and biases, here float64 like the torch parameters
    assert ours["Footprint"] == sum(p.numel() * p.element_size() for p in net.parameters())


def test_watch_changes_no_result(snntorch_pair):
    _, engine = snntorch_pair
    frames = _frames(False, seed=3)
    steps = [(np.flatnonzero(f.transpose(1, 2, 0).reshape(-1)).astype(np.int32),) for f in frames]
    steps = [(i, f.transpose(1, 2, 0).reshape(-1)[i].astype(np.int32))
             for (i,), f in zip(steps, frames)]
    plain = engine.run(steps).copy()
    with watch(engine):
        watched = engine.run(steps).copy()
    assert np.array_equal(plain, watched)
    assert "run_steps" not in engine.layers[0].__dict__  # the wrappers are gone after the block


def test_infer_and_compare_json_carry_neurobench(monkeypatch):
    monkeypatch.delenv("EVENTFORMER_DATA", raising=False)
    r = runner.invoke(app, ["infer", "--weights", "ssa", "--dataset", "dvs-gesture",
                            "--limit", "2", "--json", "--neurobench"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    samples, summary = lines[:-1], lines[-1]
    assert len(samples) == 2 and summary["summary"]
    for s in samples:
        assert tuple(s["neurobench"]) == METRICS
        assert s["neurobench"]["SynapticOperations"]["Dense"] > 0
    mean = (samples[0]["neurobench"]["MembraneUpdates"]
            + samples[1]["neurobench"]["MembraneUpdates"]) / 2
    assert summary["neurobench"]["MembraneUpdates"] == mean
    r = runner.invoke(app, ["compare", "--weights", "ssa", "--dtype", "float32", "--limit", "2",
                            "--json", "--neurobench"])
    assert r.exit_code == 0, r.output
    (run,) = json.loads(r.stdout)["runs"]
    assert run["neurobench"] == summary["neurobench"]
    # without --neurobench no sample runs twice, and no object is reported
    r = runner.invoke(app, ["infer", "--weights", "ssa", "--dataset", "dvs-gesture",
                            "--limit", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert all("neurobench" not in json.loads(x) for x in r.stdout.splitlines())


# --- NeuroBench's own Benchmark running the engine (eventformer.neurobench_model) -------------

def _loader(frames: np.ndarray, labels, batch_size: int):
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.from_numpy(frames), torch.as_tensor(labels, dtype=torch.long))
    return DataLoader(data, batch_size=batch_size)


def _benchmark_engine(engine, frames, labels, batch_size: int, extra=()) -> dict:
    from neurobench.benchmarks import Benchmark

    from eventformer.neurobench_model import METRIC_LIST, EngineModel

    static, workload = METRIC_LIST
    bench = Benchmark(EngineModel(engine), _loader(frames, labels, batch_size), [], [],
                      [static, workload + list(extra)])
    return bench.run(quiet=True)


def _neurobench_on_torch(net, frames: np.ndarray) -> dict:
    """NeuroBench's own result on the snnTorch net, one sample per batch."""
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.static import ConnectionSparsity, Footprint, ParameterCount
    from neurobench.metrics.workload import (
        ActivationSparsity,
        MembraneUpdates,
        SynapticOperations,
    )
    from neurobench.models import SNNTorchModel

    fw._reset_snntorch(net)
    bench = Benchmark(SNNTorchModel(net), _loader(frames, [0] * len(frames), 1), [], [],
                      [[Footprint, ConnectionSparsity, ParameterCount],
                       [SynapticOperations, ActivationSparsity, MembraneUpdates]])
    out = bench.run(quiet=True)
    fw._reset_snntorch(net)
    return out


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "event-counts"])
def test_benchmark_runs_the_engine_and_equals_neurobench_on_the_torch_net(snntorch_pair,
                                                                          binary):
    """Benchmark(EngineModel) over two samples, one per batch: every key NeuroBench's own
    Benchmark gives on the snnTorch net, equal (float64 end to end), and the mean of the
    engine's own "neurobench" objects; two samples per batch give the same counts."""
    from eventformer.neurobench_metrics import mean_per_sample

    net, engine = snntorch_pair
    frames = np.stack([_frames(binary, seed=10 + 2 * binary), _frames(binary, seed=11)])
    ours = _benchmark_engine(engine, frames, [0, 0], batch_size=1)
    theirs = _neurobench_on_torch(net, frames)
    assert set(ours) == set(theirs) == set(METRICS)
    footprint = ours.pop("Footprint")  # the weights and biases, without snnTorch's buffers
    assert footprint == sum(p.numel() * p.element_size() for p in net.parameters())
    theirs.pop("Footprint")
    assert ours == theirs
    assert ours["SynapticOperations"]["Effective_ACs"] > 0
    assert ours["SynapticOperations"]["Effective_MACs"] > 0
    assert 0 < ours["ActivationSparsity"] < 1
    mean = mean_per_sample([_engine_metrics(engine, f) for f in frames])
    assert ours["SynapticOperations"] == mean["SynapticOperations"]
    assert ours["MembraneUpdates"] == mean["MembraneUpdates"]
    assert ours["ActivationSparsity"] == mean["ActivationSparsity"]
    # a batch of two: the same per-sample means, sparsity pooled over the batch
    both = _benchmark_engine(engine, frames, [0, 0], batch_size=2)
    assert both["SynapticOperations"] == ours["SynapticOperations"]
    assert both["MembraneUpdates"] == ours["MembraneUpdates"]
    assert both["ActivationSparsity"] == pytest.approx(ours["ActivationSparsity"], rel=1e-12)


def test_engine_model_predicts_as_the_engine_and_takes_flat_features(snntorch_pair):
    from eventformer.neurobench_model import EngineModel

    _, engine = snntorch_pair
    frames = np.stack([_frames(False, seed=s) for s in (20, 21, 22)])
    expected = [int(np.argmax(_engine_metrics_and_logits(engine, f))) for f in frames]
    model = EngineModel(engine)
    assert model(torch.from_numpy(frames)).tolist() == expected
    flat = torch.from_numpy(frames.reshape(3, STEPS, -1))  # (batch, T, C*H*W), torch's order
    assert model(flat).tolist() == expected
    logits = EngineModel(engine, output="logits")(flat)
    assert logits.shape == (3, 5) and logits.argmax(dim=1).tolist() == expected


def _engine_metrics_and_logits(engine, frames):
    steps = []
    for f in frames:
        flat = f.transpose(1, 2, 0).reshape(-1)
        idx = np.flatnonzero(flat).astype(np.int32)
        steps.append((idx, flat[idx].astype(np.int32)))
    return engine.run(steps).copy()


def test_engine_model_refuses_what_it_cannot_measure(snntorch_pair):
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.workload import SynapticOperations

    from eventformer.errors import EventformerError
    from eventformer.neurobench_model import EngineModel

    _, engine = snntorch_pair
    model = EngineModel(engine)
    with pytest.raises(EventformerError, match="torch hooks, which the engine has none of"):
        Benchmark(model, _loader(_frames(True, 1)[None], [0], 1), [], [],
                  [[], [SynapticOperations]])
    with pytest.raises(EventformerError, match=r"shape \(6, 3, 16, 16\) does not fit"):
        model(torch.zeros((1, STEPS, 3, 16, 16)))
    with pytest.raises(EventformerError, match="not integers"):
        model(torch.full((1, STEPS, *SHAPE), 0.5))
    with pytest.raises(EventformerError, match="output must be 'class' or 'logits'"):
        EngineModel(engine, output="spikes")


def test_benchmark_runs_a_shipped_spikformer_on_the_synthetic_set():
    """--weights ssa on three samples of the embedded synthetic set, two per batch: the keys,
    the per-sample means of the engine's own "neurobench" objects, and its predictions."""
    from neurobench.metrics.workload import ClassificationAccuracy

    from eventformer.datasets import open_dataset
    from eventformer.events import Recording
    from eventformer.inference import classify
    from eventformer.modelfile import load
    from eventformer.models import engine_for
    from eventformer.neurobench_metrics import mean_per_sample
    from eventformer.weights import shipped_model_path

    engine = engine_for(load(shipped_model_path("ssa")), dtype="float32")
    data = open_dataset("synthetic-gesture", None, "test", synthetic_fallback=True)
    size, frames, labels, objects, correct = engine.config.image_size, [], [], [], 0
    for ref, events in data.iter_events(3):
        rec = Recording(path=ref.name, format=data.layout, events=events,
                        sensor_size=data.sensor_size)
        result = classify(engine, rec, keep_frames=True, neurobench=True)
        dense = np.zeros((len(result.frames), size * size * 2), np.float32)
        for t, (idx, cnt) in enumerate(result.frames):
            dense[t, idx] = cnt
        frames.append(dense.reshape(-1, size, size, 2).transpose(0, 3, 1, 2))  # T, C, H, W
        labels.append(ref.label)
        objects.append(result.neurobench)
        correct += result.prediction == ref.label
    out = _benchmark_engine(engine, np.stack(frames), labels, batch_size=2,
                            extra=[ClassificationAccuracy])
    assert set(out) == set(METRICS) | {"ClassificationAccuracy"}
    mean = mean_per_sample(objects)
    assert out["SynapticOperations"] == mean["SynapticOperations"]
    assert out["SynapticOperations"]["Dense"] > out["SynapticOperations"]["Effective_ACs"] > 0
    assert out["MembraneUpdates"] == mean["MembraneUpdates"]
    assert out["ActivationSparsity"] == pytest.approx(mean["ActivationSparsity"], rel=1e-12)
    for key in ("Footprint", "ConnectionSparsity", "ParameterCount"):
        assert out[key] == mean[key]
    assert out["ClassificationAccuracy"] == pytest.approx(correct / 3)


def test_without_neurobench_the_wrapper_says_how_to_install(monkeypatch):
    import importlib
    import sys

    from eventformer.errors import EventformerError

    monkeypatch.setitem(sys.modules, "neurobench.models", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "eventformer.neurobench_model", raising=False)
    with pytest.raises(EventformerError, match=r"pip install 'eventformer\[neurobench\]'"):
        importlib.import_module("eventformer.neurobench_model")
