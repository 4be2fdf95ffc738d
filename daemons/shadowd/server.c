/*
 * server.c - shadowd's control thread: accepts clients, runs their set-up messages, turns
 * their submissions into pipeline ops and posts the completions back (docs/protocol.md).
 *
 * DESIGN
 *
 * One thread (the process's main thread, after main.c set things up) owns every client and
 * every struct here except the completion ring and the counters:
 *
 *   epoll: listen socket, client sockets, client sq eventfds, done eventfd, signalfd
 *     |
 *     +- client socket: set-up messages (HELLO, REGION_ADD/REMOVE, STATS; TCP: SUBMIT)
 *     +- each pass: every client's submission ring is drained (no doorbell needed while the
 *     |  thread is awake): entry copied out of shared memory, validated, keys and block ids
 *     |  copied into the slot's daemon-private buffer, shadow__pipeline_submit()
 *     |
 *   pipeline threads --on_done--> done ring (MPSC, lib/core/ring.h) --> this thread:
 *     statuses into the client's arena, entry onto its completion ring, doorbell if it sleeps
 *
 * Sleeping. Before epoll_wait the thread sets `ctl_sleeping` and every client's sq `sleeping`
 * flag, issues a seq_cst fence and re-checks the done ring and every submission ring; a
 * producer (pipeline thread, client) publishes, fences, and rings the eventfd only if it
 * swaps a set flag back to 0. While ops are in flight it first looks for work for up to
 * --spin-us (a completion is usually that close), so a client submitting into a busy daemon
 * makes no system call.
 *
 * Ownership. Each client has n_slots ops (struct srv_op), one per arena slot, with a private
 * buffer of slot_nbytes for the request's keys and block ids (the client can rewrite its arena
 * at any time, so the pipeline never reads shared memory) and SHADOW_PROTO_CHUNKS_MAX status
 * bytes. An op is IDLE, RUNNING (owned by the pipeline until on_done) or POSTING (done, its
 * completion waiting for room in a misbehaving client's ring). At most SHADOW__OPS_MAX ops are
 * RUNNING in all, so the pipeline never answers -EBUSY and the done ring never fills.
 *
 * Teardown. A client that hangs up, errs or breaks the protocol is closed: its socket is
 * closed at once, its RUNNING ops cancelled; once the last of them came back through the done
 * ring its regions are removed from the pipeline, its memory unmapped and freed. Frees happen
 * after the current batch of epoll events, so no event refers to freed memory.
 *
 * Untrusted input: every field of every message and submission entry is checked with an
 * always-on test before use. A malformed request is refused with a completion (-EINVAL,
 * -ENOENT); a broken protocol (bad indices, a busy slot reused, bad framing) drops the client.
 * Either is counted. Nothing a client sends can make this thread crash, block or grow memory:
 * a region is removed from the pipeline only once none of its ops is running (REGION_REMOVE
 * is answered then; a departing client's regions go once all its ops are back), so
 * shadow__pipeline_region_remove() never waits here. Connections that have not said hello
 * are capped (2 x --max-clients + 16).
 *
 * Locks: clients_mu guards the client list against the metrics thread (held here only to link
 * and unlink a client, and by the metrics thread while it formats); never on the data path.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "client/proto.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/ring.h"
#include "shadowd.h"

#define SRV_EVENTS_MAX 64
#define SRV_TX_NBYTES (64u << 10)          /* TCP: completions and replies waiting to be sent */
#define SRV_TX_REPLY_ROOM 256u             /* ... always left free for a set-up reply */
#define SRV_DRAIN_GRACE_NS (5 * SHADOW_NS_PER_SEC) /* after cancelling: then exit anyway */
#define SRV_BURST 64u

SHADOW_STATIC_ASSERT(SHADOW_PROTO_CHUNKS_MAX == SHADOW__OP_CHUNKS_MAX,
		     "the protocol's request size is the pipeline's op size");

enum ep_kind { EP_LISTEN = 1, EP_DONE, EP_SIGNAL, EP_SOCK, EP_SQ };

struct ep_tag {
	uint32_t kind;
	struct srv_client *cl;
};

enum op_state { OP_IDLE = 0, OP_RUNNING, OP_POSTING };

struct srv_op {
	struct shadow__op op;       /* first: on_done hands it back */
	struct srv_client *cl;
	uint64_t ticket;
	uint64_t status_off;        /* arena offset of the statuses (unix FETCH/SAVE), else 0 */
	uint64_t t0_ns;
	uint32_t slot;
	uint32_t opcode;
	uint32_t state;             /* enum op_state */
	uint32_t region;            /* the client's region index (FETCH, SAVE) */
	int32_t refused;            /* a refusal's status, posted without the pipeline */
	struct srv_op *next_post;
	uint8_t *buf;               /* keys, then block ids: slot_nbytes */
	uint8_t *status;            /* SHADOW_PROTO_CHUNKS_MAX bytes */
};

struct srv_region {
	bool used;
	bool removing;              /* REGION_REMOVE received: no new ops; reply when idle */
	uint32_t pl_id;             /* the pipeline's region id */
	uint32_t n_blocks;
	uint32_t bpc;
	uint32_t running;           /* FETCH/SAVE ops on it in the pipeline */
	uint64_t remove_seq;        /* the REGION_REMOVE to answer */
};

struct srv_client {
	struct shadowd_server *srv;
	struct srv_client *next, *prev;     /* srv->clients, under clients_mu */
	struct srv_client *next_dead;       /* srv->graveyard */
	struct ep_tag ep_sock, ep_sq;
	uint32_t id;
	uint32_t pid;
	char name[SHADOW_PROTO_NAME_MAX + 1]; /* sanitised for metrics labels */
	int sock;
	bool tcp;
	bool hello_done;
	bool closing;
	bool want_out;                      /* TCP: EPOLLOUT armed */
	_Atomic bool visible;               /* said hello, not closing: listed by the metrics
					       thread (release: id, pid and name before it) */
	int sq_efd, cq_efd;

	/* unix: the client's shared memory */
	uint8_t *shm;
	struct shadow__proto_shm_layout lay;
	struct shadow_proto_ring *sq, *cq;
	struct shadow_proto_sqe *sqes;
	struct shadow_proto_cqe *cqes;
	uint8_t *arena;
	uint32_t sq_tail;                   /* ours: never read back from shared memory */
	uint32_t drain_head;                /* sq head when SIGTERM came: entries before it
					       were submitted before the drain and are taken */
	uint32_t cq_head;
	bool cq_dirty;                      /* posted since the last doorbell check */

	struct srv_op *ops;                 /* n_slots */
	uint8_t *opmem;
	size_t opmem_nbytes;
	struct srv_op *post_head, *post_tail;
	uint32_t in_flight;                 /* ops RUNNING */
	struct srv_region regions[SHADOW_PROTO_REGIONS_MAX];

	/* TCP */
	uint8_t *rx, *tx;
	size_t rx_len, rx_cap, tx_off, tx_len;

	/* Counters: written here, read by the metrics thread (relaxed). */
	_Atomic uint64_t st_requests, st_rejected, st_completed, st_chunks_ok, st_chunks_failed,
		st_bytes_in, st_bytes_out, st_doorbells;
	_Atomic uint32_t st_in_flight, st_regions;
};

struct shadowd_server {
	struct shadowd_config cfg;
	struct shadow__pipeline *pl;
	char endpoint[256];
	char unix_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int listen_fd, epfd, done_efd, sig_fd;
	struct ep_tag ep_listen, ep_done, ep_signal;

	struct shadow__ring *done;          /* srv_op *, MPSC: pipeline threads -> here */
	_Atomic uint32_t ctl_sleeping;

	pthread_mutex_t clients_mu;
	struct srv_client *clients;
	struct srv_client *graveyard;
	uint32_t n_clients;                 /* that said hello */
	uint32_t n_conns;                   /* connections, said hello or not */
	uint32_t next_id;
	uint32_t in_flight;                 /* ops RUNNING, all clients */

	_Atomic bool draining;
	bool cancelled_all;
	uint64_t drain_deadline_ns;

	_Atomic uint64_t st_accepted, st_disconnects, st_protocol_errors, st_refused_clients,
		st_sq_wakeups, st_requests[4];
	_Atomic uint32_t st_clients, st_regions;
};

/* ------------------------------------------------------------------------------------------ */
/* Small helpers                                                                              */
/* ------------------------------------------------------------------------------------------ */

static void inc(_Atomic uint64_t *c, uint64_t v)
{
	atomic_fetch_add_explicit(c, v, memory_order_relaxed);
}

