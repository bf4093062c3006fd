"""The engine: DiT backbone, denoiser, sampler and guidance, built from a composed config alone."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from cogvid.config.schema import Solver, Uncond, ZeroSnrRescale
from cogvid.diffusion.denoiser import DiscreteDenoiser
from cogvid.diffusion.guidance import guidance_scale, guided
from cogvid.diffusion.schedules import SamplingSchedule, sampling_schedule
from cogvid.diffusion.solvers import SOLVERS
from cogvid.models.dit import DiffusionTransformer
from cogvid.models.t5 import T5Conditioner
from cogvid.models.vae import CausalVideoVAE
from cogvid.sat.checkpoint import load_sat_vae
from cogvid.utils.errors import CogvidError

log = logging.getLogger(__name__)


class VideoSampler:
    """Solver + its discretization + the guidance schedule, from `cfg.sampler` and the model's shift_scale."""

    def __init__(self, cfg, shift_scale: float):
        self.cfg, self.shift_scale = cfg, shift_scale
        self.solver = SOLVERS[Solver(cfg.solver).value]

    def schedule(self) -> SamplingSchedule:
        rescale = ZeroSnrRescale(self.cfg.zero_snr_rescale).value
        return sampling_schedule(self.cfg.num_steps, self.shift_scale, rescale=rescale)

    def scales(self) -> list[float | None]:
        """The guidance scale of every step, in order."""
        s = self.schedule()
        return [guidance_scale(self.cfg, i, int(t)) for i, t in enumerate(s.timesteps)]


class Engine(nn.Module):
    """backbone (the DiT), denoiser (v-prediction over the ZeroSNR table), sampler (solver + guidance);
    `vae` and `text_encoder` stay None until `load_vae` / `load_text_encoder` (training from cached latents and
    embeddings never needs them in memory)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.backbone = DiffusionTransformer(cfg.model)
        self.denoiser = DiscreteDenoiser(cfg.model.shift_scale)
        self.sampler = VideoSampler(cfg.sampler, cfg.model.shift_scale)
        self.vae: CausalVideoVAE | None = None
        self.text_encoder: T5Conditioner | None = None

    # --- weights -------------------------------------------------------------------------------------------
    def load_sat_checkpoint(self, path: str | Path):
        """Load a SAT transformer folder (`latest` + `<iter>/mp_rank_00_model_states.pt`) or .pt file, strictly."""
        from cogvid.sat.checkpoint import load_backbone_state, read_sat_state_dict

        state, _ = read_sat_state_dict(path)
        return load_backbone_state(self.backbone, state)

    def save_sat_checkpoint(self, path: str | Path, iteration: int) -> Path:
        """Write the backbone in SAT's layout: `path/latest` + `path/<iteration>/mp_rank_00_model_states.pt`."""
        from cogvid.sat.checkpoint import save_sat_checkpoint

        return save_sat_checkpoint(self.backbone, path, iteration)

    def load_vae(self, path: str | Path | None = None, dtype: torch.dtype | None = None) -> CausalVideoVAE:
        """Build the VAE from `model.vae` and strictly load SAT's `3d-vae.pt` (default: `model.vae_ckpt`)."""
        path = path or self.cfg.model.get("vae_ckpt")
        if not path:
            raise CogvidError("model.vae_ckpt is not set: give SAT's VAE, e.g. model.vae_ckpt=/weights/vae/3d-vae.pt")
        vae = CausalVideoVAE.from_config(self.cfg.model.vae)
        self.vae = load_sat_vae(path, vae, dtype=dtype).requires_grad_(False)
        return self.vae

    def load_text_encoder(
        self, path: str | None = None, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> T5Conditioner:
        """Load T5 (a SAT `t5-v1_1-xxl` folder, a diffusers pipeline folder or a hub id; default
        `model.text_encoder.path`) with the model's text_length as max_length."""
        path = path or self.cfg.model.text_encoder.get("path")
        if not path:
            raise CogvidError(
                "model.text_encoder.path is not set: give the T5 folder, "
                "e.g. model.text_encoder.path=/weights/t5-v1_1-xxl"
            )
        self.text_encoder = T5Conditioner.from_pretrained(
            str(path), max_length=self.cfg.model.text_length, dtype=dtype, device=device
        )
        return self.text_encoder

    # --- sampling ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_latents(
        self,
        cond: torch.Tensor,
        uncond: torch.Tensor | None = None,
        shape: tuple[int, ...] | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        concat: torch.Tensor | None = None,
        ofs: float | torch.Tensor | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Sample latents (b, t, 16, h, w) in float32 with the configured solver and guidance.

        cond / uncond: (b, n_txt, d_txt) text contexts; uncond None means zeros (sampler.uncond=zeros).
        shape: (t, c, h, w) or (b, t, c, h, w), used when `noise` (the initial latent) is not given.
        generator: a CPU torch.Generator; the initial noise and every solver draw come from it, on the CPU, in
        SAT's order, so a seed gives SAT's latents on any device (None: torch's default CPU generator).
        concat: I2V image latent (b, t, 16, h, w), concatenated on channels at every call, never noised.
        """
        device = next(self.backbone.parameters()).device
        b = cond.shape[0]
        if noise is None:
            if shape is None:
                raise ValueError("sample_latents needs `shape` or `noise`")
            shape = tuple(shape) if len(shape) == 5 else (b, *shape)
            noise = torch.randn(shape, generator=generator)
        x = noise.float().to(device)
        cond = cond.to(device)
        if uncond is None:
            if Uncond(self.cfg.sampler.uncond) is Uncond.negative_prompt:
                raise CogvidError("sampler.uncond=negative_prompt needs the encoded negative prompt as `uncond`")
            uncond = torch.zeros_like(cond)
        uncond = uncond.to(device)
        if concat is not None:
            concat = concat.to(device)
        if ofs is not None:
            ofs = torch.as_tensor(ofs, dtype=torch.float32, device=device).reshape(-1)

        schedule = self.sampler.schedule()
        alphas = schedule.alphas.to(device)

        def network(x_t: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            if concat is not None:
                repeat = x_t.shape[0] // concat.shape[0]
                x_t = torch.cat([x_t, concat.repeat(repeat, 1, 1, 1, 1).to(x_t.dtype)], dim=2)
            return self.backbone(x_t, timesteps, context, ofs=ofs)

        def denoise(x_t: torch.Tensor, i: int) -> torch.Tensor:
            t = int(schedule.timesteps[i])
            scale = guidance_scale(self.cfg.sampler, i, t)

            def denoise_batch(xb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
                n = xb.shape[0]
                a = alphas[i].expand(n)
                timesteps = torch.full((n,), float(t), device=device)
                return self.denoiser(lambda xx, tt: network(xx, tt, context), xb, a, timesteps)

            return guided(denoise_batch, x_t, cond, uncond, scale).float()

        def draw() -> torch.Tensor:
            return torch.randn(x.shape, generator=generator).to(device)

        def steps(n: int):
            return tqdm(range(n), desc="denoising", leave=False) if progress else range(n)

        return self.sampler.solver(denoise, x, alphas, draw, steps=steps)


def build_engine(cfg) -> Engine:
    """Build the engine from a composed config (see `cogvid.compose`), loading `model.ckpt` when it is set."""
    engine = Engine(cfg)
    if cfg.model.get("ckpt"):
        engine.load_sat_checkpoint(cfg.model.ckpt)
    return engine
