"""`make shapes-model`: the shapes model from nothing, with fixed seeds, in stages on the CPU.

    data        scripts/make_shapes_dataset.py       OUT/data       (videos/, labels/, dataset.json)
    t5          cogvid.shapes.text_encoder           OUT/t5         (word-level sentencepiece + random small T5)
    vae_data    cogvid.shapes.dataset                OUT/vae-data   (clips of every colour and shape, reserved too)
    vae         cogvid-train model=shapes task=vae   OUT/vae        (vae/3d-vae.pt, vae_eval.json: held-out PSNR)
    precompute  cogvid-train ... task=precompute     OUT/cache      (VAE posteriors + T5 embeddings per clip)
    dit         cogvid-train model=shapes mode=sft   OUT/dit        (from no checkpoint; sat/<step>/...)
    vae_refine  cogvid-train model=shapes task=vae   OUT/vae-refine (the VAE on from `vae`, with the edge term)
    precompute_refine  task=precompute               OUT/cache-refine  (the same clips through the refined VAE)
    dit_refine  cogvid-train model=shapes mode=sft   OUT/dit-refine (the DiT on from `dit`, on those latents)
    ship        the weights, in fp16, into cogvid/weights/shapes/ and the VAE's scale factor into
                conf/model/shapes.yaml (the refined VAE and DiT); cogvid/weights/shapes/recipe.json records every
                stage's time and result

Each stage prints its progress bar and its time; `OUT/recipe.json` records a finished stage, and a rerun skips it
(`--redo STAGE` runs it and every stage after it again). The settings below are the recipe: change them here.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cogvid.config.compose import compose, package_path
from cogvid.training.resume import SAT_DIR
from cogvid.training.vae_module import EVAL_FILE, VAE_CKPT
from cogvid.utils.errors import CogvidError
from cogvid.utils.files import staged_folder, write_atomic
from cogvid.utils.user_files import read_json

log = logging.getLogger(__name__)

STAGES = ("data", "t5", "vae_data", "vae", "precompute", "dit", "vae_refine", "precompute_refine", "dit_refine", "ship")
NUM_CLIPS = 3000
DATA_SEED = 0
# How the DiT's clips are laid out (cogvid.shapes.dataset.Placement). "fixed": the caption fixes everything but the
# background (a centred path, one speed, one size unless the caption says small or large). Drawn "anywhere", the DiT
# drew every shape as one blob (balanced shape accuracy at chance); "centred" (small jitter) made it read the shape
# word but still drew blobs after 3000 steps; "fixed" with 6000 steps drew the shape in 67-75 %, and 83-89 % after
# the refine stages below (docs/shapes.md).
DATA_PLACEMENT = "fixed"
T5_SEED = 0
# The VAE's own clips: every colour and shape the renderer draws, the reserved words (cyan, ring) included. A VAE
# trained on the base clips alone never saw cyan, and decoded it 12 dB off on the shape's pixels, read as blue: no
# LoRA on the DiT could then draw it.
VAE_DATA_SEED = 2
# The VAE: 2000 steps of 2 clips in fp32 (~1.4 s a step on 2 cores), MSE + 1e-6 KL, the shape's pixels weighted 11x
# against the background's. Measured on the held-out clips (foreground PSNR: the shape's pixels only), 300 steps:
#   L1, bf16-mixed: 20 dB overall, foreground 11 dB (the shape is lost: the VAE keeps only the background)
#   MSE, fp32, train.vae.foreground_weight=10: foreground 15 dB and rising (the shape kept, its colour right)
# (bf16 autocast also stalls: GroupNorm at one channel per group amplifies bf16 rounding on flat frames.)
VAE = [
    "task=vae",
    "train.precision=32",
    "train.max_steps=1200",
    "train.batch_size=2",
    "train.lr=1e-3",
    "train.warmup_steps=50",
    "train.gradient_clip=5.0",
    "train.checkpoint_every=400",
    "train.log_every=50",
    "train.seed=0",
    "train.vae.loss=mse",
    "train.vae.foreground_weight=10",
]
# The DiT from scratch on cached latents: SAT's v-prediction loss, caption dropout 0.1 (for guidance); 6000 steps of
# 16 (~0.67 s a step on 2 cores). The shipped weights are the EMA of the trained ones (decay 0.999: about the last
# 1000 steps). At 4000 steps its samples were still blobs (balanced shape accuracy 33 %).
DIT = [
    "mode=sft",
    "model.ckpt=null",  # from no checkpoint (model=shapes names the shipped weights)
    "model.checkpoint_activations=false",
    "train.precision=32",
    "train.max_steps=6000",
    "train.batch_size=16",
    "train.lr=5e-4",
    "train.warmup_steps=200",
    "train.weight_decay=0.01",
    "train.gradient_clip=1.0",
    "train.checkpoint_every=1000",
    "train.keep_last=1",
    "train.log_every=100",
    "train.seed=0",
    "train.ema_decay=0.999",
    "train.sat_weights=ema",
]
# Then the VAE again, 1000 steps from `vae` with the edge term (train.vae.edge_weight=1: a blurred or shifted edge
# costs as much as a wrong colour): its reconstructions of the benchmark's clips keep the shape class in 100 / 91.7 %
# (balanced, held-out / seen) against 80.6 / 75.0 % before, at 25.0 dB (23.6 before). The DiT then goes on from
# `dit` on the refined VAE's latents (its own scale factor), 2000 steps at a lower learning rate.


def with_overrides(base: list[str], *new: str) -> list[str]:
    """`base`'s key=value overrides with `new`'s in place of those of the same keys (Hydra takes a key once)."""
    keys = {override.split("=", 1)[0] for override in new}
    return [override for override in base if override.split("=", 1)[0] not in keys] + list(new)


VAE_REFINE = with_overrides(
    VAE, "train.max_steps=1000", "train.warmup_steps=20", "train.checkpoint_every=250", "train.vae.edge_weight=1"
)
DIT_REFINE = with_overrides(DIT, "train.max_steps=2000", "train.lr=2e-4", "train.warmup_steps=50")
WEIGHTS = "weights/shapes"  # under the cogvid package; conf/model/shapes.yaml points here
SHIP_DTYPE = torch.float16  # halves the files; the model runs in fp32 (tensors are widened on load)


def shipped_dir() -> Path:
    return Path(package_path(WEIGHTS))


def model_config_file() -> Path:
    from cogvid.config.compose import conf_dir

    return conf_dir() / "model" / "shapes.yaml"


@dataclass
class RecipeSettings:
    """What the recipe makes and where it ships it (the defaults are `make shapes-model`; tests shrink them)."""

    num_clips: int = NUM_CLIPS
    vae: list[str] = field(default_factory=lambda: list(VAE))
    dit: list[str] = field(default_factory=lambda: list(DIT))
    vae_refine: list[str] = field(default_factory=lambda: list(VAE_REFINE))
    dit_refine: list[str] = field(default_factory=lambda: list(DIT_REFINE))
    model: list[str] = field(default_factory=list)  # extra model overrides for every stage (tests: smaller sizes)
    ship_dir: Path = field(default_factory=shipped_dir)
    model_config: Path = field(default_factory=model_config_file)


class WorkFolder:
    """A recipe's folder under its work folder OUT: `recipe.name` is OUT/<name>."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, recipe, owner=None):
        return self if recipe is None else recipe.out / self.name  # on the class: the descriptor itself


