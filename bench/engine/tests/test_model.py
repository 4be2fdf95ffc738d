"""Tests of the benchmark engine's model and block allocator (CPU torch; skipped without it).

They check the properties the engine's measurements rest on: chunked prefill over the paged
cache computes what one unchunked prefill does, a batched decode step computes what one
sequence alone does, and the allocator hands out contiguous runs when it can.
"""
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from model import CONFIGS, Llama, PagedKV  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return Llama(CONFIGS["tiny"], torch.device("cpu"), seed=3, max_positions=4096)


def fresh_kv(n_blocks=64):
    return PagedKV(CONFIGS["tiny"], n_blocks, 16, torch.device("cpu"))


def close(a, b, tol=0.05):
    """bf16 model: compare logits relative to their spread."""
    return float((a - b).abs().max()) <= tol * float(b.abs().max())


def test_chunked_prefill_matches_whole(model):
    rng = np.random.default_rng(0)
    toks = torch.as_tensor(rng.integers(3, 8192, size=300), dtype=torch.int64)
    kv1, kv2 = fresh_kv(), fresh_kv()
    s1 = kv1.slots(np.arange(0, 20))
    s2 = kv2.slots(np.arange(40, 60)[::-1].copy())   # other blocks, in another order
    whole = model.prefill(kv1, toks, 0, s1)
    model.prefill(kv2, toks[:128], 0, s2)
    model.prefill(kv2, toks[128:256], 128, s2)
    part = model.prefill(kv2, toks[256:], 256, s2)
    assert close(part, whole)
    # The cache holds the same K at the same positions, wherever the blocks are.
    k1 = kv1.k[1].index_select(0, s1[:300]).float()
    k2 = kv2.k[1].index_select(0, s2[:300]).float()
    assert float((k1 - k2).abs().max()) <= 0.05 * float(k1.abs().max())


def test_decode_batch_matches_single(model):
    rng = np.random.default_rng(1)
    kv = fresh_kv()
    seqs = [torch.as_tensor(rng.integers(3, 8192, size=n), dtype=torch.int64)
            for n in (50, 90)]
    slots = [kv.slots(np.arange(0, 8)), kv.slots(np.arange(8, 16))]
    last = []
    for s, sl in zip(seqs, slots):
        last.append(int(model.prefill(kv, s, 0, sl).argmax()))
    pos = torch.tensor([49, 89])
    S = 90
    ctx = torch.stack([torch.nn.functional.pad(slots[0][:S], (0, 0)), slots[1][:S]])
    batched = model.decode(kv, torch.tensor(last), pos, ctx, pos + 1)
    for i in range(2):
        p = pos[i:i + 1]
        alone = model.decode(kv, torch.tensor(last[i:i + 1]), p, slots[i][None, :int(p) + 1],
                             p + 1)
        assert close(batched[i], alone[0])


def test_decode_continues_prefill(model):
    """Prefill n tokens then decode token n == prefill n+1 tokens."""
    rng = np.random.default_rng(2)
    toks = torch.as_tensor(rng.integers(3, 8192, size=65), dtype=torch.int64)
    kv1, kv2 = fresh_kv(), fresh_kv()
    s = kv1.slots(np.arange(0, 8))
    ref = model.prefill(kv1, toks, 0, s)
    model.prefill(kv2, toks[:64], 0, s)
    p = torch.tensor([64])
    got = model.decode(kv2, toks[64:65], p, s[None, :65], p + 1)[0]
    assert close(got, ref)


def test_allocator_contiguous_then_any():
    sys.path.insert(0, os.path.join(HERE, ".."))
    from engine import BlockAllocator
    a = BlockAllocator(10)
    x = a.alloc(4)
    y = a.alloc(4)
    assert list(x) == [0, 1, 2, 3] and list(y) == [4, 5, 6, 7]
    a.release(x[1:3])                 # free: 1, 2, 8, 9
    z = a.alloc(3)                    # no run of 3: any three
    assert sorted(z) == [1, 2, 8]
    assert a.alloc(2) is None         # one block left
    a.release(y)
    assert list(a.alloc(4)) == [4, 5, 6, 7]
