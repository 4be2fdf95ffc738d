/*
 * proto.h - the control-channel protocol between the client library (lib/client/client.c, in
 * the engine's process) and shadowd (daemons/shadowd/server.c): set-up messages on a socket,
 * and shared-memory rings for the data path. docs/protocol.md is the specification; this header
 * is its code, shared by both sides, and nothing else is (the client never links the pipeline).
 *
 * DESIGN
 *
 * Two channels per client:
 *
 *   control socket (unix SOCK_SEQPACKET, or TCP)      shared memory (a memfd, unix only)
 *   HELLO (+ memfd, 2 eventfds) / reply               +-------------------------------+
 *   REGION_ADD (+ memfd of the region) / reply        | header, ring control blocks   |
 *   REGION_REMOVE / reply, STATS / reply              | submission entries  (c -> d)  |
 *   TCP only: SUBMIT (c -> d), COMPLETE (d -> c)      | completion entries  (d -> c)  |
 *                                                     | arena: one slot per request   |
 *                                                     +-------------------------------+
 *
 * The rings are single-producer single-consumer with free-running uint32 indices: the client
 * produces submissions and consumes completions, the daemon the reverse. Each ring's consumer
 * sets its `sleeping` flag before it blocks on its eventfd and re-checks the ring (seq_cst);
 * a producer rings the eventfd only if it swaps a set flag back to 0. So neither side makes a
 * system call per request while the other is awake (io_uring's SQ_NEED_WAKEUP, both ways).
 *
 * Trust: each side treats what the other wrote into shared memory or sent on the socket as
 * untrusted. The daemon keeps its own copy of every index it owns, copies each submission
 * entry out of shared memory once before validating it, checks every arena offset and length
 * against the request's arena slot, and copies keys and block ids into its own memory before
 * the pipeline sees them (the client may rewrite the arena at any time). The memfd must be
 * sealed against shrinking (F_SEAL_SHRINK) so the daemon's mapping can never fault.
 *
 * Wire structs are little-endian, fixed-size, with explicit padding; _Static_asserts pin their
 * sizes and the host byte order. Atomics in shared memory must be lock-free (address-free) to
 * work across processes; that is asserted too.
 */
#ifndef SHADOW_CLIENT_PROTO_H
#define SHADOW_CLIENT_PROTO_H

#include <errno.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <shadow/shadow.h>

#include "core/common.h"

#define SHADOW_PROTO_MAGIC 0x57444853u /* "SHDW" as little-endian bytes */
#define SHADOW_PROTO_VERSION 1u

/* Limits both sides enforce (the daemon on untrusted input, the client on its options). */
#define SHADOW_PROTO_SLOTS_MAX 1024u                    /* requests in flight per client */
#define SHADOW_PROTO_SLOT_NBYTES_MIN 4096u
#define SHADOW_PROTO_SLOT_NBYTES_MAX (16u << 20)
#define SHADOW_PROTO_ARENA_NBYTES_MAX (UINT64_C(256) << 20)
#define SHADOW_PROTO_CHUNKS_MAX 4096u                   /* chunks in one request */
#define SHADOW_PROTO_MSG_MAX (8u << 10)                 /* largest set-up message */
#define SHADOW_PROTO_REGIONS_MAX 16u                    /* regions per client */
#define SHADOW_PROTO_NAME_MAX 32u
#define SHADOW_PROTO_CUDA_IPC_NBYTES 64u

SHADOW_STATIC_ASSERT(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
		     "the protocol's structs are little-endian images: port the encoding first");
SHADOW_STATIC_ASSERT(ATOMIC_INT_LOCK_FREE == 2,
		     "shared-memory atomics must be lock-free to work across processes");

/* ------------------------------------------------------------------------------------------ */
/* Socket messages                                                                            */
/* ------------------------------------------------------------------------------------------ */

