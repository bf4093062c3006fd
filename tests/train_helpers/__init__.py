"""Helpers for the cogvid-train tests: generated clips, tiny-run overrides, test-only callbacks and strategies."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cogvid.utils.media import write_mp4

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "sat_tiny_2b"
CAPTIONS = [
    "a red fox in snow",
    "a cat sleeping on a warm mat",
    "waves crash on the beach at sunset",
    "a panda eats bamboo in a green forest",
]


def clip_frames(index: int, frames: int = 16, height: int = 64, width: int = 80) -> np.ndarray:
    """A smooth synthetic clip: a colour gradient with a square moving across it, different per index."""
    rng = np.random.default_rng(index)
    base = rng.uniform(40, 215, size=3)
    y, x = np.mgrid[0:height, 0:width]
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for f in range(frames):
        img = np.stack([base[c] + 30 * np.sin((x + 3 * f * (c + 1)) / 11.0 + y / 17.0) for c in range(3)], axis=-1)
        top, left = (5 + 2 * f + 7 * index) % (height - 16), (3 * f + 11 * index) % (width - 16)
        img[top : top + 16, left : left + 16] = 255 - base
        out[f] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def make_sat_dataset(root: Path, n: int = 4, frames: int = 16, fps: int = 8, captions: bool = True) -> Path:
    """root/videos/clip_<i>.mp4 + root/labels/clip_<i>.txt (SAT's layout)."""
    for i in range(n):
        write_mp4(root / "videos" / f"clip_{i}.mp4", clip_frames(i, frames), fps)
        if captions:
            (root / "labels").mkdir(parents=True, exist_ok=True)
            (root / "labels" / f"clip_{i}.txt").write_text(CAPTIONS[i % len(CAPTIONS)] + "\nsecond line ignored\n")
    return root


def tiny_overrides(t5_dir: Path, out_dir: Path, *extra: str, mode: str = "lora") -> list[str]:
    """A tiny CPU run from the SAT fixture: the DiT, its VAE and a tiny T5."""
    overrides = [
        "model=tiny",
        f"mode={mode}",
        f"model.ckpt={FIXTURE / 'dit_ckpt'}",
        f"model.vae_ckpt={FIXTURE / 'vae' / '3d-vae.pt'}",
        f"model.text_encoder.path={t5_dir}",
        "model.checkpoint_activations=false",
        "device=cpu",
        "data.num_workers=0",
        "train.batch_size=2",
        "train.progress_bar=false",
        f"train.output_dir={out_dir}",
        "train.log_every=1",
    ]
    if mode == "lora":
        overrides.append("model.lora_rank=4")
    return overrides + list(extra)
