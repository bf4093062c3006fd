"""Run cogvid-train's `run_train` with Lightning's DeepSpeed strategy on the CPU (test only; start it with torchrun).

Lightning's DeepSpeedStrategy refuses a non-CUDA accelerator and hands DeepSpeed the device index (None on the CPU);
DeepSpeed itself runs on the CPU over gloo. This subclass lifts exactly those two checks.
"""

from __future__ import annotations

import argparse
import sys

from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)  # skips DeepSpeedStrategy's "CUDA only" check

    def setup_distributed(self) -> None:
        from lightning.fabric.utilities.seed import reset_seed

        reset_seed()  # as DeepSpeedStrategy, without its device-index check (CPU devices have no index)
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        import deepspeed

        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank),  # Lightning passes root_device.index: None here
            config=self.config,
            model=model,
            model_parameters=filter(lambda p: p.requires_grad, model.parameters()),
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, ds_optimizer


if __name__ == "__main__":
    from cogvid.cli.common import run_reporting_errors
    from cogvid.config.compose import compose
    from cogvid.training.run import run_train

    cfg = compose(sys.argv[1:], config_name="train")
    run_reporting_errors("deepspeed_cpu", lambda: run_train(cfg, deepspeed_strategy_class=CPUDeepSpeedStrategy))
