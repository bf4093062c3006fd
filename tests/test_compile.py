"""compile=true: the DiT's blocks run through torch.compile, and the videos stay those of the eager path."""

import torch
from test_sample import tiny

from cogvid.inference.pipeline import VideoPipeline


def test_compiled_blocks_give_the_eager_latents(tmp_path, tiny_t5_dir, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    eager = VideoPipeline.from_config(tiny(tmp_path, tiny_t5_dir, "sampler.num_steps=3"))
    compiled = VideoPipeline.from_config(tiny(tmp_path, tiny_t5_dir, "sampler.num_steps=3", "compile=true"))
    layers = compiled.model.backbone.transformer.layers
    assert all(layer._compiled_call_impl is not None for layer in layers)  # nn.Module.compile's hook
    assert all(layer._compiled_call_impl is None for layer in eager.model.backbone.transformer.layers)
    a = eager.generate("a fox in snow", seed=7)
    b = compiled.generate("a fox in snow", seed=7)
    assert torch.allclose(a.latents, b.latents, atol=1e-4, rtol=1e-4)
    assert any((tmp_path / "inductor").rglob("*")), "inductor wrote nothing to its cache"
