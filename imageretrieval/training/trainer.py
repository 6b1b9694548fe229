"""The training loop: optimizer + warmup/cosine schedule, early stopping on a validation score, best and
last checkpoints (resume), CSV log, curves. Recipes supply what a step and a validation mean."""

from __future__ import annotations

import csv
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..device import autocast
from ..io_utils import atomic_write, save_json
from .plots import plot_curves

log = logging.getLogger(__name__)

LAST, BEST, LOG = "last.pt", "best.pt", "log.csv"


@dataclass
class TrainOptions:
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # adamw | sgd
    schedule: str = "cosine"  # cosine | constant (both after a linear warmup)
    warmup_epochs: float = 0.5
    patience: int = 3
    min_delta: float = 1e-4
    grad_clip: float | None = 5.0
    seed: int = 42
    time_budget: float | None = None  # seconds: plan (and anneal) only as many epochs as fit into it


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(groups: list[dict], opts: TrainOptions) -> torch.optim.Optimizer:
    if opts.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=opts.lr, momentum=0.9, weight_decay=opts.weight_decay, nesterov=True)
    if opts.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=opts.lr, weight_decay=opts.weight_decay)
    raise ValueError(f"unknown optimizer {opts.optimizer!r}; choose adamw or sgd")


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warmup, then cosine decay to 1% (or constant)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = (step - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


StepFn = Callable[[object], tuple[torch.Tensor, int, int]]  # batch -> (loss, n_correct, n)


class Trainer:
    """Trains `state` (every module whose weights are learned or checkpointed) with `step`, selects on `validate`."""

    def __init__(self, state: nn.Module, groups: list[dict], opts: TrainOptions, out_dir: Path,
                 step: StepFn, validate: Callable[[], dict], set_train: Callable[[], None],
                 steps_per_epoch: int, device: torch.device, precision: str = "fp32"):
        self.state, self.opts, self.out_dir = state, opts, Path(out_dir)
        self.step, self.validate, self.set_train = step, validate, set_train
        self.device, self.precision = device, precision
        self.optimizer = make_optimizer(groups, opts)
        self.planned_epochs = opts.epochs  # lowered by a time budget, so the schedule still anneals
        warmup = int(opts.warmup_epochs * steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.planned_epochs * steps_per_epoch, warmup, opts.schedule))
        self.epoch, self.best_score, self.best_epoch, self.bad_epochs = 0, -math.inf, -1, 0
        self.out_dir.mkdir(parents=True, exist_ok=True)

    # ----- checkpoints ---------------------------------------------------------------------
    def _save(self, name: str, full: bool) -> None:
        blob = {"state": {k: v.detach().cpu() for k, v in self.state.state_dict().items()}, "epoch": self.epoch}
        if full:
            blob.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                        best_score=self.best_score, best_epoch=self.best_epoch, bad_epochs=self.bad_epochs,
                        planned_epochs=self.planned_epochs, rng=torch.get_rng_state(), options=asdict(self.opts))
        atomic_write(self.out_dir / name, lambda p: torch.save(blob, p))

    def resume(self) -> bool:
        path = self.out_dir / LAST
        if not path.is_file():
            return False
        blob = torch.load(path, map_location="cpu", weights_only=False)
        self.state.load_state_dict(blob["state"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        self.epoch, self.best_score = blob["epoch"], blob["best_score"]
        self.best_epoch, self.bad_epochs = blob["best_epoch"], blob["bad_epochs"]
        if blob.get("options", {}).get("epochs") == self.opts.epochs:  # same request: keep its budgeted plan
            self.planned_epochs = min(self.opts.epochs, blob.get("planned_epochs", self.opts.epochs))
        torch.set_rng_state(blob["rng"])
        log.info("resumed %s at epoch %d (best %.4f at epoch %d)", path, self.epoch, self.best_score, self.best_epoch)
        return True

    def load_best(self) -> None:
        self.state.load_state_dict(torch.load(self.out_dir / BEST, map_location="cpu", weights_only=True)["state"])

    # ----- loop ----------------------------------------------------------------------------------
    def _log_row(self, row: dict) -> None:
        path = self.out_dir / LOG
        rows = []
        if path.is_file():
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) < row["epoch"]]
        rows.append(row)
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    def _plan(self, started: float, last_epoch_seconds: float) -> None:
        """With a time budget, plan as many epochs as the latest epoch's duration leaves room for.

        Re-planned after every epoch from the latest one (the first carries start-up costs: worker
        start, cuDNN autotuning), so the plan can grow again after it. The cosine schedule is defined
        over the planned epochs, so a budgeted run still ends annealed instead of being cut off.
        """
        budget = self.opts.time_budget
        if not budget:
            return
        left = budget - (time.perf_counter() - started)
        planned = max(self.epoch, min(self.opts.epochs, self.epoch + int(left // max(last_epoch_seconds, 1e-6))))
        if planned != self.planned_epochs:
            log.info("time budget %.0f s: %d epochs planned (%.1f s per epoch, %.0f s left)",
                     budget, planned, last_epoch_seconds, left)
            self.planned_epochs = planned

    def fit(self, batches: Callable[[int], Iterable], progress: bool = True) -> dict:
        """Run epochs `self.epoch+1 .. planned`; stops early after `patience` epochs without progress."""
        started = time.perf_counter()
        while self.epoch < self.planned_epochs and self.bad_epochs < self.opts.patience:
            epoch = self.epoch + 1
            t0 = time.perf_counter()
            self.set_train()
            total_loss = correct = seen = 0.0
            items = batches(epoch)
            bar = tqdm(items, desc=f"epoch {epoch}/{self.planned_epochs}", unit="batch", disable=not progress,
                       leave=False)
            for batch in bar:
                with autocast(self.device, self.precision):
                    loss, n_correct, n = self.step(batch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.opts.grad_clip:
                    torch.nn.utils.clip_grad_norm_(
                        [p for g in self.optimizer.param_groups for p in g["params"]], self.opts.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                total_loss += float(loss.detach()) * n
                correct += n_correct
                seen += n
                bar.set_postfix(loss=f"{total_loss / max(seen, 1):.4f}")
            bar.close()
            val = self.validate()
            self.epoch = epoch
            score = float(val["score"])
            improved = score > self.best_score + self.opts.min_delta
            if improved:
                self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
                self._save(BEST, full=False)
            else:
                self.bad_epochs += 1
            row = {"epoch": epoch, "train_loss": round(total_loss / max(seen, 1), 5),
                   "train_acc": round(correct / max(seen, 1), 4), "lr": self.scheduler.get_last_lr()[0],
                   **{f"val_{k}": round(float(v), 5) for k, v in val.items() if k != "score"},
                   "val_score": round(score, 5), "seconds": round(time.perf_counter() - t0, 1)}
            self._log_row(row)
            self._save(LAST, full=True)
            log.info("epoch %d: %s%s", epoch, {k: v for k, v in row.items() if k != "epoch"},
                     " (best)" if improved else "")
            self._plan(started, time.perf_counter() - t0)
        plot_curves(self.out_dir / LOG, self.out_dir / "curves.png")
        summary = {"epochs_run": self.epoch, "planned_epochs": self.planned_epochs, "best_epoch": self.best_epoch,
                   "best_val_score": self.best_score,
                   "stopped_early": self.bad_epochs >= self.opts.patience and self.epoch < self.planned_epochs}
        save_json(self.out_dir / "summary.json", summary)
        return summary
