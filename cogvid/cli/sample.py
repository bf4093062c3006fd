"""cogvid-sample: sample with any CogVideoX variant from one composed config.

Until the T5 conditioner and the VAE land (the sampling issue), this samples *latents* from precomputed text
embeddings (`infer.text_embeddings`, a safetensors file with `cond_crossattn` and optionally `uncond_crossattn`)
and writes them as safetensors.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from cogvid.atomic_write import write_atomic
from cogvid.cli.hydra_app import run_hydra_app
from cogvid.engine import build_engine
from cogvid.errors import CogvidError
from cogvid.runtime import resolve_device_dtype

log = logging.getLogger("cogvid.sample")


def latent_shape(cfg) -> tuple[int, int, int, int]:
    """(t, c, h, w) latents for infer.num_frames pixel frames at the model's configured latent size."""
    m = cfg.model
    frames = cfg.infer.num_frames or m.num_frames
    if (frames - 1) % m.time_compressed_rate:
        k = round((frames - 1) / m.time_compressed_rate)
        raise CogvidError(
            f"infer.num_frames={frames} is not {m.time_compressed_rate}k+1; the nearest valid value is "
            f"{k * m.time_compressed_rate + 1}"
        )
    t = (frames - 1) // m.time_compressed_rate + 1
    t += t % m.patch_size_t  # the 1.5 family needs an even latent count: one extra leading frame
    return (t, m.out_channels, m.latent_height, m.latent_width)


def read_text_embeddings(path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not Path(path).is_file():
        raise CogvidError(f"infer.text_embeddings: no file at {path}")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as ex:
        raise CogvidError(f"infer.text_embeddings: {path} is not a readable safetensors file ({ex})") from ex
    if "cond_crossattn" not in tensors:
        raise CogvidError(f"infer.text_embeddings: {path} has no `cond_crossattn` tensor (has {sorted(tensors)})")
    return tensors["cond_crossattn"], tensors.get("uncond_crossattn")


def output_dir(cfg) -> Path:
    if cfg.infer.output_dir:
        return Path(cfg.infer.output_dir)
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path("outputs")


def run_sample(cfg) -> list[Path]:
    """The testable core of cogvid-sample: returns the files written."""
    if not cfg.model.ckpt:
        raise CogvidError(
            "model.ckpt is not set: give the SAT transformer folder, e.g. model.ckpt=/weights/transformer"
        )
    if not cfg.infer.text_embeddings:
        raise CogvidError("infer.text_embeddings is not set (T5 text encoding arrives with the sampling issue)")
    device, dtype = resolve_device_dtype(cfg)
    cond, uncond = read_text_embeddings(cfg.infer.text_embeddings)
    engine = build_engine(cfg)
    engine.backbone.to(device=device, dtype=dtype)
    shape = latent_shape(cfg)
    out_dir = output_dir(cfg) / "latents"
    written = []
    generator = torch.Generator().manual_seed(cfg.infer.seed)
    for index in range(cfg.infer.batch_size):
        latents = engine.sample_latents(cond, uncond, shape=shape, generator=generator, progress=True)
        path = out_dir / f"{index:03d}_seed{cfg.infer.seed}.safetensors"
        tensors = {"latents": latents.cpu().contiguous()}
        write_atomic(path, lambda f, t=tensors: f.write(save(t)))
        log.info(
            "wrote %s: latents %s, %s on %s, %d steps",
            path,
            tuple(latents.shape),
            dtype,
            device,
            cfg.sampler.num_steps,
        )
        written.append(path)
    return written


def main() -> None:
    run_hydra_app("cogvid-sample", "sample", run_sample)


if __name__ == "__main__":
    main()
