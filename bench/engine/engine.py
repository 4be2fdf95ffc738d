#!/usr/bin/env python3
"""engine.py - the benchmark serving engine: the paper's comparison, on one GPU.

A small continuous-batching engine (model.py: a Llama-3-8B-shaped model with random weights
over a paged KV cache of 16-token blocks) serves a seeded workload of long shared documents
with short unique suffixes, and restores cached prefixes in one of five modes:

  recompute   no prefix cache: every prompt is prefilled from token 0
  raw         shadowd fetches bf16 chunks stored uncompressed and DMAs them (nothing to decode)
  shadow      shadowd, pinned to cores the engine does not use, fetches bits4+zstd1 chunks,
              decodes them on its cores and DMAs them into the paged cache (copy engine only)
  cpu-inline  the engine's own process fetches the same bits4+zstd1 chunks and decodes them
              on its own CPU threads, then copies them host-to-device (baselines.py)
  gpu-decode  the engine's own process fetches bits4+none chunks (bit-packed 4-bit symbols,
              no entropy stage) and dequantizes and scatters them on its GPU with torch
              kernels on a side stream (baselines.py, gpu_dequant.py)

Every mode's store traffic crosses the same emulated link: linkem (tools/linkem) between
whoever fetches and redis-server, at --links Gbit/s.

Control plane (DESIGN.md "Data flow of a prefix hit"). On arrival a request reserves its KV
blocks (contiguous where the free list allows, so each fetched frame is one copy) and, in the
fetching modes, submits an asynchronous lookup of its prompt's chunk keys; a hit submits a
fetch of the found chunks into the request's first blocks and parks the request in the
fetching set; completions come back through the data plane's completion queue, polled once
per scheduler iteration; the request then prefills only what was not fetched (a chunk that
failed is recomputed, with every chunk after it). The scheduler never waits on a fetch: each
iteration runs at most one prefill chunk (--prefill-chunk tokens, aligned to multiples of
it) and one decode step of every running request.

Metrics (one CSV row per mode, link and load; docs/results.md says how to read them):
  TTFT        first token's time minus arrival (mean, p50, p99);
  loaded TPOT the wall time of decode steps that ran while a fetch was in flight (each
              prefill chunk is waited for before the decode step, so a step is timed alone);
  tpot_nofetch the time the same steps take with no fetch in flight: after the run, loaded
              steps (up to --replay-steps, evenly spaced) are replayed with the same inputs
              and shapes while the data plane is idle; their in-run / replay ratio
              (tpot_loaded_over_nofetch in the detail CSV) divides the loaded mean (for
              recompute, which has no loaded steps: its mean step time). As a control, steps that ran with no fetch in
              flight are replayed too: their in-run / replay ratio (replay_control in the
              detail CSV) is what replaying alone changes, and the loaded ratio divided by
              it (tpot_loaded_over_nofetch_adj) is what the fetches cost. Where a step's
              time goes: the detail CSV has the host time building its inputs
              (step_build_*; --step-inputs host copies the token and position lists to the
              GPU each step, pageable and synchronous, as simple engines do; device keeps
              them on the GPU from the last step), the host time issuing its kernels
              (step_launch_*: until the model and the argmax return, before waiting for
              their result), and the in-run / replay ratio of its GPU time (CUDA events
              around the model and the argmax, which also counts the GPU waiting for
              launches: step_gpu_loaded_over_replay, and step_gpu_control for the steps with
              no fetch in flight);
  throughput  requests (and output tokens) per second from the first arrival to the last
              completion; wire bytes (chunk bytes read from the store); CPU seconds of the
              engine process and of shadowd over the run.

KV that random weights compute compresses unlike real KV, so the store is filled (fill.py)
with chunks encoded from the real KV dumps of ../shared/data/kv, tiled to the model's
geometry: bytes on the wire and decode work are those of real data. The correctness run
(--check) instead saves the engine's own prefill KV through shadowd and compares outputs.
"""
import argparse
import collections
import csv
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "bindings", "python"))

from model import CONFIGS, Llama, PagedKV  # noqa: E402
import workload  # noqa: E402
from shadowserve import types as sst  # noqa: E402
from shadowserve.client import Client, HostMemory  # noqa: E402

CSV_HEADER = ["mode", "link_gbps", "load_rps", "ttft_mean_s", "ttft_p50_s", "ttft_p99_s",
              "tpot_loaded_mean_ms", "tpot_loaded_p99_ms", "tpot_nofetch_mean_ms",
              "throughput_rps", "wire_bytes", "engine_cpu_s", "dataplane_cpu_s"]
DETAIL_HEADER = ["mode", "link_gbps", "load_rps", "requests", "hits", "chunks_fetched",
                 "chunks_failed", "throughput_tok_s", "makespan_s", "decode_steps",
                 "loaded_steps", "tpot_all_mean_ms", "tpot_nofetch_observed_mean_ms",
                 "tpot_loaded_over_nofetch", "replay_control", "tpot_loaded_over_nofetch_adj",
                 "ttft_hit_mean_s", "ttft_miss_mean_s", "step_build_loaded_ms",
                 "step_build_free_ms", "step_launch_loaded_ms", "step_launch_free_ms",
                 "step_gpu_loaded_over_replay", "step_gpu_control"]
MODEL_ID = "shadowserve-bench/"

