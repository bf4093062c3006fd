"""cogvid-train with 2 processes on the CPU (gloo): DDP through the real entry point, in a Hydra sweep; DeepSpeed
ZeRO-2 and ZeRO-3 (with a test-only strategy subclass that lets DeepSpeed run on the CPU) save -> resume ->
consolidate -> load. The DeepSpeed ranks are started as torchrun starts them, forked from the tests' zygote
(conftest.run_ranks); tests/test_sample.py keeps a real torchrun run.

DeepSpeed runs here without its JIT-compiled C++ ops (train_helpers.deepspeed_cpu.use_uncompiled_ops): building
them takes minutes on a small machine, and each run checks that it built none. The multi-process tests carry the
`distributed` marker: `pytest -m "not distributed"` leaves them out."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import run_cli, run_ranks
from train_helpers import FIXTURE, make_sat_dataset, tiny_overrides
from train_helpers.deepspeed_cpu import use_uncompiled_ops

from cogvid.config.compose import compose
from cogvid.sat.checkpoint import read_sat_state_dict
from cogvid.sat.loading import build_model
from cogvid.training.metrics import read_train_log
from cogvid.training.resume import complete_checkpoints
from cogvid.utils.media import read_mp4

TESTS = Path(__file__).resolve().parent
COMPILED_OPS = os.environ.get("COGVID_TEST_COMPILED_DS_OPS") == "1"  # DeepSpeed's own ops (compiled on first use)


@pytest.mark.distributed
def test_ddp_two_processes_in_a_sweep_share_one_run_dir_per_job(tmp_path, tiny_t5_dir):
    data = make_sat_dataset(tmp_path / "data", n=2)
    overrides = [o for o in tiny_overrides(tiny_t5_dir, tmp_path, f"data.root={data}") if "output_dir" not in o]
    result = run_cli(
        "cogvid-train",
        "--multirun",
        *overrides,
        "train=ddp",
        "train.devices=2",
        "train.batch_size=1",
        "train.max_steps=2",
        "train.checkpoint_every=2",
        "train.lr=1e-3,2e-3",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]  # no sweep inside a sweep: the children ran their job only
    finals = []
    for job in jobs:
        assert (job / "cogvid-train-rank1.log").is_file()  # rank 1 wrote into its job's run dir
        assert [s for s, _ in complete_checkpoints(job)] == [2]
        meta = json.loads((job / "checkpoints" / "step-00000002" / "meta.json").read_text())
        assert meta["signature"]["world_size"] == 2 and meta["signature"]["strategy"] == "ddp"
        log = read_train_log(job)
        assert sorted(log) == [1, 2] and log[1]["samples_per_s"] > 0
        weights, _ = read_sat_state_dict(job / "sat")
        finals.append(weights)
    assert not (tmp_path / "outputs").exists()  # no rank made a run dir of its own
    # both jobs trained (with different learning rates) from the same start
    assert any(not torch.equal(finals[0][k], finals[1][k]) for k in finals[0] if "matrix_B" in k)
    lora = ["model=tiny", "mode=lora", "model.lora_rank=4", f"model.ckpt={jobs[0] / 'sat'}"]
    build_model(compose(lora, config_name="train").model)  # loads model.ckpt strictly


def torchrun_deepspeed(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """Two DeepSpeed ranks, as torchrun starts them (conftest.run_ranks); any op DeepSpeed JIT-compiles would land in
    tmp_path/torch_extensions."""
    extensions = tmp_path / "torch_extensions"
    run_env = {"OMP_NUM_THREADS": "1"} | ({} if COMPILED_OPS else {"TORCH_EXTENSIONS_DIR": str(extensions)})
    script = TESTS / "train_helpers" / "deepspeed_cpu.py"
    preload = ("deepspeed", "lightning.pytorch.strategies", "train_helpers.deepspeed_cpu")
    result = run_ranks(2, *overrides, script=script, cwd=TESTS.parent, env=run_env, preload=preload)
    built = sorted(p.name for p in extensions.iterdir()) if extensions.is_dir() else []  # one folder per op
    assert not built, f"DeepSpeed compiled {built}: give train_helpers.deepspeed_cpu a stand-in for it"
    return result


def deepspeed_save_resume_consolidate(tmp_path: Path, t5: Path, strategy: str, mode: str) -> dict:
    data = make_sat_dataset(tmp_path / "data", n=2)
    out = tmp_path / "out"
    common = [
        *tiny_overrides(t5, out, f"data.root={data}", mode=mode),
        f"train={strategy}",
        "train.devices=2",
        "train.batch_size=1",
        "train.checkpoint_every=2",
        "train.lr=1e-3",
    ]
    first = torchrun_deepspeed(tmp_path, *common, "train.max_steps=2")
    assert first.returncode == 0, first.stderr[-4000:]
    state = out / "checkpoints" / "step-00000002" / "state.ckpt"
    assert state.is_dir() and list((state / "checkpoint").glob("*optim_states.pt"))  # DeepSpeed shards
    second = torchrun_deepspeed(tmp_path, *common, "train.max_steps=4", "train.resume=auto")
    assert second.returncode == 0, second.stderr[-4000:]
    assert sorted(read_train_log(out)) == [1, 2, 3, 4]
    assert [s for s, _ in complete_checkpoints(out)] == [2, 4]

    # consolidate the ZeRO shards of step 4 and compare with the SAT-layout weights gathered while training
    from cogvid.training.resume import consolidate_zero_checkpoint

    consolidated = consolidate_zero_checkpoint(out / "checkpoints" / "step-00000004" / "state.ckpt")
    sat, _ = read_sat_state_dict(out / "sat")
    assert (out / "sat" / "latest").read_text() == "4"
    assert all(torch.equal(consolidated[k], sat[k]) for k in consolidated), "ZeRO shards != gathered SAT weights"
    before, _ = read_sat_state_dict(out / "sat" / "2" / "mp_rank_00_model_states.pt")
    assert any(not torch.equal(before[k], sat[k]) for k in sat)  # the resumed run trained on
    overrides = ["model=tiny", f"mode={mode}"] + (["model.lora_rank=4"] if mode == "lora" else [])
    # strict: every key, shape
    build_model(compose([*overrides, f"model.ckpt={out / 'sat'}"], config_name="train").model)

    # cogvid-sample takes the consolidated SAT-layout weights directly
    from cogvid.inference.run import run_sample

    sample_cfg = compose(
        [
            *overrides,
            f"model.ckpt={out / 'sat'}",
            f"model.vae_ckpt={FIXTURE / 'vae' / '3d-vae.pt'}",
            f"model.text_encoder.path={t5}",
            "infer.prompt=a red fox in snow",
            f"infer.output_dir={tmp_path / 'samples'}",
            "sampler.num_steps=2",
            "device=cpu",
        ]
    )
    written = run_sample(sample_cfg)
    videos = [p for p in written if p.suffix == ".mp4"]
    assert len(videos) == 1 and read_mp4(videos[0]).shape == (9, 48, 64, 3)
    return sat


@pytest.mark.distributed
def test_deepspeed_zero2_lora_on_cpu(tmp_path, tiny_t5_dir):
    sat = deepspeed_save_resume_consolidate(tmp_path, tiny_t5_dir, "deepspeed_zero2", "lora")
    assert any(".matrix_B." in k for k in sat)


@pytest.mark.distributed
def test_deepspeed_zero3_sft_on_cpu(tmp_path, tiny_t5_dir):
    deepspeed_save_resume_consolidate(tmp_path, tiny_t5_dir, "deepspeed_zero3", "sft")


@pytest.mark.distributed
def test_deepspeed_zero2_offload_on_cpu(tmp_path, tiny_t5_dir):
    """The optimizer states and step on the CPU (DeepSpeedCPUAdam, stepping with TorchCPUAdamOp here), SAT's
    cpu_offload."""
    data = make_sat_dataset(tmp_path / "data", n=2)
    out = tmp_path / "out"
    result = torchrun_deepspeed(
        tmp_path,
        *tiny_overrides(tiny_t5_dir, out, f"data.root={data}"),
        "train=deepspeed_zero2_offload",
        "train.devices=2",
        "train.batch_size=1",
        "train.max_steps=2",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert sorted(read_train_log(out)) == [1, 2]
    meta = json.loads((out / "checkpoints" / "step-00000002" / "meta.json").read_text())
    assert meta["signature"]["zero_stage"] == 2 and meta["signature"]["world_size"] == 2


@pytest.mark.parametrize("adamw_mode, reference", [(True, torch.optim.AdamW), (False, torch.optim.Adam)])
def test_cpu_adam_stand_in_steps_as_torch_adam(monkeypatch, adamw_mode, reference):
    """DeepSpeedCPUAdam over TorchCPUAdamOp (what the offload run above steps with) follows torch's AdamW (cogvid's
    adamw_mode=True) and Adam with L2 decay, as DeepSpeed's compiled kernel does."""
    use_uncompiled_ops(monkeypatch.setattr)
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    torch.manual_seed(0)
    ours, theirs = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    theirs.load_state_dict(ours.state_dict())
    start = ours.weight.detach().clone()

    def groups(module: torch.nn.Module) -> list[dict]:
        return [{"params": [module.weight], "weight_decay": 0.1}, {"params": [module.bias], "weight_decay": 0.0}]

    hyper = {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-8}
    optimizers = [DeepSpeedCPUAdam(groups(ours), adamw_mode=adamw_mode, **hyper), reference(groups(theirs), **hyper)]
    for _ in range(5):
        x = torch.randn(3, 8)
        for module, optimizer in zip((ours, theirs), optimizers, strict=True):
            optimizer.zero_grad()
            module(x).square().sum().backward()
            optimizer.step()
    assert not torch.allclose(ours.weight, start, atol=1e-3)
    for mine, ref in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(mine, ref)
