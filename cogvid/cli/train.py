"""cogvid-train: fine-tune CogVideoX (LoRA or full) with Lightning, or precompute its training latents."""

from __future__ import annotations

from cogvid.cli.hydra_app import run_hydra_app


def _task(cfg):
    from cogvid.training.run import run_train

    run_train(cfg)


def main() -> None:
    run_hydra_app("cogvid-train", "train", _task)


if __name__ == "__main__":
    main()
