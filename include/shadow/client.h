/*
 * client.h - the ShadowServe client API: what a serving engine's control plane links
 * (libshadow_client.so) to talk to shadowd, the data-plane daemon.
 *
 * The engine registers its paged KV memory once, then submits lookups, fetches and saves and
 * collects their completions. It never touches KV bytes and never runs the pipeline, stores or
 * codecs in its own process: shadowd does, on its own cores. The channel (docs/protocol.md)
 * is a unix socket for set-up plus shared-memory rings for requests and completions, with
 * eventfd wake-ups that are rung only when the other side said it is going to sleep, so a
 * busy engine submits and collects without a system call, a lock or an allocation per request
 * (fetch by keys; fetch by tokens also hashes them, below).
 *
 * Conventions (as in shadow.h): functions return 0 or a negative code (-errno or SHADOW_E*;
 * shadow_client_strerror() gives text); pointers must not be NULL unless said; outputs come
 * last and end in _ret, written only on success; nothing aborts the process. The types come
 * from <shadow/shadow.h> (geometry, layout, chunk keys, status codes, enum shadow_chunk_status);
 * that header's functions are NOT in libshadow_client.so, which exports only shadow_client_*
 * (the few shadow.h functions an engine needs have shadow_client_ twins below).
 *
 * Keys: fetch, save and lookup take either precomputed chunk keys or the prompt's tokens and a
 * namespace key, from which the library computes the chained SHA-256 keys on the calling
 * thread (docs/keys.md; lib/key is compiled into the client library, linking libcrypto). The
 * hashing allocates inside OpenSSL; an engine that wants none per request computes the keys
 * once (shadow_client_chunk_keys) and passes them to lookup and fetch.
 *
 * Threads. A handle may be used by two threads at once:
 *   - one submitting thread at a time: lookup, fetch, save, cancel;
 *   - one completing thread at a time: poll, wait (the same thread as the submitter or not).
 * Set-up calls (register_kv, unregister, stats) may come from any thread: they take an
 * internal mutex, held across one round trip on the control socket; submissions and
 * completions never take it (over TCP, below, they do). connect and close are not concurrent
 * with anything on the handle. Different handles are independent. All other functions
 * (options_default, now_ns, namespace, chunk_keys, layout_init, geometry_preset, strerror,
 * chunk_status_name, version) keep no state and are thread-safe.
 *
 * Daemon death. When shadowd goes away (crash, SIGKILL, shutdown), the library sees the
 * control socket hang up (wait() watches it; poll() checks it at most every 10 ms, through the
 * coarse clock, so this costs no system call per request). From then on: submissions return
 * -EPIPE; every request still in flight completes, through poll(), with status -ECONNRESET and
 * every chunk SHADOW_CHUNK_ERROR; once all are reported, poll() and wait() return -ECONNRESET;
 * set-up calls return -EPIPE or -ECONNRESET. A daemon that hangs without dying is bounded by
 * the set-up calls' call_timeout_ms (they return -ETIMEDOUT), wait()'s timeout and the
 * requests' deadlines as the daemon enforces them; the library itself never blocks without a
 * timeout.
 *
 * TCP (endpoint "tcp:HOST:PORT", a data plane on a DPU or another host): no shared memory and
 * no fd passing, so each request is a SUBMIT message (one send(2) under a mutex) and each
 * completion a COMPLETE message read from the socket; the mutex is then also taken by poll and
 * wait. Host-memory regions need a memfd and so need the unix socket; over TCP only CUDA IPC
 * regions (same host) can be registered. Lookups work on both.
 */
#ifndef SHADOW_CLIENT_H
#define SHADOW_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <shadow/shadow.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(SHADOW_BUILDING_CLIENT)
#define SHADOW_CLIENT_API __attribute__((visibility("default")))
#else
#define SHADOW_CLIENT_API
#endif

/* The library's version as "MAJOR.MINOR.PATCH" (libshadow's); static string. */
SHADOW_CLIENT_API const char *shadow_client_version(void);

/* shadow_strerror() and shadow_chunk_status_name(), for engines that link only this library. */
SHADOW_CLIENT_API const char *shadow_client_strerror(int status);
SHADOW_CLIENT_API const char *shadow_client_chunk_status_name(int status);

