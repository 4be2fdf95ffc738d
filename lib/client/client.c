/*
 * client.c - libshadow_client: the engine side of the control channel (include/shadow/client.h
 * is the contract, docs/protocol.md the wire format, lib/client/proto.h its structs).
 *
 * DESIGN
 *
 * Threads. Two roles may run at once on a handle (client.h, "Threads"):
 *   submitter  lookup / fetch / save / cancel: picks a free slot, writes the request into its
 *              arena slot, fills a submission entry, publishes the sq head, rings the sq
 *              eventfd only if the daemon's `sleeping` flag was set;
 *   completer  poll / wait: consumes completion entries, copies statuses to the caller's
 *              buffer, frees the slot; when the daemon is gone, completes what is left.
 * Set-up calls (hello, register, unregister, stats) take call_mu for one round trip on the
 * socket; it is never taken on the unix data path. Over TCP, call_mu also guards the socket
 * for SUBMIT sends and for reading COMPLETE messages (poll and wait take it then).
 *
 * Slots. slots[i] describes the request in arena slot i. state moves FREE -> BUSY only in the
 * submitter (a plain scan from a cursor: no free list to hand back and forth) and BUSY -> FREE
 * in the completer (a completion), or by compare-and-swap in either when the daemon died (the
 * completer's sweep, or a submitter withdrawing the request it raced with the death): exactly
 * one side wins, so each ticket completes exactly once. The slot's other fields are written by
 * the submitter before its release store of BUSY and read by the completer after an acquire
 * load of it.
 *
 * Memory orders on the rings (the daemon's side pairs with these, server.c):
 *  - sq: entry writes, then release store of sq->head (pairs with the daemon's acquire load);
 *    seq_cst fence, then load of sq->sleeping: pairs with the daemon's store of sleeping,
 *    seq_cst fence, load of head (Dekker: one of the two sees the other);
 *  - cq: acquire load of cq->head (pairs with the daemon's release store after it wrote the
 *    entry and the statuses), release store of cq->tail after the entries were read;
 *    wait() stores cq->sleeping = 1, seq_cst fence, re-checks cq->head before it blocks.
 *
 * Death. `dead` (0, or the negative code that calls report) is set by whoever sees the socket
 * fail: the completer's hang-up check, a set-up call, a TCP send. The completer then drains
 * real completions first (the daemon may have posted some before dying) and only then sweeps
 * the BUSY slots into error completions.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <shadow/client.h>

#include "client/proto.h"
#include "core/clock.h"
#include "core/log.h"

#define CLIENT_HUP_CHECK_NS (10 * SHADOW_NS_PER_MS)
#define CLIENT_TICKET_SLOT_BITS 10u /* SHADOW_PROTO_SLOTS_MAX = 1 << 10 */
/* TCP: the largest message from the daemon (a COMPLETE of a full request, or any reply). */
#define CLIENT_RX_MAX SHADOW_MAX(sizeof(struct shadow_proto_complete) + SHADOW_PROTO_CHUNKS_MAX, \
				 (size_t)SHADOW_PROTO_MSG_MAX)

SHADOW_STATIC_ASSERT((1u << CLIENT_TICKET_SLOT_BITS) == SHADOW_PROTO_SLOTS_MAX,
		     "a ticket's low bits hold its slot");

enum { SLOT_FREE = 0, SLOT_BUSY = 1 };

struct client_slot {
	_Atomic uint32_t state;
	uint32_t op;             /* enum shadow_client_op */
	uint64_t ticket;
	uint8_t *chunk_status;   /* caller's, or NULL */
	void *user;
	uint32_t n_chunks;
	uint32_t chunk_tokens;
	uint64_t status_off;     /* arena offset of the statuses the daemon writes */
};

struct client_region {
	_Atomic bool used;       /* release-stored after the fields below */
	struct shadow_kv_geometry geom;
	uint32_t n_blocks;
	uint32_t bpc;            /* blocks per chunk */
};

struct shadow_client {
	bool tcp;
	int sock;
	int sq_efd, cq_efd;      /* unix only; -1 over TCP */
	int epfd;                /* shadow_client_fd() */
	uint8_t *shm;            /* unix: the memfd mapping; TCP: private memory, same layout */
	struct shadow__proto_shm_layout lay;
	struct shadow_proto_ring *sq, *cq;
	struct shadow_proto_sqe *sqes;
	struct shadow_proto_cqe *cqes;
	uint8_t *arena;
	struct client_slot *slots;
	struct client_region regions[SHADOW_PROTO_REGIONS_MAX];
	int64_t clock_offset_ns; /* the daemon's CLOCK_MONOTONIC minus ours (0 over unix) */
	uint32_t client_id;
	uint32_t max_chunks;
	uint32_t call_timeout_ms;

	/* Submitter only. */
	uint32_t sq_head;
	uint32_t slot_cursor;
	uint64_t ticket_seq;

	/* Completer only. */
	uint32_t cq_tail;
	uint64_t next_hup_check_ns;

	/* Shared. */
	_Atomic int dead;
	_Atomic uint32_t in_flight;
	_Atomic uint32_t n_regions;
	pthread_mutex_t call_mu;
	uint64_t call_seq;       /* under call_mu */

	/* TCP, under call_mu. */
	uint8_t *rx;
	size_t rx_len;
	uint8_t *tx;             /* a SUBMIT message: header, sqe, then up to slot_nbytes */

	/* Counters: relaxed atomics, each written by one role. */
	_Atomic uint64_t st_submitted, st_completed, st_failed, st_cancels, st_chunks_ok,
		st_chunks_failed, st_doorbells, st_sleeps;
};

/* ------------------------------------------------------------------------------------------ */
/* Stateless helpers                                                                          */
/* ------------------------------------------------------------------------------------------ */

const char *shadow_client_version(void)
{
	return shadow_version();
}

const char *shadow_client_strerror(int status)
{
	return shadow_strerror(status);
}

const char *shadow_client_chunk_status_name(int status)
{
	return shadow_chunk_status_name(status);
}

uint64_t shadow_client_now_ns(void)
{
	return shadow__now_ns();
}

int shadow_client_geometry_preset(const char *name, struct shadow_kv_geometry *geom_ret)
{
	return shadow_geometry_preset(name, geom_ret);
}

int shadow_client_layout_init(struct shadow_kv_layout *layout_ret,
			      const struct shadow_kv_geometry *geom, enum shadow_layout_kind kind,
			      uint32_t n_blocks, uint64_t region_offset, uint64_t region_nbytes)
{
	return shadow_layout_init(layout_ret, geom, kind, n_blocks, region_offset, region_nbytes);
}

void shadow_client_options_default(struct shadow_client_options *opts_ret)
{
	memset(opts_ret, 0, sizeof(*opts_ret));
	opts_ret->size = sizeof(*opts_ret);
	opts_ret->max_inflight = 64;
	opts_ret->slot_nbytes = 128u << 10;
	opts_ret->connect_timeout_ms = 2000;
	opts_ret->call_timeout_ms = 10000;
}

