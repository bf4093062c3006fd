"""cogvid-sample end to end on the tiny model: the original's latents through the whole pipeline, MP4 files,
determinism, image-to-video, prompt sources, sweeps with a contact sheet, torchrun sharding, and bad input."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURE, TIMEOUT, child_env, reference, run_cli, run_ranks, text_contexts
from PIL import Image
from safetensors.torch import load_file

import cogvid.inference.pipeline
from cogvid import compose
from cogvid.diffusion.model import DiffusionModel
from cogvid.inference.pipeline import VideoPipeline
from cogvid.sat.checkpoint import save_sat_checkpoint
from cogvid.utils.errors import CogvidError
from cogvid.utils.media import read_mp4

BIN = Path(sys.executable).parent
VAE = FIXTURE / "vae" / "3d-vae.pt"
STEPS = "sampler.num_steps=3"


def tiny(tmp_path: Path, t5: Path, *overrides: str, ckpt: Path = FIXTURE / "dit_ckpt"):
    return compose(
        [
            "model=tiny",
            f"model.ckpt={ckpt}",
            f"model.vae_ckpt={VAE}",
            f"model.text_encoder.path={t5}",
            f"infer.output_dir={tmp_path / 'out'}",
            "device=cpu",
            *overrides,
        ]
    )


def sample(cfg, stdin=None) -> list[Path]:
    from cogvid.inference.run import run_sample

    return run_sample(cfg, stdin=stdin)


def videos(out: Path) -> list[Path]:
    return sorted((out / "samples").glob("*.mp4"))


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# ------------------------------------------------------------------------------------------------------------
# The whole pipeline against the original


class FixedText(torch.nn.Module):
    """A text encoder that returns the fixture's recorded T5 output, so the pipeline sees the original's inputs."""

    def __init__(self, cond: torch.Tensor):
        super().__init__()
        self.cond = cond

    def encode(self, prompts):
        return self.cond.expand(len(prompts), -1, -1)


def test_pipeline_reproduces_the_original_latents_from_its_seed(tmp_path, tiny_t5_dir):
    ref = reference("sampler_50step")
    cfg = tiny(tmp_path, tiny_t5_dir)
    pipeline = VideoPipeline.from_config(cfg)
    pipeline.text_encoder = FixedText(ref["cond_crossattn"])
    assert ref["uncond_crossattn"].abs().max() == 0  # the original's unconditional context: zeros
    result = pipeline.generate("ignored", seed=20240003)
    sat_latents = ref["out_latent"].permute(0, 2, 1, 3, 4) / cfg.model.scale_factor  # unscaled, (b, c, t, h, w)
    assert (result.latents - sat_latents).abs().max() <= 1e-4
    # decoded as SAT v1.0 does: 3 latents -> one chunk -> 9 frames of 48x64
    assert tuple(result.video.shape) == (3, 9, 48, 64)
    expected = pipeline.vae.decode_chunked(sat_latents, "v1_0")[0]
    assert (result.video - expected).abs().max() <= 1e-4


# ------------------------------------------------------------------------------------------------------------
# Files, determinism


def test_mp4_has_the_requested_frames_and_size_and_a_sidecar(tmp_path, tiny_t5_dir):
    cfg = tiny(tmp_path, tiny_t5_dir, STEPS, "infer.prompt=a red fox in snow", "infer.height=32", "infer.width=48")
    written = sample(cfg)
    mp4 = tmp_path / "out" / "samples" / "0000_a_red_fox_in_snow.mp4"
    assert mp4 in written
    frames = read_mp4(mp4)
    assert frames.shape == (9, 32, 48, 3)
    meta = json.loads(mp4.with_suffix(".json").read_text())
    assert meta["prompt"] == "a red fox in snow" and meta["seed"] == 42 and meta["steps"] == 3
    assert meta["model"] == "cogvideox-tiny" and meta["sampler"]["solver"] == "dpmpp2m_sde"
    assert meta["guidance_scale"] == 6.0 and meta["fps"] == 8 and len(meta["config_hash"]) == 16
    assert set(meta["timings"]) == {"text_s", "sampling_s", "decoding_s", "peak_memory_gb"}
    assert not [p for p in all_files(tmp_path / "out") if p.name.startswith(".")]  # no temporary file left


def test_same_seed_same_bytes_other_seed_differs(tmp_path, tiny_t5_dir):
    def run(name: str, seed: int):
        out = tmp_path / name
        cfg = tiny(out, tiny_t5_dir, STEPS, "infer.prompt=a cat", f"infer.seed={seed}", "infer.save_latents=true")
        sample(cfg)
        mp4 = videos(out / "out")[0]
        latents = load_file(mp4.with_name(mp4.stem + ".latents.safetensors"))["latents"]
        return hashlib.sha256(mp4.read_bytes()).hexdigest(), latents

    digest_a, latents_a = run("a", 7)
    digest_b, latents_b = run("b", 7)
    digest_c, latents_c = run("c", 8)
    assert torch.equal(latents_a, latents_b) and digest_a == digest_b
    assert not torch.equal(latents_a, latents_c) and digest_a != digest_c
    assert latents_a.shape == (1, 16, 3, 6, 8)  # unscaled, VAE layout (b, c, t, h, w)


def test_prompts_file_and_videos_per_prompt(tmp_path, tiny_t5_dir):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox in snow\n\n   \nwaves at sunset\n", encoding="utf-8")
    cfg = tiny(tmp_path, tiny_t5_dir, STEPS, f"infer.prompts_file={prompts}", "infer.num_videos_per_prompt=2")
    sample(cfg)
    names = [p.name for p in videos(tmp_path / "out")]
    assert names == [
        "0000_a_red_fox_in_snow.mp4",
        "0001_a_red_fox_in_snow.mp4",
        "0002_waves_at_sunset.mp4",
        "0003_waves_at_sunset.mp4",
    ]
    seeds = [json.loads(p.with_suffix(".json").read_text())["seed"] for p in videos(tmp_path / "out")]
    assert seeds == [42, 43, 44, 45]


def test_interactive_reads_standard_input_until_eof(tmp_path, tiny_t5_dir):
    import io

    cfg = tiny(tmp_path, tiny_t5_dir, STEPS, "infer.interactive=true")
    sample(cfg, stdin=io.StringIO("a panda\n\nan astronaut\n"))
    assert [p.name for p in videos(tmp_path / "out")] == ["0000_a_panda.mp4", "0001_an_astronaut.mp4"]


def test_negative_prompt_is_the_unconditional_context_when_asked(tmp_path, tiny_t5_dir):
    base = tiny(tmp_path, tiny_t5_dir, STEPS, "infer.prompt=a cat")
    pipeline = VideoPipeline.from_config(base)
    _, zeros = text_contexts(pipeline, "a cat", "blurry")
    assert zeros.abs().max() == 0
    neg = tiny(tmp_path, tiny_t5_dir, STEPS, "sampler.uncond=negative_prompt", "infer.negative_prompt=blurry")
    pipeline = VideoPipeline.from_config(neg)
    _, uncond = text_contexts(pipeline, "a cat", "blurry")
    assert torch.equal(uncond, pipeline.text_encoder.encode(["blurry"]))
    sample(
        tiny(
            tmp_path,
            tiny_t5_dir,
            STEPS,
            "sampler.uncond=negative_prompt",
            "infer.negative_prompt=blurry",
            "infer.prompt=a cat",
        )
    )
    meta = json.loads(videos(tmp_path / "out")[0].with_suffix(".json").read_text())
    assert meta["negative_prompt"] == "blurry" and meta["uncond"] == "negative_prompt"


def test_a_second_run_into_the_same_dir_keeps_every_earlier_video(tmp_path, tiny_t5_dir):
    def run(seed: int, n: int = 1) -> list[Path]:
        overrides = [
            "sampler.num_steps=1",
            "infer.prompt=a cat",
            f"infer.seed={seed}",
            f"infer.num_videos_per_prompt={n}",
        ]
        return [p for p in sample(tiny(tmp_path, tiny_t5_dir, *overrides)) if p.suffix == ".mp4"]

    first = run(7, n=2)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in first}
    second = run(8)
    assert [p.name for p in first] == ["0000_a_cat.mp4", "0001_a_cat.mp4"]
    assert [p.name for p in second] == ["0002_a_cat.mp4"]  # numbered after the highest index already there
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in first} == before  # untouched
    assert json.loads(second[0].with_suffix(".json").read_text())["seed"] == 8  # the seed is its own run's
    third = run(7)
    assert third[0].name == "0003_a_cat.mp4" and third[0].read_bytes() == first[0].read_bytes()  # same seed, same video


def test_prompts_cannot_escape_the_output_dir_or_collide(tmp_path, tiny_t5_dir):
    prompts = tmp_path / "p.txt"
    long = "a very long prompt " * 27  # 500+ characters
    prompts.write_text(f"../../escape/../x\n{long}\n/etc/passwd\n../../escape/../x\n", encoding="utf-8")
    sample(tiny(tmp_path, tiny_t5_dir, "sampler.num_steps=1", f"infer.prompts_file={prompts}"))
    files = all_files(tmp_path)
    outside = [p for p in files if (tmp_path / "out") not in p.parents and p != prompts]
    assert outside == []
    names = [p.name for p in videos(tmp_path / "out")]
    assert len(names) == len(set(names)) == 4
    assert all(len(n) <= 4 + 1 + 60 + 4 and "/" not in n and ".." not in n for n in names)


# ------------------------------------------------------------------------------------------------------------
# Image to video


def save_tiny_i2v(tmp_path: Path, *model_overrides: str) -> tuple[Path, list[str]]:
    """A random tiny I2V DiT saved in SAT's layout; returns its folder and the overrides that describe it."""
    overrides = ["model.in_channels=32", "model.noised_image_input=true", *model_overrides]
    cfg = compose(["model=tiny", *overrides])
    torch.manual_seed(0)
    model = DiffusionModel.from_model_config(cfg.model)
    for p in model.backbone.parameters():
        torch.nn.init.normal_(p, std=0.02)
    folder = tmp_path / "i2v_ckpt"
    save_sat_checkpoint(model.backbone, folder, 1)
    return folder, overrides


