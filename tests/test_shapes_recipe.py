"""`make shapes-model` at toy size: every stage runs from nothing, ships fp16 weights and the VAE's scale factor that
`cogvid-sample` then loads, and a rerun skips the finished stages."""

from __future__ import annotations

import json
import re
import shutil

import torch

from cogvid.config.compose import compose, conf_dir
from cogvid.inference.run import run_sample
from cogvid.sat.checkpoint import read_sat_state_dict, read_sat_vae_state_dict
from cogvid.shapes.recipe import STAGES, Recipe, RecipeSettings

TOY_MODEL = [
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.num_attention_heads=2",
    "model.time_embed_dim=32",
    "model.vae.ch_mult=[1,1,1,1]",
]
TOY_VAE = ["task=vae", "train.max_steps=2", "train.batch_size=2", "train.vae.holdout=2", "train.progress_bar=false"]
TOY_DIT = [
    "mode=sft",
    "model.ckpt=null",
    "model.checkpoint_activations=false",
    "train.max_steps=2",
    "train.batch_size=2",
    "train.lr=1e-3",
    "train.progress_bar=false",
]
TOY_VAE_REFINE = [*TOY_VAE, "train.vae.edge_weight=1"]


def test_the_recipe_ships_a_model_that_samples_and_a_rerun_skips_every_stage(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    model_config = tmp_path / "shapes.yaml"
    shutil.copy(conf_dir() / "model" / "shapes.yaml", model_config)
    ship = tmp_path / "shipped"
    settings = RecipeSettings(
        num_clips=6,
        vae=TOY_VAE,
        dit=TOY_DIT,
        vae_refine=TOY_VAE_REFINE,
        dit_refine=TOY_DIT,  # the stage names the dit stage's weights in place of model.ckpt=null
        model=TOY_MODEL,
        ship_dir=ship,
        model_config=model_config,
    )
    record = Recipe(tmp_path / "work", workers=1, settings=settings).run()

    assert list(record) == list(STAGES) and all(record[s]["seconds"] >= 0 for s in STAGES)
    assert record["data"]["clips"] == 6 and record["precompute"]["samples"] == 6 and record["dit"]["steps"] == 2
    assert record["precompute_refine"]["samples"] == 6 and record["dit_refine"]["steps"] == 2
    assert json.loads((ship / "recipe.json").read_text()) == record

    # fp16 on disk, the files the sizes report names, and the trained scale factor in the model config
    dit, _ = read_sat_state_dict(ship / "transformer")
    assert (ship / "transformer" / "latest").read_text().strip() == "4"  # 2 steps of dit, then 2 of dit_refine
    # the refine stages' DiT and VAE are what ships
    refined, _ = read_sat_state_dict(tmp_path / "work" / "dit-refine" / "sat")
    assert refined.keys() == dit.keys() and all(torch.equal(dit[k], v.half()) for k, v in refined.items())
    vae = read_sat_vae_state_dict(ship / "vae" / "3d-vae.pt")
    refined_vae = read_sat_vae_state_dict(tmp_path / "work" / "vae-refine" / "vae" / "3d-vae.pt")
    assert refined_vae.keys() == vae.keys() and all(torch.equal(vae[k], v.half()) for k, v in refined_vae.items())
    assert {t.dtype for t in [*dit.values(), *vae.values()] if t.is_floating_point()} == {torch.float16}
    assert (ship / "t5" / "config.json").is_file() and (ship / "t5" / "spiece.model").is_file()
    assert set(record["ship"]["files"]) == {p.relative_to(ship).as_posix() for p in ship.rglob("*") if p.is_file()} - {
        "recipe.json"
    }
    scale = float(re.search(r"^scale_factor: ([0-9.]+)", model_config.read_text(), re.M).group(1))
    assert abs(scale - record["vae_refine"]["scale_factor"]) < 1e-6 and scale != record["vae"]["scale_factor"]

    # the shipped folder is what cogvid-sample reads
    written = run_sample(
        compose(
            [
                "model=shapes",
                *TOY_MODEL,
                f"model.ckpt={ship / 'transformer'}",
                f"model.vae_ckpt={ship / 'vae' / '3d-vae.pt'}",
                f"model.text_encoder.path={ship / 't5'}",
                f"model.scale_factor={scale}",
                "sampler.num_steps=2",
                "infer.prompt=a red circle moving right",
                f"infer.output_dir={tmp_path / 'samples'}",
                "device=cpu",
            ]
        )
    )
    assert any(p.suffix == ".mp4" for p in written)

    # a rerun finds every stage done and runs none
    for stage in STAGES:
        monkeypatch.setattr(Recipe, f"stage_{stage}", lambda self, s=stage: (_ for _ in ()).throw(AssertionError(s)))
    assert Recipe(tmp_path / "work", settings=settings).run() == record
