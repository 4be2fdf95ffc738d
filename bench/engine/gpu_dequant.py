"""gpu_dequant.py - a torch decoder of uniform b-bit frames (docs/format.md), for the engine's
gpu-decode baseline: the engine copies compressed payloads to the GPU and dequantizes them
there with SM kernels, as GPU-side KV decompressors (CacheGen / LMCache) do. Device-agnostic:
the same code runs on CPU torch (tests) and CUDA.

What a frame is (docs/format.md, lib/quant/quant.h):
- symbols q in canonical order [token][head][channel]; with flag bit 0 ("packed") b bits each,
  least significant bit first, rows of head_dim symbols starting on byte boundaries (the
  encoder packs only when head_dim * b is a multiple of 8, so the whole frame is one LSB-first
  bit stream); otherwise one symbol per byte;
- groups: tiles of group_tokens tokens x group_channels channels of one head, ordered
  [token group][head][channel group]; the parameter block is scale[n_groups] then
  bias[n_groups], bf16 little-endian;
- an element decodes as x = q * scale + bias, evaluated in float32 as a multiply then an add
  (two roundings, never fused), rounded to bf16 to nearest-even, a NaN written as the canonical
  quiet NaN 0x7fc0.

How it stays bit-exact with the C reference (lib/quant/dequant_template.h):
- q * scale is one torch.mul kernel of uint8 by float32 (q converts exactly), + bias one
  torch.add kernel: separate kernels cannot be contracted into an FMA, whatever nvcc's
  -fmad does inside a kernel (so never torch.addcmul, which may fuse);
- the add writes its float32 result into the bf16 destination (TensorIterator computes in the
  common dtype, float32, and rounds on store to nearest-even, on CPU and CUDA alike);
- NaN: torch's CPU conversion gives 0x7fc0, but CUDA's __float2bfloat16 (sm_80+) gives
  0x7fff. A NaN only arises from non-finite parameters (hostile input: the encoder clamps
  them), so the caller says whether any parameter is non-finite (`canonical_nan`) and only
  then is the result patched to 0x7fc0 (two more kernels);
- subnormals: PyTorch's CUDA kernels are built without flush-to-zero, like the C reference.

Batching: a call decodes F frames of one shape class at once (same bits, packing and groups):
the engine passes all K frames of a chunk as one batch and all V frames as another, so a
chunk costs about a dozen kernel launches whatever its layer count.

Scratch: intermediate tensors (unpacked symbols, float32 products) come from a Scratch, which
keeps one growable buffer per name, so steady-state decoding allocates nothing. Work is queued
on the current stream (the caller selects its side stream); a Scratch belongs to one stream
(or one thread on CPU).
"""
import torch

__all__ = ["Scratch", "bf16_params", "unpack_symbols", "dequant_uniform", "n_groups",
           "BF16_QNAN"]

BF16_QNAN = 0x7FC0


