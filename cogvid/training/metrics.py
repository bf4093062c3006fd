"""Per-step scalars: loss, learning rate, grad norm, samples/s, peak memory, skipped videos.

Written to TensorBoard every `train.log_every` steps and, for every step, as one JSON line in
`<out>/train_log.jsonl` (rank 0; a resumed run appends, so the last line for a step is the one that counts).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from cogvid.utils.runtime import peak_memory_gb

log = logging.getLogger(__name__)

TRAIN_LOG = "train_log.jsonl"


def read_train_log(out_dir: str | Path) -> dict[int, dict]:
    """step -> record of `train_log.jsonl`, the last record of a step winning (a resumed run repeats steps)."""
    records = {}
    path = Path(out_dir) / TRAIN_LOG
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                records[record["step"]] = record
    return records


class TrainMetrics(Callback):
    def __init__(self, out_dir: Path, log_every: int, samples_per_step: int):
        self.path = Path(out_dir) / TRAIN_LOG
        self.log_every, self.samples_per_step = max(1, log_every), samples_per_step
        self._step_start: float | None = None
        self._lr: float | None = None
        self._grad_norm: float | None = None
        self._skipped_total = 0
        self._seen_bad: set[str] = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._step_start is None:
            self._step_start = time.perf_counter()
            self._lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads:  # under DeepSpeed the gradients live in its partitions: read after the step instead
            self._grad_norm = float(torch.nn.utils.get_total_norm(grads, norm_type=2.0))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        for path, reason in pl_module.skipped:
            if path not in self._seen_bad:
                self._seen_bad.add(path)
                log.warning("rank %d: skipping unusable video %s (%s)", trainer.global_rank, path, reason)
        if not self._step_done(trainer, batch_idx):
            return
        step = trainer.global_step
        loss = torch.stack(pl_module.step_losses).mean()
        skipped = torch.tensor(float(len(pl_module.skipped)), device=loss.device)
        pl_module.step_losses.clear()
        pl_module.skipped.clear()
        # Collectives on every rank, every step.
        loss = float(trainer.strategy.reduce(loss, reduce_op="mean"))
        self._skipped_total += int(trainer.strategy.reduce(skipped, reduce_op="sum"))
        grad_norm = self._grad_norm
        engine = getattr(trainer.strategy, "deepspeed_engine", None)
        if engine is not None and grad_norm is None:
            norm = engine.get_global_grad_norm()
            grad_norm = None if norm is None else float(norm)
        seconds = time.perf_counter() - (self._step_start or time.perf_counter())
        record = {
            "step": step,
            "loss": loss,
            "lr": self._lr,
            "grad_norm": grad_norm,
            "samples_per_s": self.samples_per_step / seconds if seconds > 0 else None,
            "seconds": seconds,
            "peak_memory_gb": peak_memory_gb(pl_module.device),
            "skipped_videos": self._skipped_total,
        }
        self._step_start, self._grad_norm = None, None
        if not trainer.is_global_zero:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if step % self.log_every == 0 or step == 1:
            writer = getattr(trainer.logger, "experiment", None) if trainer.logger is not None else None
            if writer is not None:
                for key in ("loss", "lr", "grad_norm", "samples_per_s", "peak_memory_gb", "skipped_videos"):
                    if record[key] is not None:
                        writer.add_scalar(f"train/{key}", record[key], step)
                writer.flush()

    @staticmethod
    def _step_done(trainer: L.Trainer, batch_idx: int) -> bool:
        """Whether this micro-batch ended an optimizer step (gradient accumulation)."""
        return (batch_idx + 1) % trainer.accumulate_grad_batches == 0
