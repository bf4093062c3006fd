"""DiT forward time, cogvid against diffusers' CogVideoXTransformer3DModel on the same weights, in one process.

    .venv/bin/python benchmarks/dit_forward.py                       # the medium 5B-style config, 7 rounds
    .venv/bin/python benchmarks/dit_forward.py --model 2b --rounds 5 --layers 2

Both models get the same random weights: cogvid's state dict goes through the exporter's key map
(`cogvid.interop.transformer_map.transformer_key_map`), and diffusers loads it strictly. The rounds interleave the
two, alternating which goes first, after one warm-up call each. The script reports the median seconds of each, the ratio
cogvid / diffusers from this run, and the largest output difference. It writes JSON and a markdown table to
benchmarks/results/ (device, torch version, command, date).

Default config: a medium 5B-style DiT (RoPE, qk-norm). It has hidden size 384 (6 heads of 64), 4 layers, T5's
4096-wide text of 226 tokens, a latent of 13 x 30 x 44 (4290 video tokens) and batch 2, as the guided sampling loop
runs it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from bench_common import run_meta, write_results

RESULTS = Path(__file__).parent / "results"


def medium_config(model: str, hidden: int, layers: int, frames: int, height: int, width: int):
    from cogvid.config.compose import compose

    heads = hidden // 64
    overrides = [f"hidden_size={hidden}", f"num_layers={layers}", f"num_attention_heads={heads}", "dtype=fp32"]
    overrides += [f"num_frames={frames}", f"latent_height={height}", f"latent_width={width}"]
    return compose([f"model={model}", *(f"model.{o}" for o in overrides)]).model


@torch.no_grad()
def random_weights(module: torch.nn.Module, seed: int) -> None:
    """Every trainable weight random at a sensible scale (the default init zeroes the adaLN linears)."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        noise = torch.randn(param.shape, generator=gen)
        if param.ndim >= 2:
            param.copy_(noise / math.sqrt(param[0].numel()))
        else:
            param.copy_(0.1 * noise if name.endswith("bias") else 1 + 0.1 * noise)


def build_pair(cfg):
    """(cogvid DiffusionTransformer, diffusers CogVideoXTransformer3DModel) with the same weights, in eval mode."""
    import diffusers

    from cogvid.interop.keymap import Side
    from cogvid.interop.transformer_map import diffusers_transformer_config, transformer_key_map
    from cogvid.models.dit import DiffusionTransformer
    from cogvid.utils.lazy_tensors import TensorSource

    torch.manual_seed(0)
    ours = DiffusionTransformer(cfg).eval()
    random_weights(ours, seed=0)
    if hasattr(ours.transformer, "position_embeddings"):
        ours.transformer.position_embeddings.weight.data.zero_()  # unused by SAT; diffusers has no place for it
    targets, report = transformer_key_map(cfg).plan(TensorSource.from_tensors(ours.state_dict()), Side.sat)
    theirs = diffusers.CogVideoXTransformer3DModel.from_config(diffusers_transformer_config(cfg)).eval()
    theirs.load_state_dict({t.name: t.materialize() for t in targets}, strict=True)
    return ours, theirs


def inputs(cfg, batch: int):
    gen = torch.Generator().manual_seed(1)
    t = (cfg.num_frames - 1) // cfg.time_compressed_rate + 1
    t += t % cfg.patch_size_t
    x = torch.randn(batch, t, cfg.in_channels, cfg.latent_height, cfg.latent_width, generator=gen)
    context = torch.randn(batch, cfg.text_length, cfg.text_hidden_size, generator=gen)
    timesteps = torch.linspace(999, 19, batch)
    return x, timesteps, context


def diffusers_call(model, x, timesteps, context):
    """diffusers' forward with the RoPE tables its own pipeline computes for this latent."""
    import diffusers

    rope = None
    if model.config.use_rotary_positional_embeddings:
        host = SimpleNamespace(vae_scale_factor_spatial=8, transformer=model)
        rope = diffusers.CogVideoXPipeline._prepare_rotary_positional_embeddings(
            host, x.shape[3] * 8, x.shape[4] * 8, x.shape[1], "cpu"
        )

    def call():
        return model(
            hidden_states=x, encoder_hidden_states=context, timestep=timesteps, image_rotary_emb=rope, return_dict=False
        )[0]

    return call


def timed(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="5b", help="the variant whose layout is measured (default 5b)")
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--frames", type=int, default=49, help="pixel frames (49: 13 latent frames)")
    parser.add_argument("--latent-size", type=int, nargs=2, default=[30, 44], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--name", default="dit_forward", help="results file stem (default dit_forward)")
    args = parser.parse_args(argv)
    cfg = medium_config(args.model, args.hidden, args.layers, args.frames, *args.latent_size)
    ours, theirs = build_pair(cfg)
    x, timesteps, context = inputs(cfg, args.batch)
    cogvid_call = torch.no_grad()(lambda: ours(x, timesteps, context))
    diffusers_fn = torch.no_grad()(diffusers_call(theirs, x, timesteps, context))

    _, a = timed(cogvid_call)  # warm-up: allocator, kernels
    _, b = timed(diffusers_fn)
    difference = (a - b).abs().max().item()
    times = {"cogvid": [], "diffusers": []}
    calls = {"cogvid": cogvid_call, "diffusers": diffusers_fn}
    for r in range(args.rounds):
        for name in ("cogvid", "diffusers") if r % 2 == 0 else ("diffusers", "cogvid"):  # neither always goes first
            times[name].append(timed(calls[name])[0])
        print(
            f"round {r + 1}: cogvid {times['cogvid'][-1]:.3f} s, diffusers {times['diffusers'][-1]:.3f} s", flush=True
        )
    median = {k: statistics.median(v) for k, v in times.items()}
    ratio = median["cogvid"] / median["diffusers"]
    tokens = x.shape[1] // cfg.patch_size_t * (x.shape[3] // cfg.patch_size) * (x.shape[4] // cfg.patch_size)
    meta = {
        **run_meta(),
        "config": {
            "model": args.model,
            "hidden_size": cfg.hidden_size,
            "num_layers": cfg.num_layers,
            "heads": cfg.num_attention_heads,
            "latent": [x.shape[1], x.shape[3], x.shape[4]],
            "video_tokens": tokens,
            "text_tokens": cfg.text_length,
            "batch": args.batch,
        },
    }
    result = {**meta, "seconds": times, "median_s": median, "ratio_cogvid_over_diffusers": ratio}
    result["max_abs_output_difference"] = difference
    table = "\n".join(
        [
            "# DiT forward: cogvid against diffusers on the same weights",
            "",
            f"- date: {meta['date']}",
            f"- device: {meta['device']}; torch {meta['torch']}",
            f"- command: `{meta['command']}`",
            f"- config: {json.dumps(meta['config'])}",
            f"- largest output difference: {difference:.2e}",
            "",
            "| | median s | rounds |",
            "|---|---|---|",
            *(f"| {k} | {median[k]:.3f} | {', '.join(f'{t:.3f}' for t in v)} |" for k, v in times.items()),
            "",
            f"cogvid / diffusers: **{ratio:.2f}**",
        ]
    )
    print(table)
    write_results(RESULTS, args.name, result, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