# Which store db and scheme each fetching mode reads (fill.py writes them).
MODE_STORE = {
    "shadow": (0, "bits4+zstd1"),
    "cpu-inline": (0, "bits4+zstd1"),
    "raw": (1, "bf16+none"),
    "gpu-decode": (2, "bits4+none"),
}
ALL_MODES = ["recompute", "raw", "gpu-decode", "cpu-inline", "shadow"]


def log(*a):
    print("engine:", *a, file=sys.stderr, flush=True)


def cpu_list(text):
    out = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


# ------------------------------------------------------------------------------------------
# Helper processes: linkem and shadowd
# ------------------------------------------------------------------------------------------

class Proc:
    """A child process that prints one ready line on stdout; stopped with SIGTERM."""

    def __init__(self, argv, ready_prefix, timeout_s=60.0):
        self.argv = argv
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                   signal.SIG_IGN))
        deadline = time.monotonic() + timeout_s
        self.ready = None
        while time.monotonic() < deadline:
            line = self.p.stdout.readline()
            if not line:
                break
            if line.startswith(ready_prefix):
                self.ready = line.strip()
                break
        if self.ready is None:
            self.stop()
            raise RuntimeError("%s did not get ready" % argv[0])

    def field(self, name):
        for tok in self.ready.split():
            if tok.startswith(name + "="):
                return tok[len(name) + 1:]
        return None

    def cpu_s(self):
        try:
            with open("/proc/%d/stat" % self.p.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            return 0.0

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def start_linkem(args, gbps):
    argv = [args.linkem, "--listen", "127.0.0.1:0", "--connect",
            "127.0.0.1:%d" % args.redis_port, "--rate-gbps", str(gbps),
            "--delay-ms", str(args.link_delay_ms)]
    if args.cpus_link:
        argv += ["--cpus", args.cpus_link]
    p = Proc(argv, "linkem: ready")
    return p, int(p.field("listen").rsplit(":", 1)[1])


def start_shadowd(args, store_url, sock, save_scheme=None):
    argv = [args.shadowd, "--store", store_url, "--listen", "unix:" + sock,
            "--pool", str(args.shadowd_pool_mib), "--rx-size", args.shadowd_rx,
            "--stage-size", args.shadowd_stage, "--fetch-threads", str(args.fetch_threads),
            "--decode-threads", str(args.decode_threads),
            "--copy-threads", str(args.copy_threads)]
    if args.cpus_shadowd:
        argv += ["--cpus", args.cpus_shadowd]
    if save_scheme:
        argv += ["--save-scheme", save_scheme]
    return Proc(argv, "shadowd: ready")


# ------------------------------------------------------------------------------------------
# KV memory and blocks
# ------------------------------------------------------------------------------------------

class BlockAllocator:
    """First-fit over a free map: a contiguous run when one is free, else any blocks."""

    def __init__(self, n_blocks):
        self.free = np.ones(n_blocks, dtype=bool)
        self.n_free = n_blocks

    def alloc(self, n):
        if n > self.n_free:
            return None
        edges = np.diff(np.concatenate(([0], self.free.view(np.int8), [0])))
        starts = np.flatnonzero(edges == 1)
        lens = np.flatnonzero(edges == -1) - starts
        fit = np.flatnonzero(lens >= n)
        if fit.size:
            ids = np.arange(starts[fit[0]], starts[fit[0]] + n)
        else:
            ids = np.flatnonzero(self.free)[:n]
        self.free[ids] = False
        self.n_free -= n
        return ids.astype(np.int64)

    def release(self, ids):
        self.free[ids] = True
        self.n_free += len(ids)


class Engine:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.cfg = CONFIGS[args.model]
        c = self.cfg
        self.geom = sst.geometry(c.n_layers, c.n_kv_heads, c.head_dim,
                                 block_tokens=args.block_tokens,
                                 chunk_tokens=args.chunk_tokens)
        self.model_id = MODEL_ID + c.name
        token_nbytes = 2 * c.n_layers * c.n_kv_heads * c.head_dim * 2
        self.n_blocks = int(args.kv_gib * 2**30 // (token_nbytes * args.block_tokens))
        self.hostmem = None
        shape = (c.n_layers, 2, self.n_blocks, args.block_tokens, c.n_kv_heads, c.head_dim)
        tensor = None
        if self.device.type != "cuda":
            # Host KV (CPU smoke runs): the cache lives in a sealed memfd shadowd can map.
            self.hostmem = HostMemory(int(np.prod(shape)) * 2)
            tensor = torch.frombuffer(self.hostmem.array(), dtype=torch.bfloat16).view(shape)
        self.kv = PagedKV(c, self.n_blocks, args.block_tokens, self.device, tensor=tensor)
        t0 = time.perf_counter()
        self.model = Llama(c, self.device, seed=args.seed)
        self.sync()
        log("model %s on %s: weights in %.1f s; KV cache %d blocks (%.1f GiB)" %
            (c.name, self.device, time.perf_counter() - t0, self.n_blocks,
             self.n_blocks * args.block_tokens * token_nbytes / 2**30))

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def memory_for_register(self):
        return self.kv.tensor if self.hostmem is None else self.hostmem


# ------------------------------------------------------------------------------------------
# Data planes: how a mode looks up and fetches
# ------------------------------------------------------------------------------------------

class ShadowPlane:
    """Lookups (every fetching mode) and, for raw/shadow, fetches through shadowd."""

    def __init__(self, eng, sock):
        self.eng = eng
        self.client = Client("unix:" + sock, max_inflight=256, name="bench-engine")
        self.region = self.client.register_kv(eng.memory_for_register(), eng.geom,
                                              sst.LAYOUT_NHD)
        self.ns = self.client.namespace(self.region, eng.model_id)
        self.wire_bytes = 0

    def keys(self, tokens):
        return self.client.chunk_keys(self.region, self.ns, tokens)

    def lookup(self, req):
        self.client.lookup(keys=req.keys, user=("lookup", req.id))

    def fetch(self, req, n_chunks, block_ids):
        self.client.fetch(self.region, block_ids, keys=req.keys[:n_chunks],
                          deadline_s=self.eng.args.fetch_deadline_s, user=("fetch", req.id))

    def poll(self):
        out = []
        for c in self.client.poll(256):
            kind, rid = c.user
            if kind == "lookup":
                out.append(("lookup", rid, c.n_found if c.status == 0 else 0))
            else:
                self.wire_bytes += c.bytes_in
                st = list(c.chunk_status) if c.chunk_status is not None else []
                if c.status != 0:
                    st = [sst.CHUNK_ERROR] * c.n_chunks
                out.append(("fetch", rid, st))
        return out

    def wait(self, timeout_s):
        self.client.wait(max(0, int(timeout_s * 1000)))

    def close(self):
        self.client.close()


class InlinePlane:
    """cpu-inline / gpu-decode: fetches in the engine's own process (baselines.py)."""

    def __init__(self, eng, mode, port, db):
        from baselines import InlineFetcher
        self.fetcher = InlineFetcher(mode, "127.0.0.1", port, db, "shadow:v1", eng.geom,
                                     eng.kv.tensor, n_threads=eng.args.inline_threads,
                                     device=eng.args.device)

    @property
    def wire_bytes(self):
        return self.fetcher.wire_bytes

    def fetch(self, req, n_chunks, block_ids):
        self.fetcher.submit(req.id, req.keys[:n_chunks], list(block_ids),
                            deadline_s=None)

    def poll(self):
        out = [("fetch", rid, list(st)) for rid, st, _ in self.fetcher.poll()]
        return out

    def close(self):
        self.fetcher.close()


# ------------------------------------------------------------------------------------------
# One run: a workload through one mode
# ------------------------------------------------------------------------------------------

class Req:
    """A request; where it stands is the queue or set that holds it (pending, waiting for
    blocks, lookup or fetch in flight, prefill queue, decoding)."""

    def __init__(self, rid, spec, n_out):
        self.id = rid
        self.prompt = spec["prompt"]
        self.arrival = spec["arrival"]
        self.n_out = n_out
        self.keys = spec.get("keys")
        self.blocks = None
        self.slots = None
        self.tokens = None
        self.computed = 0
        self.hit_chunks = 0
        self.ok_chunks = 0
        self.t_first = None
        self.t_done = None
        self.out = []
        self.tok_dev = None  # --step-inputs device: last token and position, on the GPU
        self.pos_dev = None


class GpuTimer:
    """GPU time between start() and stop() on the current stream (CUDA events); NaN on a
    CPU device. seconds() may be read once the stream has passed stop()."""

    def __init__(self, device):
        device = torch.device(device)
        self.ev = ((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                   if device.type == "cuda" else None)
        self.stream = torch.cuda.current_stream(device) if self.ev else None

    def start(self):
        if self.ev:
            self.ev[0].record(self.stream)

    def stop(self):
        if self.ev:
            self.ev[1].record(self.stream)

    def seconds(self):
        if not self.ev:
            return float("nan")
        self.ev[1].synchronize()
        return 1e-3 * self.ev[0].elapsed_time(self.ev[1])


# One decode step as run: wall seconds, batch size, padded context tokens, whether a fetch was
# in flight, host seconds building its inputs, GPU seconds (CUDA events), host seconds issuing
# its kernels.
Step = collections.namedtuple("Step", "seconds batch ctx_tokens loaded build_s gpu_s launch_s")


class EvenSample:
    """An evenly spaced sample of a stream of unknown length, in bounded memory: keeps every
    stride-th item, and when 2n are kept drops every other one and doubles the stride.
    take() returns at most n of them, evenly spaced."""

    def __init__(self, n):
        self.n, self.stride, self.seen, self.items = n, 1, 0, []

    def add(self, item):
        if self.n > 0 and self.seen % self.stride == 0:
            self.items.append(item)
            if len(self.items) >= 2 * self.n:
                self.items = self.items[::2]
                self.stride *= 2
        self.seen += 1

    def take(self):
        return self.items[::max(1, -(-len(self.items) // self.n))] if self.n > 0 else []

    def clear(self):
        self.items = []


def mean_or_nan(xs):
    return float(np.mean(xs)) if len(xs) else float("nan")


def ratio_of_means(pairs, i, j):
    """mean(p[i]) / mean(p[j]) over pairs, NaN when there are none."""
    return (mean_or_nan([p[i] for p in pairs]) / mean_or_nan([p[j] for p in pairs])
            if pairs else float("nan"))


def percentile(xs, q):
    return float(np.percentile(np.asarray(xs), q)) if len(xs) else float("nan")


def run_workload(eng, mode, specs, plane, lookups, dp_proc, outputs=None):
    """Serve `specs` (dicts with prompt, doc, arrival, keys) in `mode`; return metrics. With a
    dict `outputs`, also put each request's generated tokens there by request id."""
    a = eng.args
    bt, ct = a.block_tokens, a.chunk_tokens
    bpc = ct // bt
    alloc = BlockAllocator(eng.n_blocks)
    reqs = [Req(i, s, a.output_tokens) for i, s in enumerate(specs)]
    by_id = {r.id: r for r in reqs}
    pending = collections.deque(sorted(reqs, key=lambda r: r.arrival))
    waiting_blocks = collections.deque()
    prefill_q = collections.deque()
    decoding = []
    n_fetching = 0
    n_done = 0
    steps = []  # Step of every decode step
    # Decode steps to time again after the run, by whether a fetch was in flight: an evenly
    # spaced sample of (seconds, inputs, GPU s), bounded whatever the run's length.
    replay = {True: EvenSample(a.replay_steps), False: EvenSample(a.replay_steps)}
    wire0 = plane.wire_bytes if plane else 0
    chunks_failed = 0
    fetching_modes = mode != "recompute"
    on_device = a.step_inputs == "device"
    timer = GpuTimer(eng.device)

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    dp0 = dp_proc.cpu_s() if dp_proc else 0.0
    eng.sync()
    t0 = time.perf_counter()

    def now():
        return time.perf_counter() - t0

    def admit(r):
        need = -(-(len(r.prompt) + r.n_out) // bt)
        ids = alloc.alloc(need)
        if ids is None:
            return False
        r.blocks = ids
        r.slots = eng.kv.slots(ids)
        r.tokens = torch.as_tensor(r.prompt.astype(np.int64), device=eng.device)
        if fetching_modes and r.keys:
            lookups.lookup(r)
        else:
            prefill_q.append(r)
        return True

    while n_done < len(reqs):
        t = now()
        while pending and pending[0].arrival <= t:
            waiting_blocks.append(pending.popleft())
        while waiting_blocks and admit(waiting_blocks[0]):
            waiting_blocks.popleft()

        # Completions of lookups and fetches: never waited for, only collected.
        events = []
        if lookups is not None:
            events += lookups.poll()
        if plane is not None and plane is not lookups:
            events += plane.poll()
        for kind, rid, val in events:
            r = by_id[rid]
            if kind == "lookup":
                n = min(val, len(r.keys))
                if n > 0:
                    r.hit_chunks = n
                    n_fetching += 1
                    plane.fetch(r, n, r.blocks[:n * bpc])
                else:
                    prefill_q.append(r)
            else:
                n_fetching -= 1
                ok = 0
                for s in val:
                    if s != sst.CHUNK_OK:
                        break
                    ok += 1
                chunks_failed += len(val) - ok
                r.ok_chunks = ok
                r.computed = ok * ct
                prefill_q.append(r)

        busy = False
        if prefill_q:
            busy = True
            r = prefill_q[0]
            start = r.computed
            end = min(len(r.prompt), (start // a.prefill_chunk + 1) * a.prefill_chunk)
            logits = eng.model.prefill(eng.kv, r.tokens[start:end], start, r.slots)
            # Wait for the chunk, so the decode step below is timed on its own (the
            # scheduler would wait here anyway before sampling the next batch).
            eng.sync()
            r.computed = end
            if end == len(r.prompt):
                first = logits.argmax()
                r.out.append(int(first.item()))
                if on_device:
                    r.tok_dev = first
                    r.pos_dev = torch.full((), len(r.prompt), dtype=torch.int64,
                                           device=eng.device)
                r.t_first = now()
                prefill_q.popleft()
                decoding.append(r)
        if decoding:
            busy = True
            loaded = n_fetching > 0
            ts = time.perf_counter()
            B = len(decoding)
            pos = [len(r.prompt) + len(r.out) - 1 for r in decoding]
            S = max(pos) + 1
            rows = []
            for r, p in zip(decoding, pos):
                s = r.slots[:S]
                if s.shape[0] < S:
                    s = torch.nn.functional.pad(s, (0, S - s.shape[0]))
                rows.append(s)
            ctx = torch.stack(rows)
            if on_device:
                pos_t = torch.stack([r.pos_dev for r in decoding])
                toks = torch.stack([r.tok_dev for r in decoding])
            else:
                pos_t = torch.tensor(pos, dtype=torch.int64, device=eng.device)
                toks = torch.tensor([r.out[-1] for r in decoding], dtype=torch.int64,
                                    device=eng.device)
            tb = time.perf_counter()
            timer.start()
            ctx_lens = pos_t + 1
            logits = eng.model.decode(eng.kv, toks, pos_t, ctx, ctx_lens)
            nxt_t = logits.argmax(-1)
            timer.stop()
            tl = time.perf_counter()
            if on_device:  # the next step's inputs: views, no copy (timed in the step)
                for i, r in enumerate(decoding):
                    r.pos_dev, r.tok_dev = ctx_lens[i], nxt_t[i]
            nxt = nxt_t.tolist()
            t_step, t_gpu = time.perf_counter() - ts, timer.seconds()
            steps.append(Step(t_step, B, B * S, loaded, tb - ts, t_gpu, tl - tb))
            replay[loaded].add((t_step, toks, pos_t, ctx, t_gpu))
            still = []
            for r, tok in zip(decoding, nxt):
                r.out.append(tok)
                if len(r.out) >= r.n_out:
                    r.t_done = now()
                    alloc.release(r.blocks)
                    n_done += 1
                else:
                    still.append(r)
            decoding = still
        if not busy:
            # Idle: sleep until the next arrival or a completion, at most 1 ms.
            nxt_arrival = pending[0].arrival - now() if pending else 0.001
            timeout = max(0.0, min(0.001, nxt_arrival))
            if lookups is not None:
                lookups.wait(timeout)
            elif timeout > 0:
                time.sleep(timeout)

    makespan = now()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    dp1 = dp_proc.cpu_s() if dp_proc else 0.0
    # The same steps with no fetch in flight: replay decode steps with the same inputs and
    # shapes now that the data plane is idle (it rewrites the K/V of those positions with the
    # same values; every request is done). Loaded steps give tpot_nofetch; steps that ran
    # with no fetch in flight are the control: their in-run / replay ratio is what replaying
    # itself changes (caches, clocks, no prefill between steps), fetches or not. At most
    # --replay-steps of each kind, evenly spaced.
    quiet = {True: [], False: []}
    for want in (True, False):
        for t_run, toks, pos_t, ctx, gpu_run in replay[want].take():
            eng.sync()
            ts = time.perf_counter()
            timer.start()
            nxt_t = eng.model.decode(eng.kv, toks, pos_t, ctx, pos_t + 1).argmax(-1)
            timer.stop()
            nxt_t.tolist()
            quiet[want].append((t_run, time.perf_counter() - ts, gpu_run, timer.seconds()))
    for sample in replay.values():
        sample.clear()
    if outputs is not None:
        outputs.update({r.id: list(r.out) for r in reqs})
    return summarize(mode, reqs, steps, quiet, makespan,
                     (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
                     dp1 - dp0, (plane.wire_bytes - wire0) if plane else 0, chunks_failed)


def summarize(mode, reqs, steps, quiet, makespan, engine_cpu, dp_cpu, wire, chunks_failed):
    ttft = [r.t_first - r.arrival for r in reqs]
    hit = [r.t_first - r.arrival for r in reqs if r.hit_chunks > 0]
    miss = [r.t_first - r.arrival for r in reqs if r.hit_chunks == 0]
    loaded = [st for st in steps if st.loaded]
    free = [st.seconds for st in steps if not st.loaded]
    loaded_ms = [1e3 * st.seconds for st in loaded]
    if quiet[True]:
        # The paired ratio over the replayed loaded steps (in-run mean / replay mean of the
        # same steps) scales the mean of all loaded steps to their no-fetch time.
        loaded_ratio = ratio_of_means(quiet[True], 0, 1)
        nofetch_ms = mean_or_nan(loaded_ms) / loaded_ratio
    else:
        nofetch_ms = 1e3 * mean_or_nan(free)
        loaded_ratio = float("nan")
    control = ratio_of_means(quiet[False], 0, 1)
    first = min(r.arrival for r in reqs)
    span = max(r.t_done for r in reqs) - first
    out_tokens = sum(len(r.out) for r in reqs)
    m = dict(
        mode=mode, ttft_mean_s=float(np.mean(ttft)), ttft_p50_s=percentile(ttft, 50),
        ttft_p99_s=percentile(ttft, 99),
        tpot_loaded_mean_ms=mean_or_nan(loaded_ms),
        tpot_loaded_p99_ms=percentile(loaded_ms, 99),
        tpot_nofetch_mean_ms=nofetch_ms, throughput_rps=len(reqs) / span,
        wire_bytes=int(wire), engine_cpu_s=engine_cpu, dataplane_cpu_s=dp_cpu,
        requests=len(reqs), hits=sum(1 for r in reqs if r.hit_chunks > 0),
        chunks_fetched=sum(r.ok_chunks for r in reqs), chunks_failed=chunks_failed,
        throughput_tok_s=out_tokens / span, makespan_s=makespan, decode_steps=len(steps),
        loaded_steps=len(loaded),
        tpot_all_mean_ms=1e3 * float(np.mean([st.seconds for st in steps])) if steps else 0.0,
        tpot_nofetch_observed_mean_ms=1e3 * mean_or_nan(free),
        ttft_hit_mean_s=mean_or_nan(hit), ttft_miss_mean_s=mean_or_nan(miss))
    # Where a loaded step's time went: building its inputs on the host (with --step-inputs
    # host, two pageable host-to-device copies), issuing the model's kernels (host time until
    # model.decode and the argmax return, before the wait for their result), and its GPU time
    # (CUDA events around the model and the argmax) in the run and in the replay of the same
    # steps.
    for kind, want in (("loaded", True), ("free", False)):
        these = [st for st in steps if st.loaded == want]
        m["step_build_%s_ms" % kind] = 1e3 * mean_or_nan([st.build_s for st in these])
        m["step_launch_%s_ms" % kind] = 1e3 * mean_or_nan([st.launch_s for st in these])
    m["step_gpu_loaded_over_replay"] = ratio_of_means(quiet[True], 2, 3)
    m["step_gpu_control"] = ratio_of_means(quiet[False], 2, 3)
    m["tpot_loaded_over_nofetch"] = loaded_ratio
    m["replay_control"] = control
    m["tpot_loaded_over_nofetch_adj"] = loaded_ratio / control
    return m


# ------------------------------------------------------------------------------------------
# The workload
# ------------------------------------------------------------------------------------------

def make_specs(args, docs, load, vocab):
    """Poisson arrivals at `load` requests/s (0: all at t=0); a request is a shared document
    (probability --hit-ratio) or a fresh one of --miss-tokens, then a unique suffix."""
    rng = np.random.default_rng([args.seed, int(load * 1000)])
    specs = []
    t = 0.0
    for i in range(args.requests):
        if rng.random() < args.hit_ratio:
            d = int(rng.integers(len(docs)))
            doc = docs[d]
        else:
            d = -1
            doc = rng.integers(3, vocab, size=args.miss_tokens, dtype=np.uint32)
        suffix = rng.integers(3, vocab, size=args.suffix_tokens, dtype=np.uint32)
        specs.append(dict(prompt=np.concatenate([doc, suffix]), doc=d, arrival=t))
        if load > 0:
            t += float(rng.exponential(1.0 / load))
    return specs


def attach_keys(specs, keyfn, chunk_tokens):
    """Chunk keys of each prompt's full chunks, leaving at least one token to prefill."""
    cache = {}
    for s in specs:
        n = (len(s["prompt"]) - 1) // chunk_tokens
        tok = s["prompt"][:n * chunk_tokens]
        ck = (s["doc"], n) if s["doc"] >= 0 else None
        if ck is not None and ck in cache:
            s["keys"] = cache[ck]
            continue
        s["keys"] = keyfn(tok) if n > 0 else []
        if ck is not None:
            cache[ck] = s["keys"]


# ------------------------------------------------------------------------------------------
# Main: fill, then every (load, link, mode)
# ------------------------------------------------------------------------------------------

def fill_store(args, eng, docs):
    import fill
    for db, scheme in sorted(set(MODE_STORE[m] for m in args.modes if m in MODE_STORE)):
        t0 = time.perf_counter()
        r = fill.fill("127.0.0.1", args.redis_port, db, eng.geom, scheme, docs, eng.model_id,
                      args.kv_dir, threads=args.fill_threads)
        log("fill db %d %s: %d chunks, %.2f GiB bf16 -> %.3f GiB stored (%.2fx) in %.1f s" %
            (db, scheme, r["n_chunks"], r["bf16_bytes"] / 2**30, r["stored_bytes"] / 2**30,
             r["bf16_bytes"] / max(1, r["stored_bytes"]), time.perf_counter() - t0))


def main_bench(args):
    eng = Engine(args)
    docs = workload.make_docs(args.seed, args.docs, eng.cfg.vocab)
    if args.fill:
        fill_store(args, eng, docs)
    rows = []
    tmp = tempfile.mkdtemp(prefix="engine-")
    for load in args.loads:
        for link in args.links:
            linkem, port = (None, None)
            if any(m != "recompute" for m in args.modes):
                linkem, port = start_linkem(args, link)
            try:
                for mode in args.modes:
                    if mode == "recompute" and link != args.links[0]:
                        continue  # recompute does not use the link: one run per load
                    m = run_mode(args, eng, docs, mode, load, port, tmp)
                    m["link_gbps"] = link if mode != "recompute" else 0
                    m["load_rps"] = load
                    log(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                    for k, v in m.items()}))
                    rows.append(m)
                    # After every run, so a run cut short still leaves its rows.
                    write_csv(args.csv, CSV_HEADER, rows)
                    write_csv(args.detail_csv, DETAIL_HEADER, rows)
            finally:
                if linkem:
                    linkem.stop()


def run_mode(args, eng, docs, mode, load, port, tmp):
    specs = make_specs(args, docs, load, eng.cfg.vocab)
    if mode == "recompute":
        return run_workload(eng, mode, specs, None, None, None)
    db, _ = MODE_STORE[mode]
    sock = os.path.join(tmp, "shadowd.sock")
    d = start_shadowd(args, "redis://127.0.0.1:%d/%d?connections=%d" %
                      (port, db, args.store_connections), sock)
    lookups = plane = None
    try:
        lookups = ShadowPlane(eng, sock)
        attach_keys(specs, lookups.keys, args.chunk_tokens)
        plane = lookups if mode in ("raw", "shadow") else InlinePlane(eng, mode, port, db)
        return run_workload(eng, mode, specs, plane, lookups, d)
    finally:
        if plane is not None and plane is not lookups:
            plane.close()
        if lookups is not None:
            lookups.close()
        d.stop()


def write_csv(path, header, rows):
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for m in rows:
            w.writerow([("%.6g" % m[k]) if isinstance(m[k], float) else m[k] for k in header])


# ------------------------------------------------------------------------------------------
# Correctness: the engine's own KV through shadowd, against recompute
# ------------------------------------------------------------------------------------------

def generate(eng, prompt, blocks, n_out, restored_tokens=0, force=None):
    """Prefill prompt (from restored_tokens on) into blocks, then greedy-decode n_out tokens
    one sequence at a time; with `force`, feed those tokens instead of the argmax (teacher
    forcing). Returns (tokens, logits [n_out, vocab] on the CPU)."""
    a = eng.args
    slots = eng.kv.slots(blocks)
    toks = torch.as_tensor(prompt.astype(np.int64), device=eng.device)
    pos = restored_tokens
    while pos < len(prompt):
        end = min(len(prompt), (pos // a.prefill_chunk + 1) * a.prefill_chunk)
        logits = eng.model.prefill(eng.kv, toks[pos:end], pos, slots)
        pos = end
    out, all_logits = [], [logits.cpu()]
    tok = int(logits.argmax().item()) if force is None else int(force[0])
    out.append(tok)
    for i in range(1, n_out):
        p = len(prompt) + i - 1
        t = torch.tensor([tok], dtype=torch.int64, device=eng.device)
        pt = torch.tensor([p], dtype=torch.int64, device=eng.device)
        lg = eng.model.decode(eng.kv, t, pt, slots[None, :p + 1], pt + 1)[0]
        all_logits.append(lg.cpu())
        tok = int(lg.argmax().item()) if force is None else int(force[i])
        out.append(tok)
    return out, torch.stack(all_logits)


def main_check(args):
    eng = Engine(args)
    bt, ct = args.block_tokens, args.chunk_tokens
    rng = np.random.default_rng(args.seed)
    doc = rng.integers(3, eng.cfg.vocab, size=args.check_doc_tokens, dtype=np.uint32)
    suffix = rng.integers(3, eng.cfg.vocab, size=args.suffix_tokens, dtype=np.uint32)
    prompt = np.concatenate([doc, suffix])
    n_blk = -(-(len(prompt) + args.check_tokens) // bt)
    blocks_a = np.arange(0, n_blk, dtype=np.uint32)
    blocks_b = np.arange(n_blk, 2 * n_blk, dtype=np.uint32)
    ref_tokens, ref_logits = generate(eng, prompt, blocks_a, args.check_tokens)
    doc_blocks = len(doc) // bt
    rows = []
    # Control: recompute again into other blocks. Token identity below is only meaningful if
    # this reproduces the reference exactly (deterministic kernels, see main()).
    again, again_logits = generate(eng, prompt, blocks_b, args.check_tokens)
    rows.append(dict(scheme="recompute-again", fetched_ok=True, kv_bit_exact=True,
                     greedy_identical=again == ref_tokens,
                     first_divergence=next((i for i, (x, y) in enumerate(zip(again, ref_tokens))
                                            if x != y), -1),
                     teacher_forced_agreement=float(
                         (again_logits.argmax(-1) == ref_logits.argmax(-1)).double().mean()),
                     kl_mean=0.0, kl_max=0.0,
                     logits_max_abs_diff=float((again_logits - ref_logits).abs().max()),
                     wire_bytes=0, ratio=float("nan")))
    log(json.dumps(rows[0]))
    tmp = tempfile.mkdtemp(prefix="engine-check-")
    for scheme in args.check_schemes:
        sock = os.path.join(tmp, "shadowd.sock")
        d = start_shadowd(args, "mem://check?capacity=%dMiB" % args.check_store_mib, sock,
                          save_scheme=scheme)
        try:
            # blocks_a hold the reference's document KV (decode steps write only later
            # blocks); blocks_b are zeroed so that only the fetch can fill them.
            eng.kv.tensor[:, :, torch.as_tensor(blocks_b.astype(np.int64))] = 0
            eng.sync()
            with Client("unix:" + sock, name="bench-engine-check") as cl:
                reg = cl.register_kv(eng.memory_for_register(), eng.geom, sst.LAYOUT_NHD)
                ns = cl.namespace(reg, eng.model_id)
                cl.save(reg, blocks_a[:doc_blocks], tokens=doc, ns=ns)
                sv = wait_one(cl)
                cl.fetch(reg, blocks_b[:doc_blocks], tokens=doc, ns=ns, deadline_s=60)
                fc = wait_one(cl)
                wire = fc.bytes_in
            ok = fc.status == 0 and fc.n_ok == len(doc) // ct and sv.n_ok == len(doc) // ct
            same_kv = bool(torch.equal(
                eng.kv.tensor[:, :, torch.as_tensor(blocks_a[:doc_blocks].astype(np.int64))],
                eng.kv.tensor[:, :, torch.as_tensor(blocks_b[:doc_blocks].astype(np.int64))]))
            free_tokens, _ = generate(eng, prompt, blocks_b, args.check_tokens,
                                      restored_tokens=len(doc))
            _, forced_logits = generate(eng, prompt, blocks_b, args.check_tokens,
                                        restored_tokens=len(doc), force=ref_tokens)
            lp_ref = torch.log_softmax(ref_logits.double(), -1)
            lp = torch.log_softmax(forced_logits.double(), -1)
            kl = (lp_ref.exp() * (lp_ref - lp)).sum(-1)
            agree = float((forced_logits.argmax(-1) == ref_logits.argmax(-1)).double().mean())
            row = dict(scheme=scheme, fetched_ok=ok, kv_bit_exact=same_kv,
                       greedy_identical=free_tokens == ref_tokens,
                       first_divergence=next((i for i, (x, y) in
                                              enumerate(zip(free_tokens, ref_tokens))
                                              if x != y), -1),
                       teacher_forced_agreement=agree, kl_mean=float(kl.mean()),
                       kl_max=float(kl.max()), logits_max_abs_diff=float(
                           (forced_logits - ref_logits).abs().max()),
                       wire_bytes=int(wire),
                       ratio=len(doc) * eng.cfg.n_layers * 2 * eng.cfg.n_kv_heads *
                       eng.cfg.head_dim * 2 / max(1, wire))
            log(json.dumps(row))
            rows.append(row)
        finally:
            d.stop()
    if args.check_csv:
        write_csv(args.check_csv, list(rows[0].keys()), rows)
    lossless = [r for r in rows if r["scheme"].startswith("bf16") or
                r["scheme"] == "recompute-again"]
    if any(not (r["fetched_ok"] and r["greedy_identical"] and r["kv_bit_exact"])
           for r in lossless):
        log("FAIL: a lossless scheme did not reproduce recompute's output")
        return 1
    return 0


def wait_one(cl, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = cl.poll(1)
        if got:
            return got[0]
        cl.wait(100)
    raise RuntimeError("no completion within %d s" % timeout_s)


# ------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    f = lambda s: [float(x) for x in s.split(",")]  # noqa: E731
    i = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    p.add_argument("--model", default="llama3-8b", choices=sorted(CONFIGS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--modes", type=lambda s: s.split(","), default=ALL_MODES)
    p.add_argument("--links", type=f, default=[5, 10, 20, 40, 100], help="Gbit/s")
    p.add_argument("--link-delay-ms", type=float, default=0.05, help="one way")
    p.add_argument("--loads", type=f, default=[1.0, 4.0], help="requests/s (0: all at once)")
    p.add_argument("--docs", type=i, default=[8192, 16384, 32768], help="shared doc tokens")
    p.add_argument("--requests", type=int, default=12)
    p.add_argument("--hit-ratio", type=float, default=0.75)
    p.add_argument("--miss-tokens", type=int, default=8192)
    p.add_argument("--suffix-tokens", type=int, default=96)
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--prefill-chunk", type=int, default=2048)
    p.add_argument("--block-tokens", type=int, default=16)
    p.add_argument("--chunk-tokens", type=int, default=256)
    p.add_argument("--kv-gib", type=float, default=40.0)
    p.add_argument("--fetch-deadline-s", type=float, default=120.0)
    p.add_argument("--step-inputs", choices=["host", "device"], default="host",
                   help="a decode step's token and position tensors: copied from host lists "
                   "each step (pageable, synchronous), or kept on the GPU from the last step")
    p.add_argument("--replay-steps", type=int, default=48,
                   help="decode steps of each kind (loaded, not) replayed after a run")
    p.add_argument("--redis-port", type=int, default=6379)
    p.add_argument("--fill", action="store_true", help="fill the store's dbs first")
    p.add_argument("--fill-threads", type=int, default=8)
    p.add_argument("--kv-dir", default=os.path.join(HERE, "..", "..", "..", "shared", "data",
                                                    "kv"))
    p.add_argument("--linkem", default="linkem")
    p.add_argument("--shadowd", default="shadowd")
    p.add_argument("--shadowd-pool-mib", type=int, default=2048)
    p.add_argument("--shadowd-rx", default="40MiB")
    # A Llama-3-8B chunk of 256 tokens decodes to 32 MiB; its copy plan takes a few KiB more.
    p.add_argument("--shadowd-stage", default="33MiB")
    p.add_argument("--fetch-threads", type=int, default=2)
    p.add_argument("--store-connections", type=int, default=1,
                   help="Redis connections per shadowd fetch thread (linkem needs >= 4 in "
                        "all for 100 Gbit/s)")
    p.add_argument("--decode-threads", type=int, default=6)
    p.add_argument("--copy-threads", type=int, default=1,
                   help="shadowd threads issuing GPU copies (about 1 us of CPU per copy)")
    p.add_argument("--inline-threads", type=int, default=4)
    p.add_argument("--cpus-engine", default=None, help="e.g. 0-7")
    p.add_argument("--cpus-shadowd", default=None, help="e.g. 8-13")
    p.add_argument("--cpus-link", default=None, help="e.g. 15")
    p.add_argument("--csv", default=None)
    p.add_argument("--detail-csv", default=None)
    p.add_argument("--check", action="store_true", help="the correctness run instead")
    p.add_argument("--check-doc-tokens", type=int, default=4096)
    p.add_argument("--check-tokens", type=int, default=64)
    p.add_argument("--check-schemes", type=lambda s: s.split(","),
                   default=["bf16+none", "bf16planes+zstd1", "int8+zstd1", "bits4+zstd1"])
    p.add_argument("--check-store-mib", type=int, default=8192)
    p.add_argument("--check-csv", default=None)
    a = p.parse_args(argv)
    for m in a.modes:
        if m not in ALL_MODES:
            p.error("unknown mode %r" % m)
    return a


def main(argv=None):
    args = parse_args(argv)
    if args.check:
        # Token identity needs run-to-run identical kernels: cuBLAS picks deterministic
        # algorithms only with a fixed workspace (set before its first use).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if args.cpus_engine:
        os.sched_setaffinity(0, cpu_list(args.cpus_engine))
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // 2))
    cfg = {k: v for k, v in vars(args).items()}
    cfg["torch"] = torch.__version__
    cfg["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    print("engine: config " + json.dumps(cfg), flush=True)
    return main_check(args) if args.check else main_bench(args)


if __name__ == "__main__":
    sys.exit(main() or 0)