enum shadow_proto_type {
	SHADOW_PROTO_HELLO = 1,
	SHADOW_PROTO_HELLO_REPLY = 2,
	SHADOW_PROTO_REGION_ADD = 3,
	SHADOW_PROTO_REGION_ADD_REPLY = 4,
	SHADOW_PROTO_REGION_REMOVE = 5,
	SHADOW_PROTO_REGION_REMOVE_REPLY = 6,
	SHADOW_PROTO_STATS = 7,
	SHADOW_PROTO_STATS_REPLY = 8,
	SHADOW_PROTO_SUBMIT = 9,    /* TCP only: a submission entry and its arena bytes inline */
	SHADOW_PROTO_COMPLETE = 10, /* TCP only: a completion entry and its chunk statuses */
};

/*
 * Every message starts with this header. On a unix SOCK_SEQPACKET socket one packet is one
 * message (nbytes must equal the packet's length); on TCP, nbytes frames the stream.
 */
struct shadow_proto_hdr {
	uint32_t type;   /* enum shadow_proto_type */
	uint32_t nbytes; /* the whole message, this header included */
	uint64_t seq;    /* a request's number, chosen by the client; a reply echoes it */
};
SHADOW_STATIC_ASSERT(sizeof(struct shadow_proto_hdr) == 16, "wire size");

/* HELLO flags */
#define SHADOW_PROTO_HELLO_SHM (1u << 0) /* three fds attached: shm memfd, sq and cq eventfds */

/* Client -> daemon, first message. */
struct shadow_proto_hello {
	struct shadow_proto_hdr hdr;
	uint32_t magic;       /* SHADOW_PROTO_MAGIC */
	uint32_t version;     /* SHADOW_PROTO_VERSION */
	uint32_t pid;         /* the client's, for logs and metrics (not trusted for anything) */
	uint32_t flags;       /* SHADOW_PROTO_HELLO_* */
	uint32_t n_slots;     /* requests in flight: a power of two, 1 .. SHADOW_PROTO_SLOTS_MAX */
	uint32_t reserved;
	uint64_t slot_nbytes; /* arena bytes per slot: a multiple of 64 in [MIN, MAX] */
	uint64_t shm_nbytes;  /* = shadow__proto_shm_layout(n_slots, slot_nbytes).total_nbytes */
	char name[SHADOW_PROTO_NAME_MAX]; /* free text for logs, NUL-padded */
};
SHADOW_STATIC_ASSERT(sizeof(struct shadow_proto_hello) == 88, "wire size");

/* HELLO_REPLY flags */
#define SHADOW_PROTO_DAEMON_CUDA (1u << 0) /* the daemon can open CUDA IPC regions */

struct shadow_proto_hello_reply {
	struct shadow_proto_hdr hdr;
	int32_t status;        /* 0, SHADOW_EVERSION (version names the daemon's), -EINVAL, ... */
	uint32_t version;      /* the protocol version the daemon speaks */
	uint32_t client_id;    /* the daemon's number for this connection (logs, metrics) */
	uint32_t daemon_pid;
	uint64_t daemon_now_ns; /* its CLOCK_MONOTONIC when replying (TCP: clock offset) */
	uint32_t flags;        /* SHADOW_PROTO_DAEMON_* */
	uint32_t max_chunks;   /* chunks per request the daemon accepts */
};
SHADOW_STATIC_ASSERT(sizeof(struct shadow_proto_hello_reply) == 48, "wire size");

enum shadow_proto_mem {
	SHADOW_PROTO_MEM_HOST = 1, /* a memfd attached (unix only), sealed with F_SEAL_SHRINK */
	SHADOW_PROTO_MEM_CUDA = 2, /* a cudaIpcMemHandle_t and a device ordinal */
};

