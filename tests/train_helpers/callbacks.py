"""Test-only Lightning callbacks, given to cogvid-train through train.callbacks=[{_target_: ...}]."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    """SIGKILL this process at `step`: right after the step, or (`mid_save`) while its checkpoint is being written,
    leaving a half-written state file in the checkpoint's temporary folder."""

    def __init__(self, step: int, mid_save: bool = False):
        self.step, self.mid_save = step, mid_save

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.mid_save and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.mid_save and trainer.global_step == self.step:
            out = Path(trainer.default_root_dir)
            for tmp in (out / "checkpoints").glob(".step-*.tmp"):
                (tmp / "state.ckpt").write_bytes(b"PK\x03\x04" + os.urandom(4096))  # a cut-off zip
            os.kill(os.getpid(), signal.SIGKILL)


class RecordTrainable(Callback):
    """Copies of the trainable DiT weights when training starts and after every optimizer step (`weights[0]` is the
    start), to recompute an EMA by hand."""

    def __init__(self):
        self.weights: list[dict] = []

    def _record(self, pl_module) -> None:
        params = dict(pl_module.backbone.named_parameters())
        self.weights.append({name: params[name].detach().clone() for name in pl_module.trainable_names})

    def on_train_start(self, trainer, pl_module) -> None:
        self._record(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self._record(pl_module)