class Recipe:
    """The stages over one work folder; `OUT/recipe.json` holds each finished stage's time and result."""

    stages = STAGES

    def __init__(self, out: str | Path, workers: int = 2, settings: RecipeSettings | None = None):
        self.out = Path(out).expanduser()
        self.workers = workers
        self.settings = settings or RecipeSettings()
        self.record_file = self.out / "recipe.json"
        self.record: dict = read_json(self.record_file) if self.record_file.is_file() else {}

    # --- paths (folders under OUT) ------------------------------------------------------------------------------

    data = WorkFolder("data")
    t5 = WorkFolder("t5")
    vae_data = WorkFolder("vae-data")
    vae_dir = WorkFolder("vae")
    cache = WorkFolder("cache")
    dit_dir = WorkFolder("dit")
    vae_refine_dir = WorkFolder("vae-refine")
    cache_refine = WorkFolder("cache-refine")
    dit_refine_dir = WorkFolder("dit-refine")

    def scale_factor(self, vae_dir: Path) -> float:
        """1 / std of a trained VAE's posterior means on held-out clips (LDM's and SAT's rule); `vae_dir`: the VAE
        run's folder."""
        return float(self.vae_report(vae_dir)["scale_factor_estimate"])

    def shipped_record_file(self) -> Path:
        return self.settings.ship_dir / "recipe.json"

    def vae_report(self, vae_dir: Path) -> dict:
        return read_json(vae_dir / EVAL_FILE)

    def base_overrides(self) -> list[str]:
        """Every stage's: the model (and the settings' size overrides), in this process, on the CPU."""
        return ["model=shapes", *self.settings.model, "data.num_workers=0", "device=cpu"]

    def model_overrides(self, vae_dir: Path | None = None) -> list[str]:
        """The stages after the VAE's: the base plus a trained VAE (`vae_dir`'s, default the `vae` stage's), its
        scale factor and the T5."""
        vae_dir = vae_dir or self.vae_dir
        return [
            *self.base_overrides(),
            f"model.vae_ckpt={vae_dir / VAE_CKPT}",
            f"model.text_encoder.path={self.t5}",
            f"model.scale_factor={self.scale_factor(vae_dir):.8f}",
        ]

    # --- stages -------------------------------------------------------------------------------------------------

    def write_clips(self, folder: Path, seed: int, combinations=None, placement: str = "anywhere") -> None:
        """The settings' number of clips of `combinations` (None: the base's), from `seed`, into `folder` (replaced)."""
        from cogvid.shapes.dataset import write_dataset

        n = self.settings.num_clips
        write_dataset(
            folder, n, seed, overwrite=True, workers=self.workers, combinations=combinations, placement=placement
        )

    def stage_data(self) -> dict:
        self.write_clips(self.data, DATA_SEED, placement=DATA_PLACEMENT)
        return {"clips": self.settings.num_clips, "seed": DATA_SEED, "placement": DATA_PLACEMENT}

    def stage_t5(self) -> dict:
        from cogvid.shapes.text_encoder import build_shapes_t5

        shutil.rmtree(self.t5, ignore_errors=True)
        build_shapes_t5(self.t5, seed=T5_SEED)
        return {"seed": T5_SEED}

    def stage_vae_data(self) -> dict:
        from cogvid.shapes.dataset import pixel_combinations

        combinations = pixel_combinations()
        self.write_clips(self.vae_data, VAE_DATA_SEED, combinations)
        return {"clips": self.settings.num_clips, "seed": VAE_DATA_SEED, "combinations": len(combinations)}

    def stage_vae(self) -> dict:
        return self.train_vae(self.vae_dir, self.settings.vae)

    def stage_vae_refine(self) -> dict:
        init = f"train.vae.init={self.vae_dir / VAE_CKPT}"  # on from the vae stage's
        return self.train_vae(self.vae_refine_dir, with_overrides(self.settings.vae_refine, init))

    def train_vae(self, out_dir: Path, settings: list[str]) -> dict:
        """A task=vae run on the VAE's clips into `out_dir` (emptied first): its steps, held-out PSNR and scale."""
        from cogvid.training.run import run_train

        shutil.rmtree(out_dir, ignore_errors=True)
        paths = [f"data.root={self.vae_data}", f"train.output_dir={out_dir}"]
        result = run_train(compose([*self.base_overrides(), *paths, *settings], "train"))
        report = self.vae_report(out_dir)
        return {
            "steps": result.final_step,
            "holdout_psnr_db": round(result.psnr_db, 2),
            "holdout_clips": len(report["holdout_clips"]),
            "scale_factor": round(report["scale_factor_estimate"], 8),
        }

    def stage_precompute(self) -> dict:
        return self.precompute(self.cache, self.vae_dir)

    def stage_precompute_refine(self) -> dict:
        return self.precompute(self.cache_refine, self.vae_refine_dir)

    def precompute(self, cache: Path, vae_dir: Path) -> dict:
        """The DiT's clips through `vae_dir`'s VAE (and the T5) into `cache` (emptied first)."""
        from cogvid.training.run import run_train

        shutil.rmtree(cache, ignore_errors=True)
        overrides = [*self.model_overrides(vae_dir), "task=precompute", f"data.root={self.data}", f"data.cache={cache}"]
        run_train(compose(overrides, "train"))
        return {"samples": len(list((cache / "samples").glob("*.safetensors")))}

    def stage_dit(self) -> dict:
        return self.train_on_cache(self.dit_dir, self.settings.dit)

    def stage_dit_refine(self) -> dict:
        settings = with_overrides(self.settings.dit_refine, f"model.ckpt={self.dit_dir / SAT_DIR}")  # on from dit's
        return self.train_on_cache(self.dit_refine_dir, settings, self.cache_refine, self.vae_refine_dir)

    def train_on_cache(
        self, out_dir: Path, settings: list[str], cache: Path | None = None, vae_dir: Path | None = None
    ) -> dict:
        """A cogvid-train run of the model on cached latents (`cache`, default the `precompute` stage's, made by
        `vae_dir`'s VAE) into `out_dir` (emptied first); its steps and the mean loss of its last 200 steps."""
        from cogvid.training.metrics import read_train_log
        from cogvid.training.run import run_train

        shutil.rmtree(out_dir, ignore_errors=True)
        paths = [f"data.cache={cache or self.cache}", f"train.output_dir={out_dir}"]
        result = run_train(compose([*self.model_overrides(vae_dir), *settings, *paths], "train"))
        losses = [row["loss"] for row in read_train_log(result.output_dir).values()]
        tail = losses[-200:]
        return {"steps": result.final_step, "final_loss_mean_200": round(sum(tail) / len(tail), 5)}

    def stage_ship(self) -> dict:
        from cogvid.sat.checkpoint import (
            DIT_PREFIX,
            read_sat_state_dict,
            read_sat_vae_state_dict,
            save_sat_checkpoint,
            write_sat_model_states,
        )

        target = self.settings.ship_dir
        with staged_folder(target, overwrite=True) as staging:  # the old weights stay until the new ones are whole
            state, _ = read_sat_state_dict(self.dit_refine_dir / SAT_DIR)  # the refined DiT's latest checkpoint
            dit = {k.removeprefix(DIT_PREFIX): _ship(v) for k, v in state.items()}
            steps = self.record["dit"]["steps"] + self.record["dit_refine"]["steps"]
            save_sat_checkpoint(dit, staging / "transformer", iteration=steps)
            vae = {k: _ship(v) for k, v in read_sat_vae_state_dict(self.vae_refine_dir / VAE_CKPT).items()}
            write_sat_model_states(staging / "vae" / "3d-vae.pt", vae, wrapper="state_dict", desc="vae")
            shutil.copytree(self.t5, staging / "t5")
            scale = self.scale_factor(self.vae_refine_dir)
            set_scale_factor(self.settings.model_config, scale)
        sizes = {p.relative_to(target).as_posix(): p.stat().st_size for p in sorted(target.rglob("*")) if p.is_file()}
        return {"scale_factor": round(scale, 8), "files": sizes, "total_mb": round(sum(sizes.values()) / 1e6, 2)}

    # --- running ------------------------------------------------------------------------------------------------

    def run(self, redo: str | None = None, until: str | None = None) -> dict:
        if redo is not None and redo not in self.stages:
            raise CogvidError(f"--redo {redo}: expected one of {', '.join(self.stages)}")
        self.out.mkdir(parents=True, exist_ok=True)
        stale = False
        for name in self.stages:
            stale = stale or name == redo
            if name in self.record and not stale:
                log.info("stage %s: done before (%.0f s), skipped", name, self.record[name]["seconds"])
            else:
                stale = True  # a stage run again makes every later stage stale
                self._run_stage(name, getattr(self, f"stage_{name}"))
            if name == until:
                break
        total = sum(v["seconds"] for k, v in self.record.items() if k in self.stages)
        done = [f"{k} {self.record[k]['seconds']:.0f} s" for k in self.stages if k in self.record]
        log.info("%s: %s", type(self).__name__, ", ".join(done))
        log.info("total %.1f min", total / 60)
        return self.record

    def _run_stage(self, name: str, stage: Callable[[], dict]) -> None:
        log.info("stage %s ...", name)
        start = time.perf_counter()
        result = stage()
        seconds = time.perf_counter() - start
        self.record[name] = {"seconds": round(seconds, 1), **result}
        for later in self.stages[self.stages.index(name) + 1 :]:
            self.record.pop(later, None)
        text = json.dumps(self.record, indent=2).encode()
        write_atomic(self.record_file, lambda f: f.write(text))
        if name == "ship":  # the shipped weights carry their own recipe record
            write_atomic(self.shipped_record_file(), lambda f: f.write(text))
        log.info("stage %s: %.0f s (%s)", name, seconds, json.dumps(result)[:200])


def _ship(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(SHIP_DTYPE) if tensor.is_floating_point() else tensor


def set_scale_factor(config_file: Path, scale: float) -> None:
    """Rewrite the `scale_factor:` line of a model config (its comment kept)."""
    text = config_file.read_text()
    new, count = re.subn(r"^scale_factor: [0-9.eE+-]+", f"scale_factor: {scale:.8f}", text, flags=re.M)
    if count != 1:
        raise CogvidError(f"{config_file}: expected one `scale_factor:` line, found {count}")
    write_atomic(config_file, lambda f: f.write(new.encode()))