/* ------------------------------------------------------------------------------------------ */
/* Socket                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static int remaining_ms(uint64_t deadline_ns)
{
	uint64_t now = shadow__now_ns();

	if (now >= deadline_ns)
		return 0;
	uint64_t ms = (deadline_ns - now + SHADOW_NS_PER_MS - 1) / SHADOW_NS_PER_MS;
	return ms > INT32_MAX ? INT32_MAX : (int)ms;
}

/* The first error wins; later ones keep it. */
static void mark_dead(struct shadow_client *c, int err)
{
	int zero = 0;

	if (atomic_compare_exchange_strong_explicit(&c->dead, &zero, err, memory_order_seq_cst,
						    memory_order_seq_cst))
		SHADOW_LOGI("client: connection to shadowd lost: %s", shadow_strerror(err));
}

static int is_dead(struct shadow_client *c)
{
	return atomic_load_explicit(&c->dead, memory_order_seq_cst);
}

/* Connect a non-blocking socket within the deadline. Returns the fd or -errno. */
static int connect_addr(int domain, int type, const struct sockaddr *sa, socklen_t sa_len,
			uint64_t deadline_ns)
{
	int fd = socket(domain, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	int err;

	if (fd < 0)
		return -errno;
	if (connect(fd, sa, sa_len) == 0)
		return fd;
	err = errno;
	if (err != EINPROGRESS && err != EAGAIN) {
		close(fd);
		return -err;
	}
	/* unix sockets answer EAGAIN when the backlog is full: retry until the deadline. */
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLOUT };
		int ms = remaining_ms(deadline_ns);
		int n = poll(&p, 1, err == EAGAIN ? SHADOW_MIN(ms, 10) : ms);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			err = errno;
			break;
		}
		if (err == EAGAIN) {
			if (connect(fd, sa, sa_len) == 0)
				return fd;
			if (errno != EAGAIN) {
				err = errno;
				break;
			}
			if (ms == 0) {
				err = ETIMEDOUT;
				break;
			}
			continue;
		}
		if (n == 0) {
			err = ETIMEDOUT;
			break;
		}
		int so = 0;
		socklen_t len = sizeof(so);
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &len) < 0)
			so = errno;
		if (so == 0)
			return fd;
		err = so;
		break;
	}
	close(fd);
	return -err;
}

static int connect_endpoint(const char *endpoint, bool *tcp_ret, uint64_t deadline_ns)
{
	if (strncmp(endpoint, "unix:", 5) == 0) {
		struct sockaddr_un sun = { .sun_family = AF_UNIX };
		const char *path = endpoint + 5;

		if (path[0] == '\0' || strlen(path) >= sizeof(sun.sun_path))
			return -EINVAL;
		memcpy(sun.sun_path, path, strlen(path) + 1);
		*tcp_ret = false;
		return connect_addr(AF_UNIX, SOCK_SEQPACKET, (struct sockaddr *)&sun, sizeof(sun),
				    deadline_ns);
	}
	if (strncmp(endpoint, "tcp:", 4) == 0) {
		char host[256];
		const char *port;

		if (shadow__proto_split_hostport(endpoint + 4, host, sizeof(host), &port) < 0)
			return -EINVAL;
		struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
					  .ai_flags = AI_NUMERICSERV };
		struct addrinfo *res = NULL;
		if (getaddrinfo(host, port, &hints, &res) != 0 || res == NULL)
			return -EHOSTUNREACH;
		int fd = -EHOSTUNREACH;
		for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
			fd = connect_addr(ai->ai_family, SOCK_STREAM, ai->ai_addr, ai->ai_addrlen,
					  deadline_ns);
			if (fd >= 0)
				break;
		}
		freeaddrinfo(res);
		if (fd >= 0) {
			int one = 1;
			(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		}
		*tcp_ret = true;
		return fd;
	}
	return -EINVAL;
}

