"""model.py - a Llama-architecture decoder over a paged KV cache, for the benchmark engine.

The engine (engine.py) needs the cost and the memory behaviour of a real model, not its
answers: the weights are random, drawn from one seeded generator on the device (no
pre-trained weights can reach the GPU machine), with the shapes of a named config
(llama3-8b: 32 layers, hidden 4096, 32 query heads, 8 KV heads of 128, SwiGLU 14336, vocab
128256, RoPE theta 500000). Same seed, same config, same device: same weights and, for the
same inputs and shapes, the same logits.

KV cache. One tensor for all layers, [n_layers][2][n_blocks][block_tokens][n_kv_heads]
[head_dim] in bf16: shadowd's SHADOW_LAYOUT_NHD (docs/layout.md), so the whole cache is one
allocation that one CUDA IPC handle exports. A sequence owns a list of blocks; its "slots"
(block * block_tokens + offset, one per position) index the cache seen as
[n_blocks * block_tokens][n_kv_heads][head_dim] per layer and kind.

Attention. Prefill runs one chunk of one sequence: its K/V go into the cache, then its
queries attend over the whole context gathered from the cache, through SDPA's fused kernels
(causal, aligned lower-right for a chunk after the first). Decode runs one token for a batch
of sequences: each gathers its context (padded to the longest, masked) and attends with
grouped matmuls (no per-query-head copy of K/V). Gathering costs memory traffic the same in every mode of
the benchmark; a fused paged-attention kernel would make every mode faster, not change who
wins.
"""
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LlamaConfig:
    name: str
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5


CONFIGS = {
    "llama3-8b": LlamaConfig("llama3-8b", 32, 4096, 32, 8, 128, 14336, 128256),
    # For CPU smoke runs: the KV geometry of llama3-8b per head (head_dim 128), little else.
    "tiny": LlamaConfig("tiny", 2, 512, 4, 2, 128, 1024, 8192),
}

_HAS_SDPA = hasattr(F, "scaled_dot_product_attention")
try:
    from torch.nn.attention.bias import causal_lower_right as _causal_lower_right
except ImportError:          # torch < 2.2 (Debian's, for the CPU tests)
    _causal_lower_right = None


class PagedKV:
    """The paged cache tensor and its per-layer views. `tensor`, when given, is memory the
    caller owns (a bf16 view of a shared memfd, say) of the cache's shape; else the cache is
    allocated, zeroed, on `device`."""

    def __init__(self, cfg, n_blocks, block_tokens, device, tensor=None):
        self.cfg = cfg
        self.n_blocks = n_blocks
        self.block_tokens = block_tokens
        shape = (cfg.n_layers, 2, n_blocks, block_tokens, cfg.n_kv_heads, cfg.head_dim)
        if tensor is None:
            tensor = torch.zeros(shape, dtype=torch.bfloat16, device=device)
        elif tuple(tensor.shape) != shape or tensor.dtype != torch.bfloat16:
            raise ValueError("KV tensor of shape %s, want %s bf16" % (tuple(tensor.shape),
                                                                      shape))
        self.tensor = tensor
        flat = self.tensor.view(cfg.n_layers, 2, n_blocks * block_tokens, cfg.n_kv_heads,
                                cfg.head_dim)
        self.k = [flat[l, 0] for l in range(cfg.n_layers)]
        self.v = [flat[l, 1] for l in range(cfg.n_layers)]

    def slots(self, blocks):
        """Slot ids (int64, on the cache's device) of every position of `blocks`."""
        b = torch.as_tensor(np.asarray(blocks, dtype=np.int64), device=self.tensor.device)
        off = torch.arange(self.block_tokens, dtype=torch.int64, device=b.device)
        return (b[:, None] * self.block_tokens + off[None, :]).reshape(-1)