static int ep_add(struct shadowd_server *srv, int fd, uint32_t events, struct ep_tag *tag)
{
	struct epoll_event ev = { .events = events, .data.ptr = tag };

	return epoll_ctl(srv->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

static void ep_del(struct shadowd_server *srv, int fd)
{
	if (fd >= 0)
		(void)epoll_ctl(srv->epfd, EPOLL_CTL_DEL, fd, NULL);
}

/* Whether fd is an eventfd (the client could pass anything). */
static bool is_eventfd(int fd)
{
	char path[64], target[64];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, target, sizeof(target) - 1);
	if (n <= 0)
		return false;
	target[n] = '\0';
	return strcmp(target, "anon_inode:[eventfd]") == 0;
}

/* A regular file sealed against shrinking and at least `end` bytes long: safe to mmap. */
static int check_mappable(int fd, uint64_t end)
{
	struct stat st;
	int seals;

	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
		return -EINVAL;
	seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0 || !(seals & F_SEAL_SHRINK))
		return -EPERM;
	if (st.st_size < 0 || (uint64_t)st.st_size < end)
		return -EINVAL;
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Sending                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static void client_close(struct srv_client *cl, const char *why);

/* TCP: send what the tx buffer holds; arm EPOLLOUT if the socket is full. */
static void tcp_flush(struct srv_client *cl)
{
	while (cl->tx_off < cl->tx_len) {
		ssize_t n = send(cl->sock, cl->tx + cl->tx_off, cl->tx_len - cl->tx_off,
				 MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n > 0) {
			cl->tx_off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		client_close(cl, "send failed");
		return;
	}
	if (cl->tx_off == cl->tx_len)
		cl->tx_off = cl->tx_len = 0;
	else if (cl->tx_off > 0 && cl->tx_len - cl->tx_off < SRV_TX_NBYTES / 2) {
		memmove(cl->tx, cl->tx + cl->tx_off, cl->tx_len - cl->tx_off);
		cl->tx_len -= cl->tx_off;
		cl->tx_off = 0;
	}
	bool want = cl->tx_len > 0;
	if (want != cl->want_out) {
		struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP | (want ? EPOLLOUT : 0),
					  .data.ptr = &cl->ep_sock };
		(void)epoll_ctl(cl->srv->epfd, EPOLL_CTL_MOD, cl->sock, &ev);
		cl->want_out = want;
	}
}

/* Room in the TCP tx buffer for nbytes, keeping `reserve` free. */
static bool tcp_room(struct srv_client *cl, size_t nbytes, size_t reserve)
{
	return cl->tx_len + nbytes + reserve <= SRV_TX_NBYTES + SRV_TX_REPLY_ROOM;
}

/* A set-up reply. A client that does not read its replies is dropped. */
static void send_reply(struct srv_client *cl, const void *msg, size_t nbytes)
{
	if (cl->closing)
		return;
	if (cl->tcp) {
		if (!tcp_room(cl, nbytes, 0)) {
			client_close(cl, "does not read its replies");
			return;
		}
		memcpy(cl->tx + cl->tx_len, msg, nbytes);
		cl->tx_len += nbytes;
		tcp_flush(cl);
		return;
	}
	ssize_t n = send(cl->sock, msg, nbytes, MSG_DONTWAIT | MSG_NOSIGNAL);
	if (n != (ssize_t)nbytes)
		client_close(cl, n < 0 && errno == EAGAIN ? "does not read its replies" :
							    "send failed");
}

static void reply_status(struct srv_client *cl, uint32_t type, uint64_t seq, int status)
{
	struct shadow_proto_reply r = {
		.hdr = { .type = type, .nbytes = sizeof(r), .seq = seq },
		.status = status,
	};
	send_reply(cl, &r, sizeof(r));
}

/* ------------------------------------------------------------------------------------------ */
/* Completions                                                                                */
/* ------------------------------------------------------------------------------------------ */

/*
 * Post op's completion to its client: statuses into the arena (unix) or the message (TCP),
 * then the entry. Returns false if there is no room (the op waits on the post list).
 */
static bool post(struct srv_client *cl, struct srv_op *op)
{
	const struct shadow__op *o = &op->op;
	bool refused = op->refused != 0;
	bool statuses = !refused && op->opcode != SHADOW_PROTO_OP_LOOKUP;
	struct shadow_proto_cqe cqe = {
		.ticket = op->ticket,
		.slot = op->slot,
		.status = refused ? op->refused : o->status,
		.n_chunks = statuses ? o->n_chunks : 0,
		.n_ok = refused ? 0 : o->n_ok,
		.n_found = refused ? 0 : o->n_found,
		.bytes_in = refused ? 0 : o->bytes_in,
		.bytes_out = refused ? 0 : o->bytes_out,
		.daemon_ns = shadow__now_ns() - op->t0_ns,
	};

	if (cl->tcp) {
		size_t m = sizeof(struct shadow_proto_complete) + cqe.n_chunks;
		if (!tcp_room(cl, m, SRV_TX_REPLY_ROOM))
			return false;
		struct shadow_proto_complete msg = {
			.hdr = { .type = SHADOW_PROTO_COMPLETE, .nbytes = (uint32_t)m },
			.cqe = cqe,
		};
		memcpy(cl->tx + cl->tx_len, &msg, sizeof(msg));
		memcpy(cl->tx + cl->tx_len + sizeof(msg), op->status, cqe.n_chunks);
		cl->tx_len += m;
	} else {
		/* acquire: pairs with the client's release store of tail (done with the entry). */
		uint32_t tail = atomic_load_explicit(&cl->cq->tail, memory_order_acquire);
		uint32_t used = cl->cq_head - tail;
		if (used > cl->lay.cq_entries) {
			op->state = OP_IDLE; /* dropped with the client */
			client_close(cl, "completion ring tail out of range");
			return true;
		}
		if (used == cl->lay.cq_entries)
			return false;
		if (statuses)
			memcpy(cl->arena + op->status_off, op->status, o->n_chunks);
		cl->cqes[cl->cq_head & (cl->lay.cq_entries - 1)] = cqe;
		cl->cq_head++;
		/* release: statuses and entry before the client's acquire load of head. */
		atomic_store_explicit(&cl->cq->head, cl->cq_head, memory_order_release);
	}
	cl->cq_dirty = true;
	op->state = OP_IDLE;
	inc(&cl->st_completed, 1);
	if (op->opcode != SHADOW_PROTO_OP_LOOKUP && !refused) {
		inc(&cl->st_chunks_ok, o->n_ok);
		inc(&cl->st_chunks_failed, o->n_chunks - o->n_ok);
		inc(&cl->st_bytes_in, o->bytes_in);
		inc(&cl->st_bytes_out, o->bytes_out);
	}
	return true;
}

static void post_or_queue(struct srv_client *cl, struct srv_op *op)
{
	if (cl->post_head == NULL && post(cl, op))
		return;
	if (cl->closing)
		return;
	op->state = OP_POSTING;
	op->next_post = NULL;
	if (cl->post_tail != NULL)
		cl->post_tail->next_post = op;
	else
		cl->post_head = op;
	cl->post_tail = op;
}

/* Retry queued posts (a client whose ring was full). */
static bool post_pending(struct srv_client *cl)
{
	bool progress = false;

	while (cl->post_head != NULL && !cl->closing) {
		struct srv_op *op = cl->post_head;
		if (!post(cl, op))
			break;
		cl->post_head = op->next_post;
		if (cl->post_head == NULL)
			cl->post_tail = NULL;
		progress = true;
	}
	return progress;
}

/* After a batch of posts: wake the client if it sleeps (unix), or send (TCP). */
static void notify(struct srv_client *cl)
{
	if (!cl->cq_dirty || cl->closing)
		return;
	cl->cq_dirty = false;
	if (cl->tcp) {
		tcp_flush(cl);
		return;
	}
	/* Pairs with the client's fence between its store of `sleeping` and its head re-check. */
	atomic_thread_fence(memory_order_seq_cst);
	if (atomic_load_explicit(&cl->cq->sleeping, memory_order_relaxed) != 0 &&
	    atomic_exchange_explicit(&cl->cq->sleeping, 0, memory_order_relaxed) != 0) {
		uint64_t one = 1;
		(void)!write(cl->cq_efd, &one, sizeof(one));
		inc(&cl->st_doorbells, 1);
	}
}

/* Pipeline thread: hand the op back to the control thread. */
static void op_on_done(struct shadow__op *o)
{
	struct srv_op *op = (struct srv_op *)o;
	struct shadowd_server *srv = op->cl->srv;
	void *obj = op;

	/* At most SHADOW__OPS_MAX ops run and the ring holds that many: never full. */
	if (shadow__ring_mp_enqueue_bulk(srv->done, &obj, 1) != 1) {
		SHADOW_LOGE("shadowd: completion ring full (a bug): op lost");
		return;
	}
	/* Pairs with the fence between the control thread's store of ctl_sleeping and its
	 * re-check of the ring. */
	atomic_thread_fence(memory_order_seq_cst);
	if (atomic_load_explicit(&srv->ctl_sleeping, memory_order_relaxed) != 0 &&
	    atomic_exchange_explicit(&srv->ctl_sleeping, 0, memory_order_relaxed) != 0) {
		uint64_t one = 1;
		(void)!write(srv->done_efd, &one, sizeof(one));
	}
}

static void client_finish(struct srv_client *cl);
static void region_remove_finish(struct srv_client *cl, uint32_t idx);
static bool drain_sq(struct srv_client *cl);

/* Completions from the pipeline, to their clients. */
static bool drain_done(struct shadowd_server *srv)
{
	void *objs[SRV_BURST];
	uint32_t n;
	bool progress = false;

	while ((n = shadow__ring_sc_dequeue_burst(srv->done, objs, SRV_BURST)) > 0) {
		progress = true;
		for (uint32_t i = 0; i < n; i++) {
			struct srv_op *op = objs[i];
			struct srv_client *cl = op->cl;

			SHADOW_ASSERT(op->state == OP_RUNNING);
			cl->in_flight--;
			srv->in_flight--;
			atomic_store_explicit(&cl->st_in_flight, cl->in_flight, memory_order_relaxed);
			if (op->opcode != SHADOW_PROTO_OP_LOOKUP) {
				struct srv_region *r = &cl->regions[op->region];
				r->running--;
				if (r->removing && r->running == 0 && !cl->closing)
					region_remove_finish(cl, op->region);
			}
			if (cl->closing) {
				op->state = OP_IDLE;
				if (cl->in_flight == 0)
					client_finish(cl);
				continue;
			}
			post_or_queue(cl, op);
		}
	}
	return progress;
}

/* ------------------------------------------------------------------------------------------ */
/* Submissions                                                                                */
/* ------------------------------------------------------------------------------------------ */

static void refuse(struct srv_client *cl, struct srv_op *op, int status)
{
	op->refused = status;
	inc(&cl->st_rejected, 1);
	post_or_queue(cl, op);
}

/*
 * One submission entry, already copied out of shared memory (or out of a SUBMIT message:
 * then `payload` holds its keys and block ids, payload_nbytes of them). `late`: submitted
 * after the drain began (refused with -ESHUTDOWN). Returns 0, or SHADOW_EPROTO when the
 * entry breaks the protocol (the caller drops the client).
 */
static int take_sqe(struct srv_client *cl, const struct shadow_proto_sqe *e,
		    const uint8_t *payload, uint64_t payload_nbytes, bool late)
{
	struct shadowd_server *srv = cl->srv;

	if (e->opcode == SHADOW_PROTO_OP_CANCEL) {
		if (e->slot < cl->lay.n_slots && cl->ops[e->slot].state == OP_RUNNING &&
		    cl->ops[e->slot].ticket == e->ticket)
			shadow__pipeline_cancel(srv->pl, &cl->ops[e->slot].op);
		return 0; /* a cancel of something already done is not an error */
	}
	if (e->opcode < SHADOW_PROTO_OP_LOOKUP || e->opcode > SHADOW_PROTO_OP_SAVE ||
	    e->slot >= cl->lay.n_slots || cl->ops[e->slot].state != OP_IDLE)
		return SHADOW_EPROTO;

	struct srv_op *op = &cl->ops[e->slot];
	op->ticket = e->ticket;
	op->opcode = e->opcode;
	op->refused = 0;
	op->status_off = 0;
	op->t0_ns = shadow__now_ns();
	inc(&cl->st_requests, 1);
	inc(&srv->st_requests[e->opcode], 1);
	if (late) {
		refuse(cl, op, -ESHUTDOWN);
		return 0;
	}

	/* The unix path leaves entries in the ring instead (drain_sq); a TCP SUBMIT cannot wait:
	 * this keeps the done ring from overflowing. */
	if (srv->in_flight >= SHADOW__OPS_MAX) {
		refuse(cl, op, -EBUSY);
		return 0;
	}

	uint32_t n = e->n_chunks;
	bool blocks = e->opcode != SHADOW_PROTO_OP_LOOKUP;
	const struct srv_region *r = NULL;
	if (n == 0 || n > SHADOW_PROTO_CHUNKS_MAX) {
		refuse(cl, op, -EINVAL);
		return 0;
	}
	if (blocks) {
		if (e->region >= SHADOW_PROTO_REGIONS_MAX || !cl->regions[e->region].used ||
		    cl->regions[e->region].removing) {
			refuse(cl, op, -ENOENT);
			return 0;
		}
		r = &cl->regions[e->region];
		if ((uint64_t)e->n_block_ids != (uint64_t)n * r->bpc) {
			refuse(cl, op, -EINVAL);
			return 0;
		}
	}
	uint64_t kn = (uint64_t)n * sizeof(struct shadow_chunk_key);
	uint64_t bn = blocks ? (uint64_t)e->n_block_ids * sizeof(uint32_t) : 0;
	const uint8_t *ksrc, *bsrc = NULL;
	if (kn + bn > cl->lay.slot_nbytes) {
		refuse(cl, op, SHADOW_ELIMIT);
		return 0;
	}
	if (payload != NULL) {
		if (payload_nbytes != kn + bn) {
			refuse(cl, op, -EINVAL);
			return 0;
		}
		ksrc = payload;
		bsrc = payload + kn;
	} else {
		if (!shadow__proto_in_slot(&cl->lay, e->slot, e->keys_off, kn) ||
		    (blocks && (e->blocks_off % 4 != 0 ||
				!shadow__proto_in_slot(&cl->lay, e->slot, e->blocks_off, bn) ||
				!shadow__proto_in_slot(&cl->lay, e->slot, e->status_off, n)))) {
			refuse(cl, op, -EINVAL);
			return 0;
		}
		ksrc = cl->arena + e->keys_off;
		if (blocks) {
			bsrc = cl->arena + e->blocks_off;
			op->status_off = e->status_off;
		}
	}
	/* Copy before checking: the client may rewrite its arena at any time (TOCTOU). */
	memcpy(op->buf, ksrc, (size_t)kn);
	uint32_t *ids = (uint32_t *)(op->buf + kn);
	if (blocks) {
		memcpy(ids, bsrc, (size_t)bn);
		for (uint32_t i = 0; i < e->n_block_ids; i++) {
			if (ids[i] >= r->n_blocks) {
				refuse(cl, op, -EINVAL);
				return 0;
			}
		}
	}

	struct shadow__op *o = &op->op;
	memset(o, 0, sizeof(*o));
	o->kind = e->opcode == SHADOW_PROTO_OP_LOOKUP ? SHADOW__OP_LOOKUP :
		  e->opcode == SHADOW_PROTO_OP_FETCH  ? SHADOW__OP_FETCH :
							SHADOW__OP_SAVE;
	o->region = blocks ? r->pl_id : 0;
	o->n_chunks = n;
	o->first_chunk_index = e->first_chunk;
	o->keys = (const struct shadow_chunk_key *)op->buf;
	o->block_ids = blocks ? ids : NULL;
	o->deadline_ns = e->deadline_ns;
	o->on_done = op_on_done;
	o->user = op;
	o->chunk_status = op->status;
	op->region = e->region;
	op->state = OP_RUNNING;
	cl->in_flight++;
	srv->in_flight++;
	if (blocks)
		cl->regions[e->region].running++;
	atomic_store_explicit(&cl->st_in_flight, cl->in_flight, memory_order_relaxed);
	int rc = shadow__pipeline_submit(srv->pl, o);
	if (rc < 0) {
		op->state = OP_IDLE;
		cl->in_flight--;
		srv->in_flight--;
		if (blocks)
			cl->regions[e->region].running--;
		atomic_store_explicit(&cl->st_in_flight, cl->in_flight, memory_order_relaxed);
		refuse(cl, op, rc);
	}
	return 0;
}

/* Drain a client's submission ring (unix). Returns whether it took anything. */
static bool drain_sq(struct srv_client *cl)
{
	struct shadowd_server *srv = cl->srv;
	bool progress = false;

	if (cl->tcp || !cl->hello_done || cl->closing)
		return false;
	/* acquire: pairs with the client's release store of head (entries and arena bytes). */
	uint32_t head = atomic_load_explicit(&cl->sq->head, memory_order_acquire);
	if (head - cl->sq_tail > cl->lay.sq_entries) {
		client_close(cl, "submission ring head out of range");
		return false;
	}
	while (cl->sq_tail != head && !cl->closing) {
		/* Backpressure: what the pipeline cannot take stays in the client's ring. */
		if (srv->in_flight >= SHADOW__OPS_MAX)
			break;
		struct shadow_proto_sqe e = cl->sqes[cl->sq_tail & (cl->lay.sq_entries - 1)];
		bool late = atomic_load_explicit(&srv->draining, memory_order_relaxed) &&
			    ((int32_t)(cl->drain_head - cl->sq_tail) <= 0 || srv->cancelled_all);
		cl->sq_tail++;
		progress = true;
		if (take_sqe(cl, &e, NULL, 0, late) < 0) {
			client_close(cl, "malformed submission");
			break;
		}
	}
	if (!cl->closing)
		/* release: we are done reading the entries; the client may reuse them. */
		atomic_store_explicit(&cl->sq->tail, cl->sq_tail, memory_order_release);
	return progress;
}

/* ------------------------------------------------------------------------------------------ */
/* Set-up messages                                                                            */
/* ------------------------------------------------------------------------------------------ */

static void sanitize_name(char *dst, const char *src, size_t n)
{
	size_t i;

	for (i = 0; i < n && src[i] != '\0'; i++) {
		char ch = src[i];
		bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
			  (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.' ||
			  ch == ':';
		dst[i] = ok ? ch : '_';
	}
	dst[i] = '\0';
}

static int hello_shm(struct srv_client *cl, const int *fds)
{
	int rc = check_mappable(fds[0], cl->lay.total_nbytes);

	if (rc < 0)
		return rc;
	if (!is_eventfd(fds[1]) || !is_eventfd(fds[2]))
		return -EINVAL;
	void *p = mmap(NULL, (size_t)cl->lay.total_nbytes, PROT_READ | PROT_WRITE, MAP_SHARED,
		       fds[0], 0);
	if (p == MAP_FAILED)
		return -errno;
	cl->shm = p;
	cl->sq = (struct shadow_proto_ring *)(cl->shm + cl->lay.sq_ring_off);
	cl->cq = (struct shadow_proto_ring *)(cl->shm + cl->lay.cq_ring_off);
	cl->sqes = (struct shadow_proto_sqe *)(cl->shm + cl->lay.sqes_off);
	cl->cqes = (struct shadow_proto_cqe *)(cl->shm + cl->lay.cqes_off);
	cl->arena = cl->shm + cl->lay.arena_off;
	/* Start from the rings as they are (a fresh client's are zero), then trust only ours. */
	cl->sq_tail = atomic_load_explicit(&cl->sq->tail, memory_order_relaxed);
	cl->cq_head = atomic_load_explicit(&cl->cq->head, memory_order_relaxed);
	cl->sq_efd = fcntl(fds[1], F_DUPFD_CLOEXEC, 0);
	cl->cq_efd = fcntl(fds[2], F_DUPFD_CLOEXEC, 0);
	if (cl->sq_efd < 0 || cl->cq_efd < 0)
		return -errno;
	(void)fcntl(cl->sq_efd, F_SETFL, O_NONBLOCK);
	(void)fcntl(cl->cq_efd, F_SETFL, O_NONBLOCK);
	cl->ep_sq.kind = EP_SQ;
	cl->ep_sq.cl = cl;
	return ep_add(cl->srv, cl->sq_efd, EPOLLIN, &cl->ep_sq);
}

static void handle_hello(struct srv_client *cl, const uint8_t *msg, size_t nbytes, const int *fds,
			 int n_fds)
{
	struct shadowd_server *srv = cl->srv;
	struct shadow_proto_hello h;
	struct shadow_proto_hello_reply rep = {
		.hdr = { .type = SHADOW_PROTO_HELLO_REPLY, .nbytes = sizeof(rep) },
		.version = SHADOW_PROTO_VERSION,
		.daemon_pid = (uint32_t)getpid(),
		.flags = srv->cfg.cuda ? SHADOW_PROTO_DAEMON_CUDA : 0,
		.max_chunks = SHADOW_PROTO_CHUNKS_MAX,
	};
	int rc = 0;

	if (nbytes != sizeof(h)) {
		client_close(cl, "bad HELLO");
		return;
	}
	memcpy(&h, msg, sizeof(h));
	rep.hdr.seq = h.hdr.seq;
	rep.client_id = cl->id;
	if (h.magic != SHADOW_PROTO_MAGIC) {
		client_close(cl, "bad HELLO magic");
		return;
	}
	if (h.version != SHADOW_PROTO_VERSION)
		rc = SHADOW_EVERSION;
	else if (atomic_load_explicit(&srv->draining, memory_order_relaxed))
		rc = -ESHUTDOWN;
	else if (srv->n_clients >= srv->cfg.max_clients)
		rc = -EUSERS;
	else if (shadow__proto_shm_layout(h.n_slots, h.slot_nbytes, &cl->lay) < 0 ||
		 h.shm_nbytes != cl->lay.total_nbytes)
		rc = -EINVAL;
	else if (cl->tcp ? (h.flags & SHADOW_PROTO_HELLO_SHM) != 0 || n_fds != 0 :
			   (h.flags & SHADOW_PROTO_HELLO_SHM) == 0 || n_fds != 3)
		rc = -EINVAL;
	if (rc == 0) {
		cl->opmem_nbytes = (size_t)cl->lay.n_slots *
				   (size_t)(cl->lay.slot_nbytes + SHADOW_PROTO_CHUNKS_MAX);
		void *p = mmap(NULL, cl->opmem_nbytes, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		cl->ops = calloc(cl->lay.n_slots, sizeof(*cl->ops));
		if (p == MAP_FAILED || cl->ops == NULL) {
			if (p != MAP_FAILED)
				munmap(p, cl->opmem_nbytes);
			cl->opmem_nbytes = 0;
			rc = -ENOMEM;
		} else {
			cl->opmem = p;
		}
	}
	if (rc == 0) {
		for (uint32_t i = 0; i < cl->lay.n_slots; i++) {
			struct srv_op *op = &cl->ops[i];
			op->cl = cl;
			op->slot = i;
			op->buf = cl->opmem + (size_t)i * (size_t)(cl->lay.slot_nbytes +
								   SHADOW_PROTO_CHUNKS_MAX);
			op->status = op->buf + cl->lay.slot_nbytes;
		}
		if (cl->tcp) {
			uint8_t *rx = realloc(cl->rx, sizeof(struct shadow_proto_submit) +
							      cl->lay.slot_nbytes);
			if (rx == NULL) {
				rc = -ENOMEM;
			} else {
				cl->rx = rx;
				cl->rx_cap = sizeof(struct shadow_proto_submit) + cl->lay.slot_nbytes;
			}
		} else {
			rc = hello_shm(cl, fds);
		}
	}
	rep.status = rc;
	rep.daemon_now_ns = shadow__now_ns();
	if (rc < 0) {
		SHADOW_LOGW("shadowd: client %u (pid %u) refused: %s", cl->id, h.pid,
			    shadow_strerror(rc));
		inc(&srv->st_refused_clients, 1);
		send_reply(cl, &rep, sizeof(rep));
		client_close(cl, NULL);
		return;
	}
	cl->pid = h.pid;
	sanitize_name(cl->name, h.name, SHADOW_PROTO_NAME_MAX);
	cl->hello_done = true;
	atomic_store_explicit(&cl->visible, true, memory_order_release);
	srv->n_clients++;
	atomic_store_explicit(&srv->st_clients, srv->n_clients, memory_order_relaxed);
	SHADOW_LOGI("shadowd: client %u connected (pid %u%s%s, %u slots of %llu KiB, %s)", cl->id,
		    cl->pid, cl->name[0] ? ", " : "", cl->name, cl->lay.n_slots,
		    (unsigned long long)(cl->lay.slot_nbytes >> 10), cl->tcp ? "tcp" : "shm");
	send_reply(cl, &rep, sizeof(rep));
}

static void handle_region_add(struct srv_client *cl, const uint8_t *msg, size_t nbytes,
			      const int *fds, int n_fds)
{
	struct shadowd_server *srv = cl->srv;
	struct shadow_proto_region_add m;
	struct shadow_proto_region_add_reply rep = {
		.hdr = { .type = SHADOW_PROTO_REGION_ADD_REPLY, .nbytes = sizeof(rep) },
	};
	struct shadow__region_spec spec;
	uint32_t idx = 0, pl_id = 0;
	uint64_t end;
	int rc = 0;

	if (nbytes != sizeof(m)) {
		client_close(cl, "bad REGION_ADD");
		return;
	}
	memcpy(&m, msg, sizeof(m));
	rep.hdr.seq = m.hdr.seq;
	while (idx < SHADOW_PROTO_REGIONS_MAX && cl->regions[idx].used)
		idx++;
	memset(&spec, 0, sizeof(spec));
	spec.geom = m.geom;
	spec.layout = m.layout;
	spec.mem.fd = -1;
	spec.mem.nbytes = m.layout.region_nbytes;
	if (idx == SHADOW_PROTO_REGIONS_MAX) {
		rc = SHADOW_ELIMIT;
	} else if (m.mem_kind == SHADOW_PROTO_MEM_HOST) {
		if (cl->tcp || n_fds != 1)
			rc = cl->tcp ? SHADOW_EUNSUPPORTED : -EINVAL;
		else if (!shadow_add_u64(m.fd_offset, m.layout.region_nbytes, &end))
			rc = -EINVAL;
		else
			rc = check_mappable(fds[0], end);
		spec.mem.kind = SHADOW__COPY_HOST;
		spec.mem.fd = n_fds == 1 ? fds[0] : -1;
		spec.mem.fd_offset = m.fd_offset;
	} else if (m.mem_kind == SHADOW_PROTO_MEM_CUDA) {
		if (n_fds != 0)
			rc = -EINVAL;
		else if (!srv->cfg.cuda)
			rc = SHADOW_ENOGPU;
		spec.mem.kind = SHADOW__COPY_CUDA;
		SHADOW_STATIC_ASSERT(sizeof(spec.mem.ipc_handle) == sizeof(m.ipc_handle),
				     "IPC handle size");
		memcpy(spec.mem.ipc_handle, m.ipc_handle, sizeof(m.ipc_handle));
		spec.mem.device = m.device;
	} else {
		rc = -EINVAL;
	}
	if (rc == 0)
		rc = shadow__pipeline_region_add(srv->pl, &spec, &pl_id);
	if (rc == 0) {
		struct srv_region *r = &cl->regions[idx];
		r->used = true;
		r->pl_id = pl_id;
		r->n_blocks = m.layout.n_blocks;
		r->bpc = m.geom.chunk_tokens / m.geom.block_tokens;
		rep.region = idx;
		atomic_fetch_add_explicit(&cl->st_regions, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&srv->st_regions, 1, memory_order_relaxed);
		SHADOW_LOGI("shadowd: client %u: region %u (%s, %u blocks, %llu MiB)", cl->id, idx,
			    m.mem_kind == SHADOW_PROTO_MEM_HOST ? "host" : "cuda",
			    m.layout.n_blocks,
			    (unsigned long long)(m.layout.region_nbytes >> 20));
	} else {
		SHADOW_LOGW("shadowd: client %u: region refused: %s", cl->id, shadow_strerror(rc));
	}
	rep.status = rc;
	send_reply(cl, &rep, sizeof(rep));
}

/* Cancel the client's ops on region idx (all regions: UINT32_MAX). */
static void cancel_ops(struct srv_client *cl, uint32_t idx)
{
	for (uint32_t i = 0; i < cl->lay.n_slots && cl->ops != NULL; i++) {
		struct srv_op *op = &cl->ops[i];
		if (op->state == OP_RUNNING &&
		    (idx == UINT32_MAX || (op->opcode != SHADOW_PROTO_OP_LOOKUP && op->region == idx)))
			shadow__pipeline_cancel(cl->srv->pl, &op->op);
	}
}

/* Remove a region none of our ops uses any more (so the pipeline lets go of it at once). */
static void region_drop(struct srv_client *cl, uint32_t idx)
{
	struct srv_region *r = &cl->regions[idx];

	SHADOW_ASSERT(r->running == 0);
	(void)shadow__pipeline_region_remove(cl->srv->pl, r->pl_id);
	r->used = false;
	r->removing = false;
	atomic_fetch_sub_explicit(&cl->st_regions, 1, memory_order_relaxed);
	atomic_fetch_sub_explicit(&cl->srv->st_regions, 1, memory_order_relaxed);
}

static void handle_region_remove(struct srv_client *cl, const uint8_t *msg, size_t nbytes)
{
	struct shadow_proto_region_remove m;

	if (nbytes != sizeof(m)) {
		client_close(cl, "bad REGION_REMOVE");
		return;
	}
	memcpy(&m, msg, sizeof(m));
	if (m.region >= SHADOW_PROTO_REGIONS_MAX || !cl->regions[m.region].used ||
	    cl->regions[m.region].removing) {
		reply_status(cl, SHADOW_PROTO_REGION_REMOVE_REPLY, m.hdr.seq, -ENOENT);
		return;
	}
	/*
	 * Not here and now if ops still run on it: a cancelled SAVE may be waiting on a slow
	 * store, and this thread serves every client. New requests naming it are refused from
	 * now on; the reply goes when its last op came back (drain_done).
	 */
	struct srv_region *r = &cl->regions[m.region];
	r->removing = true;
	r->remove_seq = m.hdr.seq;
	cancel_ops(cl, m.region);
	if (r->running == 0)
		region_remove_finish(cl, m.region);
}

static void region_remove_finish(struct srv_client *cl, uint32_t idx)
{
	uint64_t seq = cl->regions[idx].remove_seq;

	region_drop(cl, idx);
	reply_status(cl, SHADOW_PROTO_REGION_REMOVE_REPLY, seq, 0);
}

static void handle_stats(struct srv_client *cl, const struct shadow_proto_hdr *h)
{
#define LD(x) atomic_load_explicit(&cl->x, memory_order_relaxed)
	struct shadow_proto_stats_reply rep = {
		.hdr = { .type = SHADOW_PROTO_STATS_REPLY, .nbytes = sizeof(rep), .seq = h->seq },
		.client_id = cl->id,
		.requests = LD(st_requests),
		.rejected = LD(st_rejected),
		.completed = LD(st_completed),
		.chunks_ok = LD(st_chunks_ok),
		.chunks_failed = LD(st_chunks_failed),
		.bytes_in = LD(st_bytes_in),
		.bytes_out = LD(st_bytes_out),
		.doorbells = LD(st_doorbells),
		.in_flight = cl->in_flight,
		.regions = LD(st_regions),
	};
#undef LD
	send_reply(cl, &rep, sizeof(rep));
}

/* TCP: a submission entry with its keys and block ids inline. */
static void handle_submit(struct srv_client *cl, const uint8_t *msg, size_t nbytes)
{
	struct shadow_proto_sqe e;

	if (nbytes < sizeof(struct shadow_proto_submit)) {
		client_close(cl, "bad SUBMIT");
		return;
	}
	memcpy(&e, msg + sizeof(struct shadow_proto_hdr), sizeof(e));
	if (take_sqe(cl, &e, msg + sizeof(struct shadow_proto_submit),
		     nbytes - sizeof(struct shadow_proto_submit),
		     atomic_load_explicit(&cl->srv->draining, memory_order_relaxed)) < 0)
		client_close(cl, "malformed submission");
}

/* One message. fds received with it are closed by the caller afterwards. */
static void handle_msg(struct srv_client *cl, const uint8_t *msg, size_t nbytes, const int *fds,
		       int n_fds)
{
	struct shadow_proto_hdr h;

	if (nbytes < sizeof(h)) {
		client_close(cl, "short message");
		return;
	}
	memcpy(&h, msg, sizeof(h));
	if (h.nbytes != nbytes) {
		client_close(cl, "message length mismatch");
		return;
	}
	if (!cl->hello_done && h.type != SHADOW_PROTO_HELLO) {
		client_close(cl, "no HELLO first");
		return;
	}
	if (n_fds != 0 && h.type != SHADOW_PROTO_HELLO && h.type != SHADOW_PROTO_REGION_ADD) {
		client_close(cl, "unexpected fds");
		return;
	}
	/* What the client put in its ring before sending this goes first (a fetch submitted
	 * before an unregister runs, and is not refused). */
	(void)drain_sq(cl);
	if (cl->closing)
		return;
	switch (h.type) {
	case SHADOW_PROTO_HELLO:
		if (cl->hello_done)
			client_close(cl, "second HELLO");
		else
			handle_hello(cl, msg, nbytes, fds, n_fds);
		break;
	case SHADOW_PROTO_REGION_ADD:
		handle_region_add(cl, msg, nbytes, fds, n_fds);
		break;
	case SHADOW_PROTO_REGION_REMOVE:
		handle_region_remove(cl, msg, nbytes);
		break;
	case SHADOW_PROTO_STATS:
		if (nbytes != sizeof(h))
			client_close(cl, "bad STATS");
		else
			handle_stats(cl, &h);
		break;
	case SHADOW_PROTO_SUBMIT:
		if (!cl->tcp)
			client_close(cl, "SUBMIT on a shared-memory connection");
		else
			handle_submit(cl, msg, nbytes);
		break;
	default:
		client_close(cl, "unknown message type");
		break;
	}
}

/* unix: read every packet the socket has. */
static void read_unix(struct srv_client *cl)
{
	uint8_t buf[SHADOW_PROTO_MSG_MAX];

	while (!cl->closing) {
		union {
			char b[CMSG_SPACE(4 * sizeof(int))];
			struct cmsghdr align;
		} u;
		struct iovec iov = { buf, sizeof(buf) };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b,
				     .msg_controllen = sizeof(u.b) };
		int fds[4], n_fds = 0;

		ssize_t n = recvmsg(cl->sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0) {
			client_close(cl, n == 0 ? NULL : "recv failed");
			return;
		}
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm != NULL; cm = CMSG_NXTHDR(&mh, cm)) {
			if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
				continue;
			size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (size_t i = 0; i < k; i++) {
				int fd;
				memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
				if (n_fds < 4)
					fds[n_fds++] = fd;
				else
					close(fd);
			}
		}
		if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
			client_close(cl, "oversized message");
		else
			handle_msg(cl, buf, (size_t)n, fds, n_fds);
		for (int i = 0; i < n_fds; i++)
			close(fds[i]);
	}
}

/* TCP: read what the socket has and run every whole message in it. */
static void read_tcp(struct srv_client *cl)
{
	while (!cl->closing) {
		ssize_t n = recv(cl->sock, cl->rx + cl->rx_len, cl->rx_cap - cl->rx_len,
				 MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0) {
			client_close(cl, n == 0 ? NULL : "recv failed");
			return;
		}
		cl->rx_len += (size_t)n;
		size_t off = 0;
		while (!cl->closing && cl->rx_len - off >= sizeof(struct shadow_proto_hdr)) {
			struct shadow_proto_hdr h;
			memcpy(&h, cl->rx + off, sizeof(h));
			if (h.nbytes < sizeof(h) || h.nbytes > cl->rx_cap) {
				client_close(cl, "bad message length");
				return;
			}
			if (cl->rx_len - off < h.nbytes)
				break;
			handle_msg(cl, cl->rx + off, h.nbytes, NULL, 0);
			off += h.nbytes;
		}
		if (cl->closing)
			return;
		memmove(cl->rx, cl->rx + off, cl->rx_len - off);
		cl->rx_len -= off;
	}
}

/* ------------------------------------------------------------------------------------------ */
/* Clients                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static void accept_clients(struct shadowd_server *srv)
{
	for (;;) {
		int fd = accept4(srv->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN)
				SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR, "shadowd: accept: %s",
						       strerror(errno));
			return;
		}
		/* Connections that never say hello must not exhaust our fds. */
		if (srv->n_conns >= 2 * srv->cfg.max_clients + 16) {
			SHADOW_LOG_RATELIMITED(SHADOW_LOG_WARN, "shadowd: %u connections: refusing "
					       "more", srv->n_conns);
			inc(&srv->st_refused_clients, 1);
			close(fd);
			continue;
		}
		struct srv_client *cl = calloc(1, sizeof(*cl));
		bool tcp = srv->unix_path[0] == '\0';
		uint8_t *rx = tcp ? malloc(SHADOW_PROTO_MSG_MAX) : NULL;
		uint8_t *tx = tcp ? malloc(SRV_TX_NBYTES + SRV_TX_REPLY_ROOM) : NULL;
		if (cl == NULL || (tcp && (rx == NULL || tx == NULL))) {
			SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR, "shadowd: out of memory for a client");
			free(cl);
			free(rx);
			free(tx);
			close(fd);
			continue;
		}
		if (tcp) {
			int one = 1;
			(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		}
		cl->srv = srv;
		cl->sock = fd;
		cl->tcp = tcp;
		cl->rx = rx;
		cl->tx = tx;
		cl->rx_cap = tcp ? SHADOW_PROTO_MSG_MAX : 0;
		cl->sq_efd = cl->cq_efd = -1;
		cl->id = ++srv->next_id;
		cl->ep_sock.kind = EP_SOCK;
		cl->ep_sock.cl = cl;
		if (ep_add(srv, fd, EPOLLIN | EPOLLRDHUP, &cl->ep_sock) < 0) {
			close(fd);
			free(rx);
			free(tx);
			free(cl);
			continue;
		}
		srv->n_conns++;
		pthread_mutex_lock(&srv->clients_mu);
		cl->next = srv->clients;
		if (srv->clients != NULL)
			srv->clients->prev = cl;
		srv->clients = cl;
		pthread_mutex_unlock(&srv->clients_mu);
		inc(&srv->st_accepted, 1);
	}
}

