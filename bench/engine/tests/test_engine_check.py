"""The engine's correctness run end to end on the CPU: the tiny model's own prefill KV saved
through a real shadowd (mem:// store, a host memfd region), fetched into other blocks, and the
output compared with recompute. A lossless scheme must give bit-exact KV and identical tokens
(engine.py --check exits 1 otherwise); a lossy one must still fetch every chunk.

Runs engine.py in a subprocess (it switches torch to deterministic algorithms). Skips without
torch or a shadowd binary ($SHADOW_SHADOWD, set by CTest).
"""
import csv
import os
import subprocess
import sys
import tempfile

import pytest

pytest.importorskip("torch")

HERE = os.path.dirname(os.path.abspath(__file__))
ENGINE = os.path.join(HERE, "..", "engine.py")


def test_check_lossless_identical_lossy_fetched():
    shadowd = os.environ.get("SHADOW_SHADOWD")
    if not shadowd or not os.access(shadowd, os.X_OK):
        pytest.skip("no shadowd binary: set SHADOW_SHADOWD")
    with tempfile.TemporaryDirectory(prefix="engine-check-") as tmp:
        out = os.path.join(tmp, "check.csv")
        cmd = [sys.executable, ENGINE, "--check", "--model", "tiny", "--device", "cpu",
               "--kv-gib", "0.05", "--check-doc-tokens", "1024", "--check-tokens", "8",
               "--check-schemes", "bf16+none,bf16planes+zstd1,int8+zstd1",
               "--shadowd", shadowd, "--shadowd-pool-mib", "64", "--shadowd-rx", "4MiB",
               "--check-store-mib", "64", "--decode-threads", "1", "--fetch-threads", "1",
               "--check-csv", out]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stderr[-3000:]
        with open(out) as f:
            rows = {row["scheme"]: row for row in csv.DictReader(f)}
    assert rows["recompute-again"]["greedy_identical"] == "True"
    for scheme in ("bf16+none", "bf16planes+zstd1"):
        row = rows[scheme]
        assert row["fetched_ok"] == "True", row
        assert row["kv_bit_exact"] == "True", row
        assert row["greedy_identical"] == "True", row
        assert float(row["logits_max_abs_diff"]) == 0.0, row
    lossy = rows["int8+zstd1"]
    assert lossy["fetched_ok"] == "True", lossy
    assert lossy["kv_bit_exact"] == "False", lossy      # int8 changes the KV ...
    assert float(lossy["ratio"]) > 1.5, lossy            # ... and shrinks the wire bytes
