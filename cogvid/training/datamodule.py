"""The training DataLoader as a LightningDataModule (fit and the VAE's training): step-addressed batches from
`cogvid.training.data.StepBatchSampler`, so a resumed run continues the same data stream."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from cogvid.training.data import StepBatchSampler, collate


class TrainData(L.LightningDataModule):
    """The training DataLoader: built when the fit starts, so it knows the rank and the step it resumes at."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, num_workers: int, accumulate: int = 1):
        super().__init__()
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.num_workers, self.accumulate = num_workers, accumulate

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        start = trainer.global_step * self.accumulate  # batches already trained (restored when resuming)
        sampler = StepBatchSampler(
            len(self.dataset), self.batch_size, self.seed, trainer.global_rank, trainer.world_size, start
        )
        return DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )
