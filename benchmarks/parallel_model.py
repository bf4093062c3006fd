"""A model of what one video over several GPUs gains: per sampling step and per variant at its real size, the DiT's
FLOPs and the bytes each rank sends under Ulysses sequence parallelism (cogvid.parallel.sequence) and CFG parallelism,
and the speed-up they predict on 8 GPUs over NVLink and over PCIe, next to xDiT's published figures.

    python benchmarks/parallel_model.py              # the model's table (arithmetic only)
    python benchmarks/parallel_model.py --measure    # also: 2 gloo processes on this CPU against the prediction

The model, per step (CFG: the batch of 2, unconditional and conditional):
    FLOPs      2 * (linear weights of the blocks) * tokens + 4 * tokens^2 * D per layer, times 2 for CFG
    Ulysses    per layer and rank, the all-to-alls of q, k, v and the output each send (P-1)/P of the rank's
               (n_video / P, D) rows; the text rows' heads are all-gathered; the output rows are gathered at the end
    CFG        each rank (or group) runs one half of the batch; the halves' outputs are exchanged once per step
    time       FLOPs / (P * peak * utilisation) + bytes sent / link bandwidth (no overlap: a pessimistic bound)

--measure checks the same arithmetic on this machine: a medium 2B-layout DiT forward in one process and split over 2
gloo processes (one thread each), with the bytes the ranks actually sent (counted at torch.distributed's all-to-all
and all-gather) and this machine's measured FLOP rate and gloo bandwidth as the model's inputs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import sys
import time
from pathlib import Path

import torch
from bench_common import run_meta, write_results

RESULTS = Path(__file__).parent / "results"
BYTES = 2  # bf16 activations on a GPU
# (peak dense bf16 TFLOPs, the share a DiT step reaches); link: one GPU's all-to-all bandwidth, GB/s
GPUS = {"H100 SXM": (989.0, 0.45), "L40": (181.0, 0.45)}
LINKS = {"NVLink": 300.0, "PCIe": 20.0}
COLLECTIVE_LATENCY_S = 20e-6  # per collective call
# xDiT's published speed-ups on 8 x L40 (PCIe), USP + CFG parallelism: the anchors this model is read against
XDIT_8_L40 = {"2b": 4.29, "5b": 7.75, "1.5_5b": 6.12}
VARIANTS = ("2b", "5b", "1.5_5b")


def variant_sizes(variant: str) -> dict:
    """`dit_sizes` of a variant at its default video size, and that size."""
    from cogvid.config.compose import compose
    from cogvid.inference.video_shape import video_shape
    from cogvid.models.dit import DiffusionTransformer

    cfg = compose([f"model={variant}", "model.text_encoder.path=null"]).model
    shape = video_shape(cfg, None, None, None)
    with torch.device("meta"):
        dit = DiffusionTransformer(cfg)
    return {"video": [shape.num_frames, shape.height, shape.width], **dit_sizes(cfg, dit, shape.latent)}


def dit_sizes(cfg, dit, latent: tuple[int, int, int, int]) -> dict:
    """Tokens, width, layers, heads and the blocks' linear weights (what multiplies every token) of the DiT `dit`
    built from `cfg`, for latents (t, c, h, w)."""
    from cogvid.parallel.sequence import video_tokens

    linear = (m for layer in dit.transformer.layers for m in layer.modules() if isinstance(m, torch.nn.Linear))
    return {
        "n_video": video_tokens(cfg, latent),
        "n_text": int(cfg.text_length),
        "dim": int(cfg.hidden_size),
        "layers": int(cfg.num_layers),
        "heads": int(cfg.num_attention_heads),
        "out_channels": int(cfg.out_channels * cfg.patch_size**2 * cfg.patch_size_t),
        "linear_weights": sum(m.weight.numel() for m in linear),
    }


def forward_flops(v: dict, batch: int = 1) -> float:
    s = v["n_text"] + v["n_video"]
    return batch * (2.0 * v["linear_weights"] * s + 4.0 * s * s * v["dim"] * v["layers"])


def ulysses_bytes(v: dict, p: int, batch: int = 1, element: int = BYTES, ring: int = 1) -> float:
    """Bytes one rank sends in one forward split over p Ulysses x `ring` ranks (0 for one rank). Shares are
    ceil(n_video / ranks) rows (the exchanged blocks are padded to it). Ring: each rank passes its K and V (n_video /
    ring rows, D / p wide) to the next, ring - 1 times per layer."""
    ranks = p * ring
    if ranks == 1:
        return 0.0
    per = -(-v["n_video"] // ranks) * v["dim"]  # one rank's video rows of one tensor
    all_to_all = 4 * per * (p - 1) / p if p > 1 else 0.0  # q, k, v and the output
    text = (p - 1) * v["n_text"] * v["dim"] / p  # its heads of the text rows, to every other rank of the group
    ring_kv = 2 * (ring - 1) * -(-v["n_video"] // ring) * v["dim"] / p
    final = (ranks - 1) * -(-v["n_video"] // ranks) * v["out_channels"]
    return batch * element * (v["layers"] * (all_to_all + text + ring_kv) + final)


def step_time(v: dict, layout: tuple[int, int, int], gpu: tuple[float, float], link_gbs: float) -> float:
    """Seconds of one sampling step (CFG batch of 2) on ulysses x ring x cfg GPUs."""
    ulysses, ring, cfg_ranks = layout
    peak, share = gpu
    batch = 2 // cfg_ranks  # each CFG group runs its half
    compute = forward_flops(v, batch) / (ulysses * ring) / (peak * 1e12 * share)
    sent = ulysses_bytes(v, ulysses, batch, ring=ring)
    if cfg_ranks > 1:  # the two halves' outputs, once per step
        sent += -(-v["n_video"] // (ulysses * ring)) * v["out_channels"] * BYTES
    calls = v["layers"] * (5 * (ulysses > 1) + (ring - 1)) + (cfg_ranks > 1)
    return compute + sent / (link_gbs * 1e9) + calls * COLLECTIVE_LATENCY_S


def layouts(heads: int, gpus: int = 8) -> list[tuple[int, int, int]]:
    """(ulysses, ring, cfg) with ulysses x ring x cfg = gpus and ulysses dividing the heads; the plain ones first."""
    found = []
    for cfg_ranks in (1, 2):
        for ulysses in (8, 4, 2, 1):
            ring = gpus // cfg_ranks // ulysses
            if ulysses * ring * cfg_ranks == gpus and heads % ulysses == 0 and ring >= 1:
                found.append((ulysses, ring, cfg_ranks))
    return found


def model_table() -> tuple[dict, str]:
    rows, lines = {}, []
    links = " | ".join(f"{g} {lk}" for g in GPUS for lk in LINKS)
    head = "| variant | video | tokens | TFLOP / step | layout on 8 GPUs | MB sent / rank / step"
    lines.append(f"{head} | {links} | xDiT 8 x L40 |")
    lines.append("|---" * (6 + len(GPUS) * len(LINKS) + 1) + "|")
    for variant in VARIANTS:
        v = variant_sizes(variant)
        rows[variant] = {"sizes": v, "tflop_per_step": forward_flops(v, 2) / 1e12, "layouts": {}}
        for ulysses, ring, cfg_ranks in layouts(v["heads"]):
            parts = [f"ulysses {ulysses}"] + [f"ring {ring}"] * (ring > 1) + [f"cfg {cfg_ranks}"] * (cfg_ranks > 1)
            layout = " x ".join(parts)
            speedups = {}
            for gname, gpu in GPUS.items():
                for lname, bw in LINKS.items():
                    one = step_time(v, (1, 1, 1), gpu, bw)
                    speedups[f"{gname} {lname}"] = one / step_time(v, (ulysses, ring, cfg_ranks), gpu, bw)
            sent = ulysses_bytes(v, ulysses, 2 // cfg_ranks, ring=ring) / 1e6
            rows[variant]["layouts"][layout] = {"mb_sent_per_rank_step": sent, "speedup": speedups}
            lines.append(
                f"| {variant} | {'x'.join(map(str, v['video']))} | {v['n_text']}+{v['n_video']} | "
                f"{forward_flops(v, 2) / 1e12:.1f} | {layout} | {sent:.0f} | "
                + " | ".join(f"{s:.2f}x" for s in speedups.values())
                + f" | {XDIT_8_L40[variant]:.2f}x |"
            )
    return rows, "\n".join(lines)


# --- the measurement on this CPU ---------------------------------------------------------------------------------

MEDIUM = ["model=tiny", "model.hidden_size=384", "model.num_attention_heads=6", "model.num_layers=4"]
MEDIUM += ["model.time_embed_dim=384", "model.num_frames=13", "model.latent_height=24", "model.latent_width=32"]


def _medium():
    from cogvid.config.compose import compose
    from cogvid.models.dit import DiffusionTransformer

    cfg = compose(MEDIUM).model
    torch.manual_seed(0)
    dit = DiffusionTransformer(cfg).eval()
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0, 0.02)
    g = torch.Generator().manual_seed(1)
    latent = (cfg.num_frames - 1) // 4 + 1
    x = torch.randn(1, latent, cfg.in_channels, cfg.latent_height, cfg.latent_width, generator=g)
    inputs = {"x": x, "timesteps": torch.tensor([500.0]), "context": torch.randn(1, cfg.text_length, 32, generator=g)}
    return cfg, dit, inputs


def _timed(fn, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _rank(rank: int, port: int, results) -> None:
    import torch.distributed as dist

    from cogvid.parallel.sequence import SequenceShard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    sent = [0]
    real_a2a, real_gather = dist.all_to_all_single, dist.all_gather

    def counting_a2a(output, input, *args, **kwargs):  # what leaves this rank: all but its own chunk
        sent[0] += input.numel() * input.element_size() // 2
        return real_a2a(output, input, *args, **kwargs)

    def counting_gather(tensors, tensor, *args, **kwargs):
        sent[0] += tensor.numel() * tensor.element_size()
        return real_gather(tensors, tensor, *args, **kwargs)

    dist.all_to_all_single, dist.all_gather = counting_a2a, counting_gather
    _, dit, inputs = _medium()
    shard = SequenceShard.build(0, 2, 1, rank)
    with torch.no_grad():
        split = _timed(lambda: dit(**inputs, shard=shard))
    sent[0] = 0
    with torch.no_grad():
        dit(**inputs, shard=shard)
    # gloo's all-to-all rate between the two processes, for the model's link term
    block = torch.zeros(2, 1 << 20)  # 8 MB, half of which leaves
    out = torch.empty_like(block)
    bandwidth = block.numel() * 4 / 2 / _timed(lambda: real_a2a(out, block), repeats=5)
    results.put((rank, split, sent[0], bandwidth))
    dist.destroy_process_group()


def measure() -> tuple[dict, str]:
    cfg, dit, inputs = _medium()
    torch.set_num_threads(1)
    with torch.no_grad():
        one = _timed(lambda: dit(**inputs))
    v = dit_sizes(cfg, dit, tuple(inputs["x"].shape[1:]))  # x: (1, t, c, h, w)
    flops = forward_flops(v)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fork = multiprocessing.get_context("fork")
    results = fork.Queue()
    procs = [fork.Process(target=_rank, args=(r, port, results)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict((r, rest) for r, *rest in (results.get(timeout=600) for _ in procs))
    for p in procs:
        p.join()
    split = max(t for t, _, _ in got.values())
    sent = max(b for _, b, _ in got.values())
    bandwidth = min(bw for _, _, bw in got.values())
    predicted_sent = ulysses_bytes(v, 2, element=4)
    rate = flops / one  # this machine's FLOP rate on one thread, from the one-process run
    predicted = flops / 2 / rate + sent / bandwidth + v["layers"] * 5 * COLLECTIVE_LATENCY_S
    figures = {
        "tokens": v["n_text"] + v["n_video"],
        "one_process_s": one,
        "two_processes_s": split,
        "speedup": one / split,
        "bytes_sent_per_rank": sent,
        "bytes_predicted": predicted_sent,
        "gloo_bandwidth_gbs": bandwidth / 1e9,
        "gflops": flops / 1e9,
        "predicted_two_processes_s": predicted,
    }
    table = (
        "| tokens | 1 process | 2 processes | speed-up | predicted | MB sent / rank (counted, model) | gloo GB/s |\n"
        "|---|---|---|---|---|---|---|\n"
        f"| {figures['tokens']} | {one:.3f} s | {split:.3f} s | {one / split:.2f}x | {predicted:.3f} s "
        f"({one / predicted:.2f}x) | {sent / 1e6:.2f}, {predicted_sent / 1e6:.2f} | {bandwidth / 1e9:.2f} |"
    )
    return figures, table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", action="store_true", help="also split a medium DiT over 2 gloo processes here")
    args = parser.parse_args()
    rows, table = model_table()
    print(table)
    payload = {**run_meta(), "assumptions": {"gpus": GPUS, "links_gbs": LINKS, "bytes": BYTES}, "variants": rows}
    text = "# One video on several GPUs: the model\n\n" + "\n".join(f"- {k}: {v}" for k, v in run_meta().items())
    text += "\n\n" + table + "\n"
    if args.measure:
        figures, measured = measure()
        print(measured)
        payload["cpu_measurement"] = figures
        text += "\n## Measured on this CPU (2 gloo processes, one thread each)\n\n" + measured + "\n"
    write_results(RESULTS, "parallel_model", payload, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
