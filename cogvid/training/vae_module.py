"""cogvid-train task=vae: the 3-D causal VAE trained from scratch (SAT ships its VAE and never trains it).

Objective (LDM's autoencoder without its perceptual and GAN terms): pixel reconstruction (L1 or MSE, on pixels in
[-1, 1]) of a posterior sample, plus kl_weight x KL(q(z|x) || N(0, I)) of the diagonal Gaussian posterior. Both
terms are per pixel: LDM's sums over a clip divided by its 3 F H W pixel values, so `kl_weight` keeps LDM's scale
(1e-6) and the loss stays O(1) for gradient clipping. L1 is the default, as in LDM: it keeps edges sharper than MSE,
which averages uncertain edges into blur; MSE is the term PSNR measures (in short shapes runs the two rose alike).

The VAE runs as inference runs it: `encode_moments` over the whole clip, and in training one whole-clip `decode`;
the held-out evaluation decodes with `decode_chunked` (SAT v1.0 schedule), the path cogvid-sample takes. For 4k+1
frames with k <= 2 (9 frames: 3 latents, one chunk) the two decodes are the same computation.

Written to the output dir:

    vae/3d-vae.pt     {"state_dict": {"encoder.*", "decoder.*"}} (SAT's file; model.vae_ckpt=OUT/vae/3d-vae.pt)
    vae_eval.json     reconstruction PSNR of the held-out clips, per checkpoint; the latent std and scale estimate
    train_log.jsonl   per-step loss (cogvid.training.metrics), TensorBoard under tensorboard/

Both files are rewritten atomically every `train.checkpoint_every` steps and at the end. Resuming is not supported.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from cogvid.config.schema import Generation, VaeLoss
from cogvid.models.layout import to_vae_layout
from cogvid.models.vae import LOGVAR_RANGE, CausalVideoVAE, sample_posterior
from cogvid.sat.checkpoint import load_sat_vae, write_sat_model_states
from cogvid.training.data import ClipsInMemory, VideoClips, step_generator
from cogvid.training.datamodule import TrainData
from cogvid.training.metrics import TrainMetrics
from cogvid.training.optim import linear_schedule, param_groups, warmup_steps
from cogvid.training.plan import TrainPlan
from cogvid.training.trainer import build_trainer
from cogvid.utils.files import write_atomic

log = logging.getLogger(__name__)

DEFAULT_VAE_LR = 1e-3
VAE_CKPT = Path("vae") / "3d-vae.pt"
EVAL_FILE = "vae_eval.json"


# --- the objective and the measure -------------------------------------------------------------------------------


def kl_per_clip(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over each clip's latents: (b, z, T, h, w) -> (b,)."""
    logvar = logvar.clamp(*LOGVAR_RANGE)
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(dim=1)


FOREGROUND_BORDER_PX = 2  # the frame edge whose per-channel median is a frame's background
FOREGROUND_DISTANCE = 0.15  # RGB distance from the background, on pixels in [-1, 1] (19 in 0-255 units)


def foreground_mask(video: torch.Tensor) -> torch.Tensor:
    """(b, 3, F, H, W) in [-1, 1] -> (b, 1, F, H, W) of 0/1: the pixels farther than FOREGROUND_DISTANCE from their
    frame's background colour, the per-channel median of the frame's FOREGROUND_BORDER_PX-pixel edge."""
    k = FOREGROUND_BORDER_PX
    x = video.float()
    edge = torch.cat(
        [
            x[..., :k, :].flatten(-2),
            x[..., -k:, :].flatten(-2),
            x[..., k:-k, :k].flatten(-2),
            x[..., k:-k, -k:].flatten(-2),
        ],
        dim=-1,
    )  # (b, 3, F, edge pixels)
    background = edge.median(dim=-1).values[..., None, None]  # (b, 3, F, 1, 1)
    return ((x - background).norm(dim=1, keepdim=True) > FOREGROUND_DISTANCE).float()