def write_image(path: Path, size=(80, 50)) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_image_to_video_v1_0(tmp_path, tiny_t5_dir):
    ckpt, overrides = save_tiny_i2v(tmp_path)
    image = write_image(tmp_path / "first.png")
    cfg = tiny(tmp_path, tiny_t5_dir, STEPS, *overrides, f"infer.image={image}", "infer.prompt=the fox runs", ckpt=ckpt)
    sample(cfg)
    frames = read_mp4(videos(tmp_path / "out")[0])
    assert frames.shape == (9, 48, 64, 3)  # v1.0: cropped to the requested size, whatever the image's aspect


def test_image_latent_is_frame_zero_then_zeros_scaled_as_the_original(tmp_path, tiny_t5_dir):
    ckpt, overrides = save_tiny_i2v(tmp_path)
    cfg = tiny(tmp_path, tiny_t5_dir, *overrides, ckpt=ckpt)
    pipeline = VideoPipeline.from_config(cfg)
    image = Image.open(write_image(tmp_path / "first.png"))
    shape = pipeline.shape_for()
    concat = pipeline.image_conditioning(image, shape, torch.Generator().manual_seed(1)).concat
    assert concat.shape == (1, 3, 16, 6, 8) and concat[:, 1:].abs().max() == 0
    # v1.0 (auto) conditions on scale_factor x the posterior sample; `unscaled` on the raw sample (same noise)
    unscaled = tiny(tmp_path, tiny_t5_dir, *overrides, "infer.image_latent_scaling=unscaled", ckpt=ckpt)
    raw = VideoPipeline.from_config(unscaled).image_conditioning(image, shape, torch.Generator().manual_seed(1)).concat
    assert torch.allclose(concat, raw * cfg.model.scale_factor, atol=1e-6)


