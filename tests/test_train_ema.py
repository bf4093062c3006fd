"""train.ema_decay: the EMA of the trainable weights, its update, its place in checkpoints and the SAT export from it
(train.sat_weights=ema). Exact resume with the EMA: tests/test_train_resume.py."""

from __future__ import annotations

import pytest
import torch
from train_helpers import make_sat_dataset, tiny_overrides
from train_helpers.callbacks import RecordTrainable

from cogvid.config.compose import compose
from cogvid.sat.checkpoint import read_sat_state_dict
from cogvid.training.ema import EMA_KEY, ParameterEma
from cogvid.training.resume import CHECKPOINTS, STATE, step_dir_name
from cogvid.training.run import run_train
from cogvid.utils.errors import CogvidError

RECORD = "train.callbacks=[{_target_: train_helpers.callbacks.RecordTrainable}]"


def test_update_is_decay_times_ema_plus_one_minus_decay_times_weight():
    torch.manual_seed(0)
    w0, w1, w2 = (torch.randn(3, 5) for _ in range(3))
    ema = ParameterEma(0.9)
    ema.start({"w": w0, "half": w0.to(torch.bfloat16)})
    assert all(e.dtype == torch.float32 for e in ema.weights.values())
    assert torch.equal(ema.weights["w"], w0) and ema.weights["w"].data_ptr() != w0.data_ptr()  # a copy

    ema.update({"w": w1, "half": w1.to(torch.bfloat16)})
    ema.update({"w": w2, "half": w2.to(torch.bfloat16)})
    by_hand = 0.9 * (0.9 * w0.double() + 0.1 * w1.double()) + 0.1 * w2.double()
    torch.testing.assert_close(ema.weights["w"].double(), by_hand, rtol=1e-6, atol=1e-7)
    half = [w.to(torch.bfloat16).double() for w in (w0, w1, w2)]
    by_hand = 0.9 * (0.9 * half[0] + 0.1 * half[1]) + 0.1 * half[2]  # the average of bf16 weights, kept in fp32
    torch.testing.assert_close(ema.weights["half"].double(), by_hand, rtol=1e-6, atol=1e-7)
    assert ema.updates == 2

    restored = ParameterEma(0.9)
    restored.load_state_dict(ema.state_dict())
    for e in (ema, restored):
        e.update({"w": w0, "half": w0})
    assert restored.updates == 3 and all(torch.equal(restored.weights[k], ema.weights[k]) for k in ema.weights)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1])
def test_a_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ValueError, match="must lie in"):
        ParameterEma(decay)


@pytest.fixture(scope="module")
def lora_ema_run(tmp_path_factory, tiny_t5_dir):
    """4 LoRA steps with train.ema_decay=0.5 (a short memory, so that the average visibly lags) and
    train.sat_weights=ema, a checkpoint every 2 steps."""
    tmp = tmp_path_factory.mktemp("ema")
    data = make_sat_dataset(tmp / "data", n=2)
    extra = (
        f"data.root={data}",
        "train.max_steps=4",
        "train.checkpoint_every=2",
        "train.lr=2e-2",
        "train.warmup_steps=0",
        "train.ema_decay=0.5",
        "train.sat_weights=ema",
        RECORD,
    )
    return run_train(compose(tiny_overrides(tiny_t5_dir, tmp / "out", *extra), "train"))


def test_the_ema_averages_the_adapters_after_every_step(lora_ema_run):
    module = lora_ema_run.module
    recorded = next(c for c in lora_ema_run.trainer.callbacks if isinstance(c, RecordTrainable)).weights
    assert len(recorded) == 5  # the start and 4 steps
    names = set(module.ema.weights)
    assert names == set(module.trainable_names) and all(".matrix_A." in n or ".matrix_B." in n for n in names)
    assert module.ema.updates == 4
    for name in names:
        by_hand = recorded[0][name].double()
        for weights in recorded[1:]:
            by_hand = 0.5 * by_hand + 0.5 * weights[name].double()
        torch.testing.assert_close(module.ema.weights[name].double(), by_hand, rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(module.ema.weights[n], recorded[-1][n]) for n in names)


def test_every_checkpoint_holds_the_ema_in_fp32(lora_ema_run):
    module = lora_ema_run.module
    for step in (2, 4):
        state = torch.load(
            lora_ema_run.output_dir / CHECKPOINTS / step_dir_name(step) / STATE, map_location="cpu", weights_only=True
        )
        ema = state[EMA_KEY]
        assert ema["decay"] == 0.5 and ema["updates"] == step and set(ema["weights"]) == set(module.trainable_names)
        assert all(w.dtype == torch.float32 for w in ema["weights"].values())
    assert all(torch.equal(ema["weights"][k], module.ema.weights[k]) for k in module.ema.weights)  # step 4: the last


def test_the_sat_export_from_the_ema_holds_the_ema_under_the_same_keys_and_dtypes(lora_ema_run):
    module = lora_ema_run.module
    trained = module.backbone.state_dict()
    exported, _ = read_sat_state_dict(lora_ema_run.sat_dir)  # step 4
    assert set(exported) == set(trained) and all(exported[k].dtype == trained[k].dtype for k in trained)
    for name, value in exported.items():
        if name in module.ema.weights:
            assert torch.equal(value, module.ema.weights[name].to(value.dtype))
        else:  # the frozen base weights, as trained
            assert torch.equal(value, trained[name])
    assert any(not torch.equal(exported[k], trained[k]) for k in module.ema.weights)


def test_without_sat_weights_ema_the_sat_export_holds_the_trained_weights(tmp_path, tiny_t5_dir):
    data = make_sat_dataset(tmp_path / "data", n=2)
    extra = (f"data.root={data}", "train.max_steps=2", "train.lr=2e-2", "train.warmup_steps=0", "train.ema_decay=0.5")
    result = run_train(compose(tiny_overrides(tiny_t5_dir, tmp_path / "out", *extra), "train"))
    exported, _ = read_sat_state_dict(result.sat_dir)
    trained = result.module.backbone.state_dict()
    assert all(torch.equal(exported[k], trained[k]) for k in trained)
    assert any(not torch.equal(result.module.ema.weights[k], trained[k]) for k in result.module.ema.weights)


def test_task_vae_refuses_an_ema(tmp_path):
    cfg = compose(["model=shapes", "task=vae", f"data.root={tmp_path}", "train.ema_decay=0.9"], "train")
    with pytest.raises(CogvidError, match="train.ema_decay=0.9 acts only with task=fit") as info:
        run_train(cfg)
    assert "\n" not in str(info.value) and list(tmp_path.iterdir()) == []


def test_deepspeed_refuses_an_ema_for_now(tmp_path):
    cfg = compose(
        [
            "model=tiny",
            "train=deepspeed_zero2",
            "train.devices=2",
            f"data.cache={tmp_path / 'cache'}",  # the weights check passes: the latents need neither VAE nor T5
            "train.ema_decay=0.9",
        ],
        "train",
    )
    with pytest.raises(CogvidError, match="not supported under DeepSpeed") as info:
        run_train(cfg)
    assert "\n" not in str(info.value) and list(tmp_path.iterdir()) == []
