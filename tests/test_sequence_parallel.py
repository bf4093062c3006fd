"""One video over 2 and 4 gloo processes (cogvid.parallel.sequence): each rank runs the DiT's blocks on its share of
the video tokens, and the output equals the single-process forward, for the SAT fixture's 2B and for the 5B, 1.5 and
image-to-video layouts (RoPE, temporal patches, learnable positions, ofs)."""

from __future__ import annotations

import json
import multiprocessing
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURE, run_ranks
from safetensors.torch import load_file
from test_sample import cli, weights

from cogvid import CogvidError, compose
from cogvid.models.dit import DiffusionTransformer
from cogvid.parallel.sequence import SequenceShard
from cogvid.sat.loading import build_model
from cogvid.utils.media import read_mp4

FORK = multiprocessing.get_context("fork")
SMALL = ["model.hidden_size=64", "model.num_attention_heads=4", "model.num_layers=2", "model.time_embed_dim=64"]
SMALL += ["model.text_length=8", "model.text_hidden_size=32", "model.text_encoder.path=null"]
GRID_8 = ["model.latent_height=8", "model.latent_width=8"]
LAYOUTS = {  # name: (overrides, latent frames, height, width); the grid is the model's own
    "2b-fixture": (["model=tiny", f"model.ckpt={FIXTURE / 'dit_ckpt'}"], 3, 6, 8),
    "5b": (["model=5b", *SMALL, "model.num_frames=9", *GRID_8], 3, 8, 8),
    "1.5": (["model=1.5_5b", *SMALL, "model.num_frames=21", *GRID_8], 6, 8, 8),
    "1.5-i2v": (["model=1.5_5b_i2v", *SMALL, "model.ofs_embed_dim=64", "model.num_frames=21", *GRID_8], 6, 8, 8),
    "2b-fixture-lora": (
        ["model=tiny", "mode=lora", "model.lora_rank=4", f"model.ckpt={FIXTURE / 'lora_ckpt'}"],
        3,
        6,
        8,
    ),
    "5b-uneven": (
        ["model=5b", *SMALL, "model.num_frames=9", "model.latent_height=10", "model.latent_width=6"],
        3,
        10,
        6,
    ),
    "5b-i2v": (["model=5b_i2v", *SMALL, "model.num_frames=9", *GRID_8], 3, 8, 8),
}


def network(name: str) -> DiffusionTransformer:
    """The layout's DiT: the fixture's weights, or seeded random ones (the from-scratch init leaves zeros)."""
    overrides = LAYOUTS[name][0]
    backbone = build_model(compose(overrides).model).backbone.eval()
    if "model.ckpt" not in " ".join(overrides):
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in backbone.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return backbone


def inputs(name: str, backbone: DiffusionTransformer) -> dict:
    _, t, h, w = LAYOUTS[name]
    cfg, generator = backbone.cfg, torch.Generator().manual_seed(1)
    return {
        "x": torch.randn(1, t, cfg.in_channels, h, w, generator=generator),
        "timesteps": torch.tensor([500.0]),
        "context": torch.randn(1, cfg.text_length, cfg.text_hidden_size, generator=generator),
        "ofs": torch.tensor([2.0]) if cfg.ofs_embed_dim else None,
    }


def _split_forward(rank: int, world: int, name: str, ring: int) -> torch.Tensor:
    backbone = network(name)
    shard = SequenceShard.build(0, world, ring, rank)
    return backbone(**inputs(name, backbone), shard=shard)


def run_split(name: str, world: int, ring: int = 1) -> list[torch.Tensor]:
    return run_on_ranks(world, _split_forward, name, ring)