/* Client -> daemon: register a KV region. */
struct shadow_proto_region_add {
	struct shadow_proto_hdr hdr;
	struct shadow_kv_geometry geom;  /* 6 x uint32 */
	uint32_t mem_kind;               /* enum shadow_proto_mem */
	int32_t device;                  /* CUDA */
	uint32_t reserved;
	uint64_t fd_offset;              /* HOST: where the region starts in the memfd (page aligned) */
	uint8_t ipc_handle[SHADOW_PROTO_CUDA_IPC_NBYTES]; /* CUDA */
	struct shadow_kv_layout layout;  /* region_nbytes is the region's size */
};
SHADOW_STATIC_ASSERT(sizeof(struct shadow_kv_geometry) == 24, "wire size");
SHADOW_STATIC_ASSERT(sizeof(struct shadow_kv_layout) == 48 + 16 * SHADOW_MAX_LAYERS, "wire size");
SHADOW_STATIC_ASSERT(offsetof(struct shadow_proto_region_add, layout) == 128, "wire layout");
SHADOW_STATIC_ASSERT(sizeof(struct shadow_proto_region_add) == 128 + 48 + 16 * SHADOW_MAX_LAYERS,
		     "wire size");
SHADOW_STATIC_ASSERT(sizeof(struct shadow_proto_region_add) <= SHADOW_PROTO_MSG_MAX,
		     "a set-up message fits SHADOW_PROTO_MSG_MAX");

struct shadow_proto_region_add_reply {
	struct shadow_proto_hdr hdr;
	int32_t status;  /* 0, SHADOW_EGEOMETRY, SHADOW_ELIMIT, SHADOW_ENOGPU, -EINVAL, ... */
	uint32_t region; /* the client's region id (0 .. SHADOW_PROTO_REGIONS_MAX - 1) */
};
SHADOW_STATIC_ASSERT(sizeof(struct shadow_proto_region_add_reply) == 24, "wire size");

/* REGION_REMOVE: ops on the region are cancelled; the reply comes once none touches it. */
struct shadow_proto_region_remove {
	struct shadow_proto_hdr hdr;
	uint32_t region;
	uint32_t reserved;
};
SHADOW_STATIC_ASSERT(sizeof(struct shadow_proto_region_remove) == 24, "wire size");

/* The generic reply (REGION_REMOVE_REPLY). */
struct shadow_proto_reply {
	struct shadow_proto_hdr hdr;
	int32_t status;
	uint32_t reserved;
};
SHADOW_STATIC_ASSERT(sizeof(struct shadow_proto_reply) == 24, "wire size");

/* STATS is a bare header. The reply: the daemon's counters for this client. */
struct shadow_proto_stats_reply {
	struct shadow_proto_hdr hdr;
	int32_t status;
	uint32_t client_id;
	uint64_t requests;     /* submissions taken from the ring (cancels not counted) */
	uint64_t rejected;     /* ... refused without reaching the pipeline (bad arguments) */
	uint64_t completed;    /* completions posted */
	uint64_t chunks_ok;
	uint64_t chunks_failed;
	uint64_t bytes_in;     /* container bytes fetched for this client */
	uint64_t bytes_out;    /* bytes copied into its regions, or saved from them */
	uint64_t doorbells;    /* completion eventfd writes for this client */
	uint32_t in_flight;
	uint32_t regions;
};
SHADOW_STATIC_ASSERT(sizeof(struct shadow_proto_stats_reply) == 96, "wire size");

/* ------------------------------------------------------------------------------------------ */
/* Ring entries                                                                               */
/* ------------------------------------------------------------------------------------------ */

enum shadow_proto_op {
	SHADOW_PROTO_OP_LOOKUP = 1,
	SHADOW_PROTO_OP_FETCH = 2,
	SHADOW_PROTO_OP_SAVE = 3,
	SHADOW_PROTO_OP_CANCEL = 4, /* cancel the request in `slot` if its ticket is `ticket` */
};

/*
 * A submission. The request's data lives in arena slot `slot`, [slot * slot_nbytes,
 * (slot + 1) * slot_nbytes) of the arena; the offsets below are from the arena's start and
 * every range must lie inside that slot:
 *   keys      n_chunks x 32 bytes (struct shadow_chunk_key), at keys_off
 *   block ids n_block_ids x uint32, at blocks_off (4-aligned); FETCH, SAVE
 *   statuses  n_chunks bytes the daemon writes at completion, at status_off; FETCH, SAVE
 * A slot carries one request at a time: the client reuses it only after it has consumed the
 * request's completion.
 */
