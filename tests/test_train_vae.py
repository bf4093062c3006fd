"""cogvid-train task=vae on the CPU: a tiny VAE trained on generated shapes clips, written as SAT's 3d-vae.pt."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from cogvid.config.compose import compose
from cogvid.interop.run import run_export
from cogvid.models.vae import CausalVideoVAE
from cogvid.sat.checkpoint import load_sat_vae, write_sat_model_states
from cogvid.shapes.dataset import write_dataset
from cogvid.training.data import VideoClips, clip_spec, collate, find_clips
from cogvid.training.run import run_train
from cogvid.training.vae_module import (
    VaeModule,
    foreground_mask,
    foreground_psnr_db,
    holdout_indices,
    kl_per_clip,
    psnr_db,
)
from cogvid.utils.errors import CogvidError
from cogvid.utils.user_files import safe_torch_load

TORCH_THREADS = 1  # tiny tensors: extra intra-op threads only spin

TINY_VAE = ("model.vae.ch_mult=[1,1,1,1]", "model.vae.z_channels=4", "data.video_size=[32,32]")


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> Path:
    """6 shapes clips as the shapes model takes them: 9 frames of 64x64 at 8 fps."""
    out = tmp_path_factory.mktemp("shapes")
    write_dataset(out, 6, seed=0, progress=False)
    return out


def vae_overrides(data: Path | None, out: Path, *extra: str) -> list[str]:
    return [
        "model=shapes",
        "task=vae",
        *([f"data.root={data}"] if data else []),
        f"train.output_dir={out}",
        "device=cpu",
        *TINY_VAE,
        "train.batch_size=2",
        "train.vae.holdout=2",
        "train.progress_bar=false",
        "train.log_every=1",
        *extra,
    ]


def vae_cfg(data: Path | None, out: Path, *extra: str):
    return compose(vae_overrides(data, out, *extra), config_name="train")


def test_the_shapes_model_uses_a_shapes_clip_whole(shapes_dir):
    cfg = compose(["model=shapes", f"data.root={shapes_dir}"], config_name="train")
    m, d = cfg.model, cfg.data
    assert (d.skip_frms_num, d.max_num_frames, d.fps, list(d.video_size)) == (0, 9, 8, [64, 64])
    assert m.in_channels == m.out_channels == m.vae.z_channels
    item = VideoClips(find_clips(cfg), clip_spec(cfg))[(0, 0)]
    assert item["video"].shape == (9, 3, 64, 64) and -1.0 <= item["video"].min() < item["video"].max() <= 1.0
    with torch.device("meta"):  # shapes only
        latents = CausalVideoVAE.from_config(m.vae).encode_moments(torch.empty(1, 3, 9, 64, 64))
    assert latents.shape == (1, 2 * m.vae.z_channels, 3, m.latent_height, m.latent_width) == (1, 32, 3, 16, 16)
    assert compose(["model=tiny"], config_name="train").data.skip_frms_num == 3  # other models keep SAT's cut


def test_objective_and_measure():
    mean, logvar = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    posterior = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    expected = torch.distributions.kl_divergence(posterior, torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(kl_per_clip(mean, logvar), expected)
    video = torch.zeros(2, 3, 1, 4, 4)
    off = video.clone()
    off[1] += 2 / 255  # one clip off by 1 of 255 everywhere: PSNR 20 log10(255) = 48.13 dB
    psnr = psnr_db(video, off)
    assert psnr[0] > 140 and abs(float(psnr[1]) - 48.1308) < 1e-3  # identical clips: capped, finite
    assert holdout_indices(6, 2) == [1, 4] and holdout_indices(200, 4) == [25, 75, 125, 175]


def square_on_grey() -> torch.Tensor:
    """One clip (1, 3, 2, 32, 32): a grey frame with an 8x8 red square, which moves 4 pixels right in frame 1."""
    video = torch.full((1, 3, 2, 32, 32), -0.2)
    red = torch.tensor([0.8, -0.7, -0.7])[:, None, None]
    video[0, :, 0, 10:18, 6:14] = red
    video[0, :, 1, 10:18, 10:18] = red
    return video


def test_the_foreground_is_the_shape_and_its_psnr_sees_a_lost_shape():
    video = square_on_grey()
    mask = foreground_mask(video)
    assert mask.shape == (1, 1, 2, 32, 32) and mask.sum() == 2 * 64
    assert mask[0, 0, 0, 10:18, 6:14].all() and mask[0, 0, 1, 10:18, 10:18].all()
    lost = torch.full_like(video, -0.2)  # the background kept, the shape lost
    assert psnr_db(video, lost) > 20.0 > 12.0 > foreground_psnr_db(video, lost)
    assert foreground_psnr_db(video, video) > 100.0
    assert foreground_psnr_db(torch.zeros(1, 3, 1, 8, 8), torch.zeros(1, 3, 1, 8, 8)).isnan().all()  # no shape


@pytest.mark.parametrize("loss", ["l1", "mse"])
def test_foreground_weight_weighs_the_shape_pixels(tmp_path, loss):
    """The reconstruction term with train.vae.foreground_weight=w is the mean of the per-pixel error weighted by
    1 + w on the shape's pixels, over the mean weight; w = 0 is the plain mean."""
    video = square_on_grey()
    lost = torch.full_like(video, -0.2)
    error = (lost - video).abs() if loss == "l1" else (lost - video).pow(2)
    fraction = 2 * 64 / (2 * 32 * 32)  # of the pixels that are the shape's
    for w in (0.0, 10.0):
        module = VaeModule(vae_cfg(None, tmp_path, f"train.vae.loss={loss}", f"train.vae.foreground_weight={w}"))
        module.vae.encode_moments = lambda x: torch.zeros(x.shape[0], 8, 1, 4, 4)  # noqa: B023
        module.vae.decode = lambda z: lost  # noqa: B023
        got = module.losses(video, torch.Generator().manual_seed(0))["reconstruction"]
        weight = 1.0 + w * foreground_mask(video)
        torch.testing.assert_close(got, (error * weight).mean() / weight.mean())
        assert abs(float(got) - float(error.sum(1).mean()) / 3 * (1 + w) / (1 + w * fraction)) < 1e-5