def _on_rank(rank: int, world: int, port: int, work, args: tuple, results) -> None:
    """A forked gloo process: work(rank, world, *args), sent back by value (a tensor would travel as shared memory
    the exit frees), or what went wrong."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        with torch.no_grad():
            results.put((rank, work(rank, world, *args).numpy()))
    except Exception as ex:  # the parent reports it
        results.put((rank, repr(ex)))
    finally:
        torch.distributed.destroy_process_group()


def run_on_ranks(world: int, work, *args) -> list[torch.Tensor]:
    """work(rank, world, *args) in `world` forked gloo processes; every rank's result."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = FORK.Queue()
    procs = [FORK.Process(target=_on_rank, args=(r, world, port, work, args, results)) for r in range(world)]
    for p in procs:
        p.start()
    outs = dict(results.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    failed = {r: o for r, o in outs.items() if isinstance(o, str)}
    assert not failed, failed
    return [torch.from_numpy(outs[r]) for r in range(world)]


# the fixture's 2 heads split over 2 ranks at most (4 is refused in one line: the last test)
SPLITS = [(name, world) for name in LAYOUTS for world in (2, 4) if not (name.startswith("2b-fixture") and world == 4)]


# the ring degree (USP): ring only, on the fixture and on a grid neither 2 nor 4 divides; 2 rings x 2 Ulysses
RINGS = [("2b-fixture", 2, 2), ("5b-uneven", 2, 2), ("5b-uneven", 4, 2), ("1.5", 4, 4)]


@pytest.mark.distributed
@pytest.mark.parametrize(("name", "world", "ring"), [(n, w, 1) for n, w in SPLITS] + RINGS)
def test_the_split_forward_equals_one_process(name, world, ring):
    backbone = network(name)
    with torch.no_grad():
        expected = backbone(**inputs(name, backbone))
    outs = run_split(name, world, ring)
    for out in outs:  # every rank returns the whole output, the one the solver steps with
        assert out.shape == expected.shape
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert all(torch.equal(out, outs[0]) for out in outs)


def test_a_split_must_divide_the_heads_and_the_tokens_need_not_divide():
    shard = SequenceShard(rank=0, size=4)
    with pytest.raises(CogvidError, match="parallel.sequence=4 must divide the model's attention heads"):
        shard.for_video(n_video=36, n_heads=2)
    assert shard.for_video(45, 4).video_rows() == slice(0, 12)  # ceil(45 / 4) rows, the last rank's 9
    assert SequenceShard(3, 4).for_video(45, 4).video_rows() == slice(36, 45)


# ------------------------------------------------------------------------------------------------------------
# cogvid-sample under torchrun with parallel.sequence


def sampled(folder: Path) -> dict[str, tuple[torch.Tensor, np.ndarray, bytes]]:
    """prompt -> (latents, frames, MP4 bytes) of every video in a run's samples folder."""
    videos = {}
    for sidecar in (folder / "samples").glob("*.json"):
        meta = json.loads(sidecar.read_text())
        stem = sidecar.with_suffix("")
        latents = load_file(f"{stem}.latents.safetensors")["latents"]
        videos[meta["prompt"]] = (latents, read_mp4(f"{stem}.mp4"), Path(f"{stem}.mp4").read_bytes())
    return videos


@pytest.mark.distributed
def test_torchrun_groups_make_the_single_process_videos(tmp_path, tiny_t5_dir):
    """4 processes as parallel.cfg=2 x parallel.sequence=2 (the guidance passes run apart, each split over its tokens,
    and the VAE's chunks over all 4): every video is the one a single process makes, written once, by rank 0. (How
    groups of ranks take the prompts in turn is the prompt sharding of tests/test_sample.py, per group.)"""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one fox\ntwo cats\n")
    common = [*weights(tiny_t5_dir), f"infer.prompts_file={prompts}", "sampler.num_steps=2", "infer.save_latents=true"]
    single = cli(*common, f"infer.output_dir={tmp_path / 'single'}", cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    expected = sampled(tmp_path / "single")
    options = ["parallel.sequence=2", "parallel.cfg=2", f"infer.output_dir={tmp_path / 'split'}"]
    split = run_ranks(4, *common, *options, prog="cogvid-sample", cwd=tmp_path)  # as torchrun starts them
    assert split.returncode == 0, split.stderr[-3000:]
    made = sampled(tmp_path / "split")
    assert sorted(made) == sorted(expected) == ["one fox", "two cats"]  # each video once: one writer per group
    assert {json.loads(p.read_text())["rank"] for p in (tmp_path / "split" / "samples").glob("*.json")} == {0}
    for prompt, (latents, frames, mp4) in made.items():
        torch.testing.assert_close(latents, expected[prompt][0], rtol=0, atol=1e-5)
        assert np.array_equal(frames, expected[prompt][1]) and mp4 == expected[prompt][2]  # the same bytes


# ------------------------------------------------------------------------------------------------------------
# the VAE decode over the ranks (cogvid.parallel.vae_decode)

VAE_CASES = {  # name: (generation, latent frames, tile): v1.0's chunks [0:3], [3:5], ...; 1.5's after dropping latent 0
    "v1.0": ("v1_0", 7, None),  # chunks [0:3], [3:5], [5:7]
    "1.5": ("v1_5", 7, None),  # latents 1..6 in 3 chunks
    "v1.0-tiles": ("v1_0", 5, (4, 4)),
}


def fixture_vae():
    from cogvid.models.vae import CausalVideoVAE
    from cogvid.sat.checkpoint import load_sat_vae

    return load_sat_vae(FIXTURE / "vae" / "3d-vae.pt", CausalVideoVAE(32, (1, 1, 1, 1), 1, 16))


def vae_latents(frames: int) -> torch.Tensor:
    return torch.randn(1, 16, frames, 6, 8, generator=torch.Generator().manual_seed(2))


def _decode_on_ranks(rank: int, world: int, name: str) -> torch.Tensor:
    from cogvid.parallel.vae_decode import ChunkRing

    generation, frames, tile = VAE_CASES[name]
    return fixture_vae().decode_chunked(vae_latents(frames), generation, tile=tile, ring=ChunkRing(rank, world))


@pytest.mark.distributed
@pytest.mark.parametrize(("name", "world"), [("v1.0", 2), ("v1.0", 4), ("1.5", 3), ("v1.0-tiles", 2)])
def test_the_chunks_decoded_over_ranks_equal_one_process(name, world):
    generation, frames, tile = VAE_CASES[name]
    with torch.no_grad():
        expected = fixture_vae().decode_chunked(vae_latents(frames), generation, tile=tile)
    outs = run_on_ranks(world, _decode_on_ranks, name)
    for out in outs:  # every rank holds the whole video
        assert out.shape == expected.shape
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------------------------------------
# the two guidance passes on two ranks (cogvid.parallel.guidance)


def _guided_latents(split=None) -> torch.Tensor:
    from cogvid.diffusion.sampling import sample_latents

    cfg = compose(["model=tiny", f"model.ckpt={FIXTURE / 'dit_ckpt'}", "sampler.num_steps=3"])
    model = build_model(cfg.model)
    g = torch.Generator().manual_seed(3)
    cond = torch.randn(1, cfg.model.text_length, cfg.model.text_hidden_size, generator=g)
    return sample_latents(model, cfg.sampler, cond, shape=(3, 16, 6, 8), generator=g, split=split)


def _guided_on_ranks(rank: int, world: int) -> torch.Tensor:
    from cogvid.parallel.guidance import GuidanceSplit

    return _guided_latents(GuidanceSplit(rank))


@pytest.mark.distributed
def test_the_guidance_passes_on_two_ranks_equal_one_process():
    expected = _guided_latents()
    for out in run_on_ranks(2, _guided_on_ranks):
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
