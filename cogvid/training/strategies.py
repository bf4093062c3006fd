"""How a run spreads over processes: Lightning strategy, precision, and the launch of one node's processes.

Launching. With `train.devices > 1` and no launcher around (no torchrun, no SLURM), `cogvid-train` starts ranks 1..N-1
of the node itself and is rank 0. Each child runs this same Hydra job through the command the caller names
(`relaunch`: cogvid-train passes its own): the job's own overrides (not the command line, which may hold `--multirun`
and a whole sweep) plus `hydra.run.dir=<this job's run dir>`, so every rank shares one run dir, and the children are
in their own OS session, ended if the job fails. After the job the torch.distributed process group (and DeepSpeed's
handle on it) is destroyed and the environment restored, so the next job of a sweep starts its own group on a fresh
port. This replaces Lightning's Hydra re-launch, which re-runs `sys.argv` (a sweep inside every child) and shares the
group between sweep jobs.
Under torchrun or SLURM the launcher already started every process; Lightning joins them.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from cogvid.utils.errors import CogvidError
from cogvid.utils.runtime import DTYPE_PRECISIONS, PRECISION_DTYPES, TORCH_DTYPES

log = logging.getLogger(__name__)

PRECISIONS = ("bf16-mixed", "16-mixed", "32")
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK")


def strategy_name(cfg) -> str:
    return str(getattr(cfg.train.strategy, "value", cfg.train.strategy))


def accelerator(cfg) -> str:
    if cfg.device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if cfg.device == "cpu":
        return "cpu"
    if cfg.device == "cuda":
        if not torch.cuda.is_available():
            raise CogvidError("device=cuda but torch sees no CUDA device here; use device=cpu")
        return "gpu"
    raise CogvidError(f"device={cfg.device}: training takes device=auto | cpu | cuda (GPUs by train.devices)")


def device_placement(cfg) -> tuple[str, str]:
    """(Lightning accelerator, precision) of a run: train.precision, or the model dtype's mixed precision on a GPU and
    32 on the CPU."""
    where = accelerator(cfg)
    p = cfg.train.precision
    if p is None:
        model_dtype = str(getattr(cfg.model.dtype, "value", cfg.model.dtype))
        return where, DTYPE_PRECISIONS[model_dtype] if where == "gpu" else "32"
    p = str(p)
    if p not in PRECISIONS:
        raise CogvidError(f"train.precision={p}: expected one of {', '.join(PRECISIONS)}")
    return where, p


def frozen_dtype(cfg, precision: str) -> torch.dtype:
    """The dtype the VAE and T5 run in while training: `dtype=`, else the training precision's. Precompute uses it
    too, so cached latents are the latents the same run would encode on the fly."""
    return TORCH_DTYPES[cfg.dtype] if cfg.dtype is not None else PRECISION_DTYPES[precision]


def deepspeed_config(cfg, precision: str) -> dict:
    """The DeepSpeed JSON config from train.deepspeed (SAT sft.yaml values) for a run in `precision`; Lightning adds
    batch size, precision and gradient clipping."""
    ds = cfg.train.deepspeed
    if ds.stage not in (2, 3):
        raise CogvidError(f"train.deepspeed.stage={ds.stage}: cogvid trains with ZeRO stage 2 or 3")
    zero = {
        "stage": ds.stage,
        "contiguous_gradients": ds.contiguous_gradients,
        "overlap_comm": ds.overlap_comm,
        "reduce_scatter": ds.reduce_scatter,
        "reduce_bucket_size": ds.reduce_bucket_size,
        "allgather_bucket_size": ds.allgather_bucket_size,
        "load_from_fp32_weights": ds.load_from_fp32_weights,
    }
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds.offload_parameters:
        if ds.stage != 3:
            raise CogvidError("train.deepspeed.offload_parameters needs train.deepspeed.stage=3")
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config = {"zero_optimization": zero, "zero_allow_untested_optimizer": True}
    if precision == "16-mixed":
        config["fp16"] = {
            "enabled": True,
            "loss_scale": 0,
            "loss_scale_window": ds.loss_scale_window,
            "hysteresis": ds.hysteresis,
            "min_loss_scale": ds.min_loss_scale,
        }
    return config


def build_strategy(name: str, backend: str | None, deepspeed: dict | None, deepspeed_strategy_class=None):
    """The Lightning strategy `name` (train.strategy) with the process group `backend`; `deepspeed`: the DeepSpeed
    config of `deepspeed_config`; `deepspeed_strategy_class` lets tests lift DeepSpeed's GPU check."""
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

    if name == "single":
        return "auto"
    if name == "ddp":
        return DDPStrategy(process_group_backend=backend)
    cls = deepspeed_strategy_class or DeepSpeedStrategy
    return cls(config=deepspeed, process_group_backend=backend)


