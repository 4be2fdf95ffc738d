"""workload.py - the synthetic documents of the engine benchmark, shared by fill.py (which stores
their KV chunks) and the engine (which asks for the same prefixes).

make_docs(seed, lengths, vocab) gives doc i as `lengths[i]` token ids in [1, vocab), uint32.
Token 0 is never drawn (some tokenizers reserve it); no BOS is prepended, so the ids are
exactly what gets keyed (docs/keys.md: the engine keys the ids whose KV it stores).

The generator is SplitMix64 over a counter, written out here rather than numpy's Generator,
whose streams numpy does not promise to keep across versions: fill.py and the engine may run
in different environments and must still agree on every token. Token j of doc i is

    x = seed * 2^32 + i * 2^48 + j + 1           (mod 2^64; j < 2^32, i < 2^16)
    z = splitmix64(x * 0x9E3779B97F4A7C15)       (mod 2^64)
    token = 1 + z mod (vocab - 1)

with splitmix64(z) = z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27;
z *= 0x94D049BB133111EB; z ^= z >> 31 (all mod 2^64). The small modulo bias is irrelevant here.
"""
import numpy as np

LLAMA3_VOCAB = 128256

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(z):
    z = z ^ (z >> np.uint64(30))
    z = z * _M1
    z = z ^ (z >> np.uint64(27))
    z = z * _M2
    return z ^ (z >> np.uint64(31))


def make_doc(seed, index, length, vocab=LLAMA3_VOCAB):
    """Doc `index` of seed `seed`: `length` uint32 token ids in [1, vocab)."""
    if not 2 <= vocab <= 1 << 32:
        raise ValueError("vocab %d out of range" % vocab)
    if not 0 <= index < 1 << 16 or not 0 <= length < 1 << 32 or seed < 0:
        raise ValueError("doc index, length or seed out of range")
    with np.errstate(over="ignore"):
        base = np.uint64(((seed << 32) + (index << 48) + 1) & ((1 << 64) - 1))
        x = np.arange(length, dtype=np.uint64) + base
        z = _splitmix64(x * _GOLDEN)
        return (np.uint64(1) + z % np.uint64(vocab - 1)).astype(np.uint32)


def make_docs(seed, lengths, vocab=LLAMA3_VOCAB):
    """[make_doc(seed, i, lengths[i], vocab) for each i]."""
    return [make_doc(seed, i, int(n), vocab) for i, n in enumerate(lengths)]