/* CLOCK_MONOTONIC in nanoseconds: the clock of every deadline below. */
SHADOW_CLIENT_API uint64_t shadow_client_now_ns(void);

/* shadow_geometry_preset() and shadow_layout_init() (shadow.h), for building a region. */
SHADOW_CLIENT_API int shadow_client_geometry_preset(const char *name,
						    struct shadow_kv_geometry *geom_ret);
SHADOW_CLIENT_API int shadow_client_layout_init(struct shadow_kv_layout *layout_ret,
						const struct shadow_kv_geometry *geom,
						enum shadow_layout_kind kind, uint32_t n_blocks,
						uint64_t region_offset, uint64_t region_nbytes);

/* ------------------------------------------------------------------------------------------ */
/* Connection                                                                                 */
/* ------------------------------------------------------------------------------------------ */

struct shadow_client;

struct shadow_client_options {
	size_t size;                  /* sizeof(struct shadow_client_options) */
	uint32_t max_inflight;        /* requests in flight: a power of two, 1 .. 1024
					 (default 64); the shared memory holds one arena slot
					 for each */
	uint32_t slot_nbytes;         /* arena bytes per request: keys (32 B per chunk), block
					 ids (4 B per block) and statuses (1 B per chunk);
					 multiple of 64, 4 KiB .. 16 MiB (default 128 KiB: 1300
					 chunks of 16 blocks). Slots x size <= 256 MiB */
	uint32_t connect_timeout_ms;  /* connect and hello (default 2000) */
	uint32_t call_timeout_ms;     /* each set-up call's round trip (default 10000) */
	const char *name;             /* shown in shadowd's logs and metrics; NULL: none */
};

/* Defaults for every field; size is set. */
SHADOW_CLIENT_API void shadow_client_options_default(struct shadow_client_options *opts_ret);

/*
 * Connect to shadowd at `endpoint`: "unix:PATH" (shared memory and fd passing) or
 * "tcp:HOST:PORT" (see above). `opts` may be NULL for the defaults; a caller built against an
 * older header passes its smaller `size`. Creates the shared memory and eventfds, says hello
 * (protocol version, pid) and waits for the reply within connect_timeout_ms.
 * Returns 0; -EINVAL (bad endpoint or option), -ENOENT / -ECONNREFUSED (no daemon there),
 * -ETIMEDOUT, SHADOW_EVERSION (the daemon speaks another protocol version), SHADOW_EPROTO (a
 * malformed reply), -EMFILE / -ENOMEM and other -errno, or the daemon's refusal (-EUSERS:
 * too many clients; -ESHUTDOWN: it is shutting down).
 */
SHADOW_CLIENT_API int shadow_client_connect(const char *endpoint,
					    const struct shadow_client_options *opts,
					    struct shadow_client **client_ret);

/*
 * Disconnect and free. The daemon cancels what is in flight and drops the client's regions
 * (it notices the socket closing); completions not yet polled are lost, and the statuses
 * buffers of requests in flight are not written after close returns. NULL is accepted.
 */
SHADOW_CLIENT_API void shadow_client_close(struct shadow_client *client);

/*
 * A file descriptor for an engine's own event loop (epoll/poll it for reading). It turns
 * readable when a completion may be ready after shadow_client_wait(client, 0) returned 0 (that
 * call arms the wake-up), and when the daemon goes away. Then call shadow_client_poll().
 * Valid until close.
 */
SHADOW_CLIENT_API int shadow_client_fd(const struct shadow_client *client);

/* ------------------------------------------------------------------------------------------ */
/* KV regions                                                                                 */
/* ------------------------------------------------------------------------------------------ */

enum shadow_client_mem_kind {
	SHADOW_CLIENT_MEM_HOST = 1, /* host memory in a memfd (or another sealable, mmap()able fd) */
	SHADOW_CLIENT_MEM_CUDA = 2, /* GPU memory exported with cudaIpcGetMemHandle */
};

#define SHADOW_CLIENT_CUDA_IPC_NBYTES 64u

