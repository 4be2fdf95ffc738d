"""fill.py - fill a Redis db with chunk containers encoded from the REAL KV dumps of
shared/data/kv (minillama-h128: 6 layers, 2 KV heads, head_dim 128, 2048 tokens, two
documents), tiled up to the benchmark model's geometry, under the chunk keys that shadowd and
the engine compute for the same token sequences (docs/keys.md).

Every mode of the engine benchmark restores the same KV: the tiling below depends only on the
geometry and (document, chunk) position, never on the scheme, so `raw` (bf16+none), `shadow`
and `cpu-inline` (bits4+zstd1) and `gpu-decode` (bits4+none) are filled from identical bf16
data, each into its own db (or key prefix).

TILING (target geometry L layers x H heads x D head_dim, chunk of T tokens; dumps of dL = 6
layers, dH = 2 heads, dD = 128 channels, dT = 2048 tokens, nd = 2 documents). Target element
(layer l, kind k, token t of chunk c of doc d, head h, channel ch) is dump element

    dump      (d + c) % nd
    layer     dl = l                        for l < dL
              dl = 1 + (l - dL) % (dL - 1)  for l >= dL  (dump layers 1..5, cyclically)
    head      (h + ch // dD) % dH
    channel   ch % dD
    token     (s + t) % dT,  s = T * (h // dH + ceil(H / dH) * r + c) + 1021 * (ch // dD)
              where r = 0 for l < dL, else 1 + (l - dL) // (dL - 1) (the round of reuse)

For Llama-3-8B (H = 8, D = 128, T = 256): dump (d+c) % 2, dump head h % 2, and a 256-token
window shifted by 256 * (h // 2 + 4 r + c) mod 2048. Why:
- The entropy stage codes each frame (one layer's K or V of one chunk: T x H x D) on its own,
  and exact repeats inside a frame would let it compress copies and inflate the ratio. Within
  a frame the H heads take distinct (dump head, token window) pairs as long as H <= 2 dT / T
  (16 heads at T = 256; beyond that windows repeat). Repeats across frames do not matter.
- Dump layer 0 is used once, as layer 0, never repeated: it is unlike the others (its V is a
  function of the token alone, since no attention precedes it, so repeated tokens give
  identical V rows; its K has the smallest spread), which is real but belongs to one layer of
  a model. Repeating it every 6 layers (l % 6) gave 6 of 32 layers whose V frames compress
  2.3x better than the rest (bits4+zstd1: 47 KiB vs 114 KiB a frame) and overstated the
  llama3-8b chunk ratio by 6% (bits4+zstd1 4.46-4.53x vs 4.23-4.27x with this mapping,
  bf16+zstd1 1.36-1.38x vs 1.30x; four chunks of doc 0).
Head dims above 128 take further 128-channel slices from the other dump head and an odd token
shift (1021), so slices do not line up with another head's window; head dims below 128 take
the first D channels. Keys are post-RoPE at the dump's positions, not the target's: fine for
transfer/decoding benchmarks, meaningless for attention quality.

Encoding runs in `threads` threads, each with its own Codec (ctypes releases the GIL while
the C encoder runs) and its own Redis connection, SETs pipelined in batches. A key that occurs
twice (two docs sharing a prefix) is stored once, from its first occurrence.

CLI:  python3 fill.py --port 6379 --db 1 --scheme bits4+none --geometry llama3-8b \
          --doc-tokens 8192,16384 --seed 1 [--vocab 128256] [--model-id ...] [--flush]
The docs are workload.make_docs(seed, doc_tokens, vocab): the engine generates the same.
"""
import argparse
import json
import lzma
import os
import queue
import struct
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import resp  # noqa: E402
import workload  # noqa: E402

DEFAULT_KV_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                              "shared", "data", "kv")
DUMP_NAMES = ("shared_linuxdoc_cgroup-v2", "shared_pydoc_tutorial-classes")
DEFAULT_MODEL_IDS = {"llama3-8b": "meta-llama/Meta-Llama-3-8B"}

_dump_lock = threading.Lock()
_dumps = {}  # kv_dir -> list of uint16 arrays [layers][2][tokens][heads][dim]


