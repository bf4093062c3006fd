"""VAE decode of a long video: time and peak memory of cogvid (chunked, tiled) against diffusers'
AutoencoderKLCogVideoX (untiled, tiled), on the same random weights at the released VAE's width.

    .venv/bin/python benchmarks/vae_decode.py                          # 49 frames at 160 x 240
    .venv/bin/python benchmarks/vae_decode.py --frames 49 --size 240 352 --only cogvid_chunked diffusers

Each contender decodes in a fresh process, so that its peak resident memory (VmHWM) is its own. The figure reported is
the rise of the peak over the resident memory just before the decode (the weights and latents already in place).
The VAE has the released sizes (ch 128, ch_mult 1 2 2 4, 3 res blocks) with random weights (seed 0); diffusers
loads the same weights through the exporter's key map. The latents are random (seed 1). cogvid's chunked decode is
SAT's; its tiled decode splits space into `--tile` latent tiles. diffusers decodes two latent frames per call, as
its pipeline does, with `enable_tiling()` at the same tile size for the tiled case. The script writes JSON and a
markdown table to benchmarks/results/ (device, torch version, command, date).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench_common import memory_kib, report, run_child, run_meta, write_results

RESULTS = Path(__file__).parent / "results"
CONTENDERS = ("cogvid_chunked", "cogvid_tiled", "diffusers", "diffusers_tiled", "cogvid_2_ranks")
RANKS = 2  # cogvid_2_ranks: the chunks over 2 gloo processes (cogvid.parallel.vae_decode); each reports its own peak


def child(name: str, frames: int, height: int, width: int, tile: list[int]) -> None:
    """Decode once in this process and print one JSON line: seconds, RSS before, peak."""
    import torch

    from cogvid.config.compose import compose
    from cogvid.models.vae import CausalVideoVAE

    torch.manual_seed(0)
    cfg = compose(["model=5b"]).model
    ours = CausalVideoVAE.from_config(cfg.vae).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in ours.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * (0.02 if param.ndim > 1 else 0.1) + (param.ndim == 1))
    t = (frames - 1) // 4 + 1
    latents = torch.randn(1, cfg.vae.z_channels, t, height // 8, width // 8, generator=torch.Generator().manual_seed(1))
    if name.startswith("diffusers"):
        import diffusers

        from cogvid.interop.keymap import Side
        from cogvid.interop.vae_map import diffusers_vae_config, vae_key_map
        from cogvid.utils.lazy_tensors import TensorSource

        targets, _ = vae_key_map(len(cfg.vae.ch_mult)).plan(TensorSource.from_tensors(ours.state_dict()), Side.sat)
        theirs = diffusers.AutoencoderKLCogVideoX.from_config(diffusers_vae_config(cfg)).eval()
        theirs.load_state_dict({x.name: x.materialize() for x in targets}, strict=True)
        del ours
        if name == "diffusers_tiled":  # the same tile as cogvid's, in pixels; diffusers' own overlaps (1/6, 1/5)
            theirs.enable_tiling(tile_sample_min_height=tile[0] * 8, tile_sample_min_width=tile[1] * 8)

        def decode():
            return theirs.decode(latents).sample
    elif name == "cogvid_2_ranks":
        import torch.distributed as dist

        from cogvid.parallel.vae_decode import ChunkRing

        dist.init_process_group("gloo")  # RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT from the parent
        ring = ChunkRing(dist.get_rank(), dist.get_world_size())

        def decode():
            return ours.decode_chunked(latents, "v1_0", ring=ring)
    else:
        tiles = tuple(tile) if name == "cogvid_tiled" else None

        def decode():
            return ours.decode_chunked(latents, "v1_0", tile=tiles)

    before = memory_kib("VmHWM", "VmRSS")
    start = time.perf_counter()
    with torch.no_grad():
        video = decode()
    seconds = time.perf_counter() - start
    after = memory_kib("VmHWM", "VmRSS")
    report(
        {
            "name": name,
            "seconds": round(seconds, 2),
            "rss_before_mib": round(before["VmRSS"] / 1024),
            "peak_mib": round(after["VmHWM"] / 1024),
            "peak_rise_mib": round((after["VmHWM"] - before["VmRSS"]) / 1024),
            "video": list(video.shape),
            "checksum": float(video.double().abs().mean()),
        }
    )


def run_ranks(command: list[str], name: str) -> dict | None:
    """The command as RANKS gloo processes at once; the slowest rank's seconds and the largest peak of any rank."""
    import os
    import socket
    from concurrent.futures import ThreadPoolExecutor

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "WORLD_SIZE": str(RANKS), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    with ThreadPoolExecutor(RANKS) as pool:
        ranks = list(
            pool.map(lambda r: run_child(command, f"{name} rank {r}", env={**env, "RANK": str(r)}), range(RANKS))
        )
    if any(r is None for r in ranks):
        return None
    worst = max(ranks, key=lambda r: r["peak_rise_mib"])
    return {
        **worst,
        "seconds": max(r["seconds"] for r in ranks),
        "per_rank_peak_rise_mib": [r["peak_rise_mib"] for r in ranks],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--size", type=int, nargs=2, default=[160, 240], metavar=("H", "W"))
    parser.add_argument("--tile", type=int, nargs=2, default=[12, 16], metavar=("h", "w"), help="latent tile")
    parser.add_argument("--only", nargs="*", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--name", default="vae_decode", help="results file stem (default vae_decode)")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.frames, *args.size, args.tile)
        return 0
    rows = []
    for name in args.only:
        common = ["--frames", str(args.frames), "--size", *map(str, args.size), "--tile", *map(str, args.tile)]
        command = [sys.executable, __file__, "--child", name, *common]
        figures = run_ranks(command, name) if name == "cogvid_2_ranks" else run_child(command, name)
        if figures is None:
            return 1
        rows.append(figures)
        print(f"{name}: {rows[-1]}", flush=True)
    by_name = {r["name"]: r for r in rows}
    ratios = {}
    if "diffusers" in by_name:
        base = by_name["diffusers"]
        for mine in ("cogvid_chunked", "cogvid_tiled"):
            if mine in by_name:
                ratios[f"{mine} / diffusers peak rise"] = round(
                    by_name[mine]["peak_rise_mib"] / base["peak_rise_mib"], 2
                )
                ratios[f"{mine} / diffusers seconds"] = round(by_name[mine]["seconds"] / base["seconds"], 2)
    if "diffusers_tiled" in by_name:
        for mine in ("cogvid_chunked", "cogvid_tiled"):
            if mine in by_name:
                ratios[f"{mine} / diffusers_tiled seconds"] = round(
                    by_name[mine]["seconds"] / by_name["diffusers_tiled"]["seconds"], 2
                )

    meta = {
        **run_meta(),
        "video": {"frames": args.frames, "height": args.size[0], "width": args.size[1], "latent_tile": args.tile},
    }
    lines = [
        "# VAE decode: cogvid against diffusers on the same random weights (released VAE width)",
        "",
        f"- date: {meta['date']}",
        f"- device: {meta['device']}; torch {meta['torch']}",
        f"- command: `{meta['command']}`",
        f"- video: {args.frames} frames at {args.size[0]} x {args.size[1]}; cogvid tile {args.tile} latents",
        "",
        "| contender | seconds | RSS before (MiB) | peak (MiB) | peak rise (MiB) |",
        "|---|---|---|---|---|",
        *(
            f"| {r['name']} | {r['seconds']} | {r['rss_before_mib']} | {r['peak_mib']} | {r['peak_rise_mib']} |"
            for r in rows
        ),
        "",
        *(f"- {k}: **{v}**" for k, v in ratios.items()),
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    write_results(RESULTS, args.name, {**meta, "rows": rows, "ratios": ratios}, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