/* Send one whole message (with fds on unix). Returns 0 or -errno; the caller marks death. */
static int send_msg(struct shadow_client *c, const void *msg, size_t nbytes, const int *fds,
		    int n_fds, uint64_t deadline_ns)
{
	const uint8_t *p = msg;
	size_t done = 0;

	while (done < nbytes) {
		struct iovec iov = { (void *)(p + done), nbytes - done };
		union {
			char buf[CMSG_SPACE(3 * sizeof(int))];
			struct cmsghdr align;
		} u;
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

		if (n_fds > 0 && done == 0) {
			memset(&u, 0, sizeof(u));
			mh.msg_control = u.buf;
			mh.msg_controllen = CMSG_SPACE((size_t)n_fds * sizeof(int));
			struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
			cm->cmsg_level = SOL_SOCKET;
			cm->cmsg_type = SCM_RIGHTS;
			cm->cmsg_len = CMSG_LEN((size_t)n_fds * sizeof(int));
			memcpy(CMSG_DATA(cm), fds, (size_t)n_fds * sizeof(int));
		}
		ssize_t n = sendmsg(c->sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n > 0) {
			done += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			struct pollfd pf = { .fd = c->sock, .events = POLLOUT };
			int ms = remaining_ms(deadline_ns);
			if (ms == 0)
				return -ETIMEDOUT;
			if (poll(&pf, 1, ms) < 0 && errno != EINTR)
				return -errno;
			if (pf.revents & (POLLHUP | POLLERR))
				return -ECONNRESET;
			continue;
		}
		return n < 0 ? -errno : -EPIPE;
	}
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* TCP: COMPLETE messages into the private completion ring                                    */
/* ------------------------------------------------------------------------------------------ */

/*
 * Take one COMPLETE message: its statuses go where the daemon would have written them in
 * shared memory, its entry onto the (private) completion ring. Untrusted: a message that does
 * not match a request in flight is a protocol error.
 */
static int tcp_take_complete(struct shadow_client *c, const uint8_t *msg, size_t nbytes)
{
	struct shadow_proto_cqe cqe;
	uint32_t head = atomic_load_explicit(&c->cq->head, memory_order_relaxed);
	uint32_t tail = atomic_load_explicit(&c->cq->tail, memory_order_acquire);

	if (nbytes < sizeof(struct shadow_proto_complete))
		return SHADOW_EPROTO;
	memcpy(&cqe, msg + sizeof(struct shadow_proto_hdr), sizeof(cqe));
	if (cqe.slot >= c->lay.n_slots || nbytes != sizeof(struct shadow_proto_complete) +
							   (uint64_t)cqe.n_chunks)
		return SHADOW_EPROTO;
	struct client_slot *s = &c->slots[cqe.slot];
	if (atomic_load_explicit(&s->state, memory_order_acquire) != SLOT_BUSY ||
	    s->ticket != cqe.ticket || (cqe.n_chunks != 0 && cqe.n_chunks != s->n_chunks) ||
	    head - tail >= c->lay.cq_entries)
		return SHADOW_EPROTO;
	if (cqe.n_chunks != 0 && s->status_off != 0)
		memcpy(c->arena + s->status_off, msg + sizeof(struct shadow_proto_complete),
		       cqe.n_chunks);
	c->cqes[head & (c->lay.cq_entries - 1)] = cqe;
	/* release: pairs with the completer's acquire load of head, as from the daemon. */
	atomic_store_explicit(&c->cq->head, head + 1, memory_order_release);
	return 0;
}

/*
 * Read what the socket has (wait up to timeout_ms for the first bytes), dispatching COMPLETE
 * messages; a reply with sequence number `seq` is copied into reply (reply_max bytes) and
 * *got_reply set. Caller holds call_mu. Returns 0 or a negative code (death: marked here).
 */
static int tcp_read(struct shadow_client *c, int timeout_ms, uint64_t seq, void *reply,
		    size_t reply_max, bool *got_reply)
{
	for (;;) {
		/* Whole messages in the buffer first. */
		while (c->rx_len >= sizeof(struct shadow_proto_hdr)) {
			struct shadow_proto_hdr h;
			memcpy(&h, c->rx, sizeof(h));
			if (h.nbytes < sizeof(h) || h.nbytes > CLIENT_RX_MAX) {
				mark_dead(c, -ECONNRESET);
				return SHADOW_EPROTO;
			}
			if (c->rx_len < h.nbytes)
				break;
			if (h.type == SHADOW_PROTO_COMPLETE) {
				int rc = tcp_take_complete(c, c->rx, h.nbytes);
				if (rc < 0) {
					SHADOW_LOGE("client: malformed COMPLETE from shadowd");
					mark_dead(c, -ECONNRESET);
					return rc;
				}
			} else if (got_reply != NULL && h.seq == seq && !*got_reply) {
				memcpy(reply, c->rx, SHADOW_MIN((size_t)h.nbytes, reply_max));
				if (h.nbytes < reply_max)
					memset((uint8_t *)reply + h.nbytes, 0, reply_max - h.nbytes);
				*got_reply = true;
			} /* else: a stale reply of a call that timed out */
			memmove(c->rx, c->rx + h.nbytes, c->rx_len - h.nbytes);
			c->rx_len -= h.nbytes;
		}
		if (got_reply != NULL && *got_reply)
			return 0;
		ssize_t n = recv(c->sock, c->rx + c->rx_len, CLIENT_RX_MAX - c->rx_len,
				 MSG_DONTWAIT);
		if (n > 0) {
			c->rx_len += (size_t)n;
			timeout_ms = 0; /* got bytes: take what else is there, don't wait */
			continue;
		}
		if (n == 0) {
			mark_dead(c, -ECONNRESET);
			return -ECONNRESET;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN) {
			int err = -errno;
			mark_dead(c, err == -EPIPE ? -EPIPE : -ECONNRESET);
			return err;
		}
		if (timeout_ms == 0)
			return 0;
		struct pollfd p = { .fd = c->sock, .events = POLLIN };
		uint64_t t0 = shadow__now_ns();
		int r = poll(&p, 1, timeout_ms);
		if (r < 0 && errno != EINTR)
			return -errno;
		if (r == 0)
			return 0;
		if (timeout_ms > 0) {
			uint64_t spent = (shadow__now_ns() - t0) / SHADOW_NS_PER_MS;
			timeout_ms = spent >= (uint64_t)timeout_ms ? 0 : timeout_ms - (int)spent;
		}
	}
}

/* ------------------------------------------------------------------------------------------ */
/* Set-up calls                                                                               */
/* ------------------------------------------------------------------------------------------ */

/*
 * One round trip: send `msg` (its header's type and nbytes set by the caller; seq set here)
 * with fds, and wait for the reply of type `reply_type` into reply (reply_max bytes; shorter
 * replies are zero-filled). Holds call_mu. Returns 0 or a negative code.
 */
static int call(struct shadow_client *c, void *msg, const int *fds, int n_fds, uint32_t reply_type,
		void *reply, size_t reply_max, uint32_t timeout_ms)
{
	struct shadow_proto_hdr *h = msg;
	uint64_t deadline = shadow__deadline_ns(shadow__now_ns(), timeout_ms * SHADOW_NS_PER_MS);
	int rc;

	pthread_mutex_lock(&c->call_mu);
	rc = is_dead(c);
	if (rc != 0)
		goto out;
	h->seq = ++c->call_seq;
	rc = send_msg(c, msg, h->nbytes, fds, n_fds, deadline);
	if (rc < 0) {
		if (rc != -ETIMEDOUT)
			mark_dead(c, rc == -EPIPE ? -EPIPE : -ECONNRESET);
		goto out;
	}
	if (c->tcp) {
		bool got = false;
		while (!got) {
			int ms = remaining_ms(deadline);
			rc = tcp_read(c, ms, h->seq, reply, reply_max, &got);
			if (rc < 0)
				goto out;
			if (!got && ms == 0) {
				rc = -ETIMEDOUT;
				goto out;
			}
		}
	} else {
		for (;;) {
			uint8_t buf[SHADOW_PROTO_MSG_MAX];
			ssize_t n = recv(c->sock, buf, sizeof(buf), MSG_DONTWAIT | MSG_TRUNC);
			if (n == 0) {
				mark_dead(c, -ECONNRESET);
				rc = -ECONNRESET;
				goto out;
			}
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0 && errno != EAGAIN) {
				rc = -errno;
				mark_dead(c, -ECONNRESET);
				goto out;
			}
			if (n < 0) {
				struct pollfd p = { .fd = c->sock, .events = POLLIN };
				int ms = remaining_ms(deadline);
				if (ms == 0) {
					rc = -ETIMEDOUT;
					goto out;
				}
				if (poll(&p, 1, ms) < 0 && errno != EINTR) {
					rc = -errno;
					goto out;
				}
				continue;
			}
			struct shadow_proto_hdr rh;
			if ((size_t)n > sizeof(buf) || (size_t)n < sizeof(rh)) {
				rc = SHADOW_EPROTO;
				mark_dead(c, -ECONNRESET);
				goto out;
			}
			memcpy(&rh, buf, sizeof(rh));
			if (rh.seq != h->seq)
				continue; /* a stale reply of a call that timed out */
			memcpy(reply, buf, SHADOW_MIN((size_t)n, reply_max));
			if ((size_t)n < reply_max)
				memset((uint8_t *)reply + n, 0, reply_max - (size_t)n);
			break;
		}
	}
	struct shadow_proto_hdr rh;
	memcpy(&rh, reply, sizeof(rh));
	rc = rh.type == reply_type && rh.nbytes >= sizeof(rh) ? 0 : SHADOW_EPROTO;
out:
	pthread_mutex_unlock(&c->call_mu);
	return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Connect and close                                                                          */
/* ------------------------------------------------------------------------------------------ */

static int shm_create(struct shadow_client *c, int *memfd_ret)
{
	uint64_t total = c->lay.total_nbytes;

	if (c->tcp) {
		/* The same layout in private memory: one code path for both transports. */
		c->shm = mmap(NULL, (size_t)total, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (c->shm == MAP_FAILED) {
			c->shm = NULL;
			return -errno;
		}
		*memfd_ret = -1;
		return 0;
	}
	int fd = memfd_create("shadow-client", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)total) < 0 ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	c->shm = mmap(NULL, (size_t)total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (c->shm == MAP_FAILED) {
		int err = -errno;
		c->shm = NULL;
		close(fd);
		return err;
	}
	*memfd_ret = fd;
	return 0;
}

static void client_free(struct shadow_client *c)
{
	if (c->sock >= 0)
		close(c->sock);
	if (c->sq_efd >= 0)
		close(c->sq_efd);
	if (c->cq_efd >= 0)
		close(c->cq_efd);
	if (c->epfd >= 0)
		close(c->epfd);
	if (c->shm != NULL)
		munmap(c->shm, (size_t)c->lay.total_nbytes);
	free(c->slots);
	free(c->rx);
	free(c->tx);
	pthread_mutex_destroy(&c->call_mu);
	free(c);
}

int shadow_client_connect(const char *endpoint, const struct shadow_client_options *opts,
			  struct shadow_client **client_ret)
{
	struct shadow_client_options o;
	struct shadow_client *c;
	int memfd = -1, rc;

	if (endpoint == NULL || client_ret == NULL)
		return -EINVAL;
	shadow_client_options_default(&o);
	if (opts != NULL) {
		if (opts->size < sizeof(opts->size))
			return -EINVAL;
		memcpy(&o, opts, SHADOW_MIN(opts->size, sizeof(o)));
		o.size = sizeof(o);
	}
	if (o.connect_timeout_ms == 0 || o.call_timeout_ms == 0)
		return -EINVAL;
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return -ENOMEM;
	c->sock = c->sq_efd = c->cq_efd = c->epfd = -1;
	pthread_mutex_init(&c->call_mu, NULL);
	c->call_timeout_ms = o.call_timeout_ms;
	rc = shadow__proto_shm_layout(o.max_inflight, o.slot_nbytes, &c->lay);
	if (rc < 0)
		goto fail;

	uint64_t deadline = shadow__deadline_ns(shadow__now_ns(),
						o.connect_timeout_ms * SHADOW_NS_PER_MS);
	rc = connect_endpoint(endpoint, &c->tcp, deadline);
	if (rc < 0)
		goto fail;
	c->sock = rc;

	rc = shm_create(c, &memfd);
	if (rc < 0)
		goto fail;
	struct shadow_proto_shm_hdr *sh = (struct shadow_proto_shm_hdr *)c->shm;
	sh->magic = SHADOW_PROTO_MAGIC;
	sh->version = SHADOW_PROTO_VERSION;
	sh->n_slots = c->lay.n_slots;
	sh->sq_entries = c->lay.sq_entries;
	sh->slot_nbytes = c->lay.slot_nbytes;
	sh->total_nbytes = c->lay.total_nbytes;
	c->sq = (struct shadow_proto_ring *)(c->shm + c->lay.sq_ring_off);
	c->cq = (struct shadow_proto_ring *)(c->shm + c->lay.cq_ring_off);
	c->sqes = (struct shadow_proto_sqe *)(c->shm + c->lay.sqes_off);
	c->cqes = (struct shadow_proto_cqe *)(c->shm + c->lay.cqes_off);
	c->arena = c->shm + c->lay.arena_off;
	c->slots = calloc(c->lay.n_slots, sizeof(*c->slots));
	if (c->slots == NULL) {
		rc = -ENOMEM;
		goto fail;
	}
	if (c->tcp) {
		c->rx = malloc(CLIENT_RX_MAX);
		c->tx = malloc(sizeof(struct shadow_proto_submit) + c->lay.slot_nbytes);
		if (c->rx == NULL || c->tx == NULL) {
			rc = -ENOMEM;
			goto fail;
		}
	} else {
		c->sq_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		c->cq_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (c->sq_efd < 0 || c->cq_efd < 0) {
			rc = -errno;
			goto fail;
		}
	}

	struct shadow_proto_hello hello = {
		.hdr = { .type = SHADOW_PROTO_HELLO, .nbytes = sizeof(hello) },
		.magic = SHADOW_PROTO_MAGIC,
		.version = SHADOW_PROTO_VERSION,
		.pid = (uint32_t)getpid(),
		.flags = c->tcp ? 0 : SHADOW_PROTO_HELLO_SHM,
		.n_slots = c->lay.n_slots,
		.slot_nbytes = c->lay.slot_nbytes,
		.shm_nbytes = c->lay.total_nbytes,
	};
	if (o.name != NULL)
		strncpy(hello.name, o.name, sizeof(hello.name) - 1);
	int fds[3] = { memfd, c->sq_efd, c->cq_efd };
	struct shadow_proto_hello_reply rep;
	rc = call(c, &hello, fds, c->tcp ? 0 : 3, SHADOW_PROTO_HELLO_REPLY, &rep, sizeof(rep),
		  remaining_ms(deadline) > 0 ? (uint32_t)remaining_ms(deadline) : 1);
	if (memfd >= 0) {
		close(memfd); /* the mapping and the daemon's copy keep the memory */
		memfd = -1;
	}
	if (rc == -ECONNRESET || rc == -EPIPE)
		rc = -ECONNREFUSED; /* refused during the hello (the daemon closed on us) */
	if (rc < 0)
		goto fail;
	if (rep.status < 0) {
		rc = rep.status;
		goto fail;
	}
	if (rep.version != SHADOW_PROTO_VERSION) {
		rc = SHADOW_EVERSION;
		goto fail;
	}
	c->client_id = rep.client_id;
	c->max_chunks = SHADOW_MIN(rep.max_chunks, SHADOW_PROTO_CHUNKS_MAX);
	if (c->max_chunks == 0) {
		rc = SHADOW_EPROTO;
		goto fail;
	}
	if (c->tcp)
		c->clock_offset_ns = (int64_t)(rep.daemon_now_ns - shadow__now_ns());

	/* The fd for an outer event loop: completion eventfd (or the TCP socket) + hang-up. */
	c->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (c->epfd < 0) {
		rc = -errno;
		goto fail;
	}
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP };
	ev.data.fd = c->sock;
	if (c->tcp) {
		if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, c->sock, &ev) < 0) {
			rc = -errno;
			goto fail;
		}
	} else {
		ev.events = EPOLLRDHUP; /* hang-up only: replies are for set-up calls */
		if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, c->sock, &ev) < 0) {
			rc = -errno;
			goto fail;
		}
		ev.events = EPOLLIN;
		ev.data.fd = c->cq_efd;
		if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, c->cq_efd, &ev) < 0) {
			rc = -errno;
			goto fail;
		}
	}
	c->next_hup_check_ns = shadow__now_coarse_ns() + CLIENT_HUP_CHECK_NS;
	*client_ret = c;
	return 0;
