"""The command lines as a user runs them: bad input is one line on stderr, exit code 2, no traceback."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import FIXTURE, TIMEOUT
from conftest import run_cli as run


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    assert fragment in errors[0], errors[0]


@pytest.fixture
def sample(tmp_path, tiny_t5_dir):
    """Run cogvid-sample on the tiny model with the fixture's VAE and a tiny T5, plus `overrides`."""

    def run_sample(*overrides: str) -> subprocess.CompletedProcess:
        return run(
            "cogvid-sample",
            "model=tiny",
            f"model.vae_ckpt={FIXTURE / 'vae' / '3d-vae.pt'}",
            f"model.text_encoder.path={tiny_t5_dir}",
            "infer.prompt=a red fox in snow",
            "sampler.num_steps=2",
            f"infer.output_dir={tmp_path / 'out'}",
            f"hydra.run.dir={tmp_path / 'run'}",
            *overrides,
        )

    return run_sample


def test_a_prompt_with_punctuation_works_as_typed(tmp_path, sample):
    """The shell passes these characters to Hydra as they are; the video's sidecar holds the prompt unchanged."""
    prompt = 'a fox\'s tail, "fast" = [1] (2) {3} costs $5 ${x} \\ à 日本 🦊'
    result = sample(
        f"model.ckpt={FIXTURE / 'dit_ckpt'}",
        f"infer.prompt={prompt}",
        f"infer.negative_prompt={prompt}",
        "sampler.uncond=negative_prompt",
    )
    assert result.returncode == 0, result.stderr
    (sidecar,) = (tmp_path / "out" / "samples").glob("*.json")
    assert json.loads(sidecar.read_text())["prompt"] == prompt


def test_an_unquoted_value_of_another_key_says_how_to_quote(sample):
    assert_one_line_error(sample("infer.image=the fox's photo.png"), "must be quoted, e.g.")


def test_misspelt_config_key(sample):
    assert_one_line_error(sample("model.hiden_size=3"), "hiden_size")


def test_unknown_config_option(sample):
    assert_one_line_error(sample("sampler=unipc"), "sampler/unipc")


def test_checkpoint_of_another_variant(tmp_path, sample):
    # a tiny 5B-style (RoPE) checkpoint given to the 2B-style model
    from cogvid import compose
    from cogvid.models.dit import DiffusionTransformer
    from cogvid.sat.checkpoint import save_sat_checkpoint

    other = DiffusionTransformer(compose(["model=tiny", "model.pos_embed=rope", "model.hidden_size=128"]).model)
    save_sat_checkpoint(other, tmp_path / "other", 1)
    result = sample(f"model.ckpt={tmp_path / 'other'}")
    assert_one_line_error(result, "mis-shaped")


def test_truncated_checkpoint(tmp_path, sample):
    ckpt = tmp_path / "cut"
    shutil.copytree(FIXTURE / "dit_ckpt", ckpt)
    pt = ckpt / "1000" / "mp_rank_00_model_states.pt"
    pt.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2])
    assert_one_line_error(sample(f"model.ckpt={ckpt}"), "truncated")


def test_folder_that_is_not_a_sat_checkpoint(tmp_path, sample):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(sample(f"model.ckpt={tmp_path / 'empty'}"), "latest")


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/cogvid-pwned-marker")


def test_pickle_that_would_run_code(tmp_path, sample):
    MARKER.unlink(missing_ok=True)
    evil = tmp_path / "evil.pt"
    torch.save({"module": RunsCode()}, evil)
    assert_one_line_error(sample(f"model.ckpt={evil}"), "run code")
    assert not MARKER.exists()


def test_unknown_sat_target(tmp_path):
    text = (
        (FIXTURE / "tiny_2b.yaml")
        .read_text()
        .replace(
            "sgm.modules.diffusionmodules.sampling.VPSDEDPMPP2MSampler",
            "sgm.modules.diffusionmodules.sampling.EulerEDMSampler",
        )
    )
    (tmp_path / "odd.yaml").write_text(text)
    result = run("cogvid-export", "sat-config", str(tmp_path / "odd.yaml"), "--name", "odd", "--out-dir", str(tmp_path))
    assert_one_line_error(result, "EulerEDMSampler")
    assert not (tmp_path / "model").exists()


def test_help_is_helpful():
    for prog in ("cogvid-sample", "cogvid-export", "cogvid-train"):
        result = run(prog, "--help", console_script=True)
        assert result.returncode == 0 and ("model=" in result.stdout or "sat-config" in result.stdout), prog


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to list the tracked tree")
def test_a_wheel_ships_the_config_tree(tmp_path):
    """A non-editable install finds conf/ (it ships inside the wheel as cogvid/conf)."""
    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(root),
        ],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    wheel = next(tmp_path.glob("cogvid-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "cogvid/conf/sample.yaml" in names and "cogvid/conf/model/cogvideox1.5_5b_i2v.yaml" in names
    assert "cogvid/weights/shapes/vae/3d-vae.pt" in names and "cogvid/weights/shapes/t5/spiece.model" in names
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import cogvid, cogvid.config.compose as c; print(cogvid.__file__); print(c.conf_dir());"
            "print(cogvid.compose(['model=5b']).model.hidden_size); print(cogvid.compose(['model=shapes']).model.ckpt)",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
        timeout=TIMEOUT,
    )
    assert probe.returncode == 0, probe.stderr
    module_file, conf, hidden, shapes_ckpt = probe.stdout.split()
    assert module_file.startswith(str(target)) and conf.startswith(str(target)) and hidden == "3072"
    assert shapes_ckpt.startswith(str(target)) and (Path(shapes_ckpt) / "latest").is_file()  # the shipped weights
