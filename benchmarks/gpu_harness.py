"""GPU harness: the whole text-to-video path of 2B, 5B and 1.5-5B at their real shapes, with random weights.

    .venv/bin/python benchmarks/gpu_harness.py                      # 2b, 5b, 1.5_5b; 50 guided steps; bf16 on CUDA
    .venv/bin/python benchmarks/gpu_harness.py --variants 2b --rounds 3
    .venv/bin/python benchmarks/gpu_harness.py --variants 1.5_5b --warmup-steps 2    # a short warm-up video
    .venv/bin/python benchmarks/gpu_harness.py --device cpu --steps 2 --warmup 0 --t5-size tiny --name tiny \
        --override model.hidden_size=64 model.num_attention_heads=2 model.num_layers=1 model.text_hidden_size=32 \
        model.text_length=16 model.vae.ch=32 'model.vae.ch_mult=[1,1,1,1]' model.vae.num_res_blocks=1 \
        infer.num_frames=9 infer.height=32 infer.width=48          # the harness itself, tiny, on the CPU

Each variant is the composed sample config `model=<variant>` (plus `sampler.num_steps` and every `--override`), so
its video shape is the variant's default (49 x 480 x 720 for 2B and 5B, 81 x 768 x 1360 for 1.5-5B) and its sampler
SAT's (DPM++(2M) SDE with dynamic CFG: a batch of 2 per step, 1 on the steps whose scale is ~1). Nothing is read
from disk but the tokenizer: the DiT (`DiffusionModel.from_model_config`, every trainable parameter drawn afresh,
since SAT's init zeroes the adaLN linears), the VAE (`CausalVideoVAE.from_config`, torch's default init) and a
T5 encoder with t5-v1_1-xxl's sizes (`--t5-size tiny`: 1 layer as wide as model.text_hidden_size) are built on the
target device with random weights. The tokenizer is the shipped shapes model's small sentencepiece model
(cogvid/weights/shapes/t5/spiece.model): its ids differ from t5-v1_1's, which changes no shape and no timing, since
T5 always encodes model.text_length tokens.

As cogvid-sample does, T5 encodes the prompt first and leaves the device (here for CPU memory, where the next
variant finds it) before the DiT and the VAE are built there; the text phase's seconds count in every video and its
peak in the variant's peak. Every variant makes `--warmup` videos (of `--warmup-steps`: 2 keep a run on a budget
short, as every step runs the same kernels on the same shapes), then `--rounds` timed ones through
`VideoPipeline.generate` (sampling, the chunked VAE decode). Per variant: seconds of each phase, s/step (sampling /
steps), s/video (the three phases), the peak memory (CUDA: torch.cuda.max_memory_allocated, reset at the start of
each video and of the text phase; the CPU: the peak resident set VmHWM, reset before each video where the kernel
allows) and the DiT's achieved TFLOP/s: the analytic FLOPs of every DiT call the sampler made (`dit_forward_flops`,
from the calls' own shapes) over the sampling seconds.
GB means 2^30 bytes, as `cogvid.utils.runtime.peak_memory_gb`. Medians over the rounds; the largest peak.

At 50 steps a video is 11.8 (2B), 32.6 (5B) and 144.9 (1.5-5B) PFLOP of DiT work by this count, so each goal asks
for about 520-545 TFLOP/s of the DiT alone, before T5 and the decode take their share.

The issue's goals on an H100-class GPU are printed beside each result and judged only where they apply: on CUDA, at
50 steps, the real T5 size and no --override (the exact path at the real shapes). JSON and a markdown table go to
benchmarks/results/ (or --results) with the device, torch version, command and date.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from bench_common import memory_kib, run_meta, write_results

RESULTS = Path(__file__).parent / "results"
PROMPT = "a red circle moving right"
SEED = 42
GIB = 1024**3

# The goals per video on an H100-class GPU, on the exact path (no step cache) at the real shapes.
GOALS = {
    "2b": {"s_per_video": 22.0, "peak_memory_gb": 10.0},
    "5b": {"s_per_video": 60.0},
    "1.5_5b": {"s_per_video": 280.0},
}

# T5 encoder sizes (transformers' T5Config names): t5-v1_1-xxl's, and a 1-layer stand-in for CPU runs whose d_model
# is the DiT's text_hidden_size.
T5_SIZES = {
    "xxl": {
        "d_model": 4096,
        "d_kv": 64,
        "d_ff": 10240,
        "num_layers": 24,
        "num_heads": 64,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "vocab_size": 32128,
    },
    "tiny": {
        "d_kv": 8,
        "num_layers": 1,
        "num_heads": 2,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 16,
    },
}


# --- the analytic FLOP count ----------------------------------------------------------------------------------------
def dit_forward_flops(model_cfg, latent_t: int, latent_h: int, latent_w: int, text_tokens: int, batch: int) -> int:
    """FLOPs (2 per multiply-add) of one DiffusionTransformer forward on a (batch, latent_t, c, latent_h, latent_w)
    latent and `text_tokens` of context: every Linear and conv, and attention's two matmuls (QK^T and AV).

    What torch.utils.flop_counter counts: matmuls, convs and SDPA; norms, activations, modulation and the bias adds
    are not. latent_t counts the latents the DiT sees (the 1.5 family's padding latent included). LoRA adapters
    (model.lora_rank) are not counted.
    """
    m = model_cfg
    d, e, p, p_t = m.hidden_size, m.time_embed_dim, m.patch_size, m.patch_size_t
    video = (latent_t // p_t) * (latent_h // p) * (latent_w // p)
    s = text_tokens + video  # the joint [text ; video] sequence
    per_item = 0
    # 1. time embedding MLP D -> E -> E (+ the 1.5-I2V ofs MLP E -> E -> E)
    per_item += d * e + e * e + (2 * m.ofs_embed_dim**2 if m.ofs_embed_dim else 0)
    # 2. patch embedding: a p_t x p x p patch of c_in channels to D per video token (Conv2d for v1.0, Linear for 1.5);
    #    T5 states to D per text token
    per_item += video * m.in_channels * p_t * p * p * d + text_tokens * m.text_hidden_size * d
    # 4. per block: adaLN E -> 12 D; fused QKV 3 D^2, dense D^2, MLP 2 x 4 D^2 per token; QK^T and AV S^2 D each
    per_item += m.num_layers * (e * 12 * d + s * 12 * d * d + 2 * s * s * d)
    # 5. final layer: adaLN E -> 2 D; D -> p_t p p c_out per video token
    per_item += e * 2 * d + video * d * p_t * p * p * m.out_channels
    return 2 * batch * per_item


@contextmanager
def counting_dit_flops(model) -> Iterator[dict[str, int]]:
    """A tally {calls, items, flops} of the DiT forwards run inside the block, from each call's own input shapes
    (so any solver, and the guidance steps that run without their unconditional half, are counted as they ran)."""
    tally = {"calls": 0, "items": 0, "flops": 0}

    def count(module, args):
        x, _, context = args[:3]  # (b, t, c, h, w), timesteps, (b, n_txt, d_txt)
        b, t, _, h, w = x.shape
        tally["calls"] += 1
        tally["items"] += b
        tally["flops"] += dit_forward_flops(model.cfg, t, h, w, context.shape[1], b)

    handle = model.backbone.register_forward_pre_hook(count)
    try:
        yield tally
    finally:
        handle.remove()


# --- random-weight parts --------------------------------------------------------------------------------------------
@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Every trainable parameter drawn afresh where it lies: weights N(0, 1 / fan_in), biases N(0, 0.02^2), norm
    scales N(1, 0.02^2)."""
    gen = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    for name, param in module.named_parameters():
        if not param.requires_grad:  # fixed tables (sin-cos positions, SAT's unused position_embeddings)
            continue
        if param.ndim >= 2:
            param.normal_(0.0, param[0].numel() ** -0.5, generator=gen)
        elif name.endswith("bias"):
            param.normal_(0.0, 0.02, generator=gen)
        else:
            param.normal_(1.0, 0.02, generator=gen)


def random_t5(size: str, text_hidden_size: int, dtype: torch.dtype, device: torch.device):
    """(tokenizer, T5EncoderModel) with random weights, built on `device`: t5-v1_1-xxl's sizes, or a tiny 1-layer
    encoder as wide as the DiT's text input. The tokenizer is the shipped shapes model's sentencepiece model."""
    from transformers import T5Config, T5EncoderModel

    from cogvid.config.compose import package_path
    from cogvid.models.t5 import load_t5_tokenizer

    sizes = dict(T5_SIZES[size])
    if size == "xxl" and sizes["d_model"] != text_hidden_size:
        raise SystemExit(
            f"--t5-size xxl gives {sizes['d_model']}-wide contexts but model.text_hidden_size={text_hidden_size}: "
            "use --t5-size tiny with a narrow model"
        )
    tokenizer = load_t5_tokenizer(package_path("weights/shapes/t5"), sizes.get("vocab_size"))
    if size == "tiny":  # an embedding row for every id the tokenizer has (its pieces and T5's sentinels)
        sizes |= {"d_model": text_hidden_size, "d_ff": 2 * text_hidden_size, "vocab_size": len(tokenizer)}
    config = T5Config(
        **sizes, feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1, use_cache=False
    )
    torch.manual_seed(0)
    with torch.device(device):
        encoder = T5EncoderModel(config)
    return tokenizer, encoder.to(dtype)


def build_pipeline(cfg, contexts: dict, device: torch.device, dtype: torch.dtype):
    """A VideoPipeline of random-weight parts for the composed `cfg`, built on `device` (nothing goes through the
    CPU at full size), holding the prompts' encoded `contexts` and no T5, as cogvid-sample samples."""
    from cogvid.diffusion.model import DiffusionModel
    from cogvid.inference.pipeline import VideoPipeline
    from cogvid.inference.plan import video_settings
    from cogvid.models.vae import CausalVideoVAE

    torch.manual_seed(0)
    with torch.device(device):
        model = DiffusionModel.from_model_config(cfg.model)
        vae = CausalVideoVAE.from_config(cfg.model.vae)
    model.backbone.to(dtype).eval()
    randomize_(model.backbone, seed=0)
    vae = vae.to(dtype).eval().requires_grad_(False)
    pipeline = VideoPipeline(cfg.model, video_settings(cfg), model, vae, None, device, dtype, dtype)
    pipeline.parts.contexts.update(contexts)
    return pipeline


def encode_prompt(t5, cfg, device: torch.device) -> tuple[dict, float, float]:
    """cogvid-sample's text phase: T5 on the device encodes the prompt and leaves it (to CPU memory, where the next
    variant finds it). Returns ({prompt: context}, seconds, the phase's peak GB)."""
    import time

    from cogvid.models.t5 import T5Conditioner

    tokenizer, encoder = t5
    encoder.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    context = T5Conditioner(tokenizer, encoder, max_length=cfg.model.text_length).encode([PROMPT])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else 0.0
    encoder.to("cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {PROMPT: context}, seconds, peak


# --- memory ---------------------------------------------------------------------------------------------------------
def reset_cpu_peak() -> bool:
    """Reset this process's VmHWM to its current resident set (Linux's clear_refs 5); False where it cannot be."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def resident_gb(device: torch.device) -> float:
    """What is held before a video starts: CUDA memory allocated (the weights), or the resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / GIB
    return memory_kib("VmRSS")["VmRSS"] * 1024 / GIB


# --- one variant ----------------------------------------------------------------------------------------------------
def one_video(pipeline, shape, text_s: float) -> dict[str, float]:
    """Timings of one video, its peak memory and the DiT FLOPs of its sampling run; text_s: the text phase's
    seconds (the prompt is encoded once, before the DiT moves to the device, as cogvid-sample does)."""
    cpu_peak_reset = pipeline.device.type == "cpu" and reset_cpu_peak()
    with counting_dit_flops(pipeline.model) as tally:
        timings = pipeline.generate(PROMPT, seed=SEED, shape=shape).timings
    timings["text_s"] += text_s
    if pipeline.device.type == "cpu":
        timings["peak_memory_gb"] = memory_kib("VmHWM")["VmHWM"] * 1024 / GIB
    video_s = timings["text_s"] + timings["sampling_s"] + timings["decoding_s"]
    return {
        **{k: timings[k] for k in ("text_s", "sampling_s", "decoding_s", "peak_memory_gb")},
        "video_s": video_s,
        "dit_calls": tally["calls"],
        "dit_batch_items": tally["items"],
        "dit_tflop": tally["flops"] / 1e12,
        "tflops": tally["flops"] / 1e12 / timings["sampling_s"],
        "peak_is_per_video": pipeline.device.type == "cuda" or cpu_peak_reset,
    }


def goal_check(variant: str, row: dict, args, device: torch.device) -> tuple[str, bool | None, str]:
    """(the goal in words, met or not (None: not judged), why not judged)."""
    goal = GOALS.get(variant)
    if goal is None:
        return "none", None, "no goal for this variant"
    words = f"<= {goal['s_per_video']:g} s/video" + (
        f", <= {goal['peak_memory_gb']:g} GB peak" if "peak_memory_gb" in goal else ""
    )
    if device.type != "cuda":
        return words, None, "n/a (CPU)"
    if args.steps != 50 or args.override or args.t5_size != "xxl":
        return words, None, "n/a (not 50 steps at the real sizes)"
    met = all(row[key] <= limit for key, limit in goal.items())
    return words, met, ""


def run_variant(variant: str, args, device: torch.device, dtype: torch.dtype, t5_cache: dict) -> dict:
    from cogvid.config.checks import check_values
    from cogvid.config.compose import compose
    from cogvid.config.schema import Guider, Solver, is_image_to_video
    from cogvid.inference.plan import video_settings
    from cogvid.parallel.sequence import video_tokens

    def config(steps: int):
        return compose([f"model={variant}", f"sampler.num_steps={steps}", *args.override])

    cfg = config(args.steps)
    check_values(cfg)
    if is_image_to_video(cfg.model):
        raise SystemExit(f"{variant} is image-to-video: the harness times the text-to-video variants")
    key = (args.t5_size, cfg.model.text_hidden_size)
    if key not in t5_cache:
        t5_cache.clear()  # one T5 at a time
        t5_cache[key] = random_t5(args.t5_size, cfg.model.text_hidden_size, dtype, device)
    contexts, text_s, text_peak = encode_prompt(t5_cache[key], cfg, device)
    pipeline = build_pipeline(cfg, contexts, device, dtype)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    shape = pipeline.shape_for(None)
    held = resident_gb(device)
    warm = pipeline
    if args.warmup_steps not in (None, args.steps):
        warm = pipeline.with_settings(video_settings(config(args.warmup_steps)))
    for _ in range(args.warmup):
        one_video(warm, shape, text_s)
    rounds = [one_video(pipeline, shape, text_s) for _ in range(args.rounds)]

    m, sm = cfg.model, cfg.sampler
    t, _, h, w = shape.latent
    median = {k: statistics.median(r[k] for r in rounds) for k in ("text_s", "sampling_s", "decoding_s", "video_s")}
    row = {
        "model": m.name,
        "frames": shape.num_frames,
        "height": shape.height,
        "width": shape.width,
        "latent": [t, h, w],
        "text_tokens": m.text_length,
        "video_tokens": video_tokens(m, shape.latent),
        "dit_params_b": sum(p.numel() for p in pipeline.model.backbone.parameters()) / 1e9,
        "t5_params_b": sum(p.numel() for p in t5_cache[key][1].parameters()) / 1e9,
        "steps": args.steps,
        "sampler": f"{Solver(sm.solver).value} with {Guider(sm.guider).value} guidance {sm.guidance_scale:g}",
        "dit_calls": rounds[0]["dit_calls"],
        "dit_batch_items": rounds[0]["dit_batch_items"],
        "dit_tflop_per_video": rounds[0]["dit_tflop"],
        "text_s": median["text_s"],
        "sampling_s": median["sampling_s"],
        "decoding_s": median["decoding_s"],
        "s_per_step": median["sampling_s"] / args.steps,
        "s_per_video": median["video_s"],
        "peak_memory_gb": max(text_peak, *(r["peak_memory_gb"] for r in rounds)),
        "text_phase_peak_gb": text_peak,
        "peak_is_per_video": all(r["peak_is_per_video"] for r in rounds),
        "resident_gb": held,
        "tflops": statistics.median(r["tflops"] for r in rounds),
        "rounds": rounds,
    }
    row["goal"], row["goal_met"], row["goal_note"] = goal_check(variant, row, args, device)
    del pipeline, warm
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


# --- the run --------------------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: torch sees no CUDA device here; use --device cpu")
    return device


def verdict(row: dict) -> str:
    if row["goal_met"] is None:
        return row["goal_note"]
    return "**met**" if row["goal_met"] else "**missed**"


def markdown(meta: dict, rows: dict[str, dict]) -> str:
    peak = "torch.cuda.max_memory_allocated per video" if meta["cuda"] else "peak resident set (VmHWM)"
    held = "CUDA memory allocated" if meta["cuda"] else "resident set"
    overrides = f"; overrides `{' '.join(meta['overrides'])}`" if meta["overrides"] else ""
    samplers = ", ".join(sorted({r["sampler"] for r in rows.values()}))
    lines = [
        "# GPU harness: text to video at the real shapes, random weights",
        "",
        f"- date: {meta['date']}",
        f"- device: {meta['device']}; torch {meta['torch']}; {meta['dtype']}",
        f"- command: `{meta['command']}`",
        f"- {meta['steps']} steps of {samplers}; T5 {meta['t5_size']}; {meta['warmup']} warm-up video(s) of "
        f"{meta['warmup_steps']} steps, then {meta['rounds']} timed, per variant; medians{overrides}",
        "- TFLOP/s: the DiT's analytic FLOPs of the run's calls (matmuls and attention) over the sampling seconds; "
        f"peak: {peak}; held: {held} before a video (the weights)",
        "",
        "| variant | frames x H x W | tokens (text + video) | DiT calls (items) | T5 s | sampling s | decode s "
        "| s/step | s/video | peak GB | held GB | TFLOP/s | goal | met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['frames']} x {r['height']} x {r['width']} | {r['text_tokens']} + {r['video_tokens']} "
            f"| {r['dit_calls']} ({r['dit_batch_items']}) | {r['text_s']:.3g} | {r['sampling_s']:.4g} "
            f"| {r['decoding_s']:.3g} | {r['s_per_step']:.3g} | {r['s_per_video']:.4g} | {r['peak_memory_gb']:.3g} "
            f"| {r['resident_gb']:.3g} | {r['tflops']:.3g} | {r['goal']} | {verdict(r)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["2b", "5b", "1.5_5b"], help="model configs (conf/model)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=1, help="untimed videos per variant first (default 1)")
    parser.add_argument("--warmup-steps", type=int, help="steps of a warm-up video (default: --steps)")
    parser.add_argument("--rounds", type=int, default=1, help="timed videos per variant (default 1)")
    parser.add_argument("--device", default="auto", help="auto | cuda | cuda:1 | cpu")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="DiT, T5 and VAE (bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--t5-size", choices=tuple(T5_SIZES), default="xxl", help="tiny: 1 layer, for CPU runs")
    parser.add_argument(
        "--override", nargs="+", default=[], metavar="KEY=VALUE", help="compose overrides, every variant"
    )
    parser.add_argument("--name", default="gpu_harness", help="results file stem (default gpu_harness)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    if min(args.steps, args.rounds, args.warmup_steps or 1) < 1 or args.warmup < 0:
        parser.error("--steps, --warmup-steps and --rounds must be >= 1, --warmup >= 0")
    from cogvid.utils.runtime import dtype_name, torch_dtype

    device = resolve_device(args.device)
    dtype = torch_dtype(args.dtype or ("bf16" if device.type == "cuda" else "fp32"))

    rows, t5_cache = {}, {}
    for variant in args.variants:
        rows[variant] = run_variant(variant, args, device, dtype, t5_cache)
        r = rows[variant]
        print(
            f"{variant}: {r['s_per_video']:.3f} s/video, {r['s_per_step']:.4f} s/step, "
            f"peak {r['peak_memory_gb']:.2f} GB, {r['tflops']:.3g} TFLOP/s; goal {r['goal']}: {verdict(r)}",
            flush=True,
        )

    meta = run_meta()
    if device.type == "cuda":
        meta["device"] = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    meta |= {
        "cuda": device.type == "cuda",
        "dtype": dtype_name(dtype),
        "steps": args.steps,
        "warmup": args.warmup,
        "warmup_steps": args.warmup_steps or args.steps,
        "rounds": args.rounds,
        "t5_size": args.t5_size,
        "overrides": args.override,
        "prompt": PROMPT,
        "seed": SEED,
    }
    table = markdown(meta, rows)
    print(table)
    write_results(args.results, args.name, {**meta, "goals": GOALS, "variants": rows}, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
