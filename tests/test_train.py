"""cogvid-train in one process on the CPU with model=tiny: config, data, the training step, LoRA/SFT, precompute."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import TIMEOUT
from safetensors.torch import load_file
from train_helpers import FIXTURE, clip_frames, make_sat_dataset, tiny_overrides

from cogvid.config.compose import compose, conf_dir
from cogvid.models.t5 import T5Conditioner
from cogvid.models.vae import CausalVideoVAE
from cogvid.sat.checkpoint import load_sat_vae, read_sat_state_dict
from cogvid.training.data import (
    BadVideo,
    ClipSpec,
    StepBatchSampler,
    VideoClips,
    clip_spec,
    collate,
    find_clips,
    frame_indices,
)
from cogvid.training.metrics import read_train_log
from cogvid.training.module import VideoDiffusionModule
from cogvid.training.optim import linear_schedule, param_groups
from cogvid.training.plan import plan_train
from cogvid.training.run import run_train
from cogvid.training.strategies import deepspeed_config
from cogvid.utils.errors import CogvidError
from cogvid.utils.media import read_mp4, write_mp4


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory) -> Path:
    return make_sat_dataset(tmp_path_factory.mktemp("clips"), n=2)


def train_cfg(t5: Path, out: Path, *extra: str, mode: str = "lora"):
    return compose(tiny_overrides(t5, out, *extra, mode=mode), config_name="train")


# --- config -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", sorted(p.stem for p in (conf_dir() / "train").glob("*.yaml")))
def test_every_strategy_config_composes(strategy):
    cfg = compose(["model=tiny", f"train={strategy}"], config_name="train")
    assert cfg.train.lr is None and cfg.train.ucg_rate == 0.1 and cfg.train.gradient_clip == 0.1
    if strategy.startswith("deepspeed"):
        ds = deepspeed_config(cfg, "32")["zero_optimization"]
        assert ds["stage"] == (3 if "zero3" in strategy else 2)
        assert (ds["reduce_bucket_size"], ds["allgather_bucket_size"]) == (1_000_000_000, 1_000_000_000)
        assert ds["overlap_comm"] and ds["reduce_scatter"] and not ds["contiguous_gradients"]
        assert ("offload_optimizer" in ds) == ("offload" in strategy)


def test_optimizer_groups_and_schedule():
    cfg = compose(["model=tiny", "mode=lora", "model.lora_rank=4"], config_name="train")
    module = VideoDiffusionModule(cfg, precision="32")
    lora = [p for n, p in module.backbone.named_parameters() if p.requires_grad]
    assert lora and all(
        ".matrix_A." in n or ".matrix_B." in n for n, p in module.backbone.named_parameters() if p.requires_grad
    )
    opt = module.configure_optimizers()["optimizer"]
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8
    sft = compose(["model=tiny"], config_name="train")
    backbone = VideoDiffusionModule(sft, precision="32").backbone
    decay, no_decay = param_groups(backbone, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in backbone.named_parameters()}
    assert all(names[id(p)].endswith("bias") or "norm" in names[id(p)] for p in no_decay["params"])
    assert not any(names[id(p)].endswith("bias") for p in decay["params"])
    assert "mixins.pos_embed.pos_embedding" not in {names[id(p)] for g in (decay, no_decay) for p in g["params"]}
    f = linear_schedule(100, 10)
    assert [f(0), f(9), f(10), f(55), f(100)] == [0.1, 1.0, 1.0, 0.5, 0.0]


# --- data -------------------------------------------------------------------------------------------------------


def test_frame_selection_follows_sat():
    spec = ClipSpec(48, 64, fps=8, num_frames=9, skip_frms_num=3, min_num_frames=5)
    # 1. long at the target rate: 30 fps -> stride 3 from frame 3
    assert frame_indices(300, 30.0, spec) == list(range(3, 30, 3))
    # 2. more frames than wanted but short in time (a fast source): skip both ends, stride (20 - 3 - 3) // 9 = 1
    assert frame_indices(20, 30.0, spec) == list(range(3, 12))
    # 3. short: the longest 4k+1 after skipping at both ends, padded later; too few frames is a BadVideo
    spec1 = ClipSpec(48, 64, fps=8, num_frames=9, skip_frms_num=1, min_num_frames=5)
    assert frame_indices(8, 8.0, spec1) == [1, 2, 3, 4, 5]
    with pytest.raises(BadVideo, match="too short"):
        frame_indices(9, 8.0, spec)
    # a source slower than the target rate never gives stride 0 (SAT's SFTDataset: stride 0, a crash)
    assert frame_indices(100, 4.0, spec) == list(range(3, 12))


def test_sat_layout_manifests_and_captions(tmp_path, caplog):
    root = make_sat_dataset(tmp_path / "sat", n=3)
    (root / "labels" / "clip_2.txt").unlink()  # an uncaptioned video is skipped and reported
    cfg = compose(["model=tiny", f"data.root={root}"], config_name="train")
    with caplog.at_level(logging.WARNING):
        clips = find_clips(cfg)
    assert [(c.path.name, c.caption) for c in clips] == [
        ("clip_0.mp4", "a red fox in snow"),
        ("clip_1.mp4", "a cat sleeping on a warm mat"),
    ]
    assert "skipped 1 of 3 videos without a caption" in caplog.text
    (tmp_path / "m.csv").write_text("path,caption\nsat/videos/clip_0.mp4,a fox\nsat/videos/clip_1.mp4,\n")
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": str(root / "videos" / "clip_1.mp4"), "caption": "a cat"}))
    for manifest, expected in (("m.csv", [("clip_0.mp4", "a fox")]), ("m.jsonl", [("clip_1.mp4", "a cat")])):
        cfg = compose(["model=tiny", f"data.manifest={tmp_path / manifest}"], config_name="train")
        assert [(c.path.name, c.caption) for c in find_clips(cfg)] == expected


def test_clips_are_cut_resized_and_scaled(clips_dir):
    cfg = compose(["model=tiny", f"data.root={clips_dir}"], config_name="train")
    ds = VideoClips(find_clips(cfg), clip_spec(cfg))
    item = ds[(1, 7)]
    assert item["video"].shape == (9, 3, 48, 64) and item["batch_pos"] == 7 and item["skipped"] == []
    assert -1.0 <= item["video"].min() and item["video"].max() <= 1.0
    # 16 frames at 8 fps > 9 wanted: frames 3..11; 64x80 -> cover 48x64 (51x64), centre crop rows 1..48
    source = torch.from_numpy(clip_frames(1)[3:12]).permute(0, 3, 1, 2).float()
    resized = torch.nn.functional.interpolate(source, size=(51, 64), mode="bicubic", antialias=True)
    expected = (resized.round().clamp(0, 255)[..., 1:49, :] - 127.5) / 127.5
    assert (item["video"] - expected).abs().mean() < 0.05  # H.264 is lossy


def test_step_sampler_resumes_the_same_stream():
    full = StepBatchSampler(5, 2, seed=3, rank=0, world_size=1)
    stream = [full.batch(b) for b in range(12)]
    resumed = iter(StepBatchSampler(5, 2, seed=3, rank=0, world_size=1, start=7))
    assert [next(resumed) for _ in range(5)] == stream[7:]
    epoch0 = [i for b in range(5) for i, _ in StepBatchSampler(10, 1, 3, 0, 2).batch(b)]
    epoch0 += [i for b in range(5) for i, _ in StepBatchSampler(10, 1, 3, 1, 2).batch(b)]
    assert sorted(epoch0) == list(range(10))  # two ranks cover an epoch once


# --- bad input --------------------------------------------------------------------------------------------------


def test_bad_data_is_one_line(tmp_path, tiny_t5_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CogvidError, match="holds no .mp4 video"):
        run_train(train_cfg(tiny_t5_dir, tmp_path / "o", f"data.root={tmp_path / 'empty'}"))
    make_sat_dataset(tmp_path / "nolabels", n=1, captions=False)
    with pytest.raises(CogvidError, match="no video has a caption"):
        run_train(train_cfg(tiny_t5_dir, tmp_path / "o", f"data.root={tmp_path / 'nolabels'}"))
    with pytest.raises(CogvidError, match="exactly one of data.root"):
        run_train(train_cfg(tiny_t5_dir, tmp_path / "o"))
    (tmp_path / "bad.csv").write_text("file,text\nx.mp4,a cat\n")
    with pytest.raises(CogvidError, match="header with `path` and `caption`"):
        run_train(train_cfg(tiny_t5_dir, tmp_path / "o", f"data.manifest={tmp_path / 'bad.csv'}"))
    with pytest.raises(CogvidError, match="mode=lora needs model.lora_rank >= 1"):
        run_train(train_cfg(tiny_t5_dir, tmp_path / "o", f"data.root={tmp_path}", "model.lora_rank=0"))


def test_corrupt_and_short_videos_are_skipped_and_counted(tmp_path, tiny_t5_dir, caplog):
    root = make_sat_dataset(tmp_path / "d", n=2)
    (root / "videos" / "clip_2.mp4").write_bytes(b"not a video" * 50)  # corrupt
    write_mp4(root / "videos" / "clip_3.mp4", clip_frames(3, frames=6), 8)  # 6 frames, 0 after skipping 3 + 3
    for i in (2, 3):
        (root / "labels" / f"clip_{i}.txt").write_text("a broken clip")
    cfg = train_cfg(tiny_t5_dir, tmp_path / "out", f"data.root={root}", "train.max_steps=2", "train.batch_size=4")
    with caplog.at_level(logging.WARNING):
        result = run_train(cfg)
    log = read_train_log(result.output_dir)
    assert log[2]["skipped_videos"] >= 2
    assert "clip_2.mp4" in caplog.text and "clip_3.mp4" in caplog.text and "too short" in caplog.text


# --- training ---------------------------------------------------------------------------------------------------


def eval_losses(module: VideoDiffusionModule, batch: dict) -> np.ndarray:
    return np.array([module.evaluation_loss(batch, seed) for seed in range(6)])


def fixed_batch(cfg) -> dict:
    ds = VideoClips(find_clips(cfg), clip_spec(cfg))
    return collate([ds[(i, 0)] for i in range(len(ds))])


def initial_module(cfg) -> VideoDiffusionModule:
    L.seed_everything(cfg.train.seed, verbose=False)  # as run_train does: the same LoRA init
    module = VideoDiffusionModule(cfg, precision="32")
    module.setup("fit")
    return module


def test_lora_lowers_the_loss_and_trains_only_the_adapters(tmp_path, tiny_t5_dir, clips_dir):
    cfg = train_cfg(
        tiny_t5_dir,
        tmp_path / "out",
        f"data.root={clips_dir}",
        "train.max_steps=16",
        "train.checkpoint_every=8",
        "train.lr=2e-2",
        "train.warmup_steps=0",
        "model.lora_alpha=4",  # scale 1 instead of SAT's 1/r, so that 16 steps show
        "model.checkpoint_activations=true",
    )
    batch = fixed_batch(cfg)
    start = initial_module(cfg)
    before = eval_losses(start, batch)
    initial = {k: v.clone() for k, v in start.backbone.state_dict().items()}

    result = run_train(cfg)
    after = eval_losses(result.module, batch)
    assert after.mean() < 0.9 * before.mean() and (after < before).all(), (before, after)

    trained, _ = read_sat_state_dict(result.sat_dir)  # the SAT-layout weights of the last step
    assert set(trained) == set(initial) and any(".original." in k for k in trained)
    changed = {k for k in initial if not torch.equal(initial[k], trained[k])}
    assert changed and all(".matrix_A." in k or ".matrix_B." in k for k in changed)
    assert any(".matrix_B." in k for k in changed)
    assert sorted(int(p.name) for p in result.sat_dir.iterdir() if p.is_dir()) == [8, 16]


def test_sft_lowers_the_loss_and_leaves_vae_and_t5_alone(tmp_path, tiny_t5_dir, clips_dir):
    cfg = train_cfg(
        tiny_t5_dir,
        tmp_path / "out",
        f"data.root={clips_dir}",
        "train.max_steps=10",
        "train.lr=1e-3",
        "train.warmup_steps=0",
        mode="sft",
    )
    batch = fixed_batch(cfg)
    start = initial_module(cfg)
    before = eval_losses(start, batch)
    result = run_train(cfg)
    after = eval_losses(result.module, batch)
    assert after.mean() < 0.9 * before.mean() and (after < before).all(), (before, after)

    frozen = result.module.frozen
    vae = load_sat_vae(FIXTURE / "vae" / "3d-vae.pt", CausalVideoVAE.from_config(cfg.model.vae))
    t5 = T5Conditioner.from_pretrained(str(tiny_t5_dir), max_length=cfg.model.text_length)
    for part, reference in ((frozen.vae, vae), (frozen.text_encoder, t5)):
        ours = part.state_dict()
        assert all(torch.equal(v, ours[k]) for k, v in reference.state_dict().items())
        assert not any(p.requires_grad for p in part.parameters())
    optimized = {id(p) for g in result.trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimized == {id(p) for p in result.module.backbone.parameters() if p.requires_grad}


def test_precompute_then_train_without_vae_or_t5(tmp_path, tiny_t5_dir, clips_dir):
    cache = tmp_path / "cache"
    pre = train_cfg(tiny_t5_dir, tmp_path / "pre", f"data.root={clips_dir}", f"data.cache={cache}", "task=precompute")
    assert run_train(pre) is None
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["latent_layout"] == "c t h w" and meta["scaled"] is False and meta["latent_frames"] == 3
    files = sorted((cache / "samples").glob("*.safetensors"))
    assert [f.name for f in files] == ["00000000.safetensors", "00000001.safetensors"]
    sample = load_file(files[0])
    assert sample["mean"].shape == sample["logvar"].shape == (16, 3, 6, 8)
    assert sample["crossattn"].shape == (8, 32)
    # the stored moments are the VAE's, unscaled, in VAE layout
    vae = load_sat_vae(FIXTURE / "vae" / "3d-vae.pt", CausalVideoVAE.from_config(pre.model.vae))
    video = VideoClips(find_clips(pre), clip_spec(pre))[(0, 0)]["video"]
    mean = vae.encode_moments(video.permute(1, 0, 2, 3)[None]).chunk(2, dim=1)[0][0]
    torch.testing.assert_close(sample["mean"], mean, rtol=0, atol=1e-5)

    with pytest.raises(CogvidError, match="validation videos need model.vae_ckpt"):
        run_train(train_cfg(tiny_t5_dir, tmp_path / "x", f"data.cache={cache}", "model.vae_ckpt=null", *VALIDATION))
    cfg = train_cfg(tiny_t5_dir, tmp_path / "out", f"data.cache={cache}", "train.max_steps=3", *VALIDATION)
    result = run_train(cfg)
    assert result.final_step == 3 and len(read_train_log(result.output_dir)) == 3
    # VAE and T5 were never loaded for training; validation loaded them and let them go again
    assert result.module.frozen is None

    videos = sorted((result.output_dir / "validation" / "step-00000002").glob("*.mp4"))
    assert [v.name for v in videos] == ["00_a_red_fox_in_snow_seed1.mp4", "00_a_red_fox_in_snow_seed2.mp4"]
    frames = read_mp4(videos[0])
    assert frames.shape == (9, 48, 64, 3)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(result.output_dir / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert {"validation/00_seed1", "validation/00_seed2"} <= set(events.Tags()["images"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "train/peak_memory_gb"} <= set(
        events.Tags()["scalars"]
    )
    assert events.Images("validation/00_seed1")[0].encoded_image_string[:6] == b"GIF89a"


@pytest.mark.parametrize(("extra", "dtype"), [((), torch.float32), (("train.precision=bf16-mixed",), torch.bfloat16)])
def test_precompute_encodes_in_the_dtype_a_fit_would(tmp_path, tiny_t5_dir, clips_dir, extra, dtype):
    """The VAE and T5 of task=precompute run as those of a fit of the same config, so the cached latents are those
    the fit would encode on the fly: dtype=, else train.precision's (fp32 on the CPU by default)."""
    cache = tmp_path / "cache"
    pre = train_cfg(tiny_t5_dir, tmp_path / "pre", f"data.root={clips_dir}", f"data.cache={cache}", *extra)
    pre.task = "precompute"
    plan = plan_train(pre)
    assert (plan.accelerator, plan.frozen_dtype) == ("cpu", dtype)
    fit = train_cfg(tiny_t5_dir, tmp_path / "fit", f"data.root={clips_dir}", *extra)
    assert VideoDiffusionModule(fit, precision=plan_train(fit).precision).frozen_dtype == dtype


