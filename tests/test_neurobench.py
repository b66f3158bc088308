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
