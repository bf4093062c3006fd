"""The shapes model's DiT trained from scratch with cogvid's own tools: precompute latents and T5 embeddings of a few
generated shapes clips, train a few SFT steps from no checkpoint, and sample the result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cogvid.config.compose import compose
from cogvid.inference.frame_strip import CAPTION_HEIGHT, GAP
from cogvid.inference.run import run_sample
from cogvid.sat.checkpoint import read_sat_state_dict
from cogvid.sat.loading import build_model
from cogvid.shapes.dataset import write_dataset
from cogvid.shapes.text_encoder import build_shapes_t5
from cogvid.training.metrics import read_train_log
from cogvid.training.run import run_train
from cogvid.utils.media import read_mp4

TORCH_THREADS = 1
FIXTURE_VAE = Path(__file__).parent / "fixtures" / "sat_tiny_2b" / "vae" / "3d-vae.pt"
# model=shapes at test size: a 2-layer DiT, and the SAT fixture's VAE (its widths) in place of a trained one.
SMALL = [
    "model=shapes",
    "model.hidden_size=64",
    "model.num_layers=2",
    "model.num_attention_heads=2",
    "model.time_embed_dim=64",
    f"model.vae_ckpt={FIXTURE_VAE}",
    "model.vae.ch=32",
    "model.vae.ch_mult=[1,1,1,1]",
    "device=cpu",
]


@pytest.fixture(scope="module")
def shapes_inputs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("shapes")
    write_dataset(root / "data", num_clips=4, seed=0, progress=False)
    return root / "data", build_shapes_t5(root / "t5")


def test_the_dit_trains_from_scratch_on_precomputed_shapes_latents(tmp_path, shapes_inputs):
    data, t5 = shapes_inputs
    cache = tmp_path / "cache"
    common = [*SMALL, f"model.text_encoder.path={t5}", "data.num_workers=0"]
    assert run_train(compose([*common, "task=precompute", f"data.root={data}", f"data.cache={cache}"], "train")) is None
    assert len(list((cache / "samples").glob("*.safetensors"))) == 4  # every 9-frame clip used whole

    fit = [
        *common,
        "mode=sft",
        "model.ckpt=null",  # model=shapes names the shipped weights
        f"data.cache={cache}",
        "train.max_steps=4",
        "train.batch_size=2",
        "train.lr=1e-3",
        "train.log_every=1",
        "train.progress_bar=false",
        f"train.output_dir={tmp_path / 'run'}",
    ]
    cfg = compose(fit, "train")
    assert cfg.model.ckpt is None  # from no checkpoint: adaLN-zero blocks and a zero output projection
    untrained = build_model(cfg.model).backbone
    x, context = torch.randn(1, 3, 16, 8, 8), torch.randn(1, cfg.model.text_length, 64)
    assert untrained(x, torch.tensor([500.0]), context).abs().max() == 0

    result = run_train(cfg)
    losses = [row["loss"] for row in read_train_log(result.output_dir).values()]
    assert result.final_step == 4 and len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    state, _ = read_sat_state_dict(result.sat_dir)
    trained = {k.removeprefix("model.diffusion_model."): v for k, v in state.items()}
    final = trained["mixins.final_layer.linear.weight"]
    assert final.abs().max() > 0  # the zero-initialised projection has learnt

    out = tmp_path / "samples"
    sample_cfg = compose(
        [
            *SMALL,
            f"model.ckpt={result.sat_dir}",
            f"model.text_encoder.path={t5}",
            "sampler.num_steps=4",
            "infer.prompt=a red circle moving right",
            f"infer.output_dir={out}",
            "infer.frame_strip=true",
        ]
    )
    written = run_sample(sample_cfg)
    assert sorted(p.suffix for p in written) == [".json", ".mp4", ".png"]
    video = read_mp4(next(p for p in written if p.suffix == ".mp4"))
    assert video.shape == (9, 64, 64, 3)
    strip = np.asarray(Image.open(next(p for p in written if p.suffix == ".png")).convert("RGB"))
    assert strip.shape == (CAPTION_HEIGHT + 128 + GAP, GAP + 9 * (128 + GAP), 3)  # 9 frames, enlarged 2x
