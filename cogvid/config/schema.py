"""Typed config schemas for every Hydra group.

Field names follow the SAT config names where SAT has one, so a reader of `configs/cogvideox_*.yaml` finds
the same words here. A misspelt key or a value outside an enum fails at compose time, naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING


class Generation(str, Enum):
    """Which SAT code generation a variant was released with: tag `v1.0` (the 1.0 family) or `main` (1.5 only)."""

    v1_0 = "v1_0"  # 2B, 5B, 5B-I2V: Conv2d patch embed, RoPE tables as state-dict buffers
    v1_5 = "v1_5"  # 1.5-5B, 1.5-5B-I2V: Linear 3-D patch embed, RoPE sliced in 3-D


class PosEmbed(str, Enum):
    sincos = "sincos"  # 3-D sin-cos table added to the input (2B)
    rope = "rope"  # 3-D rotary embedding inside attention (5B and 1.5)


class Dtype(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class Solver(str, Enum):
    dpmpp2m_sde = "dpmpp2m_sde"  # SAT VPSDEDPMPP2MSampler (the default)
    dpmpp2m_ode = "dpmpp2m_ode"  # SAT VPODEDPMPP2MSampler
    ddim = "ddim"  # SAT VideoDDIMSampler
    ddpm = "ddpm"  # ancestral DDPM, the posterior step (SAT VideoDDPMSampler's idea)
    euler = "euler"  # SAT EulerEDMSampler (s_churn = 0)
    heun = "heun"  # SAT HeunEDMSampler (s_churn = 0)
    euler_ancestral = "euler_ancestral"  # SAT EulerAncestralSampler (eta = 1)
    dpmpp2s_ancestral = "dpmpp2s_ancestral"  # SAT DPMPP2SAncestralSampler (eta = 1)
    lms = "lms"  # SAT LinearMultistepSampler (order 4)
    dpmpp2m_edm = "dpmpp2m_edm"  # SAT DPMPP2MSampler (plain, in log-sigma)


class Guider(str, Enum):
    none = "none"  # one conditional pass, no guidance
    constant = "constant"  # SAT VanillaCFG
    dynamic = "dynamic"  # SAT DynamicCFG


class DynamicSchedule(str, Enum):
    faithful = "faithful"  # the original: k = num_steps - DDPM timestep (erratic scale; SAT `guiders.py`, `DynamicCFG`)
    corrected = "corrected"  # k = step index + 1: the scale ramps from 1 up to 1 + guidance_scale


class Uncond(str, Enum):
    zeros = "zeros"  # the original: an all-zero context
    negative_prompt = "negative_prompt"  # T5 encoding of the negative prompt, as diffusers does


class ZeroSnrRescale(str, Enum):
    subset = "subset"  # SAT: rescale over the selected timesteps only
    full = "full"  # diffusers: rescale the full 1000-step table, then select


@dataclass
class TextEncoderConfig:
    """T5 (SAT FrozenT5Embedder); its max_length is the model's text_length."""

    path: str | None = None  # model.text_encoder.path=/weights/t5-v1_1-xxl (or a hub id: google/t5-v1_1-xxl)


@dataclass
class VaeConfig:
    """The 3-D causal VAE's sizes (SAT first_stage_config encoder/decoder params; the same for every variant)."""

    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 4])
    num_res_blocks: int = 3
    z_channels: int = 16
    temporal_compress_times: int = 4