def psnr_db(video: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """PSNR per clip in dB over pixels scaled to [0, 255] (reconstruction clamped to the pixel range): (b, ...) ->
    (b,)."""
    x = (video.float() + 1.0) * 127.5
    y = (reconstruction.float().clamp(-1.0, 1.0) + 1.0) * 127.5
    mse = (x - y).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return 10.0 * torch.log10(255.0**2 / mse)


def foreground_psnr_db(video: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """`psnr_db` over each clip's foreground pixels (`foreground_mask` of the video) only: (b, ...) -> (b,); NaN
    for a clip without foreground. A VAE that keeps the background and loses a small moving object scores well on
    `psnr_db` and badly here."""
    x = (video.float() + 1.0) * 127.5
    y = (reconstruction.float().clamp(-1.0, 1.0) + 1.0) * 127.5
    mask = foreground_mask(video)
    pixels = mask.flatten(1).sum(dim=1) * video.shape[1]
    mse = ((x - y).pow(2) * mask).flatten(1).sum(dim=1) / pixels
    return torch.where(pixels > 0, 10.0 * torch.log10(255.0**2 / mse.clamp_min(1e-10)), torch.nan)


def pixel_loss(error: torch.Tensor, loss: VaeLoss, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of |error| (L1) or error^2 (MSE), each pixel times `weight` (broadcast over channels) if given."""
    per_pixel = error.abs() if loss is VaeLoss.l1 else error.pow(2)
    return (per_pixel if weight is None else per_pixel * weight).mean()


def holdout_indices(n: int, k: int) -> list[int]:
    """k indices evenly spaced over n clips (the middle of each of k equal stretches): fixed, seed-free."""
    return [(2 * i + 1) * n // (2 * k) for i in range(k)]


# --- the Lightning module ----------------------------------------------------------------------------------------


class VaeModule(L.LightningModule):
    """Trains `CausalVideoVAE.from_config(cfg.model.vae)` (from scratch, or from train.vae.init once `fit_vae` loads
    it): reconstruction (+ edge_weight x the same on the frames' pixel differences) + kl_weight x KL (LDM); with
    train.vae.freeze_encoder the encoder is fixed and the loss is the reconstruction alone."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.vae = CausalVideoVAE.from_config(cfg.model.vae)
        if cfg.train.vae.freeze_encoder:  # only the decoder learns: the latents stay those of train.vae.init
            self.vae.encoder.requires_grad_(False)  # so it builds no graph; loading weights keeps the flag
        self.step_losses: list[torch.Tensor] = []  # this optimizer step's micro-batch losses (read by TrainMetrics)
        self.skipped: list[tuple[str, str]] = []  # videos replaced in this step's batches
        log.info("VAE: %d parameters (%s)", sum(p.numel() for p in self.vae.parameters()), dict(cfg.model.vae))

    def losses(self, video: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """{"loss", "reconstruction" (its edge term included), "kl"} of a batch of clips (b, 3, F, H, W) in [-1, 1],
        each a per-pixel mean over the batch; the posterior noise is drawn from `generator` (on the CPU)."""
        v = self.cfg.train.vae
        # 1. encode the whole clip to [mean | logvar]: (b, 2z, T, h, w)
        mean, logvar = self.vae.encode_moments(video).float().chunk(2, dim=1)
        # 2. a posterior sample, decoded in one call: (b, z, T, h, w) -> (b, 3, F, H, W)
        z = sample_posterior(mean, logvar, generator)
        reconstruction = self.vae.decode(z.to(video.dtype)).float()
        # 3. per-pixel reconstruction (and on the frames' edges), and KL
        weight = None
        if v.foreground_weight > 0:  # the object weighs as much as the background that surrounds it
            weight = 1.0 + v.foreground_weight * foreground_mask(video)
            weight = weight / weight.mean()  # a weighted mean: the loss keeps its scale
        target, kind = video.float(), VaeLoss(v.loss)
        reconstruction_loss = pixel_loss(reconstruction - target, kind, weight)
        if v.edge_weight > 0:
            edge_loss = sum(
                pixel_loss(
                    reconstruction.diff(dim=dim) - target.diff(dim=dim),
                    kind,
                    None if weight is None else weight.narrow(dim, 1, weight.shape[dim] - 1),
                )
                for dim in (-1, -2)
            )
            reconstruction_loss = reconstruction_loss + v.edge_weight * edge_loss
        kl = kl_per_clip(mean, logvar).mean() / video[0].numel()
        loss = reconstruction_loss if v.freeze_encoder else reconstruction_loss + v.kl_weight * kl
        return {"loss": loss, "reconstruction": reconstruction_loss, "kl": kl}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        video = to_vae_layout(batch["video"])  # (b, F, 3, H, W) -> (b, 3, F, H, W)
        generator = step_generator(self.cfg.train.seed, self.global_rank, batch["batch_pos"])
        losses = self.losses(video, generator)
        self.step_losses.append(losses["loss"].detach())
        self.skipped.extend(batch.get("skipped", []))
        self.log("loss", losses["loss"].detach(), prog_bar=True, logger=False)
        self.log_dict({f"vae/{k}": v.detach() for k, v in losses.items()}, logger=True, prog_bar=False)
        return losses["loss"]

    @torch.no_grad()
    def reconstruct(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, posterior mean) of clips (b, 3, F, H, W) as inference decodes: the mean latents through
        `decode_chunked` with SAT's v1.0 schedule (F = 8k + 1: an odd latent count), else in one `decode` call."""
        mean, _ = self.vae.encode_moments(video).chunk(2, dim=1)
        if mean.shape[2] % 2 == 0:  # v1.0 decodes odd latent counts only
            return self.vae.decode(mean), mean
        return self.vae.decode_chunked(mean, Generation.v1_0), mean

    def configure_optimizers(self):
        t = self.cfg.train
        lr = float(t.lr) if t.lr is not None else DEFAULT_VAE_LR
        groups = param_groups(self.vae, t.weight_decay)  # no decay for GroupNorm weights and biases
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(float(b) for b in t.betas), eps=t.eps)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(t.max_steps, warmup_steps(self.cfg)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


# --- evaluation and checkpoints ----------------------------------------------------------------------------------


@dataclass
class HoldoutClips:
    """The held-out clips, decoded: videos (k, F, 3, H, W) in [-1, 1] and their paths."""

    videos: torch.Tensor
    paths: list[str]


class VaeCheckpoints(Callback):
    """Every `every` steps and at the end: write `vae/3d-vae.pt` (SAT's file) and `vae_eval.json` (held-out PSNR);
    the PSNR before training is measured too."""

    def __init__(self, out_dir: Path, holdout: HoldoutClips, every: int, batch_size: int):
        self.out_dir, self.holdout, self.every, self.batch_size = Path(out_dir), holdout, every, batch_size
        self.history: list[dict] = []
        self.saved: list[int] = []

    def evaluate(self, module: VaeModule) -> dict:
        """Held-out PSNR (mean over clips, dB) and the posterior means' statistics."""
        was_training = module.training
        module.eval()
        psnrs, foreground, means = [], [], []
        try:
            for start in range(0, len(self.holdout.paths), self.batch_size):
                video = to_vae_layout(self.holdout.videos[start : start + self.batch_size]).to(module.device)
                reconstruction, mean = module.reconstruct(video)
                psnrs.append(psnr_db(video, reconstruction).cpu())
                foreground.append(foreground_psnr_db(video, reconstruction).cpu())
                means.append(mean.float().cpu().flatten())
        finally:
            module.train(was_training)
        psnr, mean, foreground_psnr = torch.cat(psnrs), torch.cat(means), torch.cat(foreground)
        std = float(mean.std())
        return {
            "psnr_db": float(psnr.mean()),
            "psnr_db_per_clip": [round(float(p), 3) for p in psnr],
            "foreground_psnr_db": float(foreground_psnr.nanmean()),  # the moving object's pixels only
            "latent_mean": float(mean.mean()),
            "latent_std": std,
            "scale_factor_estimate": 1.0 / std if std > 0 else None,  # LDM / SAT: scale_factor = 1 / std(latents)
        }

    def _measure(self, trainer: L.Trainer, module: VaeModule, save: bool) -> None:
        step = trainer.global_step
        result = self.evaluate(module)
        self.history.append(
            {"step": step, "psnr_db": result["psnr_db"], "foreground_psnr_db": result["foreground_psnr_db"]}
        )
        n = len(self.holdout.paths)
        log.info(
            "step %d: held-out reconstruction PSNR %.2f dB, foreground %.2f dB (%d clips)",
            step,
            result["psnr_db"],
            result["foreground_psnr_db"],
            n,
        )
        writer = getattr(trainer.logger, "experiment", None) if trainer.logger is not None else None
        if writer is not None:
            writer.add_scalar("vae/holdout_psnr_db", result["psnr_db"], step)
            writer.add_scalar("vae/holdout_foreground_psnr_db", result["foreground_psnr_db"], step)
            writer.flush()
        if save:
            write_sat_model_states(self.out_dir / VAE_CKPT, module.vae.state_dict(), wrapper="state_dict", desc="vae")
            self.saved.append(step)
        report = {
            "step": step,
            **result,
            "vae_ckpt": str(VAE_CKPT) if self.saved else None,
            "vae_ckpt_step": self.saved[-1] if self.saved else None,
            "holdout_clips": self.holdout.paths,
            "history": self.history,
        }
        text = json.dumps(report, indent=2).encode()
        write_atomic(self.out_dir / EVAL_FILE, lambda f: f.write(text))

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self._measure(trainer, pl_module, save=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        due = (self.every > 0 and step % self.every == 0) or step >= trainer.max_steps
        if trainer.is_global_zero and step > 0 and due and step not in self.saved:
            self._measure(trainer, pl_module, save=True)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and trainer.global_step not in self.saved:
            self._measure(trainer, pl_module, save=True)


# --- the run -----------------------------------------------------------------------------------------------------


@dataclass
class VaeTrainResult:
    output_dir: Path
    vae_ckpt: Path  # model.vae_ckpt=<vae_ckpt>
    psnr_db: float  # held out, at the last step
    final_step: int
    checkpoints: list[int] = field(default_factory=list)
    module: VaeModule | None = None
    trainer: L.Trainer | None = None


def _vae_clips(cfg, plan: TrainPlan) -> tuple[HoldoutClips, VideoClips | ClipsInMemory, int]:
    """The held-out clips decoded; the training clips (in memory unless train.vae.clips_in_memory=false) and the
    loader workers they need."""
    progress, spec = cfg.train.progress_bar, plan.spec
    holdout_data = ClipsInMemory(VideoClips(list(plan.holdout), spec), progress=progress)
    holdout = HoldoutClips((holdout_data.videos.float() - 127.5) / 127.5, [str(c.path) for c in plan.holdout])
    dataset = VideoClips(list(plan.clips), spec)
    if cfg.train.vae.clips_in_memory:
        return holdout, ClipsInMemory(dataset, progress=progress), 0  # in memory: workers only copy
    return holdout, dataset, cfg.data.num_workers


def fit_vae(cfg, plan: TrainPlan) -> VaeTrainResult:
    """Train the VAE on the clips of `plan` (`cogvid.training.plan.plan_train`: data.root / data.manifest minus the
    held-out clips, checked) and write it to the plan's output dir."""
    t, v = cfg.train, cfg.train.vae
    out_dir, spec = plan.out_dir, plan.spec
    L.seed_everything(t.seed, workers=False, verbose=False)  # the same initial VAE every run
    module = VaeModule(cfg)
    if v.init:
        load_sat_vae(Path(v.init).expanduser(), module.vae).train()  # strict: the same sizes
        log.info("task=vae: starting from %s", v.init)
    if v.freeze_encoder:
        log.info("task=vae: the encoder is frozen; only the decoder learns")
    holdout, dataset, workers = _vae_clips(cfg, plan)
    log.info(
        "task=vae: %d training clips, %d held out (%d frames, %dx%d)",
        len(dataset),
        len(plan.holdout),
        spec.num_frames,
        spec.height,
        spec.width,
    )

    data = TrainData(dataset, t.batch_size, t.seed, workers, t.accumulate_grad_batches)
    checkpoints = VaeCheckpoints(out_dir, holdout, t.checkpoint_every, t.batch_size)
    metrics = TrainMetrics(out_dir, t.log_every, t.batch_size * t.accumulate_grad_batches)
    trainer = build_trainer(
        cfg,
        out_dir,
        [metrics, checkpoints],
        accelerator=plan.accelerator,
        devices=1,
        strategy="auto",
        precision=plan.precision,
    )
    log.info("training the VAE of %s for %d steps; output %s", cfg.model.name, t.max_steps, out_dir)
    trainer.fit(module, datamodule=data)
    return VaeTrainResult(
        output_dir=out_dir,
        vae_ckpt=out_dir / VAE_CKPT,
        psnr_db=checkpoints.history[-1]["psnr_db"],
        final_step=trainer.global_step,
        checkpoints=list(checkpoints.saved),
        module=module,
        trainer=trainer,
    )
