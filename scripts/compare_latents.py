"""Compare sampled latents with a reference file's `out_latent` and say what the demo did."""

import sys

from safetensors.torch import load_file


def main(ours_path: str, reference_path: str) -> None:
    ours = load_file(ours_path)["latents"]
    reference = load_file(reference_path)["out_latent"]
    diff = (ours - reference).abs().max().item()
    print(
        f"Sampled latents {tuple(ours.shape)} with the tiny CogVideoX-2B-shaped model (50 steps, VPSDE-DPM++2M, "
        f"dynamic CFG) from the original SAT checkpoint.\n"
        f"Max abs difference from the original SAT code's latents for the same seed: {diff:.2e} "
        f"({'match' if diff <= 1e-4 else 'MISMATCH'}, tolerance 1e-4)."
    )
    sys.exit(0 if diff <= 1e-4 else 1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