@dataclass
class ModelConfig:
    """One CogVideoX variant: the DiT, the diffusion schedule and the latent scale (SAT `configs/cogvideox*.yaml`)."""

    name: str = MISSING  # display name, e.g. cogvideox-2b
    generation: Generation = MISSING
    # --- DiT (SAT network_config.params)
    hidden_size: int = MISSING
    num_layers: int = MISSING
    num_attention_heads: int = MISSING
    time_embed_dim: int = 512
    ofs_embed_dim: int | None = None  # 1.5-I2V only
    in_channels: int = 16  # 32 for I2V: noisy latent + image latent
    out_channels: int = 16
    patch_size: int = 2
    patch_size_t: int = 1  # 2 for the 1.5 family
    text_length: int = 226  # T5 tokens (224 for 1.5)
    text_hidden_size: int = 4096  # T5-XXL width
    num_frames: int = 49  # pixel frames the positional tables are sized for
    time_compressed_rate: int = 4
    latent_height: int = 60
    latent_width: int = 90
    pos_embed: PosEmbed = MISSING
    learnable_pos_embed: bool = False  # 5B-I2V: learnable additive table over text + video
    height_interpolation: float = 1.875  # sin-cos only
    width_interpolation: float = 1.875
    time_interpolation: float = 1.0
    rope_theta: float = 10000.0
    qk_ln: bool = True
    elementwise_affine: bool = True
    layernorm_epsilon: float = 1e-5  # block norms; qk and final norms use 1e-6 as SAT does
    max_sequence_length: int = 64  # rows of SAT's unused transformer.position_embeddings (RoPE variants)
    lora_rank: int = 0  # 0: no adapters. SAT LoraMixin r
    lora_alpha: float = 1.0  # the LoRA branch is scaled by lora_alpha / lora_rank
    checkpoint_activations: bool = False  # gradient checkpointing per block
    zero_final_linear: bool = False  # from-scratch init of the output projection: zeros (DiT) or xavier (SAT)
    # --- sampling defaults (what SAT's sample_video.py uses for this code generation)
    default_height: int = 480  # pixels; v1.0 hard-codes 480x720, 1.5 defaults to 768x1360
    default_width: int = 720
    default_fps: int = 8  # 16 for 1.5
    # --- diffusion and latents
    scale_factor: float = 0.7  # VAE latent scale
    shift_scale: float = 1.0  # ZeroSNR-DDPM SNR shift
    noised_image_input: bool = False  # I2V conditioning latent concatenated on channels
    noised_image_dropout: float = 0.0
    latent_input: bool = False  # training data are pre-encoded latents
    uniform_sampling: bool = True  # stratified timesteps across ranks in training
    group_num: int | None = None  # timestep groups for uniform_sampling; None: as SAT v1.0 derives it
    dtype: Dtype = Dtype.bf16  # preferred dtype on an accelerator
    # --- weights
    ckpt: str | None = None  # SAT transformer folder (with `latest`) or a .pt file
    # model.lora_ckpt=PATH: a SAT LoRA checkpoint (folder or .pt, adapters only or with the base) trained on model.ckpt;
    # its adapters load on top of the base, at its own rank (model.lora_alpha as in training)
    lora_ckpt: str | None = None
    vae_ckpt: str | None = None  # SAT `vae/3d-vae.pt`
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)


def is_image_to_video(model) -> bool:
    """Whether a `model` config is an image-to-video variant: SAT's `noised_image_input`, the flag that makes
    SATVideoDiffusionEngine concatenate the image latent on channels (its DiT then has in_channels = 2 x
    out_channels, which `cogvid.sat.yaml_import` checks)."""
    return bool(model.noised_image_input)


@dataclass
class SamplerConfig:
    """Solver, step count and guidance (SAT sampler_config + guider_config)."""

    solver: Solver = Solver.dpmpp2m_sde
    num_steps: int = 50  # sampler.num_steps=25
    guidance_scale: float = 6.0  # sampler.guidance_scale=6
    guider: Guider = Guider.dynamic
    dynamic_schedule: DynamicSchedule = DynamicSchedule.faithful
    dynamic_exp: float = 5.0
    dynamic_num_steps: int = 50  # the guider's own step count (SAT guider_config.params.num_steps)
    uncond: Uncond = Uncond.zeros
    zero_snr_rescale: ZeroSnrRescale = ZeroSnrRescale.subset
    cache: float | None = None  # sampler.cache=0.1: reuse the DiT's blocks while its first block changes less (opt in)
    cache_order: int = 1  # sampler.cache_order=0|1|2: the skipped blocks' residual extrapolated (0: the last one)
    cache_warmup: int = 2  # sampler.cache_warmup=2: the walk's first steps run every block
    cache_max_run: int | None = 3  # sampler.cache_max_run=3: at most 3 reused DiT calls in a row (null: no limit)


@dataclass
class ModeConfig:
    """What a run trains: `sft` (the DiT) or `lora` (only the adapters)."""

    name: str = "sft"
    trainable_prefixes: list[str] = field(default_factory=list)  # empty: all DiT parameters


class ImageLatentScaling(str, Enum):
    """How the I2V conditioning latent is scaled; SAT's `sample_video.py` differs between v1.0 and HEAD."""

    auto = "auto"  # as the original per generation: scaled for v1.0, unscaled for 1.5
    scaled = "scaled"  # scale_factor * VAE latent (v1.0 sampling and all SAT training)
    unscaled = "unscaled"  # the raw VAE latent (HEAD 1.5 sampling)