/*
 * Start closing a client (why: a log line, NULL for an orderly hang-up): the socket goes now,
 * ops in flight are cancelled; the rest is freed once they all came back (client_finish).
 */
static void client_close(struct srv_client *cl, const char *why)
{
	struct shadowd_server *srv = cl->srv;

	if (cl->closing)
		return;
	cl->closing = true;
	atomic_store_explicit(&cl->visible, false, memory_order_relaxed);
	if (why != NULL) {
		inc(&srv->st_protocol_errors, 1);
		SHADOW_LOG_RATELIMITED(SHADOW_LOG_WARN, "shadowd: client %u (pid %u): %s: "
				       "dropped", cl->id, cl->pid, why);
	} else if (cl->hello_done) {
		SHADOW_LOGI("shadowd: client %u (pid %u) disconnected", cl->id, cl->pid);
	}
	if (cl->hello_done) {
		srv->n_clients--;
		atomic_store_explicit(&srv->st_clients, srv->n_clients, memory_order_relaxed);
		inc(&srv->st_disconnects, 1);
	}
	ep_del(srv, cl->sock);
	ep_del(srv, cl->sq_efd);
	close(cl->sock);
	cl->sock = -1;
	for (struct srv_op *op = cl->post_head; op != NULL; op = op->next_post)
		op->state = OP_IDLE;
	cl->post_head = cl->post_tail = NULL;
	cancel_ops(cl, UINT32_MAX);
	if (cl->in_flight == 0)
		client_finish(cl);
}

