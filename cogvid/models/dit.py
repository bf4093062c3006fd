"""The CogVideoX diffusion transformer (SAT `dit_video_concat.DiffusionTransformer`), both code generations.

Module names follow SAT's state dict, so `state_dict()` gives the keys after `model.diffusion_model.`:
`mixins.{pos_embed,patch_embed,adaln_layer,final_layer}.*`, `transformer.layers.{i}.*`,
`transformer.final_layernorm.*`, `time_embed.*` and, for 1.5-I2V, `ofs_embed.*`.
Building blocks first, the model last; `DiffusionTransformer.forward` is written as numbered steps, in SAT's order.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from cogvid.config.schema import Generation, PosEmbed
from cogvid.models.lora import LoraLinear, linear_or_lora
from cogvid.models.positions import RotaryPositionEmbedding, SinCosPositionEmbedding

QK_NORM_EPS = 1e-6  # qk LayerNorm and the final layer's norm_final; block norms use model.layernorm_epsilon


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos(t f_k) ; sin(t f_k)], f_k = exp(-ln(max_period) k / (dim/2)), in float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (b, s, d) * (1 + scale) + shift, with shift and scale (b, d) broadcast over tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PatchEmbed(nn.Module):
    """Video latents to tokens, and T5 states to the model width; the sequence is [text ; video].

    v1.0: a Conv2d(k = s = p) per frame. 1.5: a Linear over (c, o, p, q) patches of p_t x p x p.
    """

    def __init__(self, generation: Generation, in_channels: int, dim: int, p: int, p_t: int, text_dim: int):
        super().__init__()
        self.generation, self.p, self.p_t = generation, p, p_t
        if generation is Generation.v1_0:
            self.proj = nn.Conv2d(in_channels, dim, kernel_size=p, stride=p)
        else:
            self.proj = nn.Linear(in_channels * p_t * p * p, dim)
        self.text_proj = nn.Linear(text_dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # x: (b, t, c, h, w); context: (b, n_txt, text_dim) -> (b, n_txt + n_video, dim)
        b = x.shape[0]
        if self.generation is Generation.v1_0:
            frames = self.proj(rearrange(x, "b t c h w -> (b t) c h w"))  # (b t) d h' w'
            video = rearrange(frames, "(b t) d h w -> b (t h w) d", b=b)
        else:
            patches = rearrange(x, "b (t o) c (h p) (w q) -> b (t h w) (c o p q)", o=self.p_t, p=self.p, q=self.p)
            video = self.proj(patches)
        return torch.cat([self.text_proj(context), video], dim=1)


class SelfAttention(nn.Module):
    """Joint attention over [text ; video]: fused QKV, qk-LayerNorm, RoPE on video tokens, SDPA, dense."""

    def __init__(self, dim: int, n_heads: int, lora_rank: int, lora_alpha: float):
        super().__init__()
        self.n_heads = n_heads
        self.query_key_value = linear_or_lora(dim, 3 * dim, lora_rank, lora_alpha, partitions=3)
        self.dense = linear_or_lora(dim, dim, lora_rank, lora_alpha, partitions=1)

    def forward(self, x, q_norm, k_norm, n_txt: int, rope: tuple[torch.Tensor, torch.Tensor] | None, shard=None):
        b, s, _ = x.shape
        # (b, s, 3 D) -> q, k, v (b, n, s, d), each contiguous: one copy out of the fused projection, after which the
        # norms read and SDPA streams rows of d (a view into the fused output puts 3 D between tokens: SDPA's CPU
        # kernel is ~9 % slower on it)
        qkv = self.query_key_value(x).view(b, s, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = (part.contiguous() for part in qkv.unbind(0))
        if q_norm is not None:
            q, k = q_norm(q), k_norm(k)
        if rope is not None:  # (cos, sin), already in x's dtype; q and k are this call's own tensors
            q, k = (_rotate_video_rows(part, n_txt, *rope) for part in (q, k))
        # one video over several ranks: every token through the group (cogvid.parallel.sequence)
        out = F.scaled_dot_product_attention(q, k, v) if shard is None else shard.attention(q, k, v, n_txt)
        return self.dense(out.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(dim, 4 * dim)
        self.dense_4h_to_h = nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x), approximate="tanh"))


class TransformerLayer(nn.Module):
    """One AdaLN block (SAT AdaLNMixin.layer_forward); its modulation and qk-norms live in `mixins.adaln_layer`.

    With autograd off (sampling) the block modulates and adds its residuals in place, into h itself (the caller's
    hidden state, which nothing else holds; see DiffusionTransformer._blocks); with autograd on it builds new tensors.
    Both are the same arithmetic (see `_modulate_parts` and `_add_gated_parts`).
    """

    def __init__(self, dim: int, n_heads: int, eps: float, affine: bool, lora_rank: int, lora_alpha: float):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(dim, eps=eps, elementwise_affine=affine)
        self.attention = SelfAttention(dim, n_heads, lora_rank, lora_alpha)
        self.post_attention_layernorm = nn.LayerNorm(dim, eps=eps, elementwise_affine=affine)
        self.mlp = MLP(dim)

    def forward(self, h, mod, q_norm, k_norm, n_txt: int, rope, shard=None):
        # mod: (b, 12 d) = video shift/scale/gate for attention and MLP, then the same six for text.
        # LayerNorm is per token, so one call normalises text and video alike; the parts are modulated apart.
        vid_msa, vid_mlp, txt_msa, txt_mlp = (mod_part.chunk(3, dim=1) for mod_part in mod.chunk(4, dim=1))
        a = _modulate_parts(self.input_layernorm(h), n_txt, txt_msa[:2], vid_msa[:2])
        att = self.attention(a, q_norm, k_norm, n_txt, rope, shard)
        h = _add_gated_parts(h, att, n_txt, txt_msa[2], vid_msa[2])
        m = _modulate_parts(self.post_attention_layernorm(h), n_txt, txt_mlp[:2], vid_mlp[:2])
        return _add_gated_parts(h, self.mlp(m), n_txt, txt_mlp[2], vid_mlp[2])


def _rotate_video_rows(x: torch.Tensor, n_txt: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on the video rows of x (b, n, s, d), text rows as they are; in place when autograd is off."""
    video = RotaryPositionEmbedding.rotate(x[:, :, n_txt:], cos, sin)
    if torch.is_grad_enabled():
        return torch.cat([x[:, :, :n_txt], video], dim=2)
    x[:, :, n_txt:] = video
    return x