def load_dumps(kv_dir=DEFAULT_KV_DIR):
    """The real KV dumps as uint16 (bf16 bits) arrays [n_layers][2][n_tokens][n_heads][dim],
    decompressed once per process (about 1 s each) and cached."""
    kv_dir = os.path.abspath(kv_dir)
    with _dump_lock:
        if kv_dir in _dumps:
            return _dumps[kv_dir]
        out = []
        for name in DUMP_NAMES:
            path = os.path.join(kv_dir, name + ".kvd.xz")
            with open(path, "rb") as fh:
                data = lzma.decompress(fh.read())
            if len(data) < 24 or data[:4] != b"KVD1":
                raise ValueError("%s: not a KVD1 dump" % path)
            nl, nh, hd, nt, dt = struct.unpack_from("<5I", data, 4)
            if dt != 1 or not (0 < nl <= 256 and 0 < nh <= 256 and 0 < hd <= 1024
                               and 0 < nt <= 1 << 20):
                raise ValueError("%s: unsupported dump header" % path)
            if len(data) != 24 + 2 * nl * nt * nh * hd * 2:
                raise ValueError("%s: size %d does not match its header" % (path, len(data)))
            a = np.frombuffer(data, dtype="<u2", offset=24).reshape(nl, 2, nt, nh, hd)
            out.append(a)
        if len({a.shape for a in out}) != 1:
            raise ValueError("dumps of different shapes")
        _dumps[kv_dir] = out
        return out