VALIDATION = (
    "train.validation.every=2",
    "train.validation.prompts=[a red fox in snow]",
    "train.validation.seeds=[1,2]",
    "sampler.num_steps=2",
)


def tiny_i2v_15(t5: Path, out: Path, *extra: str) -> list[str]:
    """A tiny 1.5-I2V (ofs, temporal patches of 2, 32 input channels) with the fixture's VAE, random DiT weights."""
    model = {
        "hidden_size": 64,
        "num_layers": 1,
        "num_attention_heads": 1,
        "time_embed_dim": 32,
        "ofs_embed_dim": 32,
        "text_length": 8,
        "text_hidden_size": 32,
        "num_frames": 17,
        "latent_height": 8,
        "latent_width": 10,
        "dtype": "fp32",
        "ckpt": "null",
        "vae.ch": 32,
        "vae.ch_mult": "[1,1,1,1]",
        "vae.num_res_blocks": 1,
    }
    base = [o for o in tiny_overrides(t5, out, mode="sft") if not o.startswith(("model=", "model.ckpt"))]
    return ["model=1.5_5b_i2v", *base, *(f"model.{k}={v}" for k, v in model.items()), "data.max_num_frames=9", *extra]


def test_image_to_video_1_5_step_on_the_fly_and_cached(tmp_path, tiny_t5_dir, clips_dir):
    cfg = compose(tiny_i2v_15(tiny_t5_dir, tmp_path / "o", f"data.root={clips_dir}"), config_name="train")
    module = initial_module(cfg)
    batch = fixed_batch(cfg)
    z, image, context = module.encode_batch(batch, torch.Generator().manual_seed(0))
    concat = image.concat
    # 9 frames -> 3 latents, led by a copy of the first for the 1.5 temporal patches; the image latent in frame 0
    assert z.shape == concat.shape == (2, 4, 16, 8, 10) and context.shape == (2, 8, 32)
    assert torch.equal(z[:, 0], z[:, 1]) and concat[:, 0].abs().sum() > 0 and not concat[:, 1:].any()
    assert torch.isfinite(torch.tensor(module.evaluation_loss(batch))).all()  # the 1.5-I2V DiT got its ofs

    seen = []
    module.backbone.register_forward_pre_hook(lambda mod, args, kwargs: seen.append((args, kwargs)), with_kwargs=True)
    module.cfg.model.noised_image_dropout = 1.0
    module.step_loss(batch, torch.Generator().manual_seed(0), ucg_rate=1.0)
    (x, timesteps, context), kwargs = seen[-1]
    assert x.shape == (2, 4, 32, 8, 10) and not x[:, :, 16:].any()  # image latent dropped (one draw per batch)
    assert not context.any()  # caption dropout: an all-zero context, not T5("")
    assert torch.equal(kwargs["ofs"], torch.full((2,), 2.0))
    module.step_loss(batch, torch.Generator().manual_seed(0), ucg_rate=0.0)
    assert seen[-1][0][2].abs().sum(dim=(1, 2)).all()

    cache = tmp_path / "cache"
    run_train(
        compose(
            tiny_i2v_15(
                tiny_t5_dir, tmp_path / "p", f"data.root={clips_dir}", f"data.cache={cache}", "task=precompute"
            ),
            config_name="train",
        )
    )
    sample = load_file(cache / "samples" / "00000000.safetensors")
    assert sample["image_mean"].shape == (16, 1, 8, 10)
    result = run_train(
        compose(
            tiny_i2v_15(
                tiny_t5_dir,
                tmp_path / "t",
                f"data.cache={cache}",
                "train.max_steps=2",
                "model.noised_image_dropout=1.0",
            ),
            config_name="train",
        )
    )
    assert result.final_step == 2 and result.module.frozen is None


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    (tmp_path / "empty").mkdir()
    (tmp_path / "3d-vae.pt").write_bytes(b"")  # a file, never loaded: the data error comes first
    for override, message in (
        (f"data.root={tmp_path / 'empty'}", "holds no .mp4 video"),
        ("train.precision=bf16", "train.precision=bf16: expected one of"),
    ):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "cogvid.cli.train",
                "model=tiny",
                "device=cpu",
                f"data.root={tmp_path}",
                f"train.output_dir={tmp_path / 'out'}",
                f"hydra.run.dir={tmp_path / 'run'}",
                "data.cache=null",
                f"model.vae_ckpt={tmp_path / '3d-vae.pt'}",
                "model.text_encoder.path=y",
                override,
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        lines = [line for line in result.stderr.splitlines() if line.startswith("cogvid-train: error:")]
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr[-2000:]
        assert "Traceback" not in result.stderr
