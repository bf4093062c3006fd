"""Context-parallel VAE decode: the chunks of SAT's chunked decode spread over the ranks of a group, exact to one
process.

One process decodes the latent frames chunk by chunk (`cogvid.models.vae.decode_chunks`): each chunk is one decoder
call with its own GroupNorm statistics, and every causal convolution starts a chunk from the last input frames the
previous chunk gave it (its cache). Here rank r decodes chunks r, r + P, r + 2P, ... . At each causal convolution the
rank sends the last frames of its chunk's input to the rank holding the next chunk and receives the previous chunk's
from the rank holding it: the frames the cache would have held (SAT's `cp_size` exchanges these halos the same way).
A chunk's tail depends only on its own input, so the sends never wait and the ranks decode in parallel. Each rank's
peak is one chunk's activations, as in one process; the decode time divides by about P.

Every rank then receives every chunk (the holder broadcasts it), so each returns the whole video; the caller writes it
from one rank.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ChunkRing:
    """This rank's place among the `size` ranks of `group` (None: the default group) that decode one video."""

    rank: int
    size: int
    group: dist.ProcessGroup | None = None

    def _global(self, rank: int) -> int:
        return dist.get_global_rank(self.group, rank) if self.group is not None else rank

    def decode(self, decoder, latents: torch.Tensor, chunks: list, bar=None) -> torch.Tensor:
        """decoder (a `cogvid.models.vae.Decoder3D`) over `chunks` [(start, end, first-frame rule)] of `latents`
        (b, z, T, h, w), this rank's chunks here and the others' from their ranks: the whole video (b, 3, F, H, W)."""
        n = len(chunks)
        videos: list[torch.Tensor | None] = [None] * n
        pending: list[tuple] = []  # (send work, its tensor): kept alive until the send completes
        try:
            for i in range(self.rank, n, self.size):
                start, end, rule = chunks[i]
                with _halos(decoder, _Halo(self, i, n, pending)):
                    videos[i] = decoder(latents[:, :, start:end].contiguous(), clear_cache=True, first_frame=rule)
                if bar is not None:
                    bar.update()
        finally:
            for work, _ in pending:
                work.wait()
        for i in range(n):  # every chunk to every rank, from its holder
            src = self._global(i % self.size)
            shape = torch.tensor(videos[i].shape if videos[i] is not None else [0] * latents.dim())
            dist.broadcast(shape, src, group=self.group)
            if videos[i] is None:
                videos[i] = latents.new_empty(tuple(shape.tolist()))
            dist.broadcast(videos[i], src, group=self.group)
        return torch.cat(videos, dim=2)


@dataclass
class _Halo:
    """A causal convolution's leading frames for chunk `index`: received from the previous chunk's rank (None for the
    first chunk: the convolution repeats frame 0), after this chunk's own tail has gone to the next one's."""

    ring: ChunkRing
    index: int
    count: int
    pending: list

    def __call__(self, x: torch.Tensor, frames: int) -> torch.Tensor | None:
        if x.shape[2] < frames:  # a chunk shorter than the halo: its tail reaches into the head
            head = self._receive(x, frames)
            padded = torch.cat([head if head is not None else x[:, :, :1].expand(-1, -1, frames, -1, -1), x], dim=2)
            self._send(padded[:, :, -frames:])
            return head
        self._send(x[:, :, -frames:])
        return self._receive(x, frames)

    def _send(self, tail: torch.Tensor) -> None:
        if self.index + 1 < self.count:
            tail = tail.contiguous()
            dst = self.ring._global((self.index + 1) % self.ring.size)
            self.pending.append((dist.isend(tail, dst, group=self.ring.group, tag=self.index + 1), tail))

    def _receive(self, x: torch.Tensor, frames: int) -> torch.Tensor | None:
        if self.index == 0:
            return None
        head = x.new_empty((x.shape[0], x.shape[1], frames, *x.shape[3:]))
        src = self.ring._global((self.index - 1) % self.ring.size)
        dist.recv(head, src, group=self.ring.group, tag=self.index)
        return head


@contextlib.contextmanager
def _halos(decoder, halo: _Halo) -> Iterator[None]:
    convs = [conv for conv in decoder.causal_convs() if conv.time_pad]
    for conv in convs:
        conv.halo = halo
    try:
        yield
    finally:
        for conv in convs:
            conv.halo = None