def tile_chunk(dumps, geom, doc_index, chunk_index, out):
    """Write the tiled bf16 KV of chunk `chunk_index` of doc `doc_index` into out, a uint16
    array [n_layers][2][chunk_tokens][n_kv_heads][head_dim] (the NHD region of one chunk's
    consecutive blocks). See the module docstring for the mapping."""
    nd = len(dumps)
    dL, _, dT, dH, dD = dumps[0].shape
    L, H, D, T = geom.n_layers, geom.n_kv_heads, geom.head_dim, geom.chunk_tokens
    if out.shape != (L, 2, T, H, D) or out.dtype != np.uint16:
        raise ValueError("tile_chunk: out is %s %s" % (out.shape, out.dtype))
    src = dumps[(doc_index + chunk_index) % nd]
    hstep = -(-H // dH)
    ar = np.arange(T)
    for l in range(L):
        if l < dL or dL == 1:
            dl, rnd = l % dL, l // dL
        else:
            dl, rnd = 1 + (l - dL) % (dL - 1), 1 + (l - dL) // (dL - 1)
        sl = src[dl]
        for h in range(H):
            for j in range(-(-D // dD)):
                s = T * (h // dH + hstep * rnd + chunk_index) + 1021 * j
                tok = (s + ar) % dT
                c0, c1 = j * dD, min(D, (j + 1) * dD)
                dh = (h + j) % dH
                if tok[0] + T <= dT:  # no wrap: a slice, not a gather
                    tsl = slice(int(tok[0]), int(tok[0]) + T)
                    out[l, :, :, h, c0:c1] = sl[:, tsl, dh, :c1 - c0]
                else:
                    out[l, :, :, h, c0:c1] = sl[:, tok, dh, :c1 - c0]
    return out


def _codec_modules():
    from shadowserve import codec, types
    return codec, types


def fill(host, port, db, geom, scheme, docs, model_id, kv_dir=DEFAULT_KV_DIR,
         key_prefix="shadow:v1", threads=4, salt=b"", flush=False, batch_chunks=8):
    """Encode every full chunk of every doc in `docs` (token id arrays) with `scheme` and SET it
    under codec.store_key(key, key_prefix) in db `db` of the Redis server at host:port.
    Returns dict(n_chunks, bf16_bytes, stored_bytes, seconds): chunks stored (duplicates
    counted once), their bf16 KV bytes, and the bytes of their containers."""
    codec, types = _codec_modules()
    dumps = load_dumps(kv_dir)
    t0 = time.monotonic()
    ns = codec.namespace(model_id, geom, salt)
    ct = geom.chunk_tokens
    jobs, seen = [], set()
    for d, doc in enumerate(docs):
        doc = np.ascontiguousarray(doc, dtype=np.uint32)
        for c, key in enumerate(codec.chunk_keys(ns, doc, ct)):
            if key in seen:
                continue
            seen.add(key)
            jobs.append((d, c, key))
    if flush:
        with resp.Redis(host, port, db) as r:
            r.flushdb()
    q = queue.Queue()
    for j in jobs:
        q.put(j)
    bpc = ct // geom.block_tokens
    layout = types.layout_init(geom, types.LAYOUT_NHD, bpc)
    block_ids = list(range(bpc))
    stats = {"n_chunks": 0, "bf16_bytes": 0, "stored_bytes": 0}
    lock = threading.Lock()
    errors = []
    chunk_bf16 = 2 * geom.n_layers * ct * geom.n_kv_heads * geom.head_dim * 2

    def worker():
        try:
            cod = codec.Codec(geom)
            red = resp.Redis(host, port, db)
            region = np.empty((geom.n_layers, 2, ct, geom.n_kv_heads, geom.head_dim),
                              dtype=np.uint16)
            pending, pending_nbytes, n, stored = [], 0, 0, 0
            try:
                while not errors:
                    try:
                        d, c, key = q.get_nowait()
                    except queue.Empty:
                        break
                    tile_chunk(dumps, geom, d, c, region)
                    blob = cod.encode(scheme, key, c, region, layout, block_ids)
                    pending.append((codec.store_key(key, key_prefix), blob))
                    n += 1
                    stored += len(blob)
                    pending_nbytes += len(blob)
                    if len(pending) >= batch_chunks or pending_nbytes >= 64 << 20:
                        red.set_many(pending)
                        pending, pending_nbytes = [], 0
                if pending:
                    red.set_many(pending)
            finally:
                cod.close()
                red.close()
            with lock:
                stats["n_chunks"] += n
                stats["bf16_bytes"] += n * chunk_bf16
                stats["stored_bytes"] += stored
        except BaseException as e:  # reported by the caller's thread
            errors.append(e)

    ts = [threading.Thread(target=worker, name="fill-%d" % i, daemon=True)
          for i in range(max(1, min(threads, len(jobs))))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    stats["seconds"] = time.monotonic() - t0
    return stats


def geometry_from_args(a):
    _, types = _codec_modules()
    if a.geometry:
        return types.geometry_preset(a.geometry, chunk_tokens=a.chunk_tokens,
                                     block_tokens=a.block_tokens)
    if not (a.layers and a.heads and a.head_dim):
        raise SystemExit("give --geometry NAME or --layers, --heads and --head-dim")
    return types.geometry(a.layers, a.heads, a.head_dim, block_tokens=a.block_tokens,
                          chunk_tokens=a.chunk_tokens)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6379)
    p.add_argument("--db", type=int, default=0)
    p.add_argument("--scheme", required=True,
                   help="bf16+none (raw), bits4+zstd1 (shadow, cpu-inline), bits4+none (gpu-decode)")
    p.add_argument("--geometry", help="preset, e.g. llama3-8b")
    p.add_argument("--layers", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--head-dim", type=int)
    p.add_argument("--chunk-tokens", type=int, default=256)
    p.add_argument("--block-tokens", type=int, default=16)
    p.add_argument("--doc-tokens", required=True, help="comma-separated doc lengths")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--vocab", type=int, default=workload.LLAMA3_VOCAB)
    p.add_argument("--model-id", help="default: the preset's HF id (llama3-8b: %s)"
                   % DEFAULT_MODEL_IDS["llama3-8b"])
    p.add_argument("--salt", default="")
    p.add_argument("--prefix", default="shadow:v1", help="store key prefix")
    p.add_argument("--kv-dir", default=DEFAULT_KV_DIR)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--flush", action="store_true", help="FLUSHDB first")
    a = p.parse_args(argv)
    geom = geometry_from_args(a)
    model_id = a.model_id or DEFAULT_MODEL_IDS.get(a.geometry or "")
    if not model_id:
        raise SystemExit("give --model-id")
    lengths = [int(x) for x in a.doc_tokens.split(",") if x]
    docs = workload.make_docs(a.seed, lengths, a.vocab)
    st = fill(a.host, a.port, a.db, geom, a.scheme, docs, model_id, a.kv_dir, a.prefix,
              a.threads, a.salt.encode(), a.flush)
    st.update(scheme=a.scheme, db=a.db, model_id=model_id, doc_tokens=lengths, seed=a.seed,
              ratio=(st["bf16_bytes"] / st["stored_bytes"]) if st["stored_bytes"] else None)
    print(json.dumps(st))
    return 0


if __name__ == "__main__":
    sys.exit(main())
