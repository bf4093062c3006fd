"""Measure parts of a sampling run, each in a process of its own: its peak RSS rise on the CPU, beside cogvid's
estimate.

    python tests/memory_probe.py '[["dit", FRAMES, HEIGHT, WIDTH, [compose overrides...]], ["vae", ...], ...]'

`dit`: one guided DiT call (batch 2) with random weights; `vae`: SAT's chunked decode of the latents of that video.
The peak is /proc's VmHWM of a second call, reset (clear_refs 5) before it, less the RSS at that moment. glibc's mmap
threshold is fixed at 128 KiB first (mallopt, as MALLOC_MMAP_THRESHOLD_=131072 would at a process's start), so that
RSS follows the live tensors: by default the heap may keep freed blocks and the same run peaks anywhere in 1-2.4x of
that. This process imports torch and cogvid once (or is forked from the tests' zygote, which has), then forks one
child per probe, which measures it (its own VmHWM, its own heap) and leaves. Prints one JSON line per probe, in
order: {"measured": bytes, "estimate": bytes}, or {"error": traceback}. Used by tests/test_memory_estimate.py.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import importlib
import json
import os
import sys
import traceback
from pathlib import Path

import torch


def status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def main(kind: str, frames: int, height: int, width: int, overrides: list[str]) -> dict:
    from cogvid.config.compose import compose
    from cogvid.config.schema import Generation
    from cogvid.inference import memory
    from cogvid.inference.video_shape import video_shape

    cfg = compose(["model.ckpt=null", *overrides])
    shape = video_shape(cfg.model, frames, height, width)
    estimate = memory.estimate(cfg, shape, torch.float32, torch.float32)
    t, c, h, w = shape.latent
    torch.set_grad_enabled(False)
    gen = torch.Generator().manual_seed(0)
    if kind == "dit":
        from cogvid.models.dit import DiffusionTransformer

        dit = DiffusionTransformer(cfg.model).eval()
        x = torch.randn(2, t, c, h, w, generator=gen)
        context = torch.randn(2, cfg.model.text_length, cfg.model.text_hidden_size, generator=gen)

        def run():
            return dit(x, torch.tensor([500.0, 500.0]), context)

        expected = estimate.sampling
    else:
        from cogvid.models.vae import CausalVideoVAE, decode_chunks

        vae = CausalVideoVAE.from_config(cfg.model.vae).eval()
        generation = Generation(cfg.model.generation)
        z = torch.randn(1, c, t, h, w, generator=gen)

        def run(latents=z):
            return vae.decode_chunked(latents, generation)[0].float().cpu()

        def chunk_shapes(frames: int) -> set | None:
            if generation is Generation.v1_0 and frames % 2 == 0:
                return None  # v1.0 decodes an odd number of latents only
            return {(end - start, rule) for start, end, rule in decode_chunks(generation, frames)}

        # The warm-up decodes the shortest head of the latents whose chunks have every shape the whole decode's have
        # (v1.0: [0:3] and one pair, 5 of 13 latents): the decoder's kernels see each of their input shapes once.
        head = min(n for n in range(1, t + 1) if chunk_shapes(n) == chunk_shapes(t))
        warm_up = functools.partial(run, z[:, :, :head])
        expected = estimate.decoding
    (warm_up if kind == "vae" else run)()  # the kernels' one-time set-up (oneDNN, GEMM workspaces) is not per call
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = status_bytes("VmRSS")
    run()
    return {"measured": status_bytes("VmHWM") - base, "estimate": expected}


def in_child(kind: str, frames: int, height: int, width: int, overrides: list[str]) -> dict:
    """`main` in a forked child of this process: a peak and a heap of its own, the imports already done."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            figures = main(kind, frames, height, width, overrides)
        except BaseException:
            figures = {"error": traceback.format_exc()}
        with os.fdopen(write, "w") as answer:
            answer.write(json.dumps(figures))
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        said = answer.read()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return json.loads(said) if said else {"error": f"the probe's process ended with exit code {code}"}


def fix_mmap_threshold(nbytes: int = 131072) -> None:
    """Allocations of `nbytes` or more get pages of their own, given back when freed (glibc's M_MMAP_THRESHOLD, -3;
    setting it also stops glibc from raising it as blocks are freed)."""
    if not ctypes.CDLL(None).mallopt(-3, nbytes):
        raise OSError("mallopt(M_MMAP_THRESHOLD) failed")


if __name__ == "__main__":
    fix_mmap_threshold()
    for module in ("cogvid.config.compose", "cogvid.inference.memory", "cogvid.models.dit", "cogvid.models.vae"):
        importlib.import_module(module)  # what every child imports, done once here

    for kind, frames, height, width, overrides in json.loads(sys.argv[1]):
        print(json.dumps(in_child(kind, frames, height, width, overrides)), flush=True)
