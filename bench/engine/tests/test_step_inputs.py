"""The decode step's inputs kept on the device (--step-inputs device) drive the same greedy
generation as the inputs copied from host lists each step (host), and write the same KV: the
tiny model on the CPU, a batch of requests arriving at once, recompute mode (no store
needed). (Its random weights make the tokens weakly dependent on positions; the KV, rotated
by position and written at each position's slot, is the sharp check.) And the sample of decode
steps kept for the replay stays bounded and evenly spaced however long the run."""
import os
import sys

import pytest

pytest.importorskip("torch")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import engine  # noqa: E402
import workload  # noqa: E402


def test_device_inputs_generate_what_host_inputs_do():
    args = engine.parse_args(["--model", "tiny", "--device", "cpu", "--kv-gib", "0.05",
                              "--requests", "4", "--loads", "0", "--docs", "256",
                              "--miss-tokens", "128", "--suffix-tokens", "16",
                              "--output-tokens", "6", "--replay-steps", "2"])
    eng = engine.Engine(args)
    docs = workload.make_docs(args.seed, args.docs, eng.cfg.vocab)
    outs, kv = {}, {}
    for how in ("host", "device"):
        args.step_inputs = how
        specs = engine.make_specs(args, docs, 0.0, eng.cfg.vocab)
        outs[how] = {}
        eng.kv.tensor.zero_()
        m = engine.run_workload(eng, "recompute", specs, None, None, None, outputs=outs[how])
        kv[how] = eng.kv.tensor.clone()
        assert m["decode_steps"] >= args.output_tokens - 1
        assert m["step_build_free_ms"] > 0
    assert len(outs["host"]) == args.requests
    assert all(len(toks) == args.output_tokens for toks in outs["host"].values())
    assert outs["device"] == outs["host"]
    assert kv["host"].abs().sum() > 0
    assert engine.torch.equal(kv["device"], kv["host"])


def test_even_sample_is_bounded_and_evenly_spaced():
    for total in (0, 1, 5, 47, 48, 96, 97, 1000, 4097):
        s = engine.EvenSample(48)
        for i in range(total):
            s.add(i)
            assert len(s.items) < 96
        got = s.take()
        assert len(got) <= min(total, 48)
        assert len(got) >= min(total, 24)  # at least half of what was asked for
        if total:
            assert got[0] == 0
            assert len({b - a for a, b in zip(got, got[1:])}) <= 1  # evenly spaced
            assert got[-1] >= total // 2  # over the whole stream, not its start
    none = engine.EvenSample(0)
    for i in range(10):
        none.add(i)
    assert none.take() == [] and none.items == []
