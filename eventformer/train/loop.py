"""The training loop: AdamW + cosine schedule, per-epoch validation, checkpoints, resume, export.

``train(config, train_data, val_data, ...)`` trains the numpy network of
:mod:`eventformer.train.model` (any layout it runs: Spikformer, the Spike-driven Transformer,
QKFormer) on :class:`eventformer.train.data.FrameSet` frames.

Checkpoints (``.npz``, written atomically) hold the parameters, the BatchNorm running statistics,
the AdamW moments and step counter, the random generator's state, the epoch and the position
inside it, the per-epoch history and the settings; they are written after every epoch and when
training is interrupted. Resuming from one continues bit for bit as the uninterrupted run would
(same settings; ``epochs`` may grow, which stretches the cosine schedule from then on).

Interruption: Ctrl-C (SIGINT, when training runs in the main thread) or ``should_stop()`` returning
True stops at the end of the current mini-batch, writes the checkpoint and raises
:class:`TrainingInterrupted`. A second Ctrl-C aborts at once (KeyboardInterrupt): the checkpoint of
the last finished epoch stays as it was. A NaN or infinite loss or gradient raises
:class:`TrainingDiverged` (an EventformerError) before anything is written, so the last good
checkpoint stays intact.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import CheckpointError, EventformerError
from ..models.config import SpikformerConfig
from . import model as M
from .data import FrameSet, batches
from .export import save_state_dict, to_model_file
from .optim import AdamW, CosineSchedule, no_decay_keys

__all__ = ["CHECKPOINT_VERSION", "TrainResult", "TrainingDiverged", "TrainingInterrupted",
           "check_output", "load_checkpoint", "model_config", "predict", "train"]

CHECKPOINT_VERSION = 1


class TrainingDiverged(EventformerError):
    """The loss or a gradient became NaN or infinite."""


class TrainingInterrupted(Exception):
    """Training stopped early (Ctrl-C or ``should_stop``); ``checkpoint`` is where it was saved
    (``saved`` False: nothing new was written, the last epoch's checkpoint, if any, stays)."""

    def __init__(self, checkpoint: str | None, epoch: int, batch: int, saved: bool):
        self.checkpoint, self.epoch, self.batch, self.saved = checkpoint, epoch, batch, saved
        where = f"epoch {epoch + 1}, after batch {batch}"
        if saved and checkpoint:
            msg = f"training interrupted at {where}; checkpoint saved to {checkpoint}"
        elif checkpoint:
            msg = (f"training aborted at {where}; the checkpoint {checkpoint} of the last "
                   "finished epoch is kept")
        else:
            msg = f"training interrupted at {where}; no checkpoint path was given, nothing saved"
        super().__init__(msg)


@dataclass
class TrainResult:
    params: dict[str, np.ndarray]
    state: dict[str, Any]
    config: SpikformerConfig
    history: list[dict] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    out_path: str | None = None

    @property
    def val_accuracy(self) -> float | None:
        return self.history[-1].get("val_accuracy") if self.history else None

    @property
    def train_accuracy(self) -> float | None:
        return self.history[-1].get("train_accuracy") if self.history else None


def predict(params, state, config: SpikformerConfig, data: FrameSet, batch: int = 32
            ) -> np.ndarray:
    """Eval-mode logits ``[N, classes]`` of every sample (running BN statistics, no shift)."""
    out = []
    for x, _ in batches(data, batch, dtype=params["head.weight"].dtype):
        logits, _ = M.forward(params, state, x, False, config)
        out.append(logits)
    return np.concatenate(out) if out else np.zeros((0, config.num_classes))


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def _save_checkpoint(path: str, *, params, state, opt: AdamW, meta: dict,
                     order: np.ndarray | None) -> None:
    arrays = {}
    for prefix, d in (("p/", params), ("s/", state), ("m/", opt.exp_avg), ("v/", opt.exp_avg_sq)):
        for k, v in d.items():
            arrays[prefix + k] = np.asarray(v)
    if order is not None:
        arrays["order"] = np.asarray(order, np.int64)
    arrays["meta"] = np.array(json.dumps(meta))
    path = str(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.partial"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def load_checkpoint(path) -> dict:
    """A checkpoint as ``{"params", "state", "exp_avg", "exp_avg_sq", "order", "meta"}``."""
    path = str(path)
    if not os.path.isfile(path):
        raise EventformerError(f"{path}: no such checkpoint")
    try:
        with np.load(path, allow_pickle=False) as z:
            files = {k: z[k] for k in z.files}
            meta = json.loads(str(files.pop("meta")))
    except Exception as exc:  # zip, json or key errors: one sentence
        raise EventformerError(f"{path}: not a training checkpoint ({type(exc).__name__})") \
            from None
    if meta.get("format") != "eventformer-train-checkpoint":
        raise EventformerError(f"{path}: not an eventformer training checkpoint")
    out: dict[str, Any] = {"params": {}, "state": {}, "exp_avg": {}, "exp_avg_sq": {},
                           "order": files.pop("order", None), "meta": meta}
    names = {"p/": "params", "s/": "state", "m/": "exp_avg", "v/": "exp_avg_sq"}
    for k, v in files.items():
        out[names[k[:2]]][k[2:]] = v
    for k, v in list(out["state"].items()):
        if k.endswith("num_batches_tracked"):
            out["state"][k] = int(v)
    return out


def _config_dict(cfg: SpikformerConfig) -> dict:
    return json.loads(json.dumps(cfg.to_dict()))


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


class _SigintFlag:
    """First Ctrl-C: set a flag (stop after the current batch); second: KeyboardInterrupt."""

    def __init__(self, enabled: bool):
        self.hit = False
        self.previous = None
        self.enabled = enabled and threading.current_thread() is threading.main_thread()

    def __enter__(self):
        if self.enabled:
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.hit:
            signal.signal(signal.SIGINT, self.previous or signal.default_int_handler)
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc):
        if self.enabled:
            signal.signal(signal.SIGINT, self.previous or signal.default_int_handler)
        return False


def _finite(loss, grads) -> bool:
    if not np.isfinite(loss):
        return False
    return all(np.isfinite(np.sum(g)) for g in grads.values())


def train(config: SpikformerConfig, train_data: FrameSet, val_data: FrameSet | None = None, *,
          epochs: int = 10, batch: int = 16, lr: float = 1e-3, weight_decay: float = 0.01,
          warmup_epochs: float = 1.0, seed: int = 0, label_smoothing: float = 0.1,
          max_shift: int = 2, out_path=None, checkpoint_path=None, resume=None,
          progress: Callable[[dict], None] | None = None,
          should_stop: Callable[[], bool] | None = None, metadata: dict | None = None,
          dtype=np.float32, handle_sigint: bool = True, taw: int | None = None,
          pool_rows: int | None = None, erode: int | None = None) -> TrainResult:
    """Train ``config`` on ``train_data``; see the module docstring for checkpoints/interrupts.

    ``resume``: a checkpoint path to continue from (True: ``checkpoint_path``). ``progress(info)``
    is called with ``info["kind"]`` ``"start"``, ``"batch"`` (epoch, batch, batches, loss, lr) and
    ``"epoch"`` (the epoch's history record: train_loss, train_accuracy, val_accuracy, seconds).
    ``metadata`` (JSON-able, e.g. ``{"command": ...}``) is merged into the model file's
    ``provenance["training"]``. ``config`` is any layout the trainer runs
    (:mod:`eventformer.train.model`: Spikformer with ``config.attention`` one of ssa, ds2ta,
    ssa_bin, saformer; the Spike-driven Transformer; QKFormer); ``taw`` (DS2TA's T_AW, default
    3), ``pool_rows`` (SAFormer's L, default 4) and ``erode`` (SDT's DVS-mode Erode, default 0)
    are options, refused for another operator.
    Returns a :class:`TrainResult`; writes to ``out_path`` when given: a model file (which names
    the operators and their parameters), or for a ``.npz`` path the official-layout state dict
    with its configuration and training record beside it
    (:func:`eventformer.train.export.save_state_dict`). A model file the builder cannot write
    for this layout is refused before training starts."""
    cfg = config
    if train_data.resolution != cfg.image_size or train_data.steps != cfg.steps:
        raise EventformerError(
            f"the training frames are {train_data.steps} steps of {train_data.resolution}x"
            f"{train_data.resolution}, the model takes {cfg.steps} of {cfg.image_size}x"
            f"{cfg.image_size}")
    if val_data is not None and (val_data.resolution, val_data.steps) != (cfg.image_size,
                                                                            cfg.steps):
        raise EventformerError("the validation frames do not match the model's input")
    if epochs < 1 or batch < 1:
        raise EventformerError(f"epochs and batch must be positive, got {epochs} and {batch}")
    n = len(train_data)
    if n < batch:
        raise EventformerError(f"the training set has {n} samples, fewer than one batch of "
                               f"{batch}; use a smaller --batch or more data")
    top = int(train_data.labels.max()) + 1
    if top > cfg.num_classes:
        raise EventformerError(f"labels go up to {top - 1} but the model has {cfg.num_classes} "
                               "classes")
    spe = (n + batch - 1) // batch
    dtype = np.dtype(dtype)
    hparams = {"batch": batch, "seed": seed, "lr": lr, "weight_decay": weight_decay,
               "warmup_epochs": warmup_epochs, "label_smoothing": label_smoothing,
               "max_shift": max_shift, "n_train": n, "dtype": dtype.name}

    params = M.init_params(cfg, seed, dtype)
    try:
        state = M.init_state(cfg, dtype, taw=taw, pool_rows=pool_rows, seed=seed, erode=erode)
    except ValueError as exc:
        raise EventformerError(str(exc)) from None
    hparams["attention"] = cfg.attention
    hparams.update(M.attention_options(state))
    check_output(cfg, out_path, params, state)
    opt = AdamW(params, lr=lr, weight_decay=weight_decay, no_decay=no_decay_keys(params))
    rng = np.random.default_rng(seed)
    start_epoch, start_batch, history = 0, 0, []
    acc = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
    order = None
    if resume is not None and resume is not False:
        rpath = checkpoint_path if resume is True else resume
        if rpath is None:
            raise EventformerError("resume=True needs a checkpoint_path")
        ck = load_checkpoint(rpath)
        meta = ck["meta"]
        if meta["config"] != _config_dict(cfg):
            raise EventformerError(f"{rpath}: the checkpoint is of another model configuration "
                                   "(model, resolution, steps or attention differ)")
        for key in ("batch", "seed", "n_train", "dtype", "taw", "pool_rows", "erode"):
            if meta["hparams"].get(key) != hparams.get(key):
                raise EventformerError(
                    f"{rpath}: the checkpoint was made with {key}={meta['hparams'].get(key)}, this "
                    f"run has {key}={hparams.get(key)}; resume with the same settings and data")
        for k in params:
            params[k][...] = ck["params"][k]
            opt.exp_avg[k][...] = ck["exp_avg"][k]
            opt.exp_avg_sq[k][...] = ck["exp_avg_sq"][k]
        for k in state:
            v = ck["state"][k]
            state[k] = v if isinstance(v, int) else np.array(v, dtype=np.asarray(state[k]).dtype)
        opt.t = int(meta["opt_t"])
        rng.bit_generator.state = meta["rng_state"]
        start_epoch, start_batch = int(meta["epoch"]), int(meta["batch"])
        history = list(meta["history"])
        acc = dict(meta["accumulators"])
        order = ck["order"] if start_batch else None
        if start_epoch >= epochs:
            raise EventformerError(f"{rpath}: the checkpoint has already done {start_epoch} "
                                   f"epochs; ask for more than that (--epochs)")

    total = epochs * spe
    warmup = min(int(round(warmup_epochs * spe)), total // 2)
    schedule = CosineSchedule(lr, total, warmup)

    last_saved: list[str | None] = [str(rpath) if resume not in (None, False) else None]

    def save(epoch, b, order_now):
        if checkpoint_path is None:
            return
        meta = {"format": "eventformer-train-checkpoint", "version": CHECKPOINT_VERSION,
                "config": _config_dict(cfg), "hparams": hparams, "epochs": epochs,
                "epoch": epoch, "batch": b, "opt_t": opt.t, "rng_state": rng.bit_generator.state,
                "history": history, "accumulators": acc}
        _save_checkpoint(checkpoint_path, params=params, state=state, opt=opt, meta=meta,
                         order=order_now if b else None)
        last_saved[0] = str(checkpoint_path)

    def emit(info):
        if progress is not None:
            progress(info)

    epoch, b = start_epoch, start_batch
    pos = (epoch, b)
    consistent = True
    with _SigintFlag(handle_sigint) as sig:
        try:
            emit({"kind": "start", "epochs": epochs, "batches": spe, "epoch": start_epoch,
                  "batch": start_batch, "samples": n})
            for epoch in range(start_epoch, epochs):
                if epoch != start_epoch or order is None:
                    consistent = False
                    order = rng.permutation(n)
                    b = 0
                    acc = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
                    # consistent again only after the first batch (the permutation is drawn)
                it = batches(train_data, batch, rng, max_shift, dtype, start=b, order=order)
                while b < spe:
                    t0 = time.perf_counter()
                    consistent = False
                    x, y = next(it)
                    step_lr = schedule(epoch * spe + b)
                    loss, grads, logits = M.loss_and_grads(params, state, x, y, cfg,
                                                           label_smoothing)
                    if not _finite(loss, grads):
                        kept = (f"the last good checkpoint {last_saved[0]} is kept"
                                if last_saved[0] else "no checkpoint had been written yet")
                        raise TrainingDiverged(
                            f"training diverged at epoch {epoch + 1}, batch {b + 1}: "
                            + (f"the loss is {float(loss)}" if not np.isfinite(loss) else
                               "a gradient holds NaN or infinite values")
                            + f" (learning rate {step_lr:.3g}); {kept} -- try a lower --lr")
                    opt.step(grads, lr=step_lr)
                    acc["loss_sum"] += float(loss) * len(y)
                    acc["correct"] += int(np.sum(np.argmax(logits, 1) == y))
                    acc["seen"] += len(y)
                    acc["seconds"] += time.perf_counter() - t0
                    b += 1
                    pos = (epoch, b)
                    consistent = True
                    emit({"kind": "batch", "epoch": epoch, "batch": b, "batches": spe,
                          "loss": float(loss), "lr": step_lr})
                    if b < spe and (sig.hit or (should_stop is not None and should_stop())):
                        save(epoch, b, order)
                        raise TrainingInterrupted(last_saved[0], epoch, b,
                                                  saved=checkpoint_path is not None)
                consistent = False
                record = {"epoch": epoch + 1,
                          "train_loss": acc["loss_sum"] / max(1, acc["seen"]),
                          "train_accuracy": acc["correct"] / max(1, acc["seen"]),
                          "seconds": acc["seconds"], "samples": acc["seen"],
                          "lr": schedule(min(total - 1, (epoch + 1) * spe - 1))}
                if val_data is not None and len(val_data):
                    t0 = time.perf_counter()
                    pred = np.argmax(predict(params, state, cfg, val_data, max(batch, 32)), 1)
                    record["val_accuracy"] = float(np.mean(pred == val_data.labels))
                    record["val_seconds"] = time.perf_counter() - t0
                history.append(record)
                order, b = None, 0
                acc = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
                save(epoch + 1, 0, None)
                pos = (epoch + 1, 0)
                consistent = True
                emit({"kind": "epoch", **record})
                if epoch + 1 < epochs and (sig.hit or (should_stop is not None
                                                       and should_stop())):
                    raise TrainingInterrupted(last_saved[0], epoch + 1, 0,
                                              saved=checkpoint_path is not None)
        except KeyboardInterrupt:
            if consistent:
                save(pos[0], pos[1], order)
                raise TrainingInterrupted(last_saved[0], pos[0], pos[1],
                                          saved=checkpoint_path is not None) from None
            raise TrainingInterrupted(last_saved[0], pos[0], pos[1], saved=False) from None

    meta = _training_metadata(cfg, train_data, val_data, epochs, hparams, history, metadata)
    result = TrainResult(params, state, cfg, history, meta)
    if out_path is not None:
        from ..modelfile import save as save_model

        # inference must frame the same clip the model was trained on
        saved_cfg = dataclasses.replace(cfg, clip_us=(train_data.info or {}).get("clip_us"))
        if Path(out_path).suffix == ".npz":
            save_state_dict(out_path, params, state, saved_cfg, meta)
        else:
            save_model(out_path, to_model_file(params, state, saved_cfg, meta))
        result.out_path = str(out_path)
    return result


def check_output(cfg: SpikformerConfig, out_path, params=None, state=None) -> None:
    """Refuse, before any training, a model file the builder cannot write for this layout (an
    EventformerError naming the way out: a ``.npz`` state dict). ``params`` / ``state``: the
    run's initial ones (default: fresh ones of ``cfg``)."""
    if out_path is None or Path(out_path).suffix == ".npz":
        return
    if params is None:
        try:
            params, state = M.init_params(cfg), M.init_state(cfg)
        except ValueError:  # options that do not fit the input: train() says so in its terms
            return
    try:
        to_model_file(params, state, cfg)
    except CheckpointError as exc:
        raise EventformerError(
            f"cannot write {out_path} as a model file ({exc}); write the trained state dict "
            "instead (an output ending in .npz)") from None


def _jsonable(x):
    return json.loads(json.dumps(x, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _training_metadata(cfg, train_data, val_data, epochs, hparams, history, extra) -> dict:
    last = history[-1] if history else {}
    meta = {
        "trainer": "eventformer.train (numpy, surrogate-gradient BPTT)",
        "data": train_data.info,
        "val_data": val_data.info if val_data is not None else None,
        "split_convention": (train_data.info or {}).get("convention"),
        "framing": {"steps": cfg.steps, "split_by": "number",
                    "resolution": cfg.image_size,
                    "clip_us": (train_data.info or {}).get("clip_us"),
                    "downsample": "x // f, y // f (eventformer.inference.downsample)"},
        "epochs": epochs,
        "train_loss": last.get("train_loss"),
        "train_accuracy": last.get("train_accuracy"),
        "val_accuracy": last.get("val_accuracy"),
        "seed": hparams["seed"],
        "optimizer": {"name": "AdamW", "lr": hparams["lr"],
                      "weight_decay": hparams["weight_decay"], "schedule": "cosine",
                      "warmup_epochs": hparams["warmup_epochs"], "batch": hparams["batch"]},
        "label_smoothing": hparams["label_smoothing"],
        "attention": {"operator": cfg.attention,
                      **{k: hparams[k] for k in ("taw", "pool_rows", "erode") if k in hparams}},
        "augmentation": {"shift_pixels": hparams["max_shift"], "flip": False},
        "history": history,
    }
    meta.update(extra or {})
    return _jsonable(meta)


def model_config(name: str, resolution: int, steps: int, num_classes: int = 11,
                 class_names: tuple[str, ...] = (), attention: str | None = None
                 ) -> SpikformerConfig:
    """A named trainer configuration (:data:`eventformer.train.model.MODEL_NAMES`) at another
    input size / steps; a Spikformer's attention operator ``attention`` (ssa, ds2ta, ssa_bin,
    saformer; None: ssa), a successor's is its layout's (another one is refused)."""
    extra = {} if attention is None else {"attention": attention}
    try:
        cfg = M.config_by_name(name, image_size=resolution, steps=steps, num_classes=num_classes,
                               split_by="number", **extra)
    except ValueError as exc:
        raise EventformerError(str(exc)) from None
    if class_names:
        cfg = dataclasses.replace(cfg, class_names=tuple(class_names))
    return cfg
