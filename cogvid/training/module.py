"""The LightningModule: SAT's training step (`shared_step`) around the diffusion model's DiT, denoiser and loss.

Only the DiT is a submodule (so only it is wrapped, sharded, saved and optimized); the VAE and T5 are held in a
`FrozenParts` (a plain attribute Lightning does not register), and are not loaded at all when training from
precomputed latents (`data.cache`).

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

from cogvid.config.schema import is_image_to_video
from cogvid.diffusion.conditioning import ImageConditioning, image_conditioning, image_network
from cogvid.diffusion.loss import DiscreteSampling, VideoDiffusionLoss
from cogvid.diffusion.model import DiffusionModel
from cogvid.models.layout import to_dit_layout, to_vae_layout
from cogvid.models.vae import sample_posterior
from cogvid.sat.loading import FrozenParts, build_model, load_frozen_parts
from cogvid.training.data import step_generator
from cogvid.training.ema import EMA_KEY, ParameterEma
from cogvid.training.optim import build_optimizer, linear_schedule, set_trainable, warmup_steps
from cogvid.training.precompute import augment_first_frame
from cogvid.training.strategies import frozen_dtype
from cogvid.utils.errors import CogvidError

log = logging.getLogger(__name__)


class VideoDiffusionModule(L.LightningModule):
    """Fine-tunes the DiT with SAT's VideoDiffusionLoss (v-prediction MSE over ZeroSNR timesteps).

    diffusion_model: the DiT and its denoiser (default: `build_model(cfg.model)`); its backbone is this module's only
    submodule. frozen: the VAE and T5, None until `setup` loads them (never, when training from `data.cache`).
    """

    def __init__(self, cfg, model: DiffusionModel | None = None, precision: str = "32"):
        super().__init__()
        self.cfg = cfg
        self.diffusion_model = model if model is not None else build_model(cfg.model)
        self.backbone = self.diffusion_model.backbone
        self.trainable_names = set_trainable(self.backbone, cfg.mode)
        self.frozen: FrozenParts | None = None
        self.precision_name = precision
        self.cached = bool(cfg.data.cache)
        self.frozen_dtype = frozen_dtype(cfg, precision)
        self.loss_fn: VideoDiffusionLoss | None = None
        self.step_losses: list[torch.Tensor] = []  # this optimizer step's micro-batch losses (read by TrainMetrics)
        self.skipped: list[tuple[str, str]] = []  # videos replaced in this step's batches
        decay = cfg.train.get("ema_decay")
        self.ema = ParameterEma(decay) if decay is not None else None  # train.ema_decay: started in on_fit_start
        self._ema_restored = False
        n_train = sum(p.numel() for p in self.backbone.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in self.backbone.parameters())
        log.info(
            "mode=%s: %d of %d DiT parameters train (%.2f%%)", cfg.mode.name, n_train, n_all, 100 * n_train / n_all
        )

    # --- frozen parts ----------------------------------------------------------------------------------------------
    def load_frozen(self, device: torch.device | str = "cpu") -> None:
        """Load the VAE and T5 (frozen, in their dtype, onto `device`) unless training from cached latents."""
        if self.cached or self.frozen is not None:
            return
        self.frozen = load_frozen_parts(self.cfg.model, self.frozen_dtype, device)

    def setup(self, stage: str) -> None:
        trainer = self._trainer
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        m = self.cfg.model
        denoiser = self.diffusion_model.denoiser
        sampler = DiscreteSampling(denoiser.sqrt_alphas_cumprod, m.uniform_sampling, m.group_num, rank, world)
        self.loss_fn = VideoDiffusionLoss(denoiser, sampler)
        self.load_frozen(trainer.strategy.root_device if trainer is not None else "cpu")

    def on_fit_start(self) -> None:
        if self.frozen is not None:
            self.frozen.to(self.device)
        if self.ema is not None:
            if self._ema_restored:  # restored before the strategy moved the weights (single process, DDP)
                self.ema.to(self.device)
            else:  # a fresh run; under DeepSpeed a checkpoint's average replaces this one just after
                self.ema.start(self.ema_parts())

    # --- one step --------------------------------------------------------------------------------------------------
    def _no_autocast(self):
        return torch.autocast(self.device.type, enabled=False) if self.device.type in ("cuda", "cpu") else nullcontext()

    @torch.no_grad()
    def encode_batch(self, batch: dict, generator: torch.Generator):
        """(z (b, T, 16, h, w) scaled, the I2V conditioning (concat (b, T, 16, h, w), ofs) or None,
        text context (b, L, D))."""
        m = self.cfg.model
        s = m.scale_factor
        image_z = None
        if self.cached:
            z = _posterior(batch, "", generator) * s  # (b, 16, T, h, w)
            if is_image_to_video(m):
                image_z = _posterior(batch, "image_", generator) * s
            context = batch["crossattn"]
        else:
            vae = self.frozen.vae
            with self._no_autocast():
                x = to_vae_layout(batch["video"].to(self.device, vae.dtype))  # (b, 3, F, H, W)
                if is_image_to_video(m):
                    image = augment_first_frame(x[:, :, :1], generator)
                    image_z = vae.encode(image, generator=generator).float() * s  # (b, 16, 1, h, w)
                z = vae.encode(x, generator=generator).float() * s
                context = self.frozen.text_encoder.encode(list(batch["caption"]))
        z = to_dit_layout(z.to(self.device))  # (b, T, 16, h, w)
        if z.shape[1] % m.patch_size_t:
            # 1.5: the DiT needs an even latent count (SAT's 1.5 training fails on 81 frames -> 21 latents). Lead
            # with a copy of the first latent, which is where sampling puts its extra (discarded) leading frame and
            # the image latent.
            z = torch.cat([z[:, :1], z], dim=1)
        image: ImageConditioning | None = None
        if image_z is not None:
            image = image_conditioning(to_dit_layout(image_z.to(self.device)), z.shape[1], m)  # from (b, 1, 16, h, w)
        return z, image, context.to(self.device).float()

    def step_loss(self, batch: dict, generator: torch.Generator, ucg_rate: float) -> torch.Tensor:
        """The mean VideoDiffusionLoss of a batch, drawing from `generator` in the documented order."""
        m = self.cfg.model
        z, image, context = self.encode_batch(batch, generator)
        b = z.shape[0]
        keep = (torch.rand(b, generator=generator) >= ucg_rate).to(context.dtype)
        context = context * keep.to(self.device).reshape(b, 1, 1)  # SAT ucg: dropped -> all-zero context
        concat, ofs = (None, None) if image is None else (image.concat, image.ofs)
        if concat is not None and torch.rand((), generator=generator).item() < m.noised_image_dropout:
            concat = torch.zeros_like(concat)  # SAT: one draw per batch, the whole image latent dropped

        network = image_network(self.backbone, concat, ofs)
        return self.loss_fn(lambda x_t, timesteps: network(x_t, timesteps, context), z, generator=generator).mean()

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

    # --- EMA of the trainable weights (train.ema_decay) --------------------------------------------------------------
    def ema_parts(self) -> dict[str, torch.Tensor]:
        """This process's part of every trainable weight: what its EMA averages."""
        params = dict(self.backbone.named_parameters())
        return {name: params[name] for name in self.trainable_names}

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None and self._weights_stepped():
            self.ema.update(self.ema_parts())

    def _weights_stepped(self) -> bool:
        """Whether the step just taken changed the weights: DeepSpeed's engine skips steps between accumulation
        boundaries and on fp16 overflow."""
        engine = getattr(self._trainer.strategy, "deepspeed_engine", None) if self._trainer is not None else None
        return engine is None or engine.was_step_applied()

    @torch.no_grad()
    def ema_state_dict(self) -> dict[str, torch.Tensor]:
        """The EMA of every trainable weight, whole, fp32, on the CPU (backbone keys)."""
        return {name: w.detach().to("cpu", copy=True) for name, w in self.ema.weights.items()}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.ema is not None:
            checkpoint[EMA_KEY] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.ema is None:
            if EMA_KEY in checkpoint:
                log.info("train.ema_decay is off: the checkpoint's EMA weights are not used")
            return
        if EMA_KEY not in checkpoint:
            log.warning("the checkpoint holds no EMA weights: the EMA starts from the resumed weights")
            return
        state = checkpoint[EMA_KEY]
        if set(state["weights"]) != set(self.trainable_names):
            raise CogvidError("train.resume: the checkpoint's EMA averages other weights than this run trains")
        if state["decay"] != self.ema.decay:
            log.warning(
                "the checkpoint's EMA used decay %s; it continues with train.ema_decay=%s",
                state["decay"],
                self.ema.decay,
            )
        self.ema.load_state_dict(state, device=self.device)
        self._ema_restored = True

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