@dataclass
class InferConfig:
    """What to sample and where to write it."""

    prompt: str | None = None
    prompts_file: str | None = None  # one prompt per line; I2V lines `prompt@@image_path` (SAT's txt input)
    interactive: bool = False  # read prompts from standard input until EOF
    negative_prompt: str = ""  # used with sampler.uncond=negative_prompt
    image: str | None = None  # I2V conditioning image for every prompt without its own `@@image`
    video: str | None = None  # video to video (SDEdit): the source clip, re-noised to `strength` and denoised
    strength: float = 0.8  # with `video`: 1 = start from pure noise (text to video), 0 = the clip back unchanged
    num_frames: int | None = None  # pixel frames, 8k+1 (null: the model's num_frames)
    height: int | None = None  # pixels, a multiple of 16 (null: the variant's default; 1.5-I2V: from the image)
    width: int | None = None
    fps: int | None = None  # null: the variant's default (8; 16 for 1.5)
    seed: int = 42  # video i of a run uses seed + i
    num_videos_per_prompt: int = 1
    output_dir: str | None = None  # null: the Hydra run dir
    resume: bool = False  # make only the videos output_dir does not hold yet (same prompt, image, seed and settings)
    save_latents: bool = False  # also write the unscaled latents as safetensors beside each video
    frame_strip: bool = False  # also write <stem>.png: the video's frames side by side under its prompt
    image_latent_scaling: ImageLatentScaling = ImageLatentScaling.auto
    image_posterior_sample: bool = True  # encode the I2V image as a posterior sample (SAT) or its mean
    head_frame_quirk: bool = False  # 1.5: decode every latent to 4 frames as SAT HEAD does (84 frames for 81)
    # auto: the whole frame when the memory estimate says it fits (SAT's exact decode), else the largest spatial tiles
    # that do (cogvid.inference.memory); [h, w] in latents: always those tiles; off (or null): never tiles
    vae_tile: Any = "auto"


class Strategy(str, Enum):
    single = "single"  # one process
    ddp = "ddp"  # data parallel, one process per GPU
    deepspeed = "deepspeed"  # DeepSpeed ZeRO (train.deepspeed.stage 2 or 3)


class SatWeights(str, Enum):
    """Which weights the run's SAT export (`<out>/sat/<step>/`) holds."""

    trained = "trained"  # the weights the optimizer trains
    ema = "ema"  # their exponential moving average (needs train.ema_decay)


class TrainTask(str, Enum):
    fit = "fit"  # train
    precompute = "precompute"  # encode data.root / data.manifest to latents + T5 embeddings in data.cache
    vae = "vae"  # train the 3-D VAE (model.vae sizes) from scratch on data.root / data.manifest -> OUT/vae/3d-vae.pt


@dataclass
class DeepSpeedConfig:
    """ZeRO settings; the defaults are SAT's `configs/sft.yaml` (deepspeed.zero_optimization and fp16 blocks)."""

    stage: int = 2  # ZeRO stage: 2 (optimizer states + gradients partitioned) or 3 (+ parameters)
    offload_optimizer: bool = False  # optimizer states and step on the CPU (SAT cpu_offload)
    offload_parameters: bool = False  # stage 3 only: parameters on the CPU
    contiguous_gradients: bool = False
    overlap_comm: bool = True
    reduce_scatter: bool = True
    reduce_bucket_size: int = 1_000_000_000
    allgather_bucket_size: int = 1_000_000_000
    load_from_fp32_weights: bool = False
    loss_scale_window: int = 400  # fp16 (16-mixed) dynamic loss scaling
    hysteresis: int = 2
    min_loss_scale: int = 1


@dataclass
class ValidationConfig:
    """Videos sampled every `every` steps from fixed prompts and seeds (TensorBoard + MP4 files), with `sampler.*`
    and the video shape of `infer.*` (num_frames, height, width, fps)."""

    every: int = 0  # steps between validation videos; 0: off (SAT eval_interval 100)
    prompts: list[str] = field(default_factory=list)  # train.validation.prompts='[a red fox in snow]'
    seeds: list[int] = field(default_factory=lambda: [42])  # one video per prompt and seed
    images: list[str] = field(default_factory=list)  # I2V: one first-frame image per prompt


class VaeLoss(str, Enum):
    l1 = "l1"  # mean |x - x_rec| (LDM's autoencoder pixel term)
    mse = "mse"  # mean (x - x_rec)^2: the term PSNR measures


