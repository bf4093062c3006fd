"""One video's tokens split across the ranks of a process group: Ulysses sequence parallelism for the DiT.

Every rank holds the whole latent video and the whole text; the DiT embeds both, then keeps the text tokens and its
own contiguous share of the video tokens (`SequenceShard.video_rows`). Every layer but attention works per token, so
it runs on the share as it is. Attention needs every token:

    q, k, v of the share (b, H, n_txt + n_video / P, d)
      video rows: all-to-all (yunchang's `SeqAllToAll4D`) -> every video token, H / P heads   (b, n_video, H / P, d)
      text rows:  the same H / P heads of the rank's own copy (the text is the same on every rank)
    SDPA over [text ; video] for those heads                                                   (b, H / P, n, d)
      video rows: all-to-all back -> the share's tokens, every head
      text rows:  all-gather of the heads (every rank keeps the whole text stream)

After the last layer the ranks gather their video rows, so each returns the whole output and the solver steps the
whole latent, the same on every rank. Each head sees exactly the tokens it sees in one process, so the result equals
the single-process one up to the order of floating-point sums inside the kernels.

The attention kernel is torch's SDPA; the communication is yunchang's (the engine under xDiT), imported on first use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from cogvid.utils.errors import CogvidError


def check_split(size: int, n_video: int, n_heads: int) -> None:
    """One line unless `size` ranks split the video tokens and the attention heads evenly."""
    if n_video % size or n_heads % size:
        raise CogvidError(
            f"parallel.sequence={size} must divide the video tokens ({n_video}) and the attention heads ({n_heads}) "
            "of this video and model: pick another size or frame count"
        )


def video_tokens(model_cfg, latent: tuple[int, int, int, int]) -> int:
    """The DiT's video tokens for latents (t, c, h, w): one per patch of patch_size_t x patch_size x patch_size."""
    t, _, h, w = latent
    return (t // model_cfg.patch_size_t) * (h // model_cfg.patch_size) * (w // model_cfg.patch_size)


@dataclass(frozen=True)
class SequenceShard:
    """This rank's place in a sequence-parallel group of `size` ranks (`group`: None is the default group)."""

    rank: int
    size: int
    group: dist.ProcessGroup | None = None

    @classmethod
    def of_group(cls, group: dist.ProcessGroup | None = None) -> SequenceShard:
        return cls(dist.get_rank(group), dist.get_world_size(group), group)

    def check(self, n_video: int, n_heads: int) -> None:
        check_split(self.size, n_video, n_heads)

    def video_rows(self, n_video: int) -> slice:
        """The rows of the video tokens (in the DiT's (t, h, w) order) this rank holds."""
        per = n_video // self.size
        return slice(self.rank * per, (self.rank + 1) * per)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_txt: int) -> torch.Tensor:
        """Joint attention of the share's q, k, v (b, H, n_txt + n_video / P, d) over every rank's tokens; returns the
        share's rows (b, H, n_txt + n_video / P, d)."""
        from yunchang.comm.all_to_all import SeqAllToAll4D

        heads = q.shape[1] // self.size
        own = slice(self.rank * heads, (self.rank + 1) * heads)

        def every_token(x: torch.Tensor) -> torch.Tensor:  # (b, H, n_txt + n_v / P, d) -> (b, H / P, n_txt + n_v, d)
            video = SeqAllToAll4D.apply(self.group, x[:, :, n_txt:].transpose(1, 2).contiguous(), 2, 1)
            return torch.cat([x[:, own, :n_txt], video.transpose(1, 2)], dim=2)

        out = F.scaled_dot_product_attention(every_token(q), every_token(k), every_token(v))
        video = SeqAllToAll4D.apply(self.group, out[:, :, n_txt:].transpose(1, 2).contiguous(), 1, 2)
        text = self._gather(out[:, :, :n_txt].contiguous(), dim=1)  # every head of the text rows
        return torch.cat([text, video.transpose(1, 2)], dim=2)

    def gather_video(self, tokens: torch.Tensor) -> torch.Tensor:
        """Every rank's video rows (b, n_video / P, c), in order: (b, n_video, c)."""
        return self._gather(tokens.contiguous(), dim=1)

    def _gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        # the autograd-aware all-gather, so that training's backward flows through it too
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x, group=self.group), dim=dim)