/* Every op came back: queue the client for freeing after this batch of events. */
static void client_finish(struct srv_client *cl)
{
	cl->next_dead = cl->srv->graveyard;
	cl->srv->graveyard = cl;
}

static void client_free(struct srv_client *cl)
{
	struct shadowd_server *srv = cl->srv;

	for (uint32_t i = 0; i < SHADOW_PROTO_REGIONS_MAX; i++) {
		if (cl->regions[i].used)
			region_drop(cl, i);
	}
	srv->n_conns--;
	pthread_mutex_lock(&srv->clients_mu);
	if (cl->prev != NULL)
		cl->prev->next = cl->next;
	else
		srv->clients = cl->next;
	if (cl->next != NULL)
		cl->next->prev = cl->prev;
	pthread_mutex_unlock(&srv->clients_mu);
	if (cl->sock >= 0)
		close(cl->sock);
	if (cl->sq_efd >= 0)
		close(cl->sq_efd);
	if (cl->cq_efd >= 0)
		close(cl->cq_efd);
	if (cl->shm != NULL)
		munmap(cl->shm, (size_t)cl->lay.total_nbytes);
	if (cl->opmem != NULL)
		munmap(cl->opmem, cl->opmem_nbytes);
	free(cl->ops);
	free(cl->rx);
	free(cl->tx);
	free(cl);
}

