"""The LightningModule: SAT's training step (spec 7.2) around the engine's DiT, denoiser and loss.

Only the DiT is a submodule (so only it is wrapped, sharded, saved and optimized); the VAE and T5 are held aside,
frozen, and are not loaded at all when training from precomputed latents (`data.cache`).

Everything a step draws comes from one CPU generator keyed by (seed, rank, batch position), in this order:
I2V first-frame augmentation (sigma, noise) and its posterior noise; the clip's posterior noise; the caption-dropout
mask; the image-latent dropout draw; the loss's timesteps and noise. So a step's result depends on the step alone,
which makes a resumed run bit-identical to an uninterrupted one on the CPU.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import lightning as L
import torch

from cogvid.diffusion.loss import DiscreteSampling, VideoDiffusionLoss
from cogvid.engine import Engine, build_engine
from cogvid.models.vae import sample_posterior
from cogvid.training.data import step_generator
from cogvid.training.optim import build_optimizer, linear_schedule, set_trainable, warmup_steps
from cogvid.training.precompute import augment_first_frame
from cogvid.utils.runtime import PRECISION_DTYPES, TORCH_DTYPES

log = logging.getLogger(__name__)

I2V_OFS = 2.0  # the ofs SAT HEAD gives the 1.5-I2V model at sampling; its training never passes one (pitfall 7)


class _Aside:
    """Holds modules without registering them as submodules of the LightningModule."""

    def __init__(self, engine: Engine):
        self.engine = engine


class VideoDiffusionModule(L.LightningModule):
    """Fine-tunes the DiT with SAT's VideoDiffusionLoss (v-prediction MSE over ZeroSNR timesteps)."""

    def __init__(self, cfg, engine: Engine | None = None, precision: str = "32"):
        super().__init__()
        self.cfg = cfg
        engine = engine if engine is not None else build_engine(cfg)
        self.backbone = engine.backbone
        self.trainable_names = set_trainable(self.backbone, cfg.mode)
        self._aside = _Aside(engine)
        self.precision_name = precision
        self.cached = bool(cfg.data.cache)
        self.frozen_dtype = TORCH_DTYPES[cfg.dtype] if cfg.dtype is not None else PRECISION_DTYPES[precision]
        self.loss_fn: VideoDiffusionLoss | None = None
        self.step_losses: list[torch.Tensor] = []  # this optimizer step's micro-batch losses (read by TrainMetrics)
        self.skipped: list[tuple[str, str]] = []  # videos replaced in this step's batches
        n_train = sum(p.numel() for p in self.backbone.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in self.backbone.parameters())
        log.info(
            "mode=%s: %d of %d DiT parameters train (%.2f%%)", cfg.mode.name, n_train, n_all, 100 * n_train / n_all
        )

    # --- frozen parts ----------------------------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        return self._aside.engine

    def load_frozen(self, device: torch.device | str = "cpu") -> None:
        """Load the VAE and T5 (frozen, in their dtype, onto `device`) unless training from cached latents."""
        if self.cached or self.engine.vae is not None:
            return
        self.engine.load_vae(dtype=self.frozen_dtype).to(device)
        self.engine.load_text_encoder(dtype=self.frozen_dtype, device=device)

    def setup(self, stage: str) -> None:
        trainer = self._trainer
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        m = self.cfg.model
        denoiser = self.engine.denoiser
        sampler = DiscreteSampling(denoiser.sqrt_alphas_cumprod, m.uniform_sampling, m.group_num, rank, world)
        self.loss_fn = VideoDiffusionLoss(denoiser, sampler)
        self.load_frozen(trainer.strategy.root_device if trainer is not None else "cpu")

    def on_fit_start(self) -> None:
        for part in (self.engine.vae, self.engine.text_encoder):
            if part is not None:
                part.to(self.device)

    # --- one step --------------------------------------------------------------------------------------------------
    def _no_autocast(self):
        return torch.autocast(self.device.type, enabled=False) if self.device.type in ("cuda", "cpu") else nullcontext()

    @torch.no_grad()
    def encode_batch(self, batch: dict, generator: torch.Generator):
        """(z (b, T, 16, h, w) scaled, I2V concat (b, T, 16, h, w) or None, text context (b, L, D))."""
        m = self.cfg.model
        s = m.scale_factor
        image_z = None
        if self.cached:
            z = _posterior(batch, "", generator) * s  # (b, 16, T, h, w)
            if m.noised_image_input:
                image_z = _posterior(batch, "image_", generator) * s
            context = batch["crossattn"]
        else:
            vae = self.engine.vae
            with self._no_autocast():
                x = batch["video"].to(self.device, vae.dtype).permute(0, 2, 1, 3, 4)  # (b, 3, F, H, W)
                if m.noised_image_input:
                    image = augment_first_frame(x[:, :, :1], generator)
                    image_z = vae.encode(image, generator=generator).float() * s  # (b, 16, 1, h, w)
                z = vae.encode(x, generator=generator).float() * s
                context = self.engine.text_encoder.encode(list(batch["caption"]))
        z = z.to(self.device).permute(0, 2, 1, 3, 4)  # (b, T, 16, h, w)
        if z.shape[1] % m.patch_size_t:
            # 1.5: the DiT needs an even latent count (pitfall 7). Lead with a copy of the first latent, which is
            # where sampling puts its extra (discarded) leading frame and the image latent.
            z = torch.cat([z[:, :1], z], dim=1)
        concat = None
        if image_z is not None:
            image_z = image_z.to(self.device).permute(0, 2, 1, 3, 4)  # (b, 1, 16, h, w)
            concat = torch.cat([image_z, image_z.new_zeros(z.shape[0], z.shape[1] - 1, *z.shape[2:])], dim=1)
        return z, concat, context.to(self.device).float()

    def step_loss(self, batch: dict, generator: torch.Generator, ucg_rate: float) -> torch.Tensor:
        """The mean VideoDiffusionLoss of a batch, drawing from `generator` in the documented order."""
        m = self.cfg.model
        z, concat, context = self.encode_batch(batch, generator)
        b = z.shape[0]
        keep = (torch.rand(b, generator=generator) >= ucg_rate).to(context.dtype)
        context = context * keep.to(self.device).reshape(b, 1, 1)  # SAT ucg: dropped -> all-zero context
        if concat is not None and torch.rand((), generator=generator).item() < m.noised_image_dropout:
            concat = torch.zeros_like(concat)  # SAT: one draw per batch, the whole image latent dropped
        ofs = torch.full((b,), I2V_OFS, device=self.device) if m.ofs_embed_dim else None

        def network(x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
            if concat is not None:
                x_t = torch.cat([x_t, concat.to(x_t.dtype)], dim=2)
            return self.backbone(x_t, timesteps, context, ofs=ofs)

        return self.loss_fn(network, z, generator=generator).mean()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        generator = step_generator(self.cfg.train.seed, self.global_rank, batch["batch_pos"])
        loss = self.step_loss(batch, generator, self.cfg.train.ucg_rate)
        self.step_losses.append(loss.detach())
        self.skipped.extend(batch.get("skipped", []))
        self.log("loss", loss.detach(), prog_bar=True, logger=False)
        return loss

    @torch.no_grad()
    def evaluation_loss(self, batch: dict, seed: int = 0) -> float:
        """The loss of a batch with fixed draws (no caption dropout): comparable before and after training."""
        was_training = self.backbone.training
        try:
            self.backbone.eval()
            return float(self.step_loss(batch, torch.Generator().manual_seed(seed), ucg_rate=0.0))
        finally:
            self.backbone.train(was_training)

    # --- optimizer -------------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        t = self.cfg.train
        offload = t.strategy == "deepspeed" and t.deepspeed.offload_optimizer
        optimizer = build_optimizer(self.backbone, self.cfg, cpu_offload=offload)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(t.max_steps, warmup_steps(self.cfg)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def _posterior(batch: dict, prefix: str, generator: torch.Generator) -> torch.Tensor:
    """A posterior sample mean + exp(logvar / 2) n from cached moments (b, 16, T, h, w), or a cached fixed sample."""
    if f"{prefix}mean" not in batch:
        return batch[f"{prefix}latent"].float()
    return sample_posterior(batch[f"{prefix}mean"].float(), batch[f"{prefix}logvar"].float(), generator)