fail:
	if (memfd >= 0)
		close(memfd);
	client_free(c);
	return rc;
}

void shadow_client_close(struct shadow_client *client)
{
	if (client == NULL)
		return;
	/* Closing the socket is the goodbye: the daemon cancels, reclaims and forgets us. */
	client_free(client);
}

int shadow_client_fd(const struct shadow_client *client)
{
	return client->epfd;
}

/* ------------------------------------------------------------------------------------------ */
/* Regions and keys                                                                           */
/* ------------------------------------------------------------------------------------------ */

int shadow_client_register_kv(struct shadow_client *c, const struct shadow_kv_geometry *geom,
			      const struct shadow_kv_layout *layout,
			      const struct shadow_client_memory *mem, uint32_t *region_id_ret)
{
	struct shadow_client_memory m = { 0 };
	int rc;

	if (c == NULL || geom == NULL || layout == NULL || mem == NULL || region_id_ret == NULL ||
	    mem->size < sizeof(mem->size))
		return -EINVAL;
	memcpy(&m, mem, SHADOW_MIN(mem->size, sizeof(m)));
	rc = shadow_layout_validate(layout, geom);
	if (rc < 0)
		return rc;

	struct shadow_proto_region_add msg;
	memset(&msg, 0, sizeof(msg));
	msg.hdr.type = SHADOW_PROTO_REGION_ADD;
	msg.hdr.nbytes = sizeof(msg);
	msg.geom = *geom;
	msg.layout = *layout;
	int fd = -1;
	if (m.kind == SHADOW_CLIENT_MEM_HOST) {
		if (c->tcp)
			return SHADOW_EUNSUPPORTED;
		if (m.fd < 0)
			return -EINVAL;
		/* The daemon maps the fd and refuses one that could shrink under it. */
		int seals = fcntl(m.fd, F_GET_SEALS);
		if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
			if (fcntl(m.fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)
				return errno == EINVAL ? -EPERM : -errno;
		}
		msg.mem_kind = SHADOW_PROTO_MEM_HOST;
		msg.fd_offset = m.fd_offset;
		fd = m.fd;
	} else if (m.kind == SHADOW_CLIENT_MEM_CUDA) {
		msg.mem_kind = SHADOW_PROTO_MEM_CUDA;
		msg.device = m.cuda.device;
		memcpy(msg.ipc_handle, m.cuda.handle, sizeof(msg.ipc_handle));
	} else {
		return -EINVAL;
	}

	struct shadow_proto_region_add_reply rep;
	rc = call(c, &msg, &fd, fd >= 0 ? 1 : 0, SHADOW_PROTO_REGION_ADD_REPLY, &rep, sizeof(rep),
		  c->call_timeout_ms);
	if (rc < 0)
		return rc;
	if (rep.status < 0)
		return rep.status;
	if (rep.region >= SHADOW_PROTO_REGIONS_MAX)
		return SHADOW_EPROTO;
	struct client_region *r = &c->regions[rep.region];
	r->geom = *geom;
	r->n_blocks = layout->n_blocks;
	r->bpc = geom->chunk_tokens / geom->block_tokens;
	/* release: a submitter that sees `used` sees the fields. */
	atomic_store_explicit(&r->used, true, memory_order_release);
	atomic_fetch_add_explicit(&c->n_regions, 1, memory_order_relaxed);
	*region_id_ret = rep.region;
	return 0;
}