static void reap_graveyard(struct shadowd_server *srv)
{
	while (srv->graveyard != NULL) {
		struct srv_client *cl = srv->graveyard;
		srv->graveyard = cl->next_dead;
		client_free(cl);
	}
}

/* ------------------------------------------------------------------------------------------ */
/* The loop                                                                                   */
/* ------------------------------------------------------------------------------------------ */

static void start_drain(struct shadowd_server *srv)
{
	if (atomic_load_explicit(&srv->draining, memory_order_relaxed)) {
		/* A second signal: do not wait for the deadlines. */
		srv->drain_deadline_ns = shadow__now_ns();
		return;
	}
	/* What clients published before the signal counts as in flight: take it. */
	for (struct srv_client *cl = srv->clients; cl != NULL; cl = cl->next) {
		if (cl->hello_done && !cl->closing && !cl->tcp)
			cl->drain_head = atomic_load_explicit(&cl->sq->head, memory_order_acquire);
	}
	atomic_store_explicit(&srv->draining, true, memory_order_relaxed);
	srv->drain_deadline_ns = shadow__deadline_ns(shadow__now_ns(), srv->cfg.drain_timeout_ns);
	ep_del(srv, srv->listen_fd);
	close(srv->listen_fd);
	srv->listen_fd = -1;
	if (srv->unix_path[0] != '\0')
		unlink(srv->unix_path);
	SHADOW_LOGI("shadowd: draining %u op(s) in flight", srv->in_flight);
}