struct shadow_proto_sqe {
	uint64_t ticket;            /* the client's; echoed in the completion */
	uint32_t opcode;            /* enum shadow_proto_op */
	uint32_t slot;              /* < n_slots */
	uint32_t region;            /* FETCH, SAVE: a region id of this client */
	uint32_t n_chunks;          /* 1 .. max_chunks */
	uint32_t first_chunk;       /* the chunk index of keys[0] in its sequence */
	uint32_t n_block_ids;       /* FETCH, SAVE: n_chunks x blocks per chunk of the region */
	uint64_t keys_off;
	uint64_t blocks_off;
	uint64_t status_off;
	uint64_t deadline_ns;       /* absolute, the daemon's CLOCK_MONOTONIC; 0: none */
};
SHADOW_STATIC_ASSERT(sizeof(struct shadow_proto_sqe) == 64, "wire size");

/* A completion; the chunk statuses are at the request's status_off (FETCH, SAVE). */
struct shadow_proto_cqe {
	uint64_t ticket;
	uint32_t slot;
	int32_t status;             /* 0, or why the whole request failed */
	uint32_t n_chunks;          /* statuses written (0 if the request was refused) */
	uint32_t n_ok;              /* FETCH, SAVE: chunks with SHADOW_CHUNK_OK */
	uint32_t n_found;           /* LOOKUP */
	uint32_t reserved;
	uint64_t bytes_in;
	uint64_t bytes_out;
	uint64_t daemon_ns;         /* time the daemon held the request */
	uint64_t reserved2;
};
SHADOW_STATIC_ASSERT(sizeof(struct shadow_proto_cqe) == 64, "wire size");

/* TCP: SUBMIT carries the sqe, then n_chunks keys, then n_block_ids ids (offsets ignored). */
struct shadow_proto_submit {
	struct shadow_proto_hdr hdr;
	struct shadow_proto_sqe sqe;
};
SHADOW_STATIC_ASSERT(sizeof(struct shadow_proto_submit) == 80, "wire size");

/* TCP: COMPLETE carries the cqe, then cqe.n_chunks status bytes. */
struct shadow_proto_complete {
	struct shadow_proto_hdr hdr;
	struct shadow_proto_cqe cqe;
};
SHADOW_STATIC_ASSERT(sizeof(struct shadow_proto_complete) == 80, "wire size");

/* ------------------------------------------------------------------------------------------ */
/* Shared memory                                                                              */
/* ------------------------------------------------------------------------------------------ */

/*
 * A ring's control block. head is written by the producer only, tail by the consumer only,
 * sleeping by the consumer (set) and the producer (swapped back to 0 when it rings); each on
 * its own cache line.
 */
struct shadow_proto_ring {
	alignas(SHADOW_CACHE_LINE) _Atomic uint32_t head;     /* entries produced, free-running */
	alignas(SHADOW_CACHE_LINE) _Atomic uint32_t tail;     /* entries consumed */
	alignas(SHADOW_CACHE_LINE) _Atomic uint32_t sleeping; /* 1: the consumer may sleep */
};
SHADOW_STATIC_ASSERT(sizeof(struct shadow_proto_ring) == 3 * SHADOW_CACHE_LINE, "wire size");

/* Written by the client at the start of the memfd, for tools; the daemon does not rely on it. */
struct shadow_proto_shm_hdr {
	uint32_t magic;
	uint32_t version;
	uint32_t n_slots;
	uint32_t sq_entries;
	uint64_t slot_nbytes;
	uint64_t total_nbytes;
};
SHADOW_STATIC_ASSERT(sizeof(struct shadow_proto_shm_hdr) == 32, "wire size");