def _modulate_parts(x: torch.Tensor, n_txt: int, text: tuple, video: tuple) -> torch.Tensor:
    """`modulate` on x (b, s, d): the first n_txt tokens with the text (shift, scale), the rest with the video pair;
    in place on x when autograd is off."""
    parts = ((x[:, :n_txt], text), (x[:, n_txt:], video))
    if torch.is_grad_enabled():
        return torch.cat([modulate(part, shift, scale) for part, (shift, scale) in parts], dim=1)
    for part, (shift, scale) in parts:
        part.mul_(1 + scale.unsqueeze(1)).add_(shift.unsqueeze(1))
    return x


def _add_gated_parts(h: torch.Tensor, update: torch.Tensor, n_txt: int, text_gate, video_gate) -> torch.Tensor:
    """h + gate * update, with the text gate on the first n_txt tokens and the video gate on the rest; in place into h
    when autograd is off."""
    parts = ((slice(None, n_txt), text_gate), (slice(n_txt, None), video_gate))
    if torch.is_grad_enabled():
        return torch.cat([h[:, rows] + gate.unsqueeze(1) * update[:, rows] for rows, gate in parts], dim=1)
    for rows, gate in parts:
        h[:, rows].add_(gate.unsqueeze(1) * update[:, rows])
    return h


