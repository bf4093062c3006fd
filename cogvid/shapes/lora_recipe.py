"""`make shapes-lora`: a LoRA that teaches the shipped shapes model a word it never learned, on the CPU in stages.

    data        cogvid.shapes.dataset          OUT/data    clips of the new word (cyan) mixed with base clips
    precompute  cogvid-train task=precompute   OUT/cache   the shipped VAE's posteriors + the shipped T5's embeddings
    lora        cogvid-train mode=lora         OUT/lora    adapters on every block's attention, from the shipped base
    ship        the adapters alone, in fp16, into cogvid/weights/shapes/lora-cyan/ (what `adapter=cyan` loads), with
                this recipe's record

The tokenizer of the base model already holds the word (`cogvid.shapes.text_encoder.reserved_captions`), and no
base training caption uses it, so the base model has its token and never learned what it means. Sampling with the
adapter: `cogvid-sample model=shapes adapter=cyan ...`, or `model.lora_ckpt=PATH model.lora_alpha=ALPHA` for any LoRA.
The stages are recorded in OUT/recipe.json and a rerun skips the finished ones, as `make shapes-model` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cogvid.sat.checkpoint import read_lora_adapters, save_sat_checkpoint
from cogvid.shapes.dataset import reserved_combinations, training_combinations
from cogvid.shapes.recipe import DATA_PLACEMENT, Recipe, RecipeSettings, WorkFolder, _ship, shipped_dir
from cogvid.training.resume import SAT_DIR
from cogvid.utils.files import staged_folder

LORA_STAGES = ("data", "precompute", "lora", "ship")
WORD = "cyan"
NUM_CLIPS = 640
NEW_WORD_REPEATS = 5  # the word's 12 combinations x 5 against the base's 63: about half the clips show the word
DATA_SEED = 1  # not the base data's seed 0: other clips of the base combinations
RANK = 16
ALPHA = 16  # alpha / rank = 1; sampling uses the same model.lora_alpha (conf/lora/cyan.yaml)
LORA = [
    "mode=lora",
    f"model.lora_rank={RANK}",
    f"model.lora_alpha={ALPHA}",
    "model.checkpoint_activations=false",
    "train.precision=32",
    "train.max_steps=1000",  # ~0.5 s a step of 16 on 2 cores at the base's 3x16x16 latents
    "train.batch_size=16",
    "train.lr=1e-3",
    "train.warmup_steps=50",
    "train.weight_decay=0.0",
    "train.gradient_clip=1.0",
    "train.checkpoint_every=500",
    "train.keep_last=1",
    "train.log_every=100",
    "train.seed=0",
]


def shipped_lora_dir(word: str = WORD) -> Path:
    return shipped_dir() / f"lora-{word}"


@dataclass
class LoraSettings(RecipeSettings):
    """The LoRA recipe's settings (the defaults are `make shapes-lora`; tests shrink them)."""

    num_clips: int = NUM_CLIPS
    lora: list[str] = field(default_factory=lambda: list(LORA))
    ship_dir: Path = field(default_factory=shipped_lora_dir)


class LoraRecipe(Recipe):
    """Data of the new word, its latents, the LoRA run and the shipped adapters, over one work folder."""

    stages = LORA_STAGES

    def __init__(self, out: str | Path, workers: int = 2, settings: LoraSettings | None = None):
        super().__init__(out, workers, settings or LoraSettings())

    lora_dir = WorkFolder("lora")

    def model_overrides(self, vae_dir: Path | None = None) -> list[str]:
        """The shipped base model (its DiT, VAE, T5 and scale factor), plus the settings' size overrides."""
        return self.base_overrides()

    def stage_data(self) -> dict:
        combinations = reserved_combinations(colour=WORD) * NEW_WORD_REPEATS + training_combinations()
        # laid out as the base's clips were: the adapter learns the word, nothing else
        self.write_clips(self.data, DATA_SEED, combinations, placement=DATA_PLACEMENT)
        return {"clips": self.settings.num_clips, "seed": DATA_SEED, "word": WORD, "placement": DATA_PLACEMENT}

    def stage_lora(self) -> dict:
        return self.train_on_cache(self.lora_dir, self.settings.lora)

    def stage_ship(self) -> dict:
        adapters = {k: _ship(v) for k, v in read_lora_adapters(self.lora_dir / SAT_DIR).items()}
        with staged_folder(self.settings.ship_dir, overwrite=True) as staged:
            weights = save_sat_checkpoint(adapters, staged, iteration=self.record["lora"]["steps"])
            size = weights.stat().st_size
        return {"rank": RANK, "alpha": ALPHA, "tensors": len(adapters), "mb": round(size / 1e6, 3)}
