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
    """One line unless `size` (Ulysses) ranks can split the attention heads evenly and each holds a video token."""
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
    binds it to one forward's `n_video` tokens (`for_video`).

    With `ring` > 1 the group is ring x ulysses ranks (USP): rank i = r * ulysses + u all-to-alls with the ranks of
    its row r (`ulysses_group`) and passes K and V around the ranks of its column u (`ring_group`)."""

    rank: int
    size: int
    group: dist.ProcessGroup | None = None
    n_video: int = 0
    ring: int = 1
    ulysses_group: dist.ProcessGroup | None = None  # None: `group` (ring 1)
    ring_group: dist.ProcessGroup | None = None

    @classmethod
    def build(cls, first: int, size: int, ring: int, rank: int) -> SequenceShard | None:
        """Make the process groups of the sequence group of global ranks first .. first + size - 1 (every rank of the
        world calls this, for every sequence group, in one order); this rank's shard, or None when it is not in it."""
        ulysses = size // ring
        ranks = list(range(first, first + size))
        whole = dist.new_group(ranks)
        rows = [dist.new_group(ranks[r * ulysses : (r + 1) * ulysses]) for r in range(ring)] if ring > 1 else []
        columns = [dist.new_group(ranks[u::ulysses]) for u in range(ulysses)] if ring > 1 else []
        if rank not in ranks:
            return None
        i = rank - first
        if ring == 1:
            return cls(i, size, whole)
        return cls(i, size, whole, ring=ring, ulysses_group=rows[i // ulysses], ring_group=columns[i % ulysses])

    def for_video(self, n_video: int, n_heads: int) -> SequenceShard:
        """This shard for a forward over `n_video` video tokens (checked against the group's size)."""
        check_split(self.size // self.ring, n_video, n_heads)
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

        ulysses = self.size // self.ring
        group = self.ulysses_group if self.ring > 1 else self.group
        u, r = self.rank % ulysses, self.rank // ulysses
        heads = q.shape[1] // ulysses
        own = slice(u * heads, (u + 1) * heads)
        mine, band = q.shape[2] - n_txt, self.per * ulysses  # band: the video rows of one ring position

        def heads_of_band(x: torch.Tensor) -> torch.Tensor:  # (b, H, n_txt + mine, d) -> (b, H / U, band, d)
            rows = _padded(x[:, :, n_txt:].transpose(1, 2), self.per).contiguous()
            video = SeqAllToAll4D.apply(group, rows, 2, 1) if ulysses > 1 else rows
            return video.transpose(1, 2)

        q_v, k_v, v_v = heads_of_band(q), heads_of_band(k), heads_of_band(v)
        if self.ring == 1:  # every video row is here: one SDPA over [text ; video]
            q_all, k_all, v_all = (
                torch.cat([x[:, own, :n_txt], y[:, :, : self.n_video]], dim=2)
                for x, y in ((q, q_v), (k, k_v), (v, v_v))
            )
            out = F.scaled_dot_product_attention(q_all, k_all, v_all)
            out = torch.cat([out[:, :, :n_txt], _padded(out[:, :, n_txt:].transpose(1, 2), band).transpose(1, 2)], 2)
        else:
            valid = [min(max(self.n_video - j * band, 0), band) for j in range(self.ring)]
            text = tuple(x[:, own, :n_txt] for x in (k, v))
            out = self._ring_attention(torch.cat([q[:, own, :n_txt], q_v], dim=2), k_v, v_v, text, r, valid)
        rows = out[:, :, n_txt:].transpose(1, 2).contiguous()  # (b, band, H / U, d)
        video = (SeqAllToAll4D.apply(group, rows, 1, 2) if ulysses > 1 else rows)[:, :mine]
        text_out = self._gather(out[:, :, :n_txt].contiguous(), group) if ulysses > 1 else out[:, :, :n_txt]
        return torch.cat([text_out, video.transpose(1, 2)], dim=2)

    def _ring_attention(self, q, k_band, v_band, text_kv, r: int, valid: list[int]) -> torch.Tensor:
        """Attention of q (b, h, s, d) over the text keys and every ring position's band of video keys: the bands go
        round the ring (yunchang's `RingComm`), each block's softmax is merged by its log-sum-exp (yunchang's
        `update_out_and_lse`); the text keys join the block of the rank's own band, so each is counted once. A
        band's padding rows (`valid`: the real rows of each ring position) are never keys."""
        from yunchang.ring.utils import RingComm, update_out_and_lse

        comm, out, lse = RingComm(self.ring_group), None, None
        for step in range(self.ring):
            if step + 1 < self.ring:
                next_k, next_v = comm.send_recv(k_band.contiguous()), comm.send_recv(v_band.contiguous())
                comm.commit()
            j = (r - step) % self.ring  # whose band this is
            k, v = k_band[:, :, : valid[j]], v_band[:, :, : valid[j]]
            if step == 0:
                k, v = torch.cat([text_kv[0], k], dim=2), torch.cat([text_kv[1], v], dim=2)
            if k.shape[2]:
                block_out, block_lse = _attention_with_lse(q, k, v)
                out, lse = update_out_and_lse(out, lse, block_out.transpose(1, 2), block_lse)
            if step + 1 < self.ring:
                comm.wait()
                k_band, v_band = next_k, next_v
        return out.to(q.dtype).transpose(1, 2)

    def gather_video(self, tokens: torch.Tensor) -> torch.Tensor:
        """Every rank's video rows (b, its rows, c), in order: (b, n_video, c)."""
        return self._gather(_padded(tokens, self.per).contiguous())[:, : self.n_video]

    def _gather(self, x: torch.Tensor, group=None) -> torch.Tensor:
        """Every rank's x (of `group`, default the whole sequence group), joined along dim 1 (sampling only: no
        gradient flows back through it)."""
        group = group if group is not None else self.group
        every = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(every, x, group=group)
        return torch.cat(every, dim=1)


def _attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax(q k^T / sqrt(d)) v, its log-sum-exp) for (b, h, s, d) inputs: torch's flash-attention kernel (the
    one yunchang's ring calls on a GPU; its CPU twin here)."""
    kernel = torch.ops.aten._scaled_dot_product_flash_attention
    if q.device.type == "cpu":
        kernel = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    out = kernel(q, k, v)
    return out[0], out[1]


def _padded(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x (b, n, ...) with zero rows appended along dim 1 up to `rows` (the exchanged blocks are all one size; the zero
    rows are dropped where they arrive, so no attention sees them)."""
    short = rows - x.shape[1]
    return x if short == 0 else torch.cat([x, x.new_zeros(x.shape[0], short, *x.shape[2:])], dim=1)