class Scratch:
    """Named, growable, reusable buffers on one device (one per stream or thread)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self._bufs = {}

    def get(self, name, numel, dtype):
        """A 1-D tensor of `numel` elements of `dtype`, reusing the buffer of that name."""
        buf = self._bufs.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < numel:
            buf = torch.empty(max(numel, 1), dtype=dtype, device=self.device)
            self._bufs[name] = buf
        return buf[:numel]

    def nbytes(self):
        return sum(b.numel() * b.element_size() for b in self._bufs.values())


def n_groups(n_tokens, n_heads, head_dim, group_tokens, group_channels):
    """Groups of a frame: ceil(n_tokens / group_tokens) x n_heads x (head_dim / group_channels)."""
    if not 1 <= group_tokens <= n_tokens or group_channels < 1 or head_dim % group_channels:
        raise ValueError("bad groups %d x %d for %d tokens, head_dim %d"
                         % (group_tokens, group_channels, n_tokens, head_dim))
    return -(-n_tokens // group_tokens) * n_heads * (head_dim // group_channels)


def bf16_params(params_u8, count):
    """Parameter blocks -> (scale, bias) float32 [F, count] each. params_u8: uint8 [F, 4*count]
    (scale[count] then bias[count], bf16 little-endian), last dim contiguous, each row starting
    on an even byte. Exact: bf16 -> float32 is a widening."""
    f = params_u8.shape[0]
    p = params_u8.view(torch.bfloat16).float().view(f, 2, count)
    return p[:, 0], p[:, 1]


def unpack_symbols(packed, bits, n, scratch=None):
    """LSB-first b-bit symbols -> uint8 [F, n]. packed: uint8 [F, ceil(n * bits / 8)] with a
    contiguous last dim (rows may be strided), 2 <= bits <= 8. With bits 8 the input is
    returned as is."""
    if not 2 <= bits <= 8:
        raise ValueError("bits %d outside 2..8" % bits)
    f, nbytes = packed.shape
    if nbytes != (n * bits + 7) // 8:
        raise ValueError("%d packed bytes for %d symbols of %d bits" % (nbytes, n, bits))
    if bits == 8:
        return packed
    sc = scratch or Scratch(packed.device)
    mask = (1 << bits) - 1
    if 8 % bits == 0:  # 2, 4: whole symbols per byte
        per = 8 // bits
        if n % per == 0:
            q = sc.get("q", f * nbytes * per, torch.uint8).view(f, nbytes, per)
            for k in range(per):
                dst = q[:, :, k]
                if k == 0:
                    torch.bitwise_and(packed, mask, out=dst)
                elif k == per - 1:
                    torch.bitwise_right_shift(packed, k * bits, out=dst)
                else:
                    torch.bitwise_right_shift(packed, k * bits, out=dst)
                    dst.bitwise_and_(mask)
            return q.view(f, nbytes * per)
    # 3, 5, 6, 7 (or a ragged tail): groups of 8 symbols in `bits` bytes, via int64.
    g = -(-n // 8)
    gb = g * bits
    if gb != nbytes:
        src = sc.get("pad", f * gb, torch.uint8).view(f, gb)
        src[:, nbytes:].zero_()
        src[:, :nbytes].copy_(packed)
    else:
        src = packed
    src = src.reshape(f, g, bits)
    v = sc.get("v64", f * g, torch.int64).view(f, g)
    t = sc.get("t64", f * g, torch.int64).view(f, g)
    v.copy_(src[:, :, 0])
    for j in range(1, bits):
        t.copy_(src[:, :, j])
        t.bitwise_left_shift_(8 * j)
        v.bitwise_or_(t)
    q = sc.get("q", f * g * 8, torch.uint8).view(f, g, 8)
    for k in range(8):
        torch.bitwise_right_shift(v, k * bits, out=t)
        t.bitwise_and_(mask)
        q[:, :, k].copy_(t)
    return q.view(f, g * 8)[:, :n]


def dequant_uniform(packed, bits, is_packed, scale, bias, group_tokens, group_channels,
                    n_tokens, n_heads, head_dim, out, scratch=None, canonical_nan=False):
    """Decode F uniform frames of one shape class into `out`.

    packed: uint8 [F, raw_nbytes] on the device (a frame's raw bytes: its payload, codec none),
        last dim contiguous; raw_nbytes = N * bits / 8 if is_packed else N, N = n_tokens x
        n_heads x head_dim.
    scale, bias: float32 [F, n_groups] (see bf16_params), broadcastable per frame.
    out: bf16 [F, n_tokens, n_heads, head_dim], any strides (e.g. a view into a paged KV cache
        over consecutive blocks across layers); written in place.
    canonical_nan: set when any parameter may be non-finite, to write NaN as 0x7fc0 on every
        device (see the module docstring).
    Work goes on the current stream; nothing is synchronized.
    """
    f = packed.shape[0]
    t, h, d = n_tokens, n_heads, head_dim
    n = t * h * d
    gt, gc = group_tokens, group_channels
    ng = n_groups(t, h, d, gt, gc)
    if tuple(scale.shape) != (f, ng) or tuple(bias.shape) != (f, ng):
        raise ValueError("parameters of shape %s, want %s" % (tuple(scale.shape), (f, ng)))
    if tuple(out.shape) != (f, t, h, d):
        raise ValueError("out of shape %s, want %s" % (tuple(out.shape), (f, t, h, d)))
    sc = scratch or Scratch(packed.device)
    if is_packed:
        q = unpack_symbols(packed, bits, n, sc)
    else:
        if packed.shape[1] != n:
            raise ValueError("%d raw bytes for %d unpacked symbols" % (packed.shape[1], n))
        q = packed
    ntg, ncg = ng // (h * (d // gc)), d // gc
    if t % gt == 0:  # groups tile the tokens: pure broadcasting
        shape = (f, ntg, gt, h, ncg, gc)
        pshape = (f, ntg, 1, h, ncg, 1)
        s, b = scale.view(pshape), bias.view(pshape)
    else:  # a partial last token group: expand the parameters per token (rare)
        shape = (f, t, h, ncg, gc)
        idx = torch.arange(t, device=scale.device) // gt
        s = scale.view(f, ntg, h, ncg).index_select(1, idx).unsqueeze(-1)
        b = bias.view(f, ntg, h, ncg).index_select(1, idx).unsqueeze(-1)
    prod = sc.get("f32", f * n, torch.float32).view(shape)
    torch.mul(q.reshape(shape), s, out=prod)        # exact widening, one rounding
    o = out.view(shape)
    if not canonical_nan:
        torch.add(prod, b, out=o)                   # one rounding, then bf16 RNE on store
        return out
    torch.add(prod, b, out=prod)
    o.copy_(prod)
    o.view(torch.int16).masked_fill_(torch.isnan(prod), BF16_QNAN)
    return out
