"""Positional encodings of the CogVideoX DiT: the 3-D sin-cos table (2B) and the 3-D rotary embedding (5B, 1.5).

Both are laid out over the token grid (t, row, col), row-major within a frame, frame-major overall. SAT slices
its flattened tables with `[:seq_len]`, which is right only at the configured spatial size; here every table is
sliced in 3-D, which gives the same numbers at that size and the right ones at any smaller one.
"""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange, repeat
from torch import nn

from cogvid.utils.errors import CogvidError


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """MAE-style 1-D sin-cos encoding: [sin(pos * w_k) ; cos(pos * w_k)], w_k = 1 / 10000^(k / (dim/2))."""
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = np.einsum("m,d->md", positions.reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_3d(
    dim: int, grid_t: int, grid_h: int, grid_w: int, t_interp: float, h_interp: float, w_interp: float
) -> np.ndarray:
    """The 2B table (t, h, w, dim): [temporal (dim/4) ; column (3dim/8) ; row (3dim/8)], as SAT builds it.

    Positions are float32 quotients, as in the original (np.arange(float32) / interpolation).
    """
    dim_spatial, dim_temporal = dim // 4 * 3, dim // 4
    rows = np.arange(grid_h, dtype=np.float32) / h_interp
    cols = np.arange(grid_w, dtype=np.float32) / w_interp
    col_grid, row_grid = np.meshgrid(cols, rows)  # each (h, w)
    spatial = np.concatenate(
        [sincos_1d(dim_spatial // 2, col_grid), sincos_1d(dim_spatial // 2, row_grid)], axis=1
    )  # (h*w, 3dim/4): the first half encodes the column
    temporal = sincos_1d(dim_temporal, np.arange(grid_t, dtype=np.float32) / t_interp)  # (t, dim/4)
    table = np.concatenate(
        [np.repeat(temporal[:, None], grid_h * grid_w, axis=1), np.repeat(spatial[None], grid_t, axis=0)],
        axis=-1,
    )
    return table.reshape(grid_t, grid_h, grid_w, dim)


def check_grid(name: str, grid: tuple[int, int, int], limit: tuple[int, int, int]) -> None:
    if any(g > m for g, m in zip(grid, limit, strict=True)):
        raise CogvidError(
            f"the token grid (t, h, w) = {grid} exceeds the {name} table {limit}: "
            "use fewer frames or a smaller size, or raise model.num_frames / latent_height / latent_width"
        )


class SinCosPositionEmbedding(nn.Module):
    """SAT Basic3DPositionEmbeddingMixin: a fixed table added to [text ; video] tokens (text rows are zero)."""

    def __init__(self, dim: int, text_length: int, grid: tuple[int, int, int], interp: tuple[float, float, float]):
        super().__init__()
        self.text_length, self.grid = text_length, grid
        table = torch.zeros(1, text_length + grid[0] * grid[1] * grid[2], dim)
        if table.device.type != "meta":
            pe = sincos_3d(dim, *grid, *interp).reshape(-1, dim)
            table[0, text_length:] = torch.from_numpy(pe).float()
        # A Parameter with requires_grad=False, so that it is saved under SAT's key and never trained.
        self.pos_embedding = nn.Parameter(table, requires_grad=False)

    def additive(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """(1, N_txt + t*h*w, dim) for a token grid no larger than the table's."""
        check_grid("sin-cos position", grid, self.grid)
        t, h, w = grid
        video = self.pos_embedding[:, self.text_length :].reshape(1, *self.grid, -1)[:, :t, :h, :w]
        return torch.cat([self.pos_embedding[:, : self.text_length], video.reshape(1, t * h * w, -1)], dim=1)


def rope_angles(head_dim: int, grid: tuple[int, int, int], theta: float, device=None) -> torch.Tensor:
    """(t, h, w, head_dim) rotation angles: [t (d/4) ; row (3d/8) ; col (3d/8)], each frequency twice in a row."""
    dims = (head_dim // 4, head_dim // 8 * 3, head_dim // 8 * 3)
    axes = []
    for d, n in zip(dims, grid, strict=True):
        freqs = 1.0 / (theta ** (torch.arange(0, d, 2, device=device)[: d // 2].float() / d))
        angles = torch.einsum("n,f->nf", torch.arange(n, dtype=torch.float32, device=device), freqs)
        axes.append(repeat(angles, "n f -> n (f r)", r=2))
    t, h, w = grid
    return torch.cat(
        [
            axes[0][:, None, None, :].expand(t, h, w, -1),
            axes[1][None, :, None, :].expand(t, h, w, -1),
            axes[2][None, None, :, :].expand(t, h, w, -1),
        ],
        dim=-1,
    )


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Interleaved (GPT-J) rotation: each pair (x0, x1) becomes (-x1, x0)."""
    x = rearrange(x, "... (d r) -> ... d r", r=2)
    x1, x2 = x.unbind(dim=-1)
    return rearrange(torch.stack((-x2, x1), dim=-1), "... d r -> ... (d r)")


class RotaryPositionEmbedding(nn.Module):
    """SAT Rotary3DPositionEmbeddingMixin: 3-D RoPE on the video tokens of Q and K, theta 10000.

    v1.0 keeps the cos/sin tables for the configured grid as state-dict buffers (`freqs_sin`, `freqs_cos`);
    the 1.5 generation computes them per call and saves nothing. 5B-I2V adds a learnable table over
    [text ; video] tokens (`pos_embedding`).
    """

    def __init__(
        self,
        dim: int,
        head_dim: int,
        text_length: int,
        grid: tuple[int, int, int],
        theta: float,
        tables_in_state_dict: bool,
        learnable_pos_embed: bool,
    ):
        super().__init__()
        self.head_dim, self.text_length, self.grid, self.theta = head_dim, text_length, grid, theta
        self.tables_in_state_dict = tables_in_state_dict
        if learnable_pos_embed:
            self.pos_embedding = nn.Parameter(torch.zeros(1, text_length + grid[0] * grid[1] * grid[2], dim))
        else:
            self.pos_embedding = None
        if tables_in_state_dict:
            angles = rope_angles(head_dim, grid, theta).reshape(-1, head_dim)
            self.register_buffer("freqs_sin", angles.sin())
            self.register_buffer("freqs_cos", angles.cos())

    def additive(self, grid: tuple[int, int, int]) -> torch.Tensor | None:
        if self.pos_embedding is None:
            return None
        check_grid("learnable position", grid, self.grid)
        t, h, w = grid
        video = self.pos_embedding[:, self.text_length :].reshape(1, *self.grid, -1)[:, :t, :h, :w]
        return torch.cat([self.pos_embedding[:, : self.text_length], video.reshape(1, t * h * w, -1)], dim=1)

    def cos_sin(self, grid: tuple[int, int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
        """(t*h*w, head_dim) cos and sin tables for a token grid, in float32."""
        t, h, w = grid
        check_grid("rotary", grid, self.grid)
        if self.tables_in_state_dict:
            cos = self.freqs_cos.reshape(*self.grid, -1)[:t, :h, :w].reshape(t * h * w, -1)
            sin = self.freqs_sin.reshape(*self.grid, -1)[:t, :h, :w].reshape(t * h * w, -1)
            return cos, sin
        angles = rope_angles(self.head_dim, grid, self.theta, device=device).reshape(t * h * w, -1)
        return angles.cos(), angles.sin()

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: (b, n_heads, n_video, head_dim); cos, sin: (n_video, head_dim)."""
        return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)