def test_edge_weight_charges_a_moved_edge_and_not_a_colour_offset(tmp_path):
    """train.vae.edge_weight adds the same term on the frames' pixel differences: a reconstruction off by a constant
    colour keeps every edge and costs no more; one whose square sits a pixel off costs more."""
    video = square_on_grey()
    offset = video + 0.1
    moved = video.roll(1, dims=-1)
    for reconstruction, dearer in ((offset, False), (moved, True)):
        losses = []
        for w in (0.0, 1.0):
            module = VaeModule(vae_cfg(None, tmp_path, "train.vae.loss=mse", f"train.vae.edge_weight={w}"))
            module.vae.encode_moments = lambda x: torch.zeros(x.shape[0], 8, 1, 4, 4)
            module.vae.decode = lambda z: reconstruction  # noqa: B023
            losses.append(float(module.losses(video, torch.Generator().manual_seed(0))["reconstruction"]))
        assert (losses[1] > 1.5 * losses[0]) if dearer else losses[1] == pytest.approx(losses[0], abs=1e-7), losses


def test_a_frozen_encoder_keeps_the_latents_and_trains_the_decoder(tmp_path, shapes_dir):
    """train.vae.freeze_encoder=true from train.vae.init: the encoder's weights (so the latents a DiT learned) are
    the init's, bit for bit; the decoder's are trained."""
    init = tmp_path / "init.pt"
    L.seed_everything(0, verbose=False)
    start = VaeModule(vae_cfg(None, tmp_path)).vae.state_dict()
    write_sat_model_states(init, start, wrapper="state_dict", desc="vae")
    cfg = vae_cfg(
        shapes_dir, tmp_path / "out", "train.max_steps=2", f"train.vae.init={init}", "train.vae.freeze_encoder=true"
    )
    trained = run_train(cfg).module.vae.state_dict()
    encoder = [k for k in start if k.startswith("encoder.")]
    decoder = [k for k in start if k.startswith("decoder.")]
    assert encoder and all(torch.equal(trained[k], start[k]) for k in encoder)
    assert any(not torch.equal(trained[k], start[k]) for k in decoder)