def test_image_to_video_1_5_sizes_from_the_image_aspect(tmp_path, tiny_t5_dir):
    v15 = [
        "model.generation=v1_5",
        "model.patch_size_t=2",
        "model.pos_embed=rope",
        "model.ofs_embed_dim=48",
        "model.num_frames=17",
        "model.latent_height=12",
        "model.latent_width=12",
    ]
    ckpt, overrides = save_tiny_i2v(tmp_path, *v15)
    image = write_image(tmp_path / "wide.png", size=(90, 60))  # 3:2 landscape -> 48 x round16(72) = 48 x 80
    cfg = tiny(
        tmp_path,
        tiny_t5_dir,
        STEPS,
        *overrides,
        f"infer.image={image}",
        "infer.prompt=a boat",
        "infer.num_frames=9",
        ckpt=ckpt,
    )
    sample(cfg)
    frames = read_mp4(videos(tmp_path / "out")[0])
    assert frames.shape == (9, 48, 80, 3)  # 9 frames: 3 latents padded to 4, the padding latent dropped at decode


# ------------------------------------------------------------------------------------------------------------
# Sweeps and several processes (the real entry point)


def cli(*args: str, cwd: Path, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """cogvid-sample with one torch thread: forked from the tests' zygote (conftest.run_cli), or under `launcher`
    (e.g. torchrun) as a console script."""
    if launcher is None:
        return run_cli("cogvid-sample", *args, cwd=cwd, env={"OMP_NUM_THREADS": "1"})
    command = [*launcher, str(BIN / "cogvid-sample"), *args]
    env = child_env({"OMP_NUM_THREADS": "1"})
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=TIMEOUT)