int shadow_client_unregister(struct shadow_client *c, uint32_t region_id)
{
	struct shadow_proto_region_remove msg = {
		.hdr = { .type = SHADOW_PROTO_REGION_REMOVE, .nbytes = sizeof(msg) },
		.region = region_id,
	};
	struct shadow_proto_reply rep;
	int rc;

	if (c == NULL)
		return -EINVAL;
	if (region_id >= SHADOW_PROTO_REGIONS_MAX ||
	    !atomic_load_explicit(&c->regions[region_id].used, memory_order_acquire))
		return -ENOENT;
	rc = call(c, &msg, NULL, 0, SHADOW_PROTO_REGION_REMOVE_REPLY, &rep, sizeof(rep),
		  c->call_timeout_ms);
	if (rc < 0)
		return rc;
	if (rep.status == 0 || rep.status == -ENOENT) {
		atomic_store_explicit(&c->regions[region_id].used, false, memory_order_release);
		atomic_fetch_sub_explicit(&c->n_regions, 1, memory_order_relaxed);
	}
	return rep.status;
}

static const struct client_region *region_of(struct shadow_client *c, uint32_t id)
{
	if (id >= SHADOW_PROTO_REGIONS_MAX ||
	    !atomic_load_explicit(&c->regions[id].used, memory_order_acquire))
		return NULL;
	return &c->regions[id];
}

int shadow_client_namespace(struct shadow_client *c, uint32_t region_id, const char *model_id,
			    const void *salt, size_t salt_nbytes, struct shadow_chunk_key *ns_ret)
{
	const struct client_region *r;

	if (c == NULL)
		return -EINVAL;
	r = region_of(c, region_id);
	if (r == NULL)
		return -ENOENT;
	return shadow_key_namespace(model_id, &r->geom, salt, salt_nbytes, ns_ret);
}

int shadow_client_chunk_keys(struct shadow_client *c, uint32_t region_id,
			     const struct shadow_chunk_key *ns, const uint32_t *tokens,
			     size_t n_tokens, struct shadow_chunk_key *keys_ret, size_t max_keys,
			     size_t *n_keys_ret)
{
	const struct client_region *r;

	if (c == NULL)
		return -EINVAL;
	r = region_of(c, region_id);
	if (r == NULL)
		return -ENOENT;
	return shadow_key_chain(ns, tokens, n_tokens, r->geom.chunk_tokens, keys_ret, max_keys,
				n_keys_ret);
}

/* ------------------------------------------------------------------------------------------ */
/* Submission                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* Ring the daemon if it said it sleeps (client.h: the only syscall of a submission). */
static void sq_kick(struct shadow_client *c)
{
	/* Pairs with the daemon's fence between its store of `sleeping` and its head re-check. */
	atomic_thread_fence(memory_order_seq_cst);
	if (atomic_load_explicit(&c->sq->sleeping, memory_order_relaxed) != 0 &&
	    atomic_exchange_explicit(&c->sq->sleeping, 0, memory_order_relaxed) != 0) {
		uint64_t one = 1;
		(void)!write(c->sq_efd, &one, sizeof(one));
		atomic_fetch_add_explicit(&c->st_doorbells, 1, memory_order_relaxed);
	}
}

/*
 * Put one entry on the submission ring (unix) or send it (TCP). Returns 0, -EAGAIN (ring
 * full), or a send error (TCP; death marked).
 */