def test_vae_training_writes_a_sat_vae_that_loads_decodes_and_exports(tmp_path, shapes_dir):
    out = tmp_path / "out"
    cfg = vae_cfg(shapes_dir, out, "train.max_steps=8", "train.checkpoint_every=4", "train.lr=3e-3")
    train_clips = [c for i, c in enumerate(find_clips(cfg)) if i not in holdout_indices(6, 2)]
    videos = collate([VideoClips(train_clips, clip_spec(cfg))[(i, 0)] for i in range(4)])["video"]
    batch = videos.permute(0, 2, 1, 3, 4)  # (4, 3, 9, 32, 32)

    def reconstruction_loss(module: VaeModule) -> float:
        with torch.no_grad():
            return float(module.losses(batch, torch.Generator().manual_seed(0))["reconstruction"])

    L.seed_everything(cfg.train.seed, verbose=False)  # as run_train does: the same initial VAE
    before = reconstruction_loss(VaeModule(cfg))
    result = run_train(cfg)
    after = reconstruction_loss(result.module)
    assert after < 0.8 * before, (before, after)
    assert result.final_step == 8 and result.checkpoints == [4, 8]

    # SAT's file, strictly loaded into the configured size: the trained weights
    assert result.vae_ckpt == out / "vae" / "3d-vae.pt"
    raw = safe_torch_load(result.vae_ckpt)
    assert list(raw) == ["state_dict"] and {k.split(".")[0] for k in raw["state_dict"]} == {"encoder", "decoder"}
    vae = load_sat_vae(result.vae_ckpt, CausalVideoVAE.from_config(cfg.model.vae))
    trained = result.module.vae.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in vae.state_dict().items())

    # the inference decode (SAT v1.0 chunks) is the training decode for 9 frames (3 latents, one chunk)
    with torch.no_grad():
        mean = vae.encode_moments(batch[:2]).chunk(2, dim=1)[0]
        torch.testing.assert_close(vae.decode_chunked(mean, "v1_0"), vae.decode(mean), rtol=0, atol=1e-6)

    report = json.loads((out / "vae_eval.json").read_text())
    assert report["step"] == 8 and report["vae_ckpt"] == "vae/3d-vae.pt" and report["vae_ckpt_step"] == 8
    assert [h["step"] for h in report["history"]] == [0, 4, 8] and report["psnr_db"] == result.psnr_db
    assert len(report["psnr_db_per_clip"]) == len(report["holdout_clips"]) == 2
    # (learning is checked above on the training clips: the shapes data's large shapes (v2) take more than these 8
    # steps before the two held-out clips' PSNR rises above the random VAE's, so it is recorded, not compared)
    assert all(h["psnr_db"] > 5.0 for h in report["history"])
    assert report["latent_std"] > 0 and (out / "train_log.jsonl").is_file()

    export = compose(
        [
            "model=shapes",
            "task=to_diffusers",
            *TINY_VAE[:2],
            f"model.vae_ckpt={result.vae_ckpt}",
            "parts=[vae]",
            f"out={tmp_path / 'diffusers'}",
        ],
        config_name="export",
    )
    reports = run_export(export)
    assert (tmp_path / "diffusers" / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    config = json.loads((tmp_path / "diffusers" / "vae" / "config.json").read_text())
    assert config["latent_channels"] == 4 and config["block_out_channels"] == [32, 32, 32, 32]
    assert "vae" in reports


@pytest.mark.parametrize(
    "extra,message",
    [
        ((), "exactly one of data.root"),
        (("train.devices=2",), "task=vae trains in one process"),
        (("train=ddp", "train.devices=2"), "task=vae trains in one process"),
        (("train.resume=auto",), "train.resume=auto acts only with task=fit"),
        (("data.cache=/tmp/latents",), "not on data.cache latents"),
        (("train.vae.holdout=6",), "6 clips, train.vae.holdout=6"),
        (("train.vae.init=/nonexistent/3d-vae.pt",), "train.vae.init=/nonexistent/3d-vae.pt: no such file"),
        (("train.vae.foreground_weight=-1",), "train.vae.foreground_weight=-1.0 must be >= 0"),
        (("train.vae.edge_weight=-1",), "train.vae.edge_weight=-1.0 must be >= 0"),
        (("train.vae.freeze_encoder=true",), "train.vae.freeze_encoder=true keeps a trained encoder"),
    ],
)
def test_bad_input_is_one_line_before_any_file(tmp_path, shapes_dir, extra, message):
    out = tmp_path / "out"
    data = None if not extra else shapes_dir
    with pytest.raises(CogvidError, match=message) as info:
        run_train(vae_cfg(data, out, "train.max_steps=1", *extra))  # a missing check fails in seconds, not a run
    assert "\n" not in str(info.value) and not out.exists()
