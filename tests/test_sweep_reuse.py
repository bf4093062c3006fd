"""A `-m` sweep's jobs run in one process: those with the same weights (model, mode, dtypes, device, and the files
unchanged) load the DiT, VAE and T5 once (`cogvid.inference.pipeline.load_pipeline`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from conftest import TIMEOUT

from cogvid.config.compose import compose
from cogvid.inference.pipeline import load_pipeline
from cogvid.inference.plan import plan_loading, video_settings

TORCH_THREADS = 1


def load(overrides: list[str]):
    """The pipeline of a composed config's planned weights, as each job of a sweep loads it."""
    cfg = compose(overrides)
    return load_pipeline(plan_loading(cfg), video_settings(cfg))


def test_the_same_weights_load_once_and_changed_ones_load_again(tmp_path):
    first = load(["model=shapes", "device=cpu"])
    other_sampler = load(["model=shapes", "device=cpu", "sampler=ddim", "sampler.guidance_scale=3"])
    assert other_sampler.model is first.model and other_sampler.vae is first.vae
    assert other_sampler.settings.sampler.solver == "ddim" and other_sampler.settings.sampler.guidance_scale == 3

    vae = tmp_path / "3d-vae.pt"
    shutil.copy(first.model_cfg.vae_ckpt, vae)
    elsewhere = load(["model=shapes", "device=cpu", f"model.vae_ckpt={vae}"])
    assert elsewhere.model is not first.model  # another path: loaded
    again = load(["model=shapes", "device=cpu", f"model.vae_ckpt={vae}"])
    assert again.model is elsewhere.model
    os.utime(vae, ns=(0, 0))  # the file was rewritten: load it again
    assert load(["model=shapes", "device=cpu", f"model.vae_ckpt={vae}"]).vae is not elsewhere.vae


def test_a_sweep_over_sampler_settings_loads_the_weights_once(tmp_path):
    result = subprocess.run(
        [
            str(os.path.join(os.path.dirname(sys.executable), "cogvid-sample")),
            "-m",
            "model=shapes",
            "device=cpu",
            "infer.prompt=a red circle moving right",
            "sampler.guidance_scale=3,6",
            "sampler.num_steps=2,4",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert (
        log.count("loaded cogvideox-shapes on") == 1
        and log.count("the weights loaded for the previous job are reused") == 3
    )
    assert len(list((tmp_path / "sweep").rglob("*.mp4"))) == 4