def weights(t5: Path) -> list[str]:
    return [
        "model=tiny",
        f"model.ckpt={FIXTURE / 'dit_ckpt'}",
        f"model.vae_ckpt={VAE}",
        f"model.text_encoder.path={t5}",
    ]


def test_sweep_runs_every_combination_and_draws_a_contact_sheet(tmp_path, tiny_t5_dir):
    result = cli(
        "-m",
        *weights(tiny_t5_dir),
        "infer.prompt=a red fox in snow",
        "sampler.guidance_scale=3,9",
        "sampler.num_steps=1,2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "sweep"
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert runs == ["0", "1", "2", "3"] and all(len(videos(sweep / r)) == 1 for r in runs)
    index = json.loads((sweep / "contact_sheet.json").read_text())
    assert index["rows"] == "sampler.guidance_scale" and index["columns"] == ["sampler.num_steps"]
    cells = {(c["row"], c["col"]): c for c in index["cells"]}
    assert len(cells) == 4
    assert cells[(1, 0)]["values"] == {"sampler.guidance_scale": "9", "sampler.num_steps": "1"}
    assert cells[(1, 0)]["label"] == "guidance_scale=9 num_steps=1"
    sheet = np.asarray(Image.open(sweep / "contact_sheet.png").convert("RGB"))
    for cell in cells.values():  # each cell shows its own video's first, middle and last frames
        x0, y0, x1, y1 = cell["box"]
        frames = read_mp4(sweep / cell["video"])
        strip = np.concatenate([frames[0], frames[len(frames) // 2], frames[-1]], axis=1)
        assert np.array_equal(sheet[y0:y1, x0:x1], strip)
        meta = json.loads((sweep / cell["video"]).with_suffix(".json").read_text())
        assert str(meta["guidance_scale"]).rstrip("0").rstrip(".") == cell["values"]["sampler.guidance_scale"]


def test_torchrun_shards_prompts_across_ranks(tmp_path, tiny_t5_dir):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one fox\ntwo cats\nthree dogs\nfour birds\n")
    result = cli(
        *weights(tiny_t5_dir),
        f"infer.prompts_file={prompts}",
        "sampler.num_steps=1",
        cwd=tmp_path,
        launcher=[str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = [p.parent for p in (tmp_path / "outputs").rglob("samples")]
    assert len(run_dirs) == 1  # every rank wrote into rank 0's run dir
    metas = [json.loads(p.read_text()) for p in sorted((run_dirs[0] / "samples").glob("*.json"))]
    assert sorted(m["prompt"] for m in metas) == ["four birds", "one fox", "three dogs", "two cats"]
    by_rank = {r: sorted(m["index"] for m in metas if m["rank"] == r) for r in (0, 1)}
    assert by_rank == {0: [0, 2], 1: [1, 3]}


ENV_OF_RANK = """import json, os, sys
print(json.dumps({k: v for k, v in os.environ.items() if k not in json.loads(sys.argv[1])}))
"""


def test_forked_ranks_get_the_environment_torchrun_gives_and_fail_together(tmp_path):
    """conftest.run_ranks, which the DeepSpeed and sequence-parallel tests start their ranks with, against real
    torchrun: the same variables with the same values, but for the rendezvous port and run id and the agent's own
    (its store and error files). A failing rank ends the run with its exit code, and the others are killed."""
    script = tmp_path / "env_of_rank.py"
    script.write_text(ENV_OF_RANK)
    before = json.dumps(sorted({**os.environ, "PYTHONUNBUFFERED": "1"}))
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(script), before]
    real = subprocess.run(torchrun, capture_output=True, text=True, cwd=tmp_path, timeout=TIMEOUT)
    forked = run_ranks(2, before, script=script, cwd=tmp_path)
    assert real.returncode == forked.returncode == 0, (real.stderr[-2000:], forked.stderr[-2000:])
    agent = {"TORCHELASTIC_ERROR_FILE", "TORCHELASTIC_USE_AGENT_STORE"}
    varying = {"MASTER_PORT", "TORCHELASTIC_RUN_ID"}
    launcher = {"_", "LINES", "COLUMNS"}  # what torchrun's own process set for itself (its path, the terminal size)

    def by_rank(out: str) -> dict[str, dict[str, str]]:
        ranks = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return {r["RANK"]: {k: v for k, v in r.items() if k not in agent | varying | launcher} for r in ranks}

    assert by_rank(forked.stdout) == by_rank(real.stdout) and sorted(by_rank(real.stdout)) == ["0", "1"]
    script.write_text("import os, time\nif os.environ['RANK'] == '1':\n    raise SystemExit(3)\ntime.sleep(600)\n")
    start = time.monotonic()
    assert run_ranks(2, script=script, cwd=tmp_path).returncode == 3
    assert time.monotonic() - start < 300  # rank 0 was killed, not waited for


# ------------------------------------------------------------------------------------------------------------
# Bad input: one line, nothing written


def not_utf8(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.txt"
    path.write_bytes("a caf\xe9 at night\n".encode("latin-1"))
    return path


def text_file(tmp_path: Path, text: str, name: str = "p.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BAD = {
    "frames not 8k+1": (lambda t: ["infer.num_frames=8"], "nearest valid value is 9"),
    "too many frames": (lambda t: ["infer.num_frames=49"], "nearest valid value is 9"),
    "zero frames": (lambda t: ["infer.num_frames=0"], "nearest valid value is 1"),
    "height not a multiple of 16": (lambda t: ["infer.height=40"], "nearest valid value is 48"),
    "width beyond the model": (lambda t: ["infer.width=2000"], "nearest valid value is 64"),
    "no checkpoint": (lambda t: ["model.ckpt=null"], "model.ckpt is not set"),
    "checkpoint path missing": (lambda t: [f"model.ckpt={t / 'nope'}"], "expected the SAT transformer folder"),
    "vae missing": (lambda t: [f"model.vae_ckpt={t / 'vae.pt'}"], "vae/3d-vae.pt"),
    "vae is the DiT": (
        lambda t: [f"model.vae_ckpt={FIXTURE / 'dit_ckpt' / '1000' / 'mp_rank_00_model_states.pt'}"],
        "does not fit the VAE",
    ),
    "t5 folder missing": (lambda t: [f"model.text_encoder.path={t / 'no_t5'}"], "model.text_encoder.path"),
    "image given to text-to-video": (
        lambda t: [f"infer.image={write_image(t / 'i.png')}"],
        "text-to-video, so it takes no image",
    ),
    "prompts file missing": (lambda t: ["infer.prompt=null", f"infer.prompts_file={t / 'none.txt'}"], "no such file"),
    "prompts file empty": (
        lambda t: ["infer.prompt=null", f"infer.prompts_file={text_file(t, chr(10) * 3)}"],
        "holds no prompts",
    ),
    "prompts file is a folder": (lambda t: ["infer.prompt=null", f"infer.prompts_file={t}"], "is a folder"),
    "prompts file not utf-8": (
        lambda t: ["infer.prompt=null", f"infer.prompts_file={not_utf8(t)}"],
        "not UTF-8 text (byte 0xe9 on line 1)",
    ),
    "image line without image": (
        lambda t: ["infer.prompt=null", f"infer.prompts_file={text_file(t, 'a fox@@  ')}"],
        "nothing after '@@'",
    ),
    "two prompt sources": (lambda t: [f"infer.prompts_file={text_file(t, 'x')}"], "exactly one prompt source"),
    "no prompt source": (lambda t: ["infer.prompt=null"], "exactly one prompt source"),
    "empty prompt": (lambda t: ["infer.prompt=' '"], "infer.prompt is empty"),
    "output dir under a file": (lambda t: [f"infer.output_dir={text_file(t, 'x', 'f')}/sub"], "lies under a file"),
    "zero videos per prompt": (lambda t: ["infer.num_videos_per_prompt=0"], "must be >= 1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path, tiny_t5_dir):
    make, fragment = BAD[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    overrides = make(inputs)
    cfg = tiny(tmp_path, tiny_t5_dir, STEPS, "infer.prompt=a fox", *overrides)
    with pytest.raises(CogvidError) as error:
        sample(cfg)
    message = str(error.value)
    assert fragment in message and "\n" not in message, message
    assert [p for p in all_files(tmp_path / "out") if p.suffix in (".mp4", ".json")] == []


def test_i2v_without_or_with_an_unreadable_image(tmp_path, tiny_t5_dir):
    ckpt, overrides = save_tiny_i2v(tmp_path)
    with pytest.raises(CogvidError, match="is image-to-video; give infer.image"):
        sample(tiny(tmp_path, tiny_t5_dir, *overrides, "infer.prompt=x", ckpt=ckpt))
    with pytest.raises(CogvidError, match="no image file at"):
        sample(tiny(tmp_path, tiny_t5_dir, *overrides, "infer.prompt=x", f"infer.image={tmp_path}/no.png", ckpt=ckpt))
    fake = text_file(tmp_path, "not an image", "fake.png")
    with pytest.raises(CogvidError, match="is not a readable image"):
        sample(tiny(tmp_path, tiny_t5_dir, *overrides, "infer.prompt=x", f"infer.image={fake}", ckpt=ckpt))
    assert videos(tmp_path / "out") == []


def test_nan_latents_stop_with_advice_and_no_file(tmp_path, tiny_t5_dir, monkeypatch):
    monkeypatch.setattr(
        cogvid.inference.pipeline, "sample_latents", lambda *a, **k: torch.full((1, 3, 16, 6, 8), float("nan"))
    )
    with pytest.raises(CogvidError, match="NaN or inf .*dtype=bf16"):
        sample(tiny(tmp_path, tiny_t5_dir, "infer.prompt=a fox"))
    assert all_files(tmp_path / "out") == []


def test_an_interrupted_write_leaves_no_half_video(tmp_path, tiny_t5_dir, monkeypatch):
    import subprocess

    class Interrupted(Exception):
        pass

    class StoppedEncoder(subprocess.Popen):
        """ffmpeg gets half of the frames, then the run is interrupted: the MP4's temp file is begun."""

        def communicate(self, input=None, timeout=None):
            self.stdin.write(input[: len(input) // 2])
            raise Interrupted()

    monkeypatch.setattr(subprocess, "Popen", StoppedEncoder)
    with pytest.raises(Interrupted):
        sample(tiny(tmp_path, tiny_t5_dir, STEPS, "infer.prompt=a fox"))
    assert all_files(tmp_path / "out") == []


def test_cli_bad_inputs_exit_2_without_traceback(tmp_path, tiny_t5_dir):
    for overrides, fragment in (
        (["infer.prompt=a fox", "infer.num_frames=50"], "nearest valid value is 49"),
        (["infer.prompt=a fox", "infer.width=100"], "nearest valid value is 96"),
        ([f"infer.prompts_file={not_utf8(tmp_path)}"], "not UTF-8"),
    ):
        result = cli("model=2b", *overrides, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and fragment in errors[0], result.stderr


def test_cfg_job_prints_the_composed_config(tmp_path):
    result = cli("model=1.5_5b", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "default_height: 768" in result.stdout and "text_length: 224" in result.stdout


def test_tiled_decode_keeps_the_video_size(tmp_path, tiny_t5_dir):
    cfg = tiny(tmp_path, tiny_t5_dir, "sampler.num_steps=1", "infer.prompt=a fox", "infer.vae_tile=[4,4]")
    pipeline = VideoPipeline.from_config(cfg)
    latents = torch.randn(1, 3, 16, 6, 8)
    tiled = pipeline.decode(latents)
    assert tiled.shape == (3, 9, 48, 64)
    # tiles overlap and blend: close to the whole-frame decode, not equal (GroupNorm statistics per tile)
    whole = pipeline.vae.decode_chunked(latents.permute(0, 2, 1, 3, 4) / cfg.model.scale_factor, "v1_0")[0]
    assert 0 < (tiled - whole).abs().mean() < 0.5