class Transformer(nn.Module):
    """SAT BaseTransformer minus word embeddings: the blocks and the final LayerNorm over the whole sequence."""

    def __init__(self, cfg, dim: int):
        super().__init__()
        if cfg.pos_embed is PosEmbed.rope:
            # Present (and unused) in SAT's RoPE variants; kept so that their checkpoints load strictly.
            self.position_embeddings = nn.Embedding(cfg.max_sequence_length, dim)
            self.position_embeddings.weight.requires_grad_(False)
        layer = partial(
            TransformerLayer,
            dim,
            cfg.num_attention_heads,
            cfg.layernorm_epsilon,
            cfg.elementwise_affine,
            cfg.lora_rank,
            cfg.lora_alpha,
        )
        self.layers = nn.ModuleList([layer() for _ in range(cfg.num_layers)])
        self.final_layernorm = nn.LayerNorm(dim, eps=cfg.layernorm_epsilon, elementwise_affine=cfg.elementwise_affine)


class AdaLNModulations(nn.Module):
    """Per-layer SiLU -> Linear(E, 12 D) modulation and the per-head qk LayerNorms (SAT AdaLNMixin)."""

    def __init__(self, cfg, dim: int, head_dim: int):
        super().__init__()
        self.adaLN_modulations = nn.ModuleList(
            [nn.Sequential(nn.SiLU(), nn.Linear(cfg.time_embed_dim, 12 * dim)) for _ in range(cfg.num_layers)]
        )
        if cfg.qk_ln:
            norm = partial(nn.LayerNorm, head_dim, eps=QK_NORM_EPS, elementwise_affine=cfg.elementwise_affine)
            self.query_layernorm_list = nn.ModuleList([norm() for _ in range(cfg.num_layers)])
            self.key_layernorm_list = nn.ModuleList([norm() for _ in range(cfg.num_layers)])
        else:
            self.query_layernorm_list = self.key_layernorm_list = None