/*
 * Where everything is in the memfd, derived from (n_slots, slot_nbytes) alone so both sides
 * compute the same offsets:
 *
 *   0      shadow_proto_shm_hdr
 *   64     sq ring control (3 lines)
 *   256    cq ring control (3 lines)
 *   4096   sq entries: 2 x n_slots x 64   (a request and a cancel per slot at most)
 *   ...    cq entries: n_slots x 64
 *   page   arena: n_slots x slot_nbytes
 */
struct shadow__proto_shm_layout {
	uint32_t n_slots;
	uint32_t sq_entries;
	uint32_t cq_entries;
	uint64_t slot_nbytes;
	uint64_t sq_ring_off, cq_ring_off;
	uint64_t sqes_off, cqes_off;
	uint64_t arena_off, arena_nbytes;
	uint64_t total_nbytes;
};

#define SHADOW_PROTO_PAGE 4096u

/* 0 and the layout, or -EINVAL for parameters outside the limits. Any input is safe. */
static inline int shadow__proto_shm_layout(uint32_t n_slots, uint64_t slot_nbytes,
					   struct shadow__proto_shm_layout *l)
{
	if (!shadow_is_pow2(n_slots) || n_slots > SHADOW_PROTO_SLOTS_MAX ||
	    slot_nbytes < SHADOW_PROTO_SLOT_NBYTES_MIN ||
	    slot_nbytes > SHADOW_PROTO_SLOT_NBYTES_MAX || slot_nbytes % 64 != 0 ||
	    (uint64_t)n_slots * slot_nbytes > SHADOW_PROTO_ARENA_NBYTES_MAX)
		return -EINVAL;
	l->n_slots = n_slots;
	l->sq_entries = 2 * n_slots;
	l->cq_entries = n_slots;
	l->slot_nbytes = slot_nbytes;
	l->sq_ring_off = 64;
	l->cq_ring_off = 64 + sizeof(struct shadow_proto_ring);
	l->sqes_off = SHADOW_PROTO_PAGE;
	l->cqes_off = l->sqes_off + (uint64_t)l->sq_entries * sizeof(struct shadow_proto_sqe);
	l->arena_off = l->cqes_off + (uint64_t)l->cq_entries * sizeof(struct shadow_proto_cqe);
	l->arena_off = (l->arena_off + SHADOW_PROTO_PAGE - 1) & ~(uint64_t)(SHADOW_PROTO_PAGE - 1);
	l->arena_nbytes = (uint64_t)n_slots * slot_nbytes;
	l->total_nbytes = l->arena_off + l->arena_nbytes;
	return 0;
}

/*
 * Split "HOST:PORT" or "[IPv6]:PORT" (the part of a "tcp:" endpoint, or --metrics) into host
 * (NUL-terminated, into host_ret[0 .. host_nbytes)) and *port_ret (pointing into text).
 * Returns 0 or -EINVAL (no port, empty or too long host).
 */
static inline int shadow__proto_split_hostport(const char *text, char *host_ret,
					       size_t host_nbytes, const char **port_ret)
{
	const char *colon = strrchr(text, ':');
	size_t n;

	if (colon == NULL || colon == text || colon[1] == '\0')
		return -EINVAL;
	n = (size_t)(colon - text);
	if (text[0] == '[' && n >= 2 && text[n - 1] == ']') {
		text++;
		n -= 2;
	}
	if (n == 0 || n >= host_nbytes)
		return -EINVAL;
	memcpy(host_ret, text, n);
	host_ret[n] = '\0';
	*port_ret = colon + 1;
	return 0;
}

/*
 * Whether [off, off + nbytes) lies inside arena slot `slot` (slot < n_slots, checked by the
 * caller), computed without overflow. For offsets read from shared memory or a socket.
 */
static inline bool shadow__proto_in_slot(const struct shadow__proto_shm_layout *l, uint32_t slot,
					 uint64_t off, uint64_t nbytes)
{
	uint64_t lo = (uint64_t)slot * l->slot_nbytes, end;

	return off >= lo && shadow_add_u64(off, nbytes, &end) && end <= lo + l->slot_nbytes;
}

#endif /* SHADOW_CLIENT_PROTO_H */