@dataclass
class VaeTrainConfig:
    """task=vae: the VAE's objective and evaluation; optimizer, schedule, batch and checkpoint interval are train.*."""

    loss: VaeLoss = VaeLoss.l1  # train.vae.loss=mse: the pixel reconstruction term, on pixels in [-1, 1]
    kl_weight: float = 1e-6  # train.vae.kl_weight=1e-5: weight of the posterior's KL (LDM's scale, per pixel)
    # train.vae.foreground_weight=10: pixels away from their frame's background (the median of its border) weigh
    # 1 + this in the reconstruction term; 0 = the plain mean. For clips with flat backgrounds (the shapes data).
    foreground_weight: float = 0.0
    # train.vae.edge_weight=1: adds this x the same term on the frames' horizontal and vertical pixel differences, so
    # an edge the reconstruction blurs or shifts costs as much as a wrong colour (0 = pixels only)
    edge_weight: float = 0.0
    # train.vae.freeze_encoder=true (with train.vae.init): only the decoder learns. The latents stay those a DiT was
    # trained on, so a sharper decoder ships without retraining the DiT (the KL term is then constant and dropped).
    freeze_encoder: bool = False
    holdout: int = 16  # clips held out (evenly spaced, fixed) for reconstruction PSNR; never trained on
    init: str | None = None  # train.vae.init=OUT/vae/3d-vae.pt: start from these weights (e.g. trained on 1 frame)
    clips_in_memory: bool = True  # decode every clip once, keep it as uint8 (false: decode on the fly)


@dataclass
class DataConfig:
    """Training clips: SAT's folder layout (`data_video.py`, `SFTDataset`) or a manifest, or latents precomputed from
    either."""

    root: str | None = None  # SAT layout: root/videos/**.mp4 + root/labels/**.txt (first line = caption)
    manifest: str | None = None  # CSV (header path,caption) or JSONL ({"path": ..., "caption": ...})
    cache: str | None = None  # precomputed latents + T5 embeddings (task=precompute writes, training reads)
    video_size: list[int] | None = None  # [height, width] (null: the model's latent size x 8; SAT [480, 720])
    fps: int = 8  # clips are resampled to this rate
    max_num_frames: int | None = None  # frames per clip, 4k+1 (null: model.num_frames)
    skip_frms_num: int = 3  # frames dropped at the start (and end) of every video
    min_num_frames: int = 5  # shorter videos (after skipping) are skipped and counted
    num_workers: int = 8  # DataLoader workers per process
    cache_dtype: Dtype = Dtype.fp32  # tensors written by task=precompute


@dataclass
class TrainConfig:
    """How to train: strategy, optimizer, schedule, checkpoints (SAT sft.yaml defaults); conf/train/<strategy>.yaml."""

    strategy: Strategy = Strategy.single  # train=single | ddp | deepspeed_zero2 | deepspeed_zero3 | ...
    devices: int = 1  # processes (GPUs) per node; train.devices=8
    num_nodes: int = 1  # train.num_nodes=2 (launched by torchrun or SLURM, one process per GPU)
    seed: int = 1234  # SAT's seed; every rank draws from (seed, rank, batch position)
    precision: str | None = None  # bf16-mixed | 16-mixed | 32 (null: from model.dtype on a GPU, 32 on the CPU)
    max_steps: int = 1000  # optimizer steps (SAT train_iters)
    batch_size: int = 2  # clips per process and micro-batch (SAT train_micro_batch_size_per_gpu)
    accumulate_grad_batches: int = 1  # SAT gradient_accumulation_steps
    lr: float | None = None  # null: 1e-5 for mode=sft, 1e-3 for mode=lora and task=vae
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 1e-4  # not applied to norms and biases
    warmup_steps: int | None = None  # linear warm-up, then linear decay to 0 (null: 1% of max_steps, as SAT)
    gradient_clip: float = 0.1  # max global grad norm
    # train.ema_decay=0.999: keep an fp32 exponential moving average of the trainable weights, updated after every
    # optimizer step (ema = decay * ema + (1 - decay) * weight, no warm-up, as SAT's FusedEmaAdam), saved in every
    # checkpoint; null: off
    ema_decay: float | None = None
    sat_weights: SatWeights = SatWeights.trained  # train.sat_weights=ema: the SAT export holds the EMA weights
    ucg_rate: float = 0.1  # caption dropout: a dropped sample gets an all-zero text context (SAT ucg_rate)
    output_dir: str | None = None  # checkpoints, TensorBoard, videos (null: the Hydra run dir); fix it to resume
    checkpoint_every: int = 500  # steps between resumable checkpoints (SAT save_interval)
    keep_last: int = 3  # resumable checkpoints kept (older ones are deleted)
    resume: str | None = None  # auto (latest complete checkpoint in output_dir, if any) | a checkpoint path
    log_every: int = 20  # steps between TensorBoard scalars (SAT log_interval)
    progress_bar: bool = True
    process_group_backend: str | None = None  # null: nccl on GPUs, gloo on the CPU
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    vae: VaeTrainConfig = field(default_factory=VaeTrainConfig)  # task=vae only
    callbacks: list = field(default_factory=list)  # extra Lightning callbacks as Hydra nodes with _target_