static void handle_signal(struct shadowd_server *srv)
{
	struct signalfd_siginfo si;

	while (read(srv->sig_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
			start_drain(srv);
	}
}

/* Work a pass would find: completions, or submissions it could take. */
static bool work_ready(struct shadowd_server *srv)
{
	if (shadow__ring_count(srv->done) > 0)
		return true;
	for (struct srv_client *cl = srv->clients; cl != NULL; cl = cl->next) {
		if (cl->hello_done && !cl->closing && !cl->tcp &&
		    atomic_load_explicit(&cl->sq->head, memory_order_relaxed) != cl->sq_tail &&
		    srv->in_flight < SHADOW__OPS_MAX)
			return true;
	}
	return false;
}

/*
 * With ops in flight a completion is usually microseconds away: look for work for up to
 * spin_ns before arming the flags, so that a busy daemon does not make every client
 * submission ring a doorbell. Spins on the daemon's own cores, never the engine's.
 */
static bool spin_for_work(struct shadowd_server *srv)
{
	if (srv->cfg.spin_ns == 0 || srv->in_flight == 0)
		return false;
	uint64_t end = shadow__now_ns() + srv->cfg.spin_ns;
	do {
		for (int i = 0; i < 64; i++)
			shadow__cpu_relax();
		if (work_ready(srv))
			return true;
	} while (shadow__now_ns() < end);
	return false;
}

/* Arm every wake-up flag and re-check: true if there is work after all (don't sleep). */
static bool arm_sleep(struct shadowd_server *srv)
{
	atomic_store_explicit(&srv->ctl_sleeping, 1, memory_order_relaxed);
	for (struct srv_client *cl = srv->clients; cl != NULL; cl = cl->next) {
		if (cl->hello_done && !cl->closing && !cl->tcp)
			atomic_store_explicit(&cl->sq->sleeping, 1, memory_order_relaxed);
	}
	/* Pairs with the producers' fences between publishing and loading the flag. */
	atomic_thread_fence(memory_order_seq_cst);
	return work_ready(srv);
}

/* Whether some client still has entries it published before the drain began. */
static bool submitted_before_drain(struct shadowd_server *srv)
{
	for (struct srv_client *cl = srv->clients; cl != NULL; cl = cl->next) {
		if (cl->hello_done && !cl->closing && !cl->tcp &&
		    (int32_t)(cl->drain_head - cl->sq_tail) > 0)
			return true;
	}
	return false;
}

int shadowd_server_run(struct shadowd_server *srv)
{
	struct epoll_event evs[SRV_EVENTS_MAX];
	bool progress = true;

	for (;;) {
		bool draining = atomic_load_explicit(&srv->draining, memory_order_relaxed);
		uint64_t now = shadow__now_ns();

		if (draining) {
			if (srv->in_flight == 0 && !submitted_before_drain(srv))
				break;
			if (now >= srv->drain_deadline_ns && !srv->cancelled_all) {
				SHADOW_LOGW("shadowd: drain timeout: cancelling %u op(s)",
					    srv->in_flight);
				for (struct srv_client *cl = srv->clients; cl != NULL; cl = cl->next)
					cancel_ops(cl, UINT32_MAX);
				srv->cancelled_all = true;
			}
			if (now >= srv->drain_deadline_ns + SRV_DRAIN_GRACE_NS) {
				SHADOW_LOGE("shadowd: %u op(s) did not finish after cancel; exiting",
					    srv->in_flight);
				break;
			}
		}

		int timeout = -1;
		if (progress || spin_for_work(srv) || arm_sleep(srv))
			timeout = 0;
		else if (draining)
			timeout = 100;
		int n = epoll_wait(srv->epfd, evs, SRV_EVENTS_MAX, timeout);
		atomic_store_explicit(&srv->ctl_sleeping, 0, memory_order_relaxed);
		if (n < 0 && errno != EINTR) {
			SHADOW_LOGE("shadowd: epoll_wait: %s", strerror(errno));
			return -errno;
		}
		for (int i = 0; i < n; i++) {
			struct ep_tag *tag = evs[i].data.ptr;
			uint64_t v;

			switch (tag->kind) {
			case EP_LISTEN:
				if (srv->listen_fd >= 0)
					accept_clients(srv);
				break;
			case EP_DONE:
				(void)!read(srv->done_efd, &v, sizeof(v));
				break;
			case EP_SIGNAL:
				handle_signal(srv);
				break;
			case EP_SQ:
				if (!tag->cl->closing) {
					(void)!read(tag->cl->sq_efd, &v, sizeof(v));
					inc(&srv->st_sq_wakeups, 1);
				}
				break;
			case EP_SOCK:
				if (tag->cl->closing)
					break;
				if (evs[i].events & EPOLLIN) {
					if (tag->cl->tcp)
						read_tcp(tag->cl);
					else
						read_unix(tag->cl);
				}
				if (!tag->cl->closing && (evs[i].events & EPOLLOUT))
					tcp_flush(tag->cl);
				if (!tag->cl->closing &&
				    (evs[i].events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP)))
					client_close(tag->cl, NULL);
				break;
			}
		}

		progress = drain_done(srv);
		for (struct srv_client *cl = srv->clients; cl != NULL; cl = cl->next) {
			if (cl->closing)
				continue;
			progress |= post_pending(cl);
			progress |= drain_sq(cl);
			notify(cl);
		}
		reap_graveyard(srv);
	}
	/* Completions posted in the last pass reach TCP clients if their sockets take them. */
	for (struct srv_client *cl = srv->clients; cl != NULL; cl = cl->next)
		notify(cl);
	SHADOW_LOGI("shadowd: drained");
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Create, destroy                                                                            */
/* ------------------------------------------------------------------------------------------ */

/* Bind "unix:PATH" (removing a stale socket file, refusing a live one) or "tcp:HOST:PORT". */
static int listen_on(struct shadowd_server *srv, const char *endpoint)
{
	int fd, rc;

	if (strncmp(endpoint, "unix:", 5) == 0) {
		struct sockaddr_un sun = { .sun_family = AF_UNIX };
		const char *path = endpoint + 5;

		if (path[0] == '\0' || strlen(path) >= sizeof(sun.sun_path))
			return -EINVAL;
		memcpy(sun.sun_path, path, strlen(path) + 1);
		fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fd < 0)
			return -errno;
		if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
			if (errno != EADDRINUSE) {
				rc = -errno;
				close(fd);
				return rc;
			}
			/* A socket file is there: in use if someone answers, else stale. */
			int probe = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
			bool live = probe >= 0 &&
				    connect(probe, (struct sockaddr *)&sun, sizeof(sun)) == 0;
			if (probe >= 0)
				close(probe);
			if (live) {
				close(fd);
				return -EADDRINUSE;
			}
			unlink(path);
			if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
				rc = -errno;
				close(fd);
				return rc;
			}
		}
		snprintf(srv->unix_path, sizeof(srv->unix_path), "%s", path);
		snprintf(srv->endpoint, sizeof(srv->endpoint), "unix:%s", path);
	} else if (strncmp(endpoint, "tcp:", 4) == 0) {
		char host[256];
		const char *port;

		if (shadow__proto_split_hostport(endpoint + 4, host, sizeof(host), &port) < 0)
			return -EINVAL;
		struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
					  .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
		struct addrinfo *res = NULL;
		if (getaddrinfo(host, port, &hints, &res) != 0 || res == NULL)
			return -EINVAL;
		fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fd < 0) {
			rc = -errno;
			freeaddrinfo(res);
			return rc;
		}
		int one = 1;
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, res->ai_addr, res->ai_addrlen) < 0) {
			rc = -errno;
			freeaddrinfo(res);
			close(fd);
			return rc;
		}
		freeaddrinfo(res);
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		char bound_port[16] = "?";
		if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0)
			(void)getnameinfo((struct sockaddr *)&ss, len, NULL, 0, bound_port,
					  sizeof(bound_port), NI_NUMERICSERV);
		snprintf(srv->endpoint, sizeof(srv->endpoint), "tcp:%.*s:%s",
			 (int)(port - 1 - (endpoint + 4)), endpoint + 4, bound_port);
	} else {
		return -EINVAL;
	}
	if (listen(fd, 128) < 0) {
		rc = -errno;
		close(fd);
		return rc;
	}
	srv->listen_fd = fd;
	return 0;
}