static int sq_push(struct shadow_client *c, const struct shadow_proto_sqe *sqe)
{
	if (c->tcp) {
		struct shadow_proto_submit *m = (struct shadow_proto_submit *)c->tx;
		size_t extra = 0;

		m->hdr.type = SHADOW_PROTO_SUBMIT;
		m->hdr.seq = 0;
		m->sqe = *sqe;
		if (sqe->opcode != SHADOW_PROTO_OP_CANCEL) {
			/* keys, then block ids, copied from the arena slot as the daemon reads them */
			size_t kn = (size_t)sqe->n_chunks * sizeof(struct shadow_chunk_key);
			size_t bn = (size_t)sqe->n_block_ids * sizeof(uint32_t);
			memcpy(c->tx + sizeof(*m), c->arena + sqe->keys_off, kn);
			if (bn != 0)
				memcpy(c->tx + sizeof(*m) + kn, c->arena + sqe->blocks_off, bn);
			extra = kn + bn;
		}
		m->hdr.nbytes = (uint32_t)(sizeof(*m) + extra);
		pthread_mutex_lock(&c->call_mu);
		int rc = send_msg(c, c->tx, m->hdr.nbytes, NULL, 0,
				  shadow__deadline_ns(shadow__now_ns(),
						      c->call_timeout_ms * SHADOW_NS_PER_MS));
		pthread_mutex_unlock(&c->call_mu);
		if (rc < 0) {
			mark_dead(c, rc == -EPIPE ? -EPIPE : -ECONNRESET);
			return -EPIPE;
		}
		return 0;
	}
	/* acquire: pairs with the daemon's release store of tail (it is done with the entry). */
	uint32_t tail = atomic_load_explicit(&c->sq->tail, memory_order_acquire);
	if (c->sq_head - tail >= c->lay.sq_entries)
		return -EAGAIN;
	c->sqes[c->sq_head & (c->lay.sq_entries - 1)] = *sqe;
	c->sq_head++;
	/* release: the entry and the arena bytes before the daemon reads them. */
	atomic_store_explicit(&c->sq->head, c->sq_head, memory_order_release);
	sq_kick(c);
	return 0;
}

static int submit(struct shadow_client *c, uint32_t op, const struct shadow_client_request *r_in,
		  uint64_t *ticket_ret)
{
	struct shadow_client_request req = { 0 };
	const struct client_region *r;
	int rc;

	if (c == NULL || r_in == NULL || ticket_ret == NULL || r_in->size < sizeof(r_in->size))
		return -EINVAL;
	memcpy(&req, r_in, SHADOW_MIN(r_in->size, sizeof(req)));
	if (is_dead(c) != 0)
		return -EPIPE;
	r = region_of(c, req.region);
	if (r == NULL && !(op == SHADOW_CLIENT_LOOKUP && req.keys != NULL &&
			   req.region == SHADOW_CLIENT_NO_REGION))
		return -ENOENT;

	/* A free slot: only this thread makes slots BUSY, so FREE stays FREE once seen. */
	uint32_t n_slots = c->lay.n_slots, s = UINT32_MAX;
	for (uint32_t i = 0; i < n_slots; i++) {
		uint32_t cand = (c->slot_cursor + i) & (n_slots - 1);
		/* acquire: pairs with the completer's release store of FREE (its reads of the
		 * slot's arena bytes are done before we overwrite them). */
		if (atomic_load_explicit(&c->slots[cand].state, memory_order_acquire) == SLOT_FREE) {
			s = cand;
			break;
		}
	}
	if (s == UINT32_MAX)
		return -EAGAIN;

	uint64_t base = (uint64_t)s * c->lay.slot_nbytes, used = 0;
	uint8_t *slot_mem = c->arena + base;
	uint32_t n, first = req.first_chunk;
	uint64_t keys_off;

	if (req.keys != NULL) {
		n = req.n_chunks;
		if (n == 0 || n > c->max_chunks)
			return -EINVAL;
		used = (uint64_t)n * sizeof(struct shadow_chunk_key);
		if (used > c->lay.slot_nbytes)
			return SHADOW_ELIMIT;
		memcpy(slot_mem, req.keys, (size_t)used);
		keys_off = base;
	} else {
		if (req.tokens == NULL || req.ns == NULL)
			return -EINVAL;
		uint64_t total = req.n_tokens / r->geom.chunk_tokens;
		if (first >= total)
			return -EINVAL;
		n = req.n_chunks != 0 ? req.n_chunks : (uint32_t)SHADOW_MIN(total - first,
									(uint64_t)UINT32_MAX);
		if (n > c->max_chunks || (uint64_t)first + n > total)
			return -EINVAL;
		/* The chain runs from the sequence's start: keys of chunks 0 .. first + n - 1. */
		used = ((uint64_t)first + n) * sizeof(struct shadow_chunk_key);
		if (used > c->lay.slot_nbytes)
			return SHADOW_ELIMIT;
		size_t got = 0;
		rc = shadow_key_chain(req.ns, req.tokens, (size_t)(first + n) * r->geom.chunk_tokens,
				      r->geom.chunk_tokens, (struct shadow_chunk_key *)slot_mem,
				      first + n, &got);
		if (rc < 0)
			return rc;
		if (got != (size_t)first + n)
			return -EINVAL;
		keys_off = base + (uint64_t)first * sizeof(struct shadow_chunk_key);
	}

	struct shadow_proto_sqe sqe = {
		.opcode = op == SHADOW_CLIENT_LOOKUP ? SHADOW_PROTO_OP_LOOKUP :
			  op == SHADOW_CLIENT_FETCH  ? SHADOW_PROTO_OP_FETCH :
						       SHADOW_PROTO_OP_SAVE,
		.slot = s,
		.region = req.region,
		.n_chunks = n,
		.first_chunk = first,
		.keys_off = keys_off,
	};
	uint64_t status_off = 0;
	if (op != SHADOW_CLIENT_LOOKUP) {
		uint64_t n_ids = (uint64_t)n * r->bpc;
		if (req.block_ids == NULL || req.n_block_ids != n_ids)
			return -EINVAL;
		for (uint64_t i = 0; i < n_ids; i++) {
			if (req.block_ids[i] >= r->n_blocks)
				return -EINVAL;
		}
		uint64_t ids_nbytes = n_ids * sizeof(uint32_t);
		/* Keys take a multiple of 32 bytes, so the ids are 4-aligned. */
		if (used + ids_nbytes + n > c->lay.slot_nbytes)
			return SHADOW_ELIMIT;
		memcpy(slot_mem + used, req.block_ids, (size_t)ids_nbytes);
		sqe.blocks_off = base + used;
		sqe.n_block_ids = (uint32_t)n_ids;
		used += ids_nbytes;
		status_off = base + used;
		sqe.status_off = status_off;
		memset(slot_mem + used, SHADOW_CHUNK_ERROR, n);
	}
	if (req.deadline_ns != 0) {
		int64_t d = (int64_t)req.deadline_ns + c->clock_offset_ns;
		sqe.deadline_ns = d > 0 ? (uint64_t)d : 1;
	}

	struct client_slot *sl = &c->slots[s];
	sqe.ticket = (++c->ticket_seq << CLIENT_TICKET_SLOT_BITS) | s;
	sl->op = op;
	sl->ticket = sqe.ticket;
	sl->chunk_status = op == SHADOW_CLIENT_LOOKUP ? NULL : req.chunk_status;
	sl->user = req.user;
	sl->n_chunks = n;
	sl->chunk_tokens = r != NULL ? r->geom.chunk_tokens : 0;
	sl->status_off = status_off;
	atomic_fetch_add_explicit(&c->in_flight, 1, memory_order_relaxed);
	/* release: the fields above before the completer acquires BUSY. */
	atomic_store_explicit(&sl->state, SLOT_BUSY, memory_order_release);

	rc = sq_push(c, &sqe);
	if (rc == 0 && is_dead(c) != 0)
		rc = -EPIPE; /* the daemon died meanwhile: the sweep may or may not have seen us */
	if (rc < 0) {
		uint32_t busy = SLOT_BUSY;
		/* Withdraw, unless the completer's sweep already completed it (then it counts). */
		if (atomic_compare_exchange_strong_explicit(&sl->state, &busy, SLOT_FREE,
							    memory_order_acq_rel,
							    memory_order_acquire)) {
			atomic_fetch_sub_explicit(&c->in_flight, 1, memory_order_relaxed);
			return rc;
		}
	}
	c->slot_cursor = s + 1;
	atomic_fetch_add_explicit(&c->st_submitted, 1, memory_order_relaxed);
	*ticket_ret = sqe.ticket;
	return 0;
}