@dataclass
class ParallelConfig:
    sequence: int = 1  # processes one video's tokens are split over (under torchrun); 1: each makes whole videos
    cfg: int = 1  # 2: the unconditional and conditional guidance passes on two processes (or sequence groups)
    ring: int = 1  # of the `sequence` processes, how many pass K and V round a ring (the rest split the heads)


@dataclass
class SampleConfig:
    model: ModelConfig = MISSING
    sampler: SamplerConfig = MISSING
    mode: ModeConfig = MISSING
    infer: InferConfig = MISSING
    device: str = "auto"  # auto | cpu | cuda | cuda:1
    dtype: Dtype | None = None  # None: model.dtype on an accelerator, fp32 on the CPU
    vae_dtype: Dtype | None = None  # None: the same as dtype (SAT runs the VAE in the model dtype)
    memory_limit_gb: float | None = None  # what a run may use; None: the device's free memory (cogvid.inference.memory)
    compile: bool = False  # torch.compile the DiT (opt in; the first video pays the compilation, cached on disk)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


@dataclass
class TrainRunConfig:
    model: ModelConfig = MISSING
    sampler: SamplerConfig = MISSING
    mode: ModeConfig = MISSING
    train: TrainConfig = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    infer: InferConfig = MISSING  # the shape of validation videos
    task: TrainTask = TrainTask.fit  # task=precompute writes data.cache; task=vae trains the VAE
    device: str = "auto"  # auto | cpu | cuda
    dtype: Dtype | None = None


class ExportTask(str, Enum):
    """What `cogvid-export` converts (conf/export.yaml)."""

    to_diffusers = "to_diffusers"  # SAT transformer + 3d-vae.pt + T5 -> a diffusers pipeline folder (or parts)
    lora_to_diffusers = "lora_to_diffusers"  # SAT LoRA checkpoint -> pytorch_lora_weights.safetensors
    to_sat = "to_sat"  # diffusers pipeline / transformer / VAE folder -> SAT transformer/, vae/3d-vae.pt
    lora_to_sat = "lora_to_sat"  # diffusers LoRA -> SAT LoRA checkpoint (adapters, with model.ckpt: + base)
    merge_lora = "merge_lora"  # SAT base + SAT LoRA -> one plain SAT checkpoint (W + B A alpha / r)
    sat_config = "sat_config"  # SAT model YAML -> cogvid model/ and sampler/ configs


class ExportPart(str, Enum):
    transformer = "transformer"
    vae = "vae"
    scheduler = "scheduler"
    text_encoder = "text_encoder"
    tokenizer = "tokenizer"


class LoraScale(str, Enum):
    metadata = "metadata"  # B as trained; alpha and r in the file's adapter metadata (diffusers reads it)
    fold = "fold"  # B multiplied by alpha / r, metadata alpha = r: right in loaders that ignore metadata too


@dataclass
class ExportConfig:
    """cogvid-export: weights between SAT and diffusers; every variant value comes from `model`."""

    model: ModelConfig = MISSING
    task: ExportTask = MISSING
    out: str | None = None  # out=./CogVideoX-5b-diffusers (refused if it exists, unless overwrite=true)
    source: str | None = None  # to_sat / lora_to_sat: the diffusers folder or file; sat_config: the SAT YAML
    lora: str | None = None  # lora_to_diffusers / merge_lora: the SAT LoRA checkpoint (folder or .pt)
    parts: list[ExportPart] = field(default_factory=lambda: list(ExportPart))
    dtype: Dtype | None = None  # transformer dtype written; null: model.dtype (to_diffusers), as stored (others)
    max_shard_size: str = "5GB"
    lora_scale: LoraScale = LoraScale.metadata
    overwrite: bool = False
    name: str | None = None  # sat_config: the config name