class Llama:
    def __init__(self, cfg, device, seed=0, max_positions=65536):
        self.cfg = cfg
        self.device = device
        g = torch.Generator(device=device)
        g.manual_seed(seed)
        bf = torch.bfloat16

        def w(*shape, std=0.02):
            return torch.empty(*shape, dtype=bf, device=device).normal_(0.0, std, generator=g)

        c = cfg
        out_std = 0.02 / math.sqrt(2 * c.n_layers)
        qkv = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim
        self.embed = w(c.vocab, c.hidden)
        self.wqkv = [w(c.hidden, qkv) for _ in range(c.n_layers)]
        self.wo = [w(c.n_heads * c.head_dim, c.hidden, std=out_std) for _ in range(c.n_layers)]
        self.w13 = [w(c.hidden, 2 * c.ffn) for _ in range(c.n_layers)]
        self.w2 = [w(c.ffn, c.hidden, std=out_std) for _ in range(c.n_layers)]
        self.ln1 = [torch.ones(c.hidden, dtype=bf, device=device) for _ in range(c.n_layers)]
        self.ln2 = [torch.ones(c.hidden, dtype=bf, device=device) for _ in range(c.n_layers)]
        self.lnf = torch.ones(c.hidden, dtype=bf, device=device)
        self.lm_head = w(c.hidden, c.vocab)
        half = c.head_dim // 2
        inv = c.rope_theta ** (-torch.arange(half, dtype=torch.float64) * 2 / c.head_dim)
        ang = torch.arange(max_positions, dtype=torch.float64)[:, None] * inv[None, :]
        self.cos = torch.cos(ang).float().to(device)
        self.sin = torch.sin(ang).float().to(device)
        self.scale = 1.0 / math.sqrt(c.head_dim)

    # -- pieces ------------------------------------------------------------------------------

    def _norm(self, x, wt):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.cfg.norm_eps)
        return xf.to(x.dtype) * wt

    def _rope(self, x, pos):
        """Rotate-half RoPE (HF convention) of x [T, heads, head_dim] at positions pos [T]."""
        cos = self.cos[pos][:, None, :]
        sin = self.sin[pos][:, None, :]
        xf = x.float()
        h = x.shape[-1] // 2
        x1, x2 = xf[..., :h], xf[..., h:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1).to(x.dtype)

    def _qkv(self, l, x, pos):
        c = self.cfg
        qkv = self._norm(x, self.ln1[l]) @ self.wqkv[l]
        nq, nk = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        q = qkv[:, :nq].view(-1, c.n_heads, c.head_dim)
        k = qkv[:, nq:nq + nk].view(-1, c.n_kv_heads, c.head_dim)
        v = qkv[:, nq + nk:].view(-1, c.n_kv_heads, c.head_dim)
        return self._rope(q, pos), self._rope(k, pos), v

    def _mlp(self, l, x):
        gu = self._norm(x, self.ln2[l]) @ self.w13[l]
        g, u = gu.chunk(2, dim=-1)
        return (F.silu(g) * u) @ self.w2[l]

    def _manual(self, q, k, v, mask):
        """Grouped-query attention by hand: q [B, H, T, D]; k, v [B, Hkv, S, D]; mask bool
        [B or 1, 1, T, S] (True = attend) or None. Matmuls in the input dtype, softmax in
        float32; no copy of K/V per query head."""
        c = self.cfg
        B, H, T, D = q.shape
        group = H // c.n_kv_heads
        qg = q.reshape(B, c.n_kv_heads, group * T, D)
        s = torch.matmul(qg, k.transpose(-1, -2)).float() * self.scale   # [B, Hkv, g*T, S]
        s = s.view(B, c.n_kv_heads, group, T, -1)
        if mask is not None:
            s = s.masked_fill(~mask[:, :, None], float("-inf"))
        p = torch.softmax(s, -1).to(q.dtype).view(B, c.n_kv_heads, group * T, -1)
        return torch.matmul(p, v).view(B, H, T, D)

    def _prefill_attend(self, q, k, v, start):
        """Causal attention of a chunk of T queries at positions start .. start+T-1 over
        S = start+T keys: q [1, H, T, D]; k, v [1, Hkv, S, D]. Uses SDPA's fused kernels
        (lower-right causal alignment for a chunk after the first): a masked fallback would
        materialize T x S scores per head and make recompute look slower than it is."""
        T, S = q.shape[2], k.shape[2]
        if _HAS_SDPA and (start == 0 or _causal_lower_right is not None):
            group = self.cfg.n_heads // self.cfg.n_kv_heads
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
            if start == 0:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return F.scaled_dot_product_attention(q, k, v,
                                                  attn_mask=_causal_lower_right(T, S))
        mask = (torch.arange(S, device=q.device)[None, :] <=
                torch.arange(T, device=q.device)[:, None] + start)[None, None]
        return self._manual(q, k, v, mask)

    # -- forward passes ------------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, kv, tokens, start, slots):
        """Run tokens [T] at positions start .. start+T-1 of a sequence whose positions'
        slots are `slots` (at least start+T of them); write their K/V into the cache; return
        the float32 logits [vocab] of the last token."""
        c = self.cfg
        T = tokens.shape[0]
        S = start + T
        pos = torch.arange(start, S, device=self.device)
        new_slots = slots[start:S]
        ctx = slots[:S]
        x = self.embed[tokens]
        for l in range(c.n_layers):
            q, k, v = self._qkv(l, x, pos)
            kv.k[l].index_copy_(0, new_slots, k)
            kv.v[l].index_copy_(0, new_slots, v)
            if start > 0:
                k = kv.k[l].index_select(0, ctx)
                v = kv.v[l].index_select(0, ctx)
            o = self._prefill_attend(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                     v.transpose(0, 1)[None], start)
            x = x + o[0].transpose(0, 1).reshape(T, -1) @ self.wo[l]
            x = x + self._mlp(l, x)
        return (self._norm(x[-1:], self.lnf) @ self.lm_head).float()[0]

    @torch.inference_mode()
    def decode(self, kv, tokens, positions, ctx_slots, ctx_lens):
        """One token for each of B sequences: tokens [B] at positions [B]; ctx_slots [B, S]
        (padded) the slots of each sequence's positions 0 .. ctx_lens-1, where ctx_lens =
        positions + 1. Returns float32 logits [B, vocab]."""
        c = self.cfg
        B, S = ctx_slots.shape
        new_slots = ctx_slots.gather(1, positions[:, None])[:, 0]
        mask = (torch.arange(S, device=self.device)[None, :] < ctx_lens[:, None])
        mask = mask[:, None, None, :]
        x = self.embed[tokens]
        for l in range(c.n_layers):
            q, k, v = self._qkv(l, x, positions)
            kv.k[l].index_copy_(0, new_slots, k)
            kv.v[l].index_copy_(0, new_slots, v)
            kc = kv.k[l][ctx_slots].transpose(1, 2)            # [B, Hkv, S, D]
            vc = kv.v[l][ctx_slots].transpose(1, 2)
            o = self._manual(q[:, :, None, :], kc, vc, mask)
            x = x + o.reshape(B, -1) @ self.wo[l]
            x = x + self._mlp(l, x)
        return (self._norm(x, self.lnf) @ self.lm_head).float()
