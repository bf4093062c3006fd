"""Fine-tuning: Lightning module, data, checkpoints."""