/* What torch.cuda's storage._share_cuda_() / cudaIpcGetMemHandle give: 64 opaque bytes. */
struct shadow_client_cuda_ipc {
	uint8_t handle[SHADOW_CLIENT_CUDA_IPC_NBYTES]; /* a cudaIpcMemHandle_t */
	int32_t device;                                /* its device ordinal, as the daemon sees it */
};

struct shadow_client_memory {
	size_t size;                   /* sizeof(struct shadow_client_memory) */
	uint32_t kind;                 /* enum shadow_client_mem_kind */
	int fd;                        /* HOST: the region's fd; passed to the daemon, not kept
					  or closed here */
	uint64_t fd_offset;            /* HOST: where the region starts in it (page aligned) */
	struct shadow_client_cuda_ipc cuda; /* CUDA */
};

/*
 * Register a KV region: memory holding `layout->n_blocks` paged blocks of `geom` laid out as
 * `layout` describes (build it with shadow_client_layout_init), region_nbytes long. The daemon
 * maps (HOST) or opens (CUDA) it and validates the layout. For HOST memory the library seals
 * the fd against shrinking (F_SEAL_SHRINK: create memfds with MFD_ALLOW_SEALING), because the
 * daemon refuses a region whose file could shrink under its mapping. The region's id goes to
 * *region_id_ret; the client must not free the memory before unregistering (or closing).
 * Set-up call: any thread, one round trip.
 * Returns 0; SHADOW_EGEOMETRY (geometry or layout invalid), SHADOW_ELIMIT (too many regions,
 * or chunks larger than the daemon's receive buffers or staging areas: shadowd --rx-size and
 * --stage-size), SHADOW_ENOGPU (a CUDA region and no GPU there),
 * SHADOW_EUNSUPPORTED (a HOST region over TCP), -EPERM (the fd cannot be sealed), -EINVAL,
 * -ETIMEDOUT, -EPIPE / -ECONNRESET.
 */
SHADOW_CLIENT_API int shadow_client_register_kv(struct shadow_client *client,
						const struct shadow_kv_geometry *geom,
						const struct shadow_kv_layout *layout,
						const struct shadow_client_memory *mem,
						uint32_t *region_id_ret);

/*
 * Unregister a region: the daemon cancels the requests in flight on it (their chunks report
 * SHADOW_CHUNK_CANCELED) and returns once it no longer touches the memory. Set-up call.
 * Returns 0, -ENOENT, -ETIMEDOUT, -EPIPE / -ECONNRESET.
 */
SHADOW_CLIENT_API int shadow_client_unregister(struct shadow_client *client, uint32_t region_id);

/* ------------------------------------------------------------------------------------------ */
/* Keys                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/*
 * The namespace key of a model for a registered region's geometry (shadow_key_namespace:
 * model id, the geometry's shape, dtype and chunk size, an optional tenant salt; salt may be
 * NULL when salt_nbytes is 0). Returns 0, -ENOENT (no such region), -EINVAL (bad model id or
 * salt), -ENOMEM.
 */
SHADOW_CLIENT_API int shadow_client_namespace(struct shadow_client *client, uint32_t region_id,
					      const char *model_id, const void *salt,
					      size_t salt_nbytes, struct shadow_chunk_key *ns_ret);

/*
 * The chained keys of the full chunks of `tokens` (chunk size of the region), at most
 * max_keys, into keys_ret; *n_keys_ret the number written. Returns 0, -ENOENT, -EINVAL,
 * -ENOMEM.
 */
SHADOW_CLIENT_API int shadow_client_chunk_keys(struct shadow_client *client, uint32_t region_id,
					       const struct shadow_chunk_key *ns,
					       const uint32_t *tokens, size_t n_tokens,
					       struct shadow_chunk_key *keys_ret, size_t max_keys,
					       size_t *n_keys_ret);

/* ------------------------------------------------------------------------------------------ */
/* Requests                                                                                   */
/* ------------------------------------------------------------------------------------------ */

enum shadow_client_op {
	SHADOW_CLIENT_LOOKUP = 1,
	SHADOW_CLIENT_FETCH = 2,
	SHADOW_CLIENT_SAVE = 3,
};