int shadow_client_lookup(struct shadow_client *c, const struct shadow_client_request *req,
			 uint64_t *ticket_ret)
{
	return submit(c, SHADOW_CLIENT_LOOKUP, req, ticket_ret);
}

int shadow_client_fetch(struct shadow_client *c, const struct shadow_client_request *req,
			uint64_t *ticket_ret)
{
	return submit(c, SHADOW_CLIENT_FETCH, req, ticket_ret);
}

int shadow_client_save(struct shadow_client *c, const struct shadow_client_request *req,
		       uint64_t *ticket_ret)
{
	return submit(c, SHADOW_CLIENT_SAVE, req, ticket_ret);
}

int shadow_client_cancel(struct shadow_client *c, uint64_t ticket)
{
	uint32_t s = (uint32_t)(ticket & (SHADOW_PROTO_SLOTS_MAX - 1));

	if (c == NULL)
		return -EINVAL;
	if (is_dead(c) != 0)
		return -EPIPE;
	if (s >= c->lay.n_slots ||
	    atomic_load_explicit(&c->slots[s].state, memory_order_acquire) != SLOT_BUSY ||
	    c->slots[s].ticket != ticket)
		return -ENOENT;
	struct shadow_proto_sqe sqe = { .ticket = ticket, .opcode = SHADOW_PROTO_OP_CANCEL,
					.slot = s };
	int rc = sq_push(c, &sqe);
	if (rc == 0)
		atomic_fetch_add_explicit(&c->st_cancels, 1, memory_order_relaxed);
	return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Completion                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* Hang-up check of the control socket, at most every CLIENT_HUP_CHECK_NS. */
static void check_hangup(struct shadow_client *c, bool force)
{
	uint64_t now = shadow__now_coarse_ns();
	struct pollfd p = { .fd = c->sock, .events = 0 };

	if (!force && now < c->next_hup_check_ns)
		return;
	c->next_hup_check_ns = now + CLIENT_HUP_CHECK_NS;
	if (poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLERR | POLLNVAL)))
		mark_dead(c, -ECONNRESET);
}

/* Fill `out` for slot s with the given outcome and free the slot (completer). */
static void complete_slot(struct shadow_client *c, struct client_slot *s,
			  const struct shadow_proto_cqe *cqe, int status,
			  struct shadow_client_completion *out)
{
	uint32_t ok = 0;

	memset(out, 0, sizeof(*out));
	out->ticket = s->ticket;
	out->user = s->user;
	out->op = s->op;
	out->status = status;
	out->n_chunks = s->n_chunks;
	if (cqe != NULL) {
		out->n_found = cqe->n_found;
		out->bytes_in = cqe->bytes_in;
		out->bytes_out = cqe->bytes_out;
		out->daemon_ns = cqe->daemon_ns;
		if (s->op == SHADOW_CLIENT_LOOKUP) {
			out->n_found = SHADOW_MIN(cqe->n_found, s->n_chunks);
			out->n_tokens = (uint32_t)SHADOW_MIN((uint64_t)out->n_found *
								     s->chunk_tokens,
							     (uint64_t)UINT32_MAX);
		}
	}
	if (s->op != SHADOW_CLIENT_LOOKUP) {
		/*
		 * The daemon's statuses from the arena when it wrote them (untrusted bytes:
		 * anything unknown is an error); otherwise every chunk gets the request's fate.
		 */
		const uint8_t *src = c->arena + s->status_off;
		bool have = cqe != NULL && cqe->n_chunks == s->n_chunks;
		uint8_t fate = status == -ESHUTDOWN ? SHADOW_CHUNK_CANCELED : SHADOW_CHUNK_ERROR;
		for (uint32_t i = 0; i < s->n_chunks; i++) {
			uint8_t v = have ? src[i] : fate;
			if (v > SHADOW_CHUNK_CANCELED)
				v = SHADOW_CHUNK_ERROR;
			if (s->chunk_status != NULL)
				s->chunk_status[i] = v;
			ok += v == SHADOW_CHUNK_OK;
		}
		out->n_ok = ok;
		out->chunk_status = s->chunk_status;
		atomic_fetch_add_explicit(&c->st_chunks_ok, ok, memory_order_relaxed);
		atomic_fetch_add_explicit(&c->st_chunks_failed, s->n_chunks - ok,
					  memory_order_relaxed);
	}
	atomic_fetch_add_explicit(&c->st_completed, 1, memory_order_relaxed);
	if (status < 0)
		atomic_fetch_add_explicit(&c->st_failed, 1, memory_order_relaxed);
}

static int poll_locked_tcp(struct shadow_client *c)
{
	int rc = 0;

	if (pthread_mutex_trylock(&c->call_mu) == 0) {
		rc = tcp_read(c, 0, 0, NULL, 0, NULL);
		pthread_mutex_unlock(&c->call_mu);
	}
	return rc;
}

