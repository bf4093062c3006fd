"""One video's tokens split across the ranks of a process group: Ulysses sequence parallelism for the DiT.

Every rank holds the whole latent video and the whole text; the DiT embeds both, then keeps the text tokens and its
own contiguous share of the video tokens (`SequenceShard.video_rows`: ceil(n_video / P) rows, the last rank's share
shorter when P does not divide them). Every layer but attention works per token, so it runs on the share as it is.
Attention needs every token:

    q, k, v of the share (b, H, n_txt + n_video / P, d)
      video rows: all-to-all (yunchang's `SeqAllToAll4D`) -> every video token, H / P heads   (b, n_video, H / P, d)
      text rows:  the same H / P heads of the rank's own copy (the text is the same on every rank)
    SDPA over [text ; video] for those heads                                                   (b, H / P, n, d)
      video rows: all-to-all back -> the share's tokens, every head
      text rows:  all-gather of the heads (every rank keeps the whole text stream)

The exchanges move equal blocks, so a short last share travels padded with zero rows, which are dropped on arrival
(no attention ever sees them). After the last layer the ranks gather their video rows, so each returns the whole
output and the solver steps the whole latent, the same on every rank. Each head sees exactly the tokens it sees in
one process, so the result equals the single-process one up to the order of floating-point sums inside the kernels.

The attention kernel is torch's SDPA; the communication is yunchang's (the engine under xDiT), imported on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
import torch.nn.functional as F

from cogvid.utils.errors import CogvidError


def check_split(size: int, n_video: int, n_heads: int) -> None:
    """One line unless `size` ranks can split the attention heads evenly (Ulysses) and each holds a video token."""
    if n_heads % size or n_video < size:
        raise CogvidError(
            f"parallel.sequence={size} must divide the model's attention heads ({n_heads}) and be at most the "
            f"video's tokens ({n_video}): pick a divisor of {n_heads}"
        )


def video_tokens(model_cfg, latent: tuple[int, int, int, int]) -> int:
    """The DiT's video tokens for latents (t, c, h, w): one per patch of patch_size_t x patch_size x patch_size."""
    t, _, h, w = latent
    return (t // model_cfg.patch_size_t) * (h // model_cfg.patch_size) * (w // model_cfg.patch_size)


@dataclass(frozen=True)
class SequenceShard:
    """This rank's place in a sequence-parallel group of `size` ranks (`group`: None is the default group); the DiT
    binds it to one forward's `n_video` tokens (`for_video`)."""

    rank: int
    size: int
    group: dist.ProcessGroup | None = None
    n_video: int = 0

    @classmethod
    def of_group(cls, group: dist.ProcessGroup | None = None) -> SequenceShard:
        return cls(dist.get_rank(group), dist.get_world_size(group), group)

    def for_video(self, n_video: int, n_heads: int) -> SequenceShard:
        """This shard for a forward over `n_video` video tokens (checked against the group's size)."""
        check_split(self.size, n_video, n_heads)
        return replace(self, n_video=n_video)

    @property
    def per(self) -> int:
        """Rows of the block every rank exchanges: ceil(n_video / P)."""
        return -(-self.n_video // self.size)

    def video_rows(self) -> slice:
        """The rows of the video tokens (in the DiT's (t, h, w) order) this rank holds: `per` of them, fewer on the
        last rank when P does not divide n_video."""
        return slice(min(self.rank * self.per, self.n_video), min((self.rank + 1) * self.per, self.n_video))

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_txt: int) -> torch.Tensor:
        """Joint attention of the share's q, k, v (b, H, n_txt + its video rows, d) over every rank's tokens; returns
        the share's rows (b, H, n_txt + its video rows, d)."""
        from yunchang.comm.all_to_all import SeqAllToAll4D

        heads = q.shape[1] // self.size
        own = slice(self.rank * heads, (self.rank + 1) * heads)
        mine = q.shape[2] - n_txt

        def every_token(x: torch.Tensor) -> torch.Tensor:  # (b, H, n_txt + mine, d) -> (b, H / P, n_txt + n_video, d)
            rows = _padded(x[:, :, n_txt:].transpose(1, 2), self.per).contiguous()
            video = SeqAllToAll4D.apply(self.group, rows, 2, 1)[:, : self.n_video]
            return torch.cat([x[:, own, :n_txt], video.transpose(1, 2)], dim=2)

        out = F.scaled_dot_product_attention(every_token(q), every_token(k), every_token(v))
        rows = _padded(out[:, :, n_txt:].transpose(1, 2), self.per * self.size).contiguous()
        video = SeqAllToAll4D.apply(self.group, rows, 1, 2)[:, :mine]
        text = self._gather(out[:, :, :n_txt].contiguous())  # every head of the text rows
        return torch.cat([text, video.transpose(1, 2)], dim=2)

    def gather_video(self, tokens: torch.Tensor) -> torch.Tensor:
        """Every rank's video rows (b, its rows, c), in order: (b, n_video, c)."""
        return self._gather(_padded(tokens, self.per).contiguous())[:, : self.n_video]

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's x, joined along dim 1 (sampling only: no gradient flows back through it)."""
        every = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(every, x, group=self.group)
        return torch.cat(every, dim=1)


def _padded(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x (b, n, ...) with zero rows appended along dim 1 up to `rows` (the exchanged blocks are all one size; the zero
    rows are dropped where they arrive, so no attention sees them)."""
    short = rows - x.shape[1]
    return x if short == 0 else torch.cat([x, x.new_zeros(x.shape[0], short, *x.shape[2:])], dim=1)
