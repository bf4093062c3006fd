"""`cogvid-export` for weights: bad input is one line and exit code 2, and no half-written output is left.

Run in-process through `main(argv)` (Hydra and all) for speed; one subprocess run checks the installed script.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURE, TIMEOUT

from cogvid.cli import export as export_cli
from cogvid.interop import tensor_io

BIN = Path(sys.executable).parent
TINY = ["model=tiny"]
DIT = f"model.ckpt={FIXTURE / 'dit_ckpt'}"
LORA = FIXTURE / "lora_ckpt"
VAE = f"model.vae_ckpt={FIXTURE / 'vae' / '3d-vae.pt'}"


def export(capsys, *args: str) -> tuple[int, str, str]:
    try:
        export_cli.main(list(args))
        code = 0
    except SystemExit as ex:
        code = ex.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(result, fragment: str) -> None:
    code, _, err = result
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cogvid-export: error: "), err
    assert fragment in lines[0], lines[0]


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_lora_checkpoint_given_to_the_full_exporter(capsys, tmp_path):
    result = export(
        capsys, "task=to_diffusers", *TINY, f"model.ckpt={LORA}", "parts=[transformer]", f"out={tmp_path / 'o'}"
    )
    assert_one_line_error(result, "is a LoRA checkpoint")
    assert not (tmp_path / "o").exists() and not leftovers(tmp_path)


def test_full_checkpoint_given_to_the_lora_exporter(capsys, tmp_path):
    result = export(capsys, "task=lora_to_diffusers", *TINY, f"lora={FIXTURE / 'dit_ckpt'}", f"out={tmp_path / 'o'}")
    assert_one_line_error(result, "holds no LoRA adapters")


def test_checkpoint_of_another_variant(capsys, tmp_path):
    result = export(capsys, "task=to_diffusers", "model=5b", DIT, "parts=[transformer]", f"out={tmp_path / 'o'}")
    assert_one_line_error(result, "does not fit model=cogvideox-5b")
    # and the other way: a tiny-2B diffusers folder imported as a 5B-shaped model
    assert (
        export(capsys, "task=to_diffusers", *TINY, DIT, VAE, "parts=[transformer,vae]", f"out={tmp_path / 'd'}")[0] == 0
    )
    result = export(
        capsys, "task=to_sat", "model=tiny", "model.num_layers=3", f"source={tmp_path / 'd'}", f"out={tmp_path / 's'}"
    )
    assert_one_line_error(result, "is another variant: num_layers=2")


def test_missing_files_and_settings(capsys, tmp_path):
    out = f"out={tmp_path / 'o'}"
    assert_one_line_error(
        export(capsys, "task=to_diffusers", *TINY, "model.ckpt=/nowhere/transformer", "parts=[transformer]", out),
        "model.ckpt=/nowhere/transformer does not exist",
    )
    assert_one_line_error(
        export(capsys, "task=to_diffusers", *TINY, DIT, VAE, out), "model.text_encoder.path is not set"
    )
    assert_one_line_error(export(capsys, "task=to_sat", *TINY, out), "source is not set")
    assert_one_line_error(export(capsys, "task=to_sat", *TINY, f"source={tmp_path}", out), "not a diffusers folder")
    assert_one_line_error(export(capsys, "task=to_diffusers", out), "You must specify 'model' for task=to_diffusers")
    assert_one_line_error(export(capsys, "task=to_diffusers", DIT), "Missing mandatory value: model")
    assert_one_line_error(export(capsys, "task=to_diffuser", *TINY, out), "to_diffuser")
    assert not leftovers(tmp_path)


def test_existing_output_is_refused_unless_overwrite(capsys, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["task=to_diffusers", *TINY, DIT, "parts=[transformer]", f"out={out}"]
    assert_one_line_error(export(capsys, *args), "already exists; pass overwrite=true")
    assert (out / "keep.txt").read_text() == "mine"
    code, stdout, _ = export(capsys, *args, "overwrite=true")
    assert code == 0 and "wrote" in stdout
    assert not (out / "keep.txt").exists() and (out / "transformer" / "config.json").is_file()
    assert not leftovers(tmp_path)


def test_interrupted_export_leaves_no_half_folder(capsys, tmp_path, monkeypatch):
    # a truncated VAE: the transformer is already written when reading the VAE fails
    bad = tmp_path / "3d-vae.pt"
    bad.write_bytes((FIXTURE / "vae" / "3d-vae.pt").read_bytes()[:100_000])
    args = [
        "task=to_diffusers",
        *TINY,
        DIT,
        f"model.vae_ckpt={bad}",
        "parts=[transformer,vae]",
        f"out={tmp_path / 'o'}",
    ]
    assert_one_line_error(export(capsys, *args), "3d-vae.pt")
    assert not (tmp_path / "o").exists() and not leftovers(tmp_path)

    # Ctrl-C in the middle of writing
    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tensor_io, "_write_safetensors_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_cli.main(["task=to_diffusers", *TINY, DIT, "parts=[transformer]", f"out={tmp_path / 'o'}"])
    assert not (tmp_path / "o").exists() and not leftovers(tmp_path)


def test_sat_config_in_both_forms(capsys, tmp_path):
    yaml_path = FIXTURE / "tiny_2b.yaml"
    code, stdout, _ = export(capsys, "task=sat_config", f"source={yaml_path}", "name=mine", f"out={tmp_path}")
    assert code == 0 and "model=mine sampler=mine" in stdout
    hydra_form = (tmp_path / "model" / "mine.yaml").read_text()
    odd = tmp_path / "it's a dir, with=signs"  # the subcommand quotes its arguments into Hydra overrides
    code, stdout, _ = export(capsys, "sat-config", str(yaml_path), "--name", "mine", "--out-dir", str(odd))
    assert code == 0 and f"--config-dir {odd} model=mine sampler=mine" in stdout
    assert (odd / "model" / "mine.yaml").read_text() == hydra_form.replace(str(tmp_path), str(odd))


def test_installed_script_reports_one_line(tmp_path):
    result = subprocess.run(
        [
            str(BIN / "cogvid-export"),
            "task=lora_to_diffusers",
            *TINY,
            f"lora={FIXTURE / 'dit_ckpt'}",
            f"out={tmp_path / 'o'}",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if "error:" in line
    ]
    assert not (tmp_path / "o").exists()
