#!/usr/bin/env python3
"""keyvectors.py - an independent implementation of the ShadowServe chunk-key scheme.

Written from docs/keys.md alone, with nothing but hashlib and struct, so that the vectors it
prints check the C implementation (lib/key/key.c) rather than restate it. The vectors are
hard-coded in tests/unit/test_key.c and listed in docs/keys.md; rerun this script after any
change to the spec and compare.

Usage: scripts/keyvectors.py [--shared DIR]   (DIR defaults to $SHADOW_SHARED_DIR or
                                               /work/shared; it holds data/kv/*.ids.u32)
"""
import argparse
import hashlib
import os
import struct
import sys

MAGIC = b"shadowserve-kv-ns"
RECORD_VERSION = 1
DTYPE = {"bf16": 1, "fp16": 2, "fp32": 3, "fp8_e4m3": 4}

# name: (n_layers, n_kv_heads, head_dim); all presets are bf16 with 256-token chunks.
PRESETS = {
    "llama3-8b": (32, 8, 128),
    "minillama-h128": (6, 2, 128),
}


def namespace_record(model_id, n_layers, n_kv_heads, head_dim, dtype, chunk_tokens, salt=b""):
    mid = model_id.encode("utf-8")
    assert 1 <= len(mid) <= 255 and b"\0" not in mid
    assert len(salt) <= 255
    return (MAGIC
            + struct.pack("<II", RECORD_VERSION, len(mid)) + mid
            + struct.pack("<IIIII", n_layers, n_kv_heads, head_dim, dtype, chunk_tokens)
            + struct.pack("<I", len(salt)) + salt)


def namespace_key(*args, **kw):
    return hashlib.sha256(namespace_record(*args, **kw)).digest()


def chain(ns, tokens, chunk_tokens):
    keys, prev = [], ns
    for i in range(len(tokens) // chunk_tokens):
        chunk = tokens[i * chunk_tokens:(i + 1) * chunk_tokens]
        prev = hashlib.sha256(prev + struct.pack("<%dI" % len(chunk), *chunk)).digest()
        keys.append(prev)
    return keys


def store_key(key, prefix="shadow:v1"):
    return prefix + ":" + key.hex()


def preset_ns(name, model_id, salt=b""):
    n_layers, n_kv_heads, head_dim = PRESETS[name]
    return namespace_key(model_id, n_layers, n_kv_heads, head_dim, DTYPE["bf16"], 256, salt)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.environ.get("SHADOW_SHARED_DIR", "/work/shared"))
    args = ap.parse_args()

    print("V1 namespace, minillama-h128, model id 'minillama-h128', no salt")
    rec = namespace_record("minillama-h128", 6, 2, 128, 1, 256)
    print("  record (%d bytes): %s" % (len(rec), rec.hex()))
    ns_mini = preset_ns("minillama-h128", "minillama-h128")
    print("  ns  = " + ns_mini.hex())

    print("V2 namespace, minillama-h128, model id 'minillama-h128', salt 'tenant-a'")
    rec = namespace_record("minillama-h128", 6, 2, 128, 1, 256, b"tenant-a")
    print("  record (%d bytes): %s" % (len(rec), rec.hex()))
    print("  ns  = " + preset_ns("minillama-h128", "minillama-h128", b"tenant-a").hex())

    print("V3 chunk keys, llama3-8b, model id 'meta-llama/Meta-Llama-3-8B', no salt,"
          " tokens 0..511")
    ns = preset_ns("llama3-8b", "meta-llama/Meta-Llama-3-8B")
    print("  ns  = " + ns.hex())
    for i, k in enumerate(chain(ns, list(range(512)), 256)):
        print("  key%d = %s" % (i, k.hex()))
        print("  store key%d = %s" % (i, store_key(k)))

    path = os.path.join(args.shared, "data/kv/shared_linuxdoc_cgroup-v2.ids.u32")
    print("V4 chunk keys, ns of V1, tokens of shared_linuxdoc_cgroup-v2.ids.u32")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        print("  skipped: %s" % e)
        return 0
    tokens = list(struct.unpack("<%dI" % (len(data) // 4), data))
    print("  %d tokens, first %s, sha256 of file %s"
          % (len(tokens), tokens[:4], hashlib.sha256(data).hexdigest()))
    for i, k in enumerate(chain(ns_mini, tokens, 256)):
        print("  key%d = %s" % (i, k.hex()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