int shadowd_server_create(const struct shadowd_config *cfg, struct shadow__pipeline *pl,
			  struct shadowd_server **srv_ret)
{
	struct shadowd_server *srv = calloc(1, sizeof(*srv));
	sigset_t sigs;
	int rc;

	if (srv == NULL)
		return -ENOMEM;
	srv->cfg = *cfg;
	srv->cfg.listen = NULL; /* the caller's string */
	srv->pl = pl;
	srv->listen_fd = srv->epfd = srv->done_efd = srv->sig_fd = -1;
	pthread_mutex_init(&srv->clients_mu, NULL);
	rc = shadow__ring_create(&srv->done, SHADOW__OPS_MAX);
	if (rc < 0)
		goto fail;
	srv->epfd = epoll_create1(EPOLL_CLOEXEC);
	srv->done_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	srv->sig_fd = signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
	if (srv->epfd < 0 || srv->done_efd < 0 || srv->sig_fd < 0) {
		rc = -errno;
		goto fail;
	}
	rc = listen_on(srv, cfg->listen); /* main says what failed */
	if (rc < 0)
		goto fail;
	srv->ep_listen.kind = EP_LISTEN;
	srv->ep_done.kind = EP_DONE;
	srv->ep_signal.kind = EP_SIGNAL;
	rc = ep_add(srv, srv->listen_fd, EPOLLIN, &srv->ep_listen);
	if (rc == 0)
		rc = ep_add(srv, srv->done_efd, EPOLLIN, &srv->ep_done);
	if (rc == 0)
		rc = ep_add(srv, srv->sig_fd, EPOLLIN, &srv->ep_signal);
	if (rc < 0)
		goto fail;
	*srv_ret = srv;
	return 0;
fail:
	shadowd_server_destroy(srv);
	return rc;
}

