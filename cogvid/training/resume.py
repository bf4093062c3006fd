"""Resumable checkpoints (atomic, last K kept, `train.resume=auto`) and SAT-layout weights of every checkpoint.

Layout under the run's output dir:

    checkpoints/step-00000500/state.ckpt      Lightning checkpoint: weights, optimizer, LR schedule, step, loops
                                               (a folder of shards under DeepSpeed)
    checkpoints/step-00000500/meta.json       written last: model, mode, strategy, world size, step, and the size and
                                               SHA-256 of every file of state.ckpt (checked before resuming)
    checkpoints/latest                        "step-00000500"
    sat/500/mp_rank_00_model_states.pt        SAT layout (`cogvid-sample model.ckpt=<out>/sat`); LoRA runs hold the
    sat/latest, sat/model_config.json         LoRA-structured dict (`.original.` + matrix_A/matrix_B); with
                                               train.sat_weights=ema the trainable weights are their EMA

A checkpoint is written into `checkpoints/.step-00000500.tmp/` and renamed into place only when every rank has
finished writing it; `meta.json` inside marks it complete. Resuming considers complete folders only, so a checkpoint
cut off while being written is never picked; one damaged later (truncated, changed) fails its size or hash, and
`train.resume=auto` falls back to the newest intact checkpoint with one warning line.

The data position and every random draw of a step are functions of the step (see `cogvid.training.data`), so the
step restored from `state.ckpt` is all a run needs to continue exactly; RNG states are saved too (Lightning) for
anything else that draws.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from cogvid.sat.checkpoint import save_sat_checkpoint
from cogvid.utils.errors import CogvidError
from cogvid.utils.files import publish_folder, write_atomic, writing
from cogvid.utils.user_files import read_json

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
SAT_DIR = "sat"
STATE = "state.ckpt"
META = "meta.json"
_STEP_DIR = re.compile(r"step-(\d{8})")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def run_signature(cfg, strategy: str, world_size: int) -> dict:
    """What a resumed run must share with the one that wrote the checkpoint (`strategy`: train.strategy's name)."""
    m = cfg.model
    return {
        "model": m.name,
        "hidden_size": m.hidden_size,
        "num_layers": m.num_layers,
        "in_channels": m.in_channels,
        "mode": cfg.mode.name,
        "lora_rank": m.lora_rank if cfg.mode.name == "lora" else 0,
        "strategy": strategy,
        "zero_stage": cfg.train.deepspeed.stage if strategy == "deepspeed" else None,
        "world_size": world_size,
    }


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under `root/checkpoints`, oldest first."""
    folder = root / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = []
    for d in folder.iterdir():
        match = _STEP_DIR.fullmatch(d.name)
        if match and d.is_dir() and (d / META).is_file() and (d / STATE).exists():
            found.append((int(match.group(1)), d))
    return sorted(found)


def state_files(step_dir: Path) -> dict[str, dict]:
    """{path under the step folder: {"size", "sha256"}} of every file of its state.ckpt (a file, or DeepSpeed's
    folder of shards)."""
    state = step_dir / STATE
    files = sorted(p for p in state.rglob("*") if p.is_file()) if state.is_dir() else [state]
    found = {}
    for f in files:
        digest = hashlib.sha256()
        with open(f, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 22), b""):  # noqa: B023
                digest.update(block)
        found[f.relative_to(step_dir).as_posix()] = {"size": f.stat().st_size, "sha256": digest.hexdigest()}
    return found


def damage(step_dir: Path) -> str | None:
    """Why a complete checkpoint cannot be resumed (its meta.json unreadable, a state file missing, cut off or
    changed since it was written), or None if it is intact. Checkpoints from before sizes and hashes were recorded
    are taken as they are."""
    try:
        recorded = read_json(step_dir / META).get("state_files")
    except CogvidError as ex:
        return f"{META} {str(ex).removeprefix(f'{step_dir / META} ')}"  # "meta.json is damaged: it is cut off (...)"
    if recorded is None:
        return None
    if not isinstance(recorded, dict) or not all(isinstance(w, dict) and "size" in w for w in recorded.values()):
        return f"{META} is damaged: its state_files is not a map of files to sizes and hashes"
    for name, want in recorded.items():
        f = step_dir / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != want["size"]:
            return f"{name} has {f.stat().st_size} bytes, {want['size']} were written"
    if state_files(step_dir) != recorded:
        return "a state file's SHA-256 differs from the one recorded when it was written"
    return None


def newest_intact(found: list[tuple[int, Path]], where: str) -> Path:
    """The newest intact checkpoint of `found` (oldest first); one warning line if newer ones are damaged, one error
    line if none is intact."""
    damaged = []
    for _, folder in reversed(found):
        reason = damage(folder)
        if reason is None:
            if damaged:
                log.warning(
                    "%s: %s damaged (%s); resuming from %s",
                    where,
                    ", ".join(d.name for d, _ in damaged),
                    damaged[0][1],
                    folder.name,
                )
            return folder
        damaged.append((folder, reason))
    raise CogvidError(f"{where}: no intact checkpoint; the newest, {damaged[0][0]}, is damaged ({damaged[0][1]})")


def resolve_resume(resume: str | None, out_dir: Path) -> Path | None:
    """The checkpoint folder to continue: None, `auto` (the latest complete one in out_dir, or None), or a path to a
    step folder, a `checkpoints/` folder or a run's output dir."""
    if not resume:
        return None
    if resume == "auto":
        found = complete_checkpoints(out_dir)
        if not found:
            log.info("train.resume=auto: no complete checkpoint in %s; starting from step 0", out_dir / CHECKPOINTS)
            return None
        return newest_intact(found, "train.resume=auto")
    path = Path(resume).expanduser()
    if not path.exists():
        raise CogvidError(f"train.resume={resume}: no such checkpoint")
    if (path / META).is_file() and (path / STATE).exists():
        reason = damage(path)
        if reason is not None:
            raise CogvidError(f"train.resume={resume} is damaged ({reason}); resume from an earlier checkpoint")
        return path
    if _STEP_DIR.fullmatch(path.name) and path.is_dir():
        raise CogvidError(f"train.resume={resume} is an incomplete checkpoint (no {META}): it was cut off while saving")
    for root in (path, path.parent):
        found = complete_checkpoints(root)
        if found:
            return newest_intact(found, f"train.resume={resume}")
    raise CogvidError(f"train.resume={resume} holds no complete checkpoint (expected {CHECKPOINTS}/step-*/{META})")


def check_resumable(step_dir: Path, signature: dict) -> int:
    """The checkpoint's step, after checking it was written by a run like this one (one line if not)."""
    meta = read_json(step_dir / META, "train.resume: ")
    theirs = meta.get("signature", {})
    if not isinstance(theirs, dict):
        raise CogvidError(f"train.resume: {step_dir / META} is damaged: its signature is not an object")
    keys = ("model", "hidden_size", "num_layers", "in_channels", "mode", "lora_rank")
    differ = [f"{k} {theirs.get(k)!r} (this run: {signature[k]!r})" for k in keys if theirs.get(k) != signature[k]]
    if differ:
        raise CogvidError(f"train.resume: {step_dir} is a checkpoint of another model or mode: {'; '.join(differ)}")
    if theirs.get("strategy") == "deepspeed" or signature["strategy"] == "deepspeed":
        sharded = ("strategy", "zero_stage", "world_size")
        differ = [
            f"{k} {theirs.get(k)!r} (this run: {signature[k]!r})" for k in sharded if theirs.get(k) != signature[k]
        ]
        if differ:
            raise CogvidError(
                f"train.resume: {step_dir} holds DeepSpeed shards of another layout: {'; '.join(differ)}; resume with "
                "the same strategy and process count"
            )
    elif theirs.get("world_size") != signature["world_size"]:
        log.warning(
            "resuming a %s-process checkpoint with %s processes: the data order differs from the original run",
            theirs.get("world_size"),
            signature["world_size"],
        )
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CogvidError(f"train.resume: {step_dir / META} is damaged: its step is {step!r}, not a step number")
    return step


# --- SAT-layout weights ---------------------------------------------------------------------------------------------


def full_state_dict(backbone: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The backbone's full weights on the CPU; ZeRO-3 partitions are gathered one parameter at a time (every rank must
    call this; all get the result)."""
    state = {}
    params = dict(backbone.named_parameters())
    for name, value in backbone.state_dict().items():
        p = params.get(name)
        if p is not None and hasattr(p, "ds_id"):  # a ZeRO-3 partitioned parameter
            import deepspeed

            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                value = p.data.detach().to("cpu", copy=True)
        else:
            value = value.detach().to("cpu", copy=True)
        state[name] = value.to(dtype) if dtype is not None and value.is_floating_point() else value
    return state


def consolidate_zero_checkpoint(state_path: Path) -> dict[str, torch.Tensor]:
    """The DiT's full fp32 weights (backbone keys) from a DeepSpeed checkpoint folder (`.../state.ckpt`)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(state_path), tag="checkpoint")
    out = {}
    for key, value in state.items():
        key = key.removeprefix("_forward_module.")
        if key.startswith("backbone."):
            out[key.removeprefix("backbone.")] = value
    return out


# --- the callback ---------------------------------------------------------------------------------------------------


class ResumableCheckpoints(Callback):
    """Every `every` optimizer steps and at the end: a resumable checkpoint + SAT weights, atomically; keeps `keep`.

    `sat_from_ema`: the SAT weights hold the EMA of the trainable weights (`pl_module.ema_state_dict()`) in place of
    the trained ones, under the same keys and in the same dtype."""

    def __init__(
        self,
        out_dir: Path,
        every: int,
        keep: int,
        signature: dict,
        sat_dtype: torch.dtype | None = None,
        sat_from_ema: bool = False,
    ):
        self.out_dir, self.every, self.keep = Path(out_dir), every, keep
        self.signature, self.sat_dtype, self.sat_from_ema = signature, sat_dtype, sat_from_ema
        self._last = -1
        self.saved: list[int] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = trainer.global_step  # a resumed run does not save its starting step again

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step != self._last and self.every > 0 and step % self.every == 0:
            self.save(trainer, pl_module, step)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self._last:
            self.save(trainer, pl_module, trainer.global_step)

    def save(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        self._last = step
        root = self.out_dir / CHECKPOINTS
        final = root / step_dir_name(step)
        tmp = root / f".{step_dir_name(step)}.tmp"
        if trainer.is_global_zero:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        trainer.strategy.barrier("cogvid-checkpoint-begin")
        try:
            with writing(final / STATE):  # a full disk is one line naming the file; older checkpoints stay as they are
                trainer.save_checkpoint(tmp / STATE, weights_only=False)  # the full training state
        except CogvidError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        state = full_state_dict(pl_module.backbone, self.sat_dtype)
        if self.sat_from_ema:
            for name, ema in pl_module.ema_state_dict().items():
                state[name] = ema.to(state[name].dtype)
        meta = {"step": step, "signature": self.signature, "sat_weights": "ema" if self.sat_from_ema else "trained"}
        if trainer.is_global_zero:  # `<out>/sat/<step>/...`, as `cogvid-sample model.ckpt=<out>/sat` reads it
            save_sat_checkpoint(
                state, self.out_dir / SAT_DIR, step, extra={"iteration": step, "cogvid": json.dumps(meta)}
            )
        del state
        trainer.strategy.barrier("cogvid-checkpoint-written")
        if trainer.is_global_zero:
            meta["state_files"] = state_files(tmp)  # every rank's shards are written: the barrier above
            write_atomic(tmp / META, lambda f: f.write(json.dumps(meta, indent=2).encode()))
            publish_folder(tmp, final)
            write_atomic(root / "latest", lambda f: f.write(final.name.encode()))
            self.prune()
            log.info("step %d: checkpoint %s, SAT weights %s", step, final, self.out_dir / SAT_DIR / str(step))
        trainer.strategy.barrier("cogvid-checkpoint-done")
        self.saved.append(step)

    def prune(self) -> None:
        """Keep the newest `keep` complete checkpoints (and their SAT weights); drop stale temp and set-aside ones."""
        found = complete_checkpoints(self.out_dir)
        for step, folder in found[: max(0, len(found) - self.keep)]:
            shutil.rmtree(folder, ignore_errors=True)
            shutil.rmtree(self.out_dir / SAT_DIR / str(step), ignore_errors=True)
        for stale in (self.out_dir / CHECKPOINTS).glob(".step-*"):
            shutil.rmtree(stale, ignore_errors=True)
