"""Print cogvid's max abs difference from the original SAT code on every tensor of tests/fixtures/sat_tiny_2b.

.venv/bin/python scripts/fidelity_report.py
"""

import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

import cogvid
from cogvid.config.schema import Solver
from cogvid.diffusion.sampling import sample_latents
from cogvid.diffusion.schedules import sampling_schedule, training_table
from cogvid.diffusion.solvers import SOLVERS
from cogvid.models.vae import CausalVideoVAE
from cogvid.sat.checkpoint import load_sat_vae
from cogvid.sat.yaml_import import export_sat_config

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "sat_tiny_2b"


def model_for(conf: Path, name: str, ckpt: str, *overrides: str):
    """(the model with the fixture's checkpoint, in eval mode; its composed config)."""
    cfg = cogvid.compose(
        [f"model={name}", f"sampler={name}", f"model.ckpt={FIXTURE / ckpt}", *overrides], config_dirs=[conf]
    )
    model = cogvid.build_model(cfg)
    model.backbone.eval()
    return model, cfg


def main() -> None:
    torch.set_num_threads(2)
    rows = []
    conf = Path(tempfile.mkdtemp())
    export_sat_config(FIXTURE / "tiny_2b.yaml", "tiny_sat", conf, dtype="fp32")
    export_sat_config(FIXTURE / "tiny_2b_lora.yaml", "tiny_sat_lora", conf, dtype="fp32")

    ref = load_file(FIXTURE / "schedule.safetensors")
    worst = max(
        [(training_table(3.0) - ref["denoiser_sigmas_1000"]).abs().max().item()]
        + [
            (sampling_schedule(n, 3.0).alphas[:-1] - ref[f"sampler_alpha_cumprod_sqrt_{n}"]).abs().max().item()
            for n in (5, 50, 1000)
        ]
    )
    rows.append(("schedule tables (denoiser 1000, sampler 5/50/1000)", worst, "1e-6"))

    with torch.no_grad():
        ref = load_file(FIXTURE / "dit_forward.safetensors")
        out = model_for(conf, "tiny_sat", "dit_ckpt")[0].backbone(ref["x"], ref["timesteps"], ref["context"])
        rows.append(("DiT forward `out`", (out - ref["out"]).abs().max().item(), "1e-5"))
        ref = load_file(FIXTURE / "lora_forward.safetensors")
        lora = model_for(conf, "tiny_sat_lora", "lora_ckpt")[0].backbone
        out = lora(ref["x"], ref["timesteps"], ref["context"])
        rows.append(("LoRA forward `out`", (out - ref["out"]).abs().max().item(), "1e-5"))
        lora.merge_lora_()
        out = lora(ref["x"], ref["timesteps"], ref["context"])
        rows.append(("LoRA merged into W, forward", (out - ref["out"]).abs().max().item(), "1e-5"))

    ref = load_file(FIXTURE / "sampler_5step.safetensors")
    model, cfg = model_for(conf, "tiny_sat", "dit_ckpt", "sampler.num_steps=5", "sampler.dynamic_num_steps=5")
    noises = iter([ref["step0.noise0"]] + [ref[f"step{i}.noise{j}"] for i in (1, 2, 3) for j in (0, 1)])
    seen = {}
    name = Solver(cfg.sampler.solver).value
    solver = SOLVERS[name]

    def recording(denoise, x, alphas, noise, steps):
        def den(x_t, i):
            seen[i] = (x_t.clone(), denoise(x_t, i))
            return seen[i][1]

        return solver(den, x, alphas, lambda: next(noises), steps)

    SOLVERS[name] = recording
    try:
        cond, uncond = ref["cond_crossattn"], ref["uncond_crossattn"]
        out = sample_latents(model, cfg.sampler, cond, uncond, noise=ref["init_noise"])
    finally:
        SOLVERS[name] = solver
    den = max((seen[i][1] - ref[f"step{i}.denoised"]).abs().max().item() for i in range(5))
    x_out = max(((seen[i + 1][0] if i < 4 else out) - ref[f"step{i}.x_out"]).abs().max().item() for i in range(5))
    rows.append(("5-step sampler, every step's `denoised` (recorded noises)", den, "1e-4"))
    rows.append(("5-step sampler, every step's `x_out`", x_out, "1e-4"))

    ref = load_file(FIXTURE / "sampler_50step.safetensors")
    model, cfg = model_for(conf, "tiny_sat", "dit_ckpt")
    out = sample_latents(
        model,
        cfg.sampler,
        ref["cond_crossattn"],
        ref["uncond_crossattn"],
        shape=(3, 16, 6, 8),
        generator=torch.Generator().manual_seed(20240003),
    )
    rows.append(
        (
            "50-step sampler regenerated from seed 20240003",
            (out - ref["out_latent"]).abs().max().item(),
            "1e-4",
        )
    )

    with torch.no_grad():
        ref = load_file(FIXTURE / "vae_io.safetensors")
        vae = load_sat_vae(FIXTURE / "vae" / "3d-vae.pt", CausalVideoVAE(32, (1, 1, 1, 1), 1, 16))
        vae_rows = [
            ("VAE encode `enc_moments` (mean and logvar)", vae.encode_moments(ref["video"]), ref["enc_moments"]),
            ("VAE encode of one frame `image_enc_moments`", vae.encode_moments(ref["image"]), ref["image_enc_moments"]),
            (
                "VAE posterior sample `enc_sample` (recorded noise)",
                vae.encode(ref["video"], noise=ref["enc_sample_noise"]),
                ref["enc_sample"],
            ),
            ("VAE decode `dec_of_mean`", vae.decode(ref["enc_moments"][:, :16]), ref["dec_of_mean"]),
            (
                "VAE chunked decode `chunk_decoded` (cache carried, as SAT v1.0)",
                vae.decode_chunked(ref["chunk_latent_unscaled"], "v1_0"),
                ref["chunk_decoded"],
            ),
        ]
        rows += [(name, (got - want).abs().max().item(), "1e-5") for name, got, want in vae_rows]

    print("| check | max abs error | required |\n|---|---|---|")
    for name, err, tol in rows:
        print(f"| {name} | {err:.1e} | ≤ {tol} |")


if __name__ == "__main__":
    main()