int shadow_client_poll(struct shadow_client *c, struct shadow_client_completion *out, int max)
{
	int n = 0;

	if (c == NULL || (out == NULL && max > 0))
		return -EINVAL;
	if (c->tcp)
		(void)poll_locked_tcp(c); /* a failure marks death */
	else
		check_hangup(c, false);

	/* Real completions first: a daemon may post some and then die. */
	/* acquire: pairs with the daemon's release store of head (entries and statuses). */
	uint32_t head = atomic_load_explicit(&c->cq->head, memory_order_acquire);
	if (head - c->cq_tail > c->lay.cq_entries) {
		SHADOW_LOGE("client: completion ring head %u is beyond tail %u: dropping the "
			    "connection", head, c->cq_tail);
		mark_dead(c, -ECONNRESET);
		head = c->cq_tail;
	}
	while (n < max && c->cq_tail != head) {
		struct shadow_proto_cqe cqe = c->cqes[c->cq_tail & (c->lay.cq_entries - 1)];
		c->cq_tail++;
		if (cqe.slot >= c->lay.n_slots)
			goto bad;
		struct client_slot *s = &c->slots[cqe.slot];
		if (atomic_load_explicit(&s->state, memory_order_acquire) != SLOT_BUSY ||
		    s->ticket != cqe.ticket)
			goto bad;
		complete_slot(c, s, &cqe, cqe.status > 0 ? -EPROTO : cqe.status, &out[n++]);
		atomic_fetch_sub_explicit(&c->in_flight, 1, memory_order_relaxed);
		/* release: our reads of the slot's arena bytes before the submitter reuses it. */
		atomic_store_explicit(&s->state, SLOT_FREE, memory_order_release);
		continue;
bad:
		SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR,
				       "client: completion for slot %u ticket %llu matches no "
				       "request: ignored", cqe.slot,
				       (unsigned long long)cqe.ticket);
	}
	/* release: the daemon may reuse the entries we read. */
	atomic_store_explicit(&c->cq->tail, c->cq_tail, memory_order_release);

	int dead = is_dead(c);
	if (dead == 0 || c->cq_tail != head)
		return n;
	/* The daemon is gone: complete what is left, each slot once (CAS against a submitter
	 * that withdraws the request it raced with the death). */
	for (uint32_t i = 0; i < c->lay.n_slots && n < max; i++) {
		struct client_slot *s = &c->slots[i];
		uint32_t busy = SLOT_BUSY;
		if (!atomic_compare_exchange_strong_explicit(&s->state, &busy, SLOT_FREE,
							     memory_order_acq_rel,
							     memory_order_acquire))
			continue;
		complete_slot(c, s, NULL, -ECONNRESET, &out[n++]);
		atomic_fetch_sub_explicit(&c->in_flight, 1, memory_order_relaxed);
	}
	if (n == 0 && atomic_load_explicit(&c->in_flight, memory_order_relaxed) == 0)
		return -ECONNRESET;
	return n;
}

/* Whether poll() would return something now (completer). */
static bool ready(struct shadow_client *c)
{
	if (atomic_load_explicit(&c->cq->head, memory_order_acquire) != c->cq_tail)
		return true;
	return is_dead(c) != 0;
}

int shadow_client_wait(struct shadow_client *c, int timeout_ms)
{
	uint64_t deadline = timeout_ms < 0 ? UINT64_MAX :
			    shadow__deadline_ns(shadow__now_ns(),
						(uint64_t)timeout_ms * SHADOW_NS_PER_MS);

	if (c == NULL)
		return -EINVAL;
	for (;;) {
		if (c->tcp) {
			(void)poll_locked_tcp(c);
		} else {
			uint64_t v;
			(void)!read(c->cq_efd, &v, sizeof(v)); /* clear stale wake-ups */
			atomic_store_explicit(&c->cq->sleeping, 1, memory_order_relaxed);
			/* Pairs with the daemon's fence between its head store and its load of
			 * `sleeping`: either it sees the flag or we see its entry. */
			atomic_thread_fence(memory_order_seq_cst);
			check_hangup(c, true);
		}
		if (ready(c)) {
			if (!c->tcp)
				atomic_store_explicit(&c->cq->sleeping, 0, memory_order_relaxed);
			if (is_dead(c) != 0 && c->cq_tail == atomic_load_explicit(&c->cq->head,
							memory_order_acquire) &&
			    atomic_load_explicit(&c->in_flight, memory_order_relaxed) == 0)
				return -ECONNRESET;
			return 1;
		}
		int ms = timeout_ms < 0 ? -1 : remaining_ms(deadline);
		if (ms == 0)
			return 0;
		struct pollfd p[2] = {
			{ .fd = c->sock, .events = c->tcp ? POLLIN : 0 },
			{ .fd = c->cq_efd, .events = POLLIN },
		};
		atomic_fetch_add_explicit(&c->st_sleeps, 1, memory_order_relaxed);
		int r = poll(p, c->tcp ? 1 : 2, ms);
		if (r < 0 && errno != EINTR)
			return -errno;
		if (r > 0 && (p[0].revents & (POLLHUP | POLLERR | POLLNVAL)) && !c->tcp)
			mark_dead(c, -ECONNRESET);
	}
}

/* ------------------------------------------------------------------------------------------ */
/* Statistics                                                                                 */
/* ------------------------------------------------------------------------------------------ */

int shadow_client_stats(struct shadow_client *c, struct shadow_client_stats *stats_ret)
{
	struct shadow_client_stats s = { 0 };
	size_t size;

	if (c == NULL || stats_ret == NULL || stats_ret->size < sizeof(stats_ret->size))
		return -EINVAL;
	size = SHADOW_MIN(stats_ret->size, sizeof(s));
#define LD(x) atomic_load_explicit(&c->x, memory_order_relaxed)
	s.size = size;
	s.submitted = LD(st_submitted);
	s.completed = LD(st_completed);
	s.failed = LD(st_failed);
	s.cancels = LD(st_cancels);
	s.chunks_ok = LD(st_chunks_ok);
	s.chunks_failed = LD(st_chunks_failed);
	s.doorbells = LD(st_doorbells);
	s.sleeps = LD(st_sleeps);
	s.in_flight = LD(in_flight);
	s.regions = LD(n_regions);
#undef LD
	s.client_id = c->client_id;

	struct shadow_proto_hdr msg = { .type = SHADOW_PROTO_STATS, .nbytes = sizeof(msg) };
	struct shadow_proto_stats_reply rep;
	int rc = call(c, &msg, NULL, 0, SHADOW_PROTO_STATS_REPLY, &rep, sizeof(rep),
		      c->call_timeout_ms);
	if (rc == 0 && rep.status < 0)
		rc = rep.status;
	if (rc == 0) {
		s.daemon_in_flight = rep.in_flight;
		s.daemon_requests = rep.requests;
		s.daemon_rejected = rep.rejected;
		s.daemon_completed = rep.completed;
		s.daemon_bytes_in = rep.bytes_in;
		s.daemon_bytes_out = rep.bytes_out;
		s.daemon_doorbells = rep.doorbells;
	}
	memcpy(stats_ret, &s, size);
	return rc;
}