/*
 * One request. Chunks are named either by keys or by tokens:
 *   keys mode    keys[0 .. n_chunks-1] are the keys of chunks first_chunk .. first_chunk +
 *                n_chunks - 1 of their sequence;
 *   tokens mode  keys == NULL: tokens[0 .. n_tokens-1] is the sequence from its first token,
 *                ns its namespace key (shadow_client_namespace); the request covers chunks
 *                first_chunk .. first_chunk + n_chunks - 1, or with n_chunks 0 every full
 *                chunk from first_chunk on. Keys are computed into the shared arena.
 * FETCH and SAVE name the blocks: chunk i (of the request) is blocks block_ids[i * bpc ..
 * (i + 1) * bpc), bpc = chunk_tokens / block_tokens of the region, so n_block_ids must be
 * n_chunks * bpc. Everything the request points to is read during the submitting call only,
 * except chunk_status, which the library writes when the completion is polled.
 */
/* A keys-mode LOOKUP may name no region (then its completion's n_tokens is 0). */
#define SHADOW_CLIENT_NO_REGION UINT32_MAX

struct shadow_client_request {
	size_t size;                         /* sizeof(struct shadow_client_request) */
	uint32_t region;                     /* a registered region: FETCH and SAVE write or read
						it, tokens mode takes its chunk size;
						SHADOW_CLIENT_NO_REGION for a keys-mode LOOKUP */
	uint32_t n_chunks;                   /* 1 .. 4096 (keys mode); tokens mode: 0 = all */
	uint32_t first_chunk;                /* chunk index of the first chunk in its sequence */
	uint32_t n_block_ids;                /* FETCH, SAVE */
	const struct shadow_chunk_key *keys; /* keys mode */
	const uint32_t *tokens;              /* tokens mode */
	size_t n_tokens;
	const struct shadow_chunk_key *ns;   /* tokens mode */
	const uint32_t *block_ids;           /* FETCH, SAVE */
	uint64_t deadline_ns;                /* absolute shadow_client_now_ns(); 0: none. Chunks
						not done by then report SHADOW_CHUNK_TIMEOUT */
	uint8_t *chunk_status;               /* FETCH, SAVE: NULL, or n_chunks bytes that receive
						each chunk's enum shadow_chunk_status when the
						completion is polled; must stay valid until then
						(or until close) */
	void *user;                          /* returned in the completion */
};

/*
 * Submit a request; on success *ticket_ret identifies it (never 0) and exactly one completion
 * will be returned by poll() for it. Submitting thread only; no system call unless the daemon
 * said it sleeps (then one eventfd write), no lock, no allocation (tokens mode: see Keys).
 *   lookup  how many consecutive chunks from first_chunk the store holds (at most 1024 are
 *           asked about); the completion's n_found and n_tokens
 *   fetch   chunks from the store into the region's blocks
 *   save    the region's blocks into the store (the daemon's --save-scheme codec)
 * Returns 0; -EAGAIN (max_inflight requests in flight: poll first), -EINVAL (malformed
 * request), -ENOENT (no such region), SHADOW_ELIMIT (the request does not fit an arena slot:
 * raise slot_nbytes), -EPIPE (the daemon is gone), -ENOMEM (tokens mode, OpenSSL).
 */
SHADOW_CLIENT_API int shadow_client_lookup(struct shadow_client *client,
					   const struct shadow_client_request *req,
					   uint64_t *ticket_ret);
SHADOW_CLIENT_API int shadow_client_fetch(struct shadow_client *client,
					  const struct shadow_client_request *req,
					  uint64_t *ticket_ret);
SHADOW_CLIENT_API int shadow_client_save(struct shadow_client *client,
					 const struct shadow_client_request *req,
					 uint64_t *ticket_ret);

/*
 * Ask the daemon to finish a request early: chunks not done yet report SHADOW_CHUNK_CANCELED
 * (its completion still comes, through poll). Submitting thread only. Returns 0; -ENOENT (not
 * in flight: unknown, or already completed); -EAGAIN (the submission ring is full of cancels:
 * poll, retry); -EPIPE.
 */
