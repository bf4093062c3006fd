"""Run cogvid-train's `run_train` with Lightning's DeepSpeed strategy on the CPU (test only; start it with torchrun,
or as the tests do, with conftest.run_ranks).

Lightning's DeepSpeedStrategy refuses a non-CUDA accelerator and hands DeepSpeed the device index (None on the CPU);
DeepSpeed itself runs on the CPU over gloo. This subclass lifts exactly those two checks.

DeepSpeed's CPU accelerator JIT-compiles two C++ ops with torch's extension headers, minutes of a 2-core machine:
`deepspeed_shm_comm` (a shared-memory all-reduce it prefers to gloo's) and, for the offloaded optimizer,
`cpu_adam` (DeepSpeedCPUAdam's update kernel). `use_uncompiled_ops` replaces both before DeepSpeed starts: the
collectives stay on gloo (the path GPU runs take through torch.distributed), and DeepSpeedCPUAdam keeps its Python
class, states and checkpoint layout but does its update with `TorchCPUAdamOp`, the kernel's AdamW in torch ops.
COGVID_TEST_COMPILED_DS_OPS=1 keeps DeepSpeed's compiled ops instead.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch
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


class TorchCPUAdamOp:
    """The `cpu_adam` op's interface as DeepSpeedCPUAdam calls it, with the C++ kernel's arithmetic (Adam_Optimizer::
    Step_1: the moments, then sqrt(v) / sqrt(1 - beta2^t) + eps, decoupled weight decay in AdamW mode)."""

    def __init__(self):
        self.adamw_mode: dict[int, bool] = {}

    def create_adam(self, opt_id, lr, beta1, beta2, eps, weight_decay, adamw_mode, should_log) -> int:
        self.adamw_mode[opt_id] = bool(adamw_mode)
        return 0

    def destroy_adam(self, opt_id) -> int:
        self.adamw_mode.pop(opt_id, None)
        return 0

    @torch.no_grad()
    def adam_update(
        self, opt_id, step, lr, beta1, beta2, eps, weight_decay, bias_correction, params, grads, exp_avg, exp_avg_sq
    ) -> int:
        grad = grads.float()
        param = params.float()
        if weight_decay > 0 and not self.adamw_mode[opt_id]:
            grad = grad + weight_decay * param
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        correction1 = 1 - beta1**step if bias_correction else 1.0
        correction2 = 1 - beta2**step if bias_correction else 1.0
        denom = exp_avg_sq.float().sqrt().div_(math.sqrt(correction2)).add_(eps)
        if weight_decay > 0 and self.adamw_mode[opt_id]:
            param = param * (1 - lr * weight_decay)
        params.copy_(param.addcdiv(exp_avg.float(), denom, value=-lr / correction1))
        return 0

    def adam_rollback(self, *args) -> int:
        raise NotImplementedError("TorchCPUAdamOp: DeepSpeed rolls a step back only for ZenFlow / overflow retries")


class _TorchCPUAdamBuilder:
    """Stands in for deepspeed's CPUAdamBuilder inside deepspeed.ops.adam.cpu_adam: load() compiles nothing."""

    _op = TorchCPUAdamOp()

    def load(self, verbose: bool = True) -> TorchCPUAdamOp:
        return self._op


def use_uncompiled_ops(patch=setattr) -> None:
    """No JIT-compiled DeepSpeed op in this process: gloo collectives, and TorchCPUAdamOp under DeepSpeedCPUAdam.
    A test passes pytest's `monkeypatch.setattr` to undo it afterwards."""
    import importlib

    # by module name: the attribute deepspeed.comm.torch is the torch package (deepspeed.comm imports it)
    backend = importlib.import_module("deepspeed.comm.torch")
    patch(backend, "build_shm_op", lambda: None)  # TorchBackend then sends every collective through gloo
    patch(importlib.import_module("deepspeed.ops.adam.cpu_adam"), "CPUAdamBuilder", _TorchCPUAdamBuilder)


if __name__ == "__main__":
    from cogvid.cli.common import run_reporting_errors
    from cogvid.config.compose import compose
    from cogvid.training.run import run_train

    if os.environ.get("COGVID_TEST_COMPILED_DS_OPS") != "1":
        use_uncompiled_ops()
    cfg = compose(sys.argv[1:], config_name="train")
    run_reporting_errors("deepspeed_cpu", lambda: run_train(cfg, deepspeed_strategy_class=CPUDeepSpeedStrategy))