const char *shadowd_server_endpoint(const struct shadowd_server *srv)
{
	return srv->endpoint;
}

void shadowd_server_destroy(struct shadowd_server *srv)
{
	if (srv == NULL)
		return;
	/* The pipeline is gone: whatever it completed last is in the done ring. */
	if (srv->done != NULL) {
		void *obj;
		while (shadow__ring_sc_dequeue_burst(srv->done, &obj, 1) == 1) {
			struct srv_op *op = obj;
			op->state = OP_IDLE;
			op->cl->in_flight--;
		}
	}
	while (srv->clients != NULL) {
		struct srv_client *cl = srv->clients;
		/* The pipeline closed the regions itself: forget them without asking it. */
		for (uint32_t i = 0; i < SHADOW_PROTO_REGIONS_MAX; i++)
			cl->regions[i].used = false;
		client_free(cl);
	}
	if (srv->listen_fd >= 0) {
		close(srv->listen_fd);
		if (srv->unix_path[0] != '\0')
			unlink(srv->unix_path);
	}
	if (srv->epfd >= 0)
		close(srv->epfd);
	if (srv->done_efd >= 0)
		close(srv->done_efd);
	if (srv->sig_fd >= 0)
		close(srv->sig_fd);
	shadow__ring_free(srv->done);
	pthread_mutex_destroy(&srv->clients_mu);
	free(srv);
}

/* ------------------------------------------------------------------------------------------ */
/* Metrics                                                                                    */
/* ------------------------------------------------------------------------------------------ */

bool shadowd_server_healthy(struct shadowd_server *srv)
{
	return !atomic_load_explicit(&srv->draining, memory_order_relaxed);
}

void shadowd_server_metrics(struct shadowd_server *srv, FILE *out)
{
	struct shadow__pipeline_stats ps;
	static const char *const ops[] = { NULL, "lookup", "fetch", "save" };

#define LD(x) ((unsigned long long)atomic_load_explicit(&(x), memory_order_relaxed))
	fprintf(out, "# HELP shadowd_up 1 while the daemon serves (0 while it drains).\n"
		     "# TYPE shadowd_up gauge\nshadowd_up %d\n",
		shadowd_server_healthy(srv) ? 1 : 0);
	fprintf(out, "# HELP shadowd_clients Connected clients (that said hello).\n"
		     "# TYPE shadowd_clients gauge\nshadowd_clients %llu\n", LD(srv->st_clients));
	fprintf(out, "# TYPE shadowd_regions gauge\nshadowd_regions %llu\n", LD(srv->st_regions));
	fprintf(out, "# TYPE shadowd_connections_total counter\nshadowd_connections_total %llu\n",
		LD(srv->st_accepted));
	fprintf(out, "# TYPE shadowd_disconnects_total counter\nshadowd_disconnects_total %llu\n",
		LD(srv->st_disconnects));
	fprintf(out, "# HELP shadowd_protocol_errors_total Clients dropped for breaking the "
		     "protocol.\n# TYPE shadowd_protocol_errors_total counter\n"
		     "shadowd_protocol_errors_total %llu\n", LD(srv->st_protocol_errors));
	fprintf(out, "# TYPE shadowd_clients_refused_total counter\n"
		     "shadowd_clients_refused_total %llu\n", LD(srv->st_refused_clients));
	fprintf(out, "# HELP shadowd_sq_wakeups_total Doorbells from clients to a sleeping "
		     "daemon.\n# TYPE shadowd_sq_wakeups_total counter\n"
		     "shadowd_sq_wakeups_total %llu\n", LD(srv->st_sq_wakeups));
	fprintf(out, "# TYPE shadowd_requests_total counter\n");
	for (int i = 1; i <= 3; i++)
		fprintf(out, "shadowd_requests_total{op=\"%s\"} %llu\n", ops[i],
			LD(srv->st_requests[i]));

	shadow__pipeline_stats(srv->pl, &ps);
	fprintf(out, "# TYPE shadowd_pipeline_ops_total counter\nshadowd_pipeline_ops_total %llu\n",
		(unsigned long long)ps.ops_done);
	fprintf(out, "# TYPE shadowd_pipeline_chunks_total counter\n");
	const struct {
		const char *name;
		uint64_t v;
	} chunks[] = { { "ok", ps.chunks_ok },       { "miss", ps.chunks_miss },
		       { "corrupt", ps.chunks_corrupt }, { "timeout", ps.chunks_timeout },
		       { "error", ps.chunks_error }, { "canceled", ps.chunks_canceled } };
	for (size_t i = 0; i < SHADOW_ARRAY_SIZE(chunks); i++)
		fprintf(out, "shadowd_pipeline_chunks_total{status=\"%s\"} %llu\n", chunks[i].name,
			(unsigned long long)chunks[i].v);
	fprintf(out, "# TYPE shadowd_pipeline_bytes_total counter\n"
		     "shadowd_pipeline_bytes_total{kind=\"fetched\"} %llu\n"
		     "shadowd_pipeline_bytes_total{kind=\"decoded\"} %llu\n"
		     "shadowd_pipeline_bytes_total{kind=\"saved\"} %llu\n",
		(unsigned long long)ps.bytes_in, (unsigned long long)ps.bytes_decoded,
		(unsigned long long)ps.bytes_saved);
	fprintf(out, "# TYPE shadowd_pipeline_seconds_total counter\n"
		     "shadowd_pipeline_seconds_total{stage=\"fetch\"} %.6f\n"
		     "shadowd_pipeline_seconds_total{stage=\"decode\"} %.6f\n"
		     "shadowd_pipeline_seconds_total{stage=\"copy\"} %.6f\n"
		     "shadowd_pipeline_seconds_total{stage=\"save\"} %.6f\n",
		ps.ns_fetch / 1e9, ps.ns_decode / 1e9, ps.ns_copy / 1e9, ps.ns_save / 1e9);
	fprintf(out, "# TYPE shadowd_pipeline_chunk_buffers gauge\n"
		     "shadowd_pipeline_chunk_buffers{state=\"free\"} %u\n"
		     "shadowd_pipeline_chunk_buffers{state=\"total\"} %u\n",
		ps.chunks_free, ps.chunks_total);

	static const char *const per_client[] = {
		"shadowd_client_requests_total counter", "shadowd_client_rejected_total counter",
		"shadowd_client_completed_total counter", "shadowd_client_chunks_ok_total counter",
		"shadowd_client_chunks_failed_total counter", "shadowd_client_bytes_in_total counter",
		"shadowd_client_bytes_out_total counter", "shadowd_client_doorbells_total counter",
		"shadowd_client_in_flight gauge", "shadowd_client_regions gauge",
	};
	pthread_mutex_lock(&srv->clients_mu);
	for (size_t k = 0; k < SHADOW_ARRAY_SIZE(per_client); k++) {
		const char *sp = strchr(per_client[k], ' ');
		int name_len = (int)(sp - per_client[k]);
		fprintf(out, "# TYPE %s\n", per_client[k]);
		for (struct srv_client *cl = srv->clients; cl != NULL; cl = cl->next) {
			unsigned long long v;
			if (!atomic_load_explicit(&cl->visible, memory_order_acquire))
				continue;
			switch (k) {
			case 0: v = LD(cl->st_requests); break;
			case 1: v = LD(cl->st_rejected); break;
			case 2: v = LD(cl->st_completed); break;
			case 3: v = LD(cl->st_chunks_ok); break;
			case 4: v = LD(cl->st_chunks_failed); break;
			case 5: v = LD(cl->st_bytes_in); break;
			case 6: v = LD(cl->st_bytes_out); break;
			case 7: v = LD(cl->st_doorbells); break;
			case 8: v = LD(cl->st_in_flight); break;
			default: v = LD(cl->st_regions); break;
			}
			fprintf(out, "%.*s{client=\"%u\",pid=\"%u\",name=\"%s\"} %llu\n", name_len,
				per_client[k], cl->id, cl->pid, cl->name, v);
		}
	}
	pthread_mutex_unlock(&srv->clients_mu);
#undef LD
}