class FinalLayer(nn.Module):
    """norm_final (eps 1e-6) modulated by (shift, scale) from the time embedding, then Linear to patch pixels."""

    def __init__(self, cfg, dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, eps=QK_NORM_EPS, elementwise_affine=cfg.elementwise_affine)
        self.linear = nn.Linear(dim, cfg.patch_size_t * cfg.patch_size**2 * cfg.out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.time_embed_dim, 2 * dim))

    def forward(self, x, emb):
        shift, scale = self.adaLN_modulation(emb).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiffusionTransformer(nn.Module):
    """CogVideoX DiT.

    forward(x (b, t, c_in, h, w), timesteps (b,), context (b, n_txt, d_txt), ofs) -> (b, t, 16, h, w).
    """

    def __init__(self, cfg):
        super().__init__()
        dim, heads = cfg.hidden_size, cfg.num_attention_heads
        if dim % heads:
            raise ValueError(f"hidden_size {dim} is not a multiple of num_attention_heads {heads}")
        self.cfg = cfg
        self.dim, self.head_dim = dim, dim // heads
        self.generation = Generation(cfg.generation)
        self.p, self.p_t = cfg.patch_size, cfg.patch_size_t
        if self.generation is Generation.v1_0 and self.p_t != 1:
            raise ValueError("the v1.0 generation has no temporal patches (patch_size_t must be 1)")
        self.out_channels = cfg.out_channels
        self.checkpoint_activations = cfg.checkpoint_activations
        self.mixins = nn.ModuleDict()
        self.mixins["pos_embed"] = self._position_embedding(cfg)
        self.mixins["patch_embed"] = PatchEmbed(
            self.generation, cfg.in_channels, dim, self.p, self.p_t, cfg.text_hidden_size
        )
        self.mixins["adaln_layer"] = AdaLNModulations(cfg, dim, self.head_dim)
        self.mixins["final_layer"] = FinalLayer(cfg, dim)
        self.transformer = Transformer(cfg, dim)
        self.time_embed = nn.Sequential(
            nn.Linear(dim, cfg.time_embed_dim), nn.SiLU(), nn.Linear(cfg.time_embed_dim, cfg.time_embed_dim)
        )
        if cfg.ofs_embed_dim:
            if cfg.ofs_embed_dim != cfg.time_embed_dim:  # SAT adds the ofs MLP's output to the time embedding
                raise ValueError(f"ofs_embed_dim {cfg.ofs_embed_dim} must equal time_embed_dim {cfg.time_embed_dim}")
            d = cfg.ofs_embed_dim
            self.ofs_embed = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        else:
            self.ofs_embed = None
        self.init_weights()

    def _position_embedding(self, cfg) -> nn.Module:
        """The `pos_embed` mixin of model.pos_embed: sin-cos tables (2B), else RoPE (5B; with a learnable additive
        table for 5B-I2V), built for the configured latent grid."""
        # The grid the positional tables are built for: (latent frames, h / p, w / p).
        grid = (
            (cfg.num_frames - 1) // cfg.time_compressed_rate + 1,
            cfg.latent_height // self.p,
            cfg.latent_width // self.p,
        )
        if PosEmbed(cfg.pos_embed) is PosEmbed.sincos:
            interp = (cfg.time_interpolation, cfg.height_interpolation, cfg.width_interpolation)
            return SinCosPositionEmbedding(self.dim, cfg.text_length, grid, interp)
        return RotaryPositionEmbedding(
            self.dim,
            self.head_dim,
            cfg.text_length,
            grid,
            cfg.rope_theta,
            tables_in_state_dict=self.generation is Generation.v1_0,
            learnable_pos_embed=cfg.learnable_pos_embed,
        )

    @torch.no_grad()
    def init_weights(self) -> None:
        """Training-from-scratch init: zero adaLN linears, xavier patch proj; the final linear xavier as SAT, or zeros
        with model.zero_final_linear."""
        if next(self.parameters()).device.type == "meta":
            return
        adaln = self.mixins["adaln_layer"]
        for seq in adaln.adaLN_modulations:
            nn.init.zeros_(seq[1].weight)
            nn.init.zeros_(seq[1].bias)
        final = self.mixins["final_layer"]
        nn.init.zeros_(final.adaLN_modulation[1].weight)
        nn.init.zeros_(final.adaLN_modulation[1].bias)
        if self.cfg.zero_final_linear:  # DiT (Peebles & Xie): the untrained model predicts v = 0
            nn.init.zeros_(final.linear.weight)
        else:
            nn.init.xavier_uniform_(final.linear.weight)
        nn.init.zeros_(final.linear.bias)
        proj = self.mixins["patch_embed"].proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.mixins["patch_embed"].text_proj.weight.dtype

    def forward(self, x, timesteps, context, ofs=None, step_cache=None, shard=None):
        """step_cache: a `cogvid.diffusion.step_cache.StepCache` that may skip the blocks after the first (sampling
        with sampler.cache); None runs every block. shard: a `cogvid.parallel.sequence.SequenceShard`: this rank runs
        the blocks on its share of the video tokens and returns the whole output, as one process does."""
        b, t, _, h, w = x.shape
        if t % self.p_t or h % self.p or w % self.p:
            raise ValueError(
                f"latent (t, h, w) = {(t, h, w)} is not divisible by the patch ({self.p_t}, {self.p}, {self.p})"
            )
        dtype = self.dtype
        x, context = x.to(dtype), context.to(dtype)
        n_txt = context.shape[1]
        grid = (t // self.p_t, h // self.p, w // self.p)

        # 1. Time embedding (+ ofs for 1.5-I2V).                                       emb: (b, E)
        emb = self._time_embedding(timesteps, ofs, dtype, x.device)

        # 2. Patch embedding, [text ; video] tokens.                                   h: (b, n_txt + n_video, D)
        hidden = self.mixins["patch_embed"](x, context)

        # 3. Additive position embedding (2B sin-cos, 5B-I2V learnable), and RoPE tables for attention.
        hidden, rope = self._positions(hidden, grid, n_txt, dtype, x.device)
        if shard is not None:  # this rank's share of the video tokens (and of the RoPE rows)
            if step_cache is not None:
                raise ValueError("the step cache does not run with sequence parallelism")
            shard = shard.for_video(hidden.shape[1] - n_txt, self.cfg.num_attention_heads)
            rows = shard.video_rows()
            hidden = torch.cat([hidden[:, :n_txt], hidden[:, n_txt:][:, rows]], dim=1)
            rope = tuple(table[rows] for table in rope) if rope is not None else None

        # 4. L AdaLN blocks over the joint sequence (with a step cache, the blocks after the first may be skipped).
        hidden = self._blocks(hidden, emb, n_txt, rope, step_cache, shard)

        # 5. Final LayerNorm over everything, then the final layer on video tokens.     (b, n_video, p_t p p c)
        hidden = self.transformer.final_layernorm(hidden)
        out = self.mixins["final_layer"](hidden[:, n_txt:], emb)
        if shard is not None:
            out = shard.gather_video(out)

        # 6. Unpatchify: token (t', h', w'), feature (c, o, p, q) -> frame t' p_t + o, row h' p + p, col w' p + q.
        return rearrange(
            out,
            "b (t h w) (c o p q) -> b (t o) c (h p) (w q)",
            t=grid[0],
            h=grid[1],
            w=grid[2],
            o=self.p_t,
            p=self.p,
            q=self.p,
        )

    def _positions(
        self, hidden: torch.Tensor, grid: tuple[int, int, int], n_txt: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Add the additive position embedding (2B sin-cos, 5B-I2V learnable) to `hidden`; with RoPE, its cos/sin
        tables for `grid` in `dtype` (None without)."""
        pos = self.mixins["pos_embed"]
        additive = pos.additive(grid)
        if additive is not None:
            if additive.shape[1] != hidden.shape[1]:
                raise ValueError(f"context has {n_txt} tokens; this model was built for {pos.text_length}")
            hidden = hidden + additive.to(dtype)
        rope = None
        if isinstance(pos, RotaryPositionEmbedding):
            rope = tuple(table.to(dtype) for table in pos.cos_sin(grid, device))  # cast once, not per layer
        return hidden, rope

    def _time_embedding(self, timesteps, ofs, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Sinusoid of width D, then MLP to E; for 1.5-I2V plus the ofs MLP of ofs's sinusoid.   (b, E)"""
        emb = self.time_embed(timestep_embedding(timesteps, self.dim).to(dtype))
        if self.ofs_embed is not None:
            if ofs is None:
                raise ValueError("this model (1.5-I2V) needs `ofs` (2.0 at sampling)")
            ofs = torch.as_tensor(ofs, device=device).reshape(-1)
            emb = emb + self.ofs_embed(timestep_embedding(ofs, self.cfg.ofs_embed_dim).to(dtype))
        return emb

    def _blocks(self, hidden, emb, n_txt: int, rope, cache, shard=None) -> torch.Tensor:
        """The L AdaLN blocks; with a step cache, its stand-in for blocks 2..L when the first block's output allows."""
        adaln = self.mixins["adaln_layer"]
        first = entry = None
        for i, layer in enumerate(self.transformer.layers):
            if i == 0 and cache is not None:
                entry = hidden.clone()  # the first block adds into hidden in place
            mod = adaln.adaLN_modulations[i](emb)
            q_norm = adaln.query_layernorm_list[i] if adaln.query_layernorm_list is not None else None
            k_norm = adaln.key_layernorm_list[i] if adaln.key_layernorm_list is not None else None
            if self.checkpoint_activations and self.training and torch.is_grad_enabled():
                hidden = checkpoint(layer, hidden, mod, q_norm, k_norm, n_txt, rope, shard, use_reentrant=False)
            else:
                hidden = layer(hidden, mod, q_norm, k_norm, n_txt, rope, shard)
            if i == 0 and cache is not None:
                if (reused := cache.reuse(entry, hidden)) is not None:
                    return reused
                first, hidden = hidden, hidden.clone()  # the blocks below may add into hidden in place
        if first is not None:
            cache.remember(first, hidden)
        return hidden

    def lora_layers(self) -> list[LoraLinear]:
        return [m for m in self.modules() if isinstance(m, LoraLinear)]

    @torch.no_grad()
    def merge_lora_(self) -> None:
        """Replace every LoraLinear with a plain Linear holding W + B A alpha / r (SAT merge_lora)."""
        for layer in self.transformer.layers:
            att = layer.attention
            for name in ("query_key_value", "dense"):
                module = getattr(att, name)
                if isinstance(module, LoraLinear):
                    setattr(att, name, module.merged())
