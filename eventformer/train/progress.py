"""What a training display shows, followed from the loop's progress events.

The loop reports ``{"kind": "start" | "batch" | "epoch", ...}`` (see :func:`loop.train`); this
state turns them into the bar's description, position and length, and one summary line per
finished epoch, so a front end (the CLI's rich bar, a log) only renders.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainingProgress:
    epochs: int = 0
    batches: int = 0
    epoch: int = 0  # 0-based epoch under way
    batch: int = 0  # batches done in it
    loss: float | None = None

    def update(self, info: dict) -> str | None:
        """Take one progress event; returns the summary line when an epoch has finished."""
        kind = info["kind"]
        if kind == "start":
            self.epochs, self.batches = info["epochs"], info["batches"]
            self.epoch, self.batch, self.loss = info["epoch"], info["batch"], None
            return None
        if kind == "batch":
            self.epoch, self.batch, self.loss = info["epoch"], info["batch"], info["loss"]
            return None
        if kind != "epoch":
            raise ValueError(f"unknown progress event {kind!r}")
        done = info["epoch"]  # 1-based: the epoch that just finished
        self.epoch, self.batch, self.loss = done, 0, None
        val = info.get("val_accuracy")
        return (f"epoch {done}/{self.epochs}: train loss {info['train_loss']:.4f} "
                f"acc {info['train_accuracy']:.1%}, val acc "
                f"{'-' if val is None else f'{val:.1%}'} ({info['seconds']:.1f} s, "
                f"{info['samples']} samples)")

    @property
    def finished(self) -> bool:
        return self.epochs > 0 and self.epoch >= self.epochs

    @property
    def description(self) -> str:
        text = f"epoch {min(self.epoch + 1, self.epochs)}/{self.epochs}"
        return text if self.loss is None else f"{text} loss {self.loss:.3f}"