SHADOW_CLIENT_API int shadow_client_cancel(struct shadow_client *client, uint64_t ticket);

/* ------------------------------------------------------------------------------------------ */
/* Completions                                                                                */
/* ------------------------------------------------------------------------------------------ */

struct shadow_client_completion {
	uint64_t ticket;
	void *user;               /* the request's */
	uint8_t *chunk_status;    /* the request's buffer, now filled (n_chunks entries), or NULL */
	int32_t status;           /* 0; or the request failed as a whole: -EINVAL / -ENOENT (the
				     daemon refused it), -ESHUTDOWN (daemon shutting down),
				     -EBUSY (TCP: the daemon runs its maximum of requests),
				     -ECONNRESET (the daemon went away: chunks SHADOW_CHUNK_ERROR),
				     or a store error of a lookup */
	uint32_t op;              /* enum shadow_client_op */
	uint32_t n_chunks;
	uint32_t n_ok;            /* FETCH, SAVE: chunks with SHADOW_CHUNK_OK */
	uint32_t n_found;         /* LOOKUP: consecutive chunks from first_chunk in the store */
	uint32_t n_tokens;        /* LOOKUP: n_found x chunk_tokens */
	uint64_t bytes_in;        /* FETCH: container bytes read from the store */
	uint64_t bytes_out;       /* FETCH: bytes written into the region; SAVE: bytes stored */
	uint64_t daemon_ns;       /* how long the daemon held the request */
};

/*
 * Collect up to `max` completions into out[] without blocking (no system call, except a
 * hang-up check of the socket at most every 10 ms). Completing thread only. Returns how many
 * (0 if none), or -ECONNRESET once the daemon is gone and every request was reported.
 */
SHADOW_CLIENT_API int shadow_client_poll(struct shadow_client *client,
					 struct shadow_client_completion *out, int max);

/*
 * Wait until a completion can be polled (returns 1), timeout_ms passes (0), or the daemon is
 * gone and every request was reported (-ECONNRESET). timeout_ms -1 waits without limit (still
 * returning when the daemon dies); 0 does not block and arms shadow_client_fd(). Blocks on the
 * completion eventfd and the socket, and never past its timeout. Completing thread only.
 */
SHADOW_CLIENT_API int shadow_client_wait(struct shadow_client *client, int timeout_ms);

/* ------------------------------------------------------------------------------------------ */
/* Statistics                                                                                 */
/* ------------------------------------------------------------------------------------------ */

struct shadow_client_stats {
	size_t size;             /* set by the caller: sizeof(struct shadow_client_stats) */
	/* This handle (counted by the library). */
	uint64_t submitted;      /* lookups, fetches and saves accepted by submit */
	uint64_t completed;      /* completions returned by poll */
	uint64_t failed;         /* ... with status < 0 */
	uint64_t cancels;        /* cancel requests sent */
	uint64_t chunks_ok;      /* fetch/save chunks reported OK */
	uint64_t chunks_failed;  /* ... reported anything else */
	uint64_t doorbells;      /* submissions that had to wake the daemon (eventfd writes) */
	uint64_t sleeps;         /* waits that blocked in the kernel */
	uint32_t in_flight;      /* submitted, not yet returned by poll */
	uint32_t regions;        /* registered */
	/* The daemon's counters for this connection (one round trip on the socket). */
	uint32_t client_id;
	uint32_t daemon_in_flight;
	uint64_t daemon_requests;
	uint64_t daemon_rejected;
	uint64_t daemon_completed;
	uint64_t daemon_bytes_in;
	uint64_t daemon_bytes_out;
	uint64_t daemon_doorbells; /* completion wake-ups the daemon had to send */
};

/*
 * Fill *stats_ret (stats_ret->size set by the caller; older callers get the fields their size
 * covers). A set-up call: one round trip for the daemon's part. Returns 0, -EINVAL (size too
 * small), -ETIMEDOUT, -EPIPE / -ECONNRESET (the local part is still filled).
 */
SHADOW_CLIENT_API int shadow_client_stats(struct shadow_client *client,
					  struct shadow_client_stats *stats_ret);

#ifdef __cplusplus
}
#endif

#endif /* SHADOW_CLIENT_H */
