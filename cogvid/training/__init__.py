"""cogvid-train: Lightning training of the CogVideoX DiT (SAT's training step, data, strategies, checkpoints)."""