def externally_launched() -> bool:
    """torchrun, SLURM or our own launcher already made the processes."""
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_NAME" in os.environ
    return "LOCAL_RANK" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ or slurm


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now: the rendezvous of the ranks a launcher starts on this node."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalWorkers:
    """Ranks 1..N-1 of this node, started by rank 0 (this process)."""

    procs: list[subprocess.Popen] = field(default_factory=list)
    saved_env: dict[str, str | None] = field(default_factory=dict)

    def finish(self, ok: bool) -> None:
        """Wait for the children (or end them when this rank failed), then restore the environment."""
        try:
            failed = []
            for rank, p in enumerate(self.procs, start=1):
                if not ok and p.poll() is None:
                    try:
                        os.killpg(p.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                code = p.wait()
                if code != 0:
                    failed.append(f"rank {rank} exited with {code}")
            if ok and failed:
                raise RuntimeError("; ".join(failed))
        finally:
            for key, value in self.saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def start_local_workers(
    cfg, processes: int, out_dir=None, relaunch: Sequence[str] | None = None
) -> LocalWorkers | None:
    """Start ranks 1..processes-1 of this node as children running this Hydra job; None when nothing to start.

    `out_dir`: the run's output dir, handed to the children as train.output_dir. `relaunch`: the command that runs
    the entry point of this job again (the child's Hydra overrides are appended to it); without it (or without a
    Hydra job around) nothing can start the children."""
    if processes <= 1 or externally_launched():
        return None
    if cfg.train.num_nodes > 1:
        raise CogvidError("train.num_nodes > 1: start every node's processes with torchrun or SLURM (see README)")
    from hydra.core.hydra_config import HydraConfig

    if relaunch is None or not HydraConfig.initialized():
        raise CogvidError(
            f"train.devices={processes} needs the cogvid-train command (or torchrun) to start the processes"
        )
    hydra_cfg = HydraConfig.get()
    run_dir = hydra_cfg.runtime.output_dir
    overrides = [o for o in hydra_cfg.overrides.task if not o.startswith("hydra.")]
    env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(processes),
        "NODE_RANK": "0",
    }
    workers = LocalWorkers(saved_env={k: os.environ.get(k) for k in _LAUNCH_ENV})
    for rank in range(1, processes):
        command = [
            *relaunch,
            *overrides,
            f"hydra.run.dir='{run_dir}'",
            *([f"train.output_dir='{out_dir}'"] if out_dir is not None else []),
            "hydra.output_subdir=null",
            f"hydra.job.name=cogvid-train-rank{rank}",
        ]
        child_env = {**os.environ, **env, "LOCAL_RANK": str(rank)}
        workers.procs.append(subprocess.Popen(command, env=child_env, start_new_session=True))
    os.environ.update(env | {"LOCAL_RANK": "0"})
    log.info("started ranks 1..%d of this node; all ranks write to %s", processes - 1, run_dir)
    return workers


def end_process_group() -> None:
    """Destroy torch.distributed's group and DeepSpeed's handle on it, so the next job in this process starts anew."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    try:
        import deepspeed.comm.comm as ds_comm
    except ImportError:  # pragma: no cover - deepspeed is a dependency
        return
    ds_comm.cdb = None
