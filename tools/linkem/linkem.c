/*
 * linkem - a TCP proxy that emulates one network link (bandwidth and one-way delay in each
 * direction), put between whoever fetches KV chunks and the store so that every benchmark
 * mode sees the same link (docs/linkem.md).
 *
 *   linkem --listen HOST:PORT --connect HOST:PORT --rate-gbps X [--up-rate-gbps Y]
 *          [--delay-ms D] [--up-delay-ms E] [--burst-bytes B] [--buffer-bytes N]
 *          [--pipe-bytes P] [--sockbuf-bytes N] [--max-conns N] [--threads N]
 *          [--cpus LIST] [--stats-interval S]
 *
 * "down" is connect side -> client (the direction of GET replies), "up" is client -> connect
 * side. Up rate and delay default to the down ones; a rate of 0 is unlimited. When listening
 * it prints one line on stdout,
 *   linkem: ready listen=H:P connect=H:P rate=XGbit/s up-rate=... delay=Dms up-delay=...
 * SIGTERM or SIGINT: exit 0. Exit status 1 on a start-up failure, 2 on a usage error.
 *
 * DESIGN
 *   Threads: the main thread accepts (an epoll over the listener, a signalfd and the
 *   --stats-interval timerfd) and hands each accepted socket, round-robin, to one of N worker
 *   threads (--threads, default min(4, CPUs allowed)) through the worker's mailbox, a pipe
 *   that carries descriptor numbers (4-byte writes, atomic). A connection then lives on its
 *   worker until it closes: each worker has its own epoll set (edge-triggered for sockets),
 *   connection slots, timer heap and timerfd, and run queue, and touches no other worker's.
 *   What workers share: the configuration (written before they start, read-only after), the
 *   two pacers (below), and counters (connections open, resets) kept with relaxed atomics.
 *   Each worker counts its own delivered bytes; the main thread sums them for --stats-interval.
 *   Shutdown: the main thread closes the mailboxes' write ends; a worker that reads EOF there
 *   closes its connections and returns, and the main thread joins it.
 *
 *   The link: one pacer per direction, shared by every connection of every worker (they share
 *   one link's bandwidth). It is a virtual clock, next_vt: the time at which the link has sent
 *   everything reserved so far. To send n bytes, a direction reserves the slot
 *     t = max(next_vt, now - credit),   next_vt = t + n x (time per byte)
 *   in one compare-and-swap, and sends at t (at once if t <= now, else when its timer fires).
 *   Reservations never overlap, so the link carries no more than the rate plus `credit`, and
 *   directions that reserve in turn get the rate between them, one slot each, in the order
 *   they asked. `credit` is the burst (an idle link may send that much at once); a direction
 *   that is backlogged (it had bytes left after its last slot) gets CATCHUP_NS instead, so a
 *   worker that wakes up late takes back the time it missed instead of lowering the rate.
 *   Bytes a direction reserved but could not send (the destination's window filled, or the
 *   connection closed) are handed back (next_vt -= their time). A slot is at most a quantum
 *   (a quarter of the burst), so a slow rate costs one wake-up per quarter burst, not one per
 *   segment, and at most half the ring or pipe, so a direction whose source keeps it full
 *   still has bytes after each slot and counts as backlogged (with slots of a whole 1 MiB
 *   pipe, 40 and 100 Gbit/s lost 3-6% of the rate on the 16-core host, to stalls longer
 *   than the burst's credit; with half, 98.5-100%).
 *   Memory order: next_vt is relaxed everywhere. It publishes no other data, and that
 *   reservations are disjoint follows from the single modification order of one atomic
 *   object, which every read-modify-write sees the latest value of, whatever the order; the
 *   times come from CLOCK_MONOTONIC, which all CPUs share. Units: 1/16 ns since start-up
 *   (VT_SHIFT), so 100 Gbit/s is 1.28 units a byte and a slot's rounding error is < 1e-5.
 *
 *   A connection: the client socket (cli) and the one its worker opened to --connect (srv),
 *   and two directions, down (srv -> cli) and up (cli -> srv). A direction moves its bytes
 *   in one of two ways, chosen per direction at accept:
 *   - a pipe (zero-copy): splice() src -> pipe -> dst, the pipe enlarged to --pipe-bytes
 *     (F_SETPIPE_SZ). Used when it holds what the delay keeps in flight: no delay, or
 *     rate x delay <= 3/4 of the pipe. On the 16-core host, one connection unshaped: 52
 *     Gbit/s at 0.12 s of CPU per GB, against 28 Gbit/s and 0.27 s/GB through the ring (on
 *     the 2-core dev VM the pipe costs more, 0.43 s/GB: --pipe-bytes 0 is faster there).
 *   - a ring buffer, mmap()ed at accept (pages are touched only as they fill; offsets restart
 *     at 0 whenever it empties), read into with readv() and written from with writev(). For
 *     longer delays, --pipe-bytes 0, or when a pipe cannot be had (pipe-user-pages-soft).
 *   Either way the bytes in it are counted the same, and with a delay a FIFO of read
 *   timestamps (segments) covers them; reads within delay/256 of a segment's first one join
 *   it and leave with its last one, so the FIFO never needs more than 258 entries, and no
 *   byte is early or more than 0.4% of the delay late. Backpressure: a direction reads its
 *   source only while the ring or pipe has room, so memory per connection is bounded; the
 *   source's TCP window does the rest.
 *
 *     absolute byte counts of one direction (ring offset = (count - base) % size; a pipe
 *     holds the bytes from wr_total to rd_total in order):
 *
 *     base         wr_total          ready_total            rd_total
 *      | written    |  deliverable,     |  read, delay not     |  free space
 *      | to dst     |  waits for dst or |  yet passed          |  (read from src
 *      |            |  for its slot     |  (segments)          |   while > 0)
 *      +------------+===================+~~~~~~~~~~~~~~~~~~~~~~+..................
 *
 *   Edge-triggered readiness is cached per socket (readable/writable, cleared on EAGAIN).
 *   splice() says EAGAIN both when the socket is empty and when the pipe is full (a pipe
 *   holds a number of buffers, not of bytes): FIONREAD on the socket tells them apart, and a
 *   full pipe stops reading until bytes leave it. A direction's pump reads, releases segments
 *   whose delay has passed, writes what its slot allows, and forwards EOF (shutdown(SHUT_WR)
 *   once its source hit EOF, the delay of the EOF has passed and nothing is left); it loops
 *   while that makes progress, at most PUMP_ROUNDS times, then yields to other connections
 *   through the run queue. One timer per direction wakes it for its slot, its next segment
 *   or its EOF. A connection closes when both directions forwarded EOF; any socket error
 *   resets both sides (SO_LINGER 0), as a link that lost its peer would.
 *
 *   Nothing on the data path allocates: rings, pipes and segment FIFOs are set up at accept
 *   and released at close; connection slots are a fixed array per worker.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <shadow/shadow.h> /* shadow_parse_size */

#include "core/cpuset.h" /* header-only */

#define NS_PER_SEC 1000000000ull
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

#define MAX_CONNS_DEFAULT 1024u
#define THREADS_DEFAULT_MAX 4u    /* default --threads: min(this, CPUs allowed) */
#define THREADS_MAX 256u
#define EVENTS_MAX 256
#define ACCEPT_BATCH 64
#define MBOX_BATCH 64             /* descriptors a worker takes from its mailbox per read */
#define PUMP_ROUNDS 8             /* read/write rounds per pump before yielding */
#define SEGS_MAX 512u             /* per direction; delay/SEG_SPLIT merging needs <= 258 */
#define SEG_SPLIT 256u
#define QUANTUM_DIV 4             /* a slot is at most burst/QUANTUM_DIV */
#define BURST_MIN_NBYTES (64u << 10)
#define BURST_NS 1000000.0        /* default burst: 1 ms of the rate */
#define CATCHUP_NS 10000000ull    /* credit of a backlogged direction: 10 ms of the rate */
#define RING_MIN_NBYTES (4u << 20)
#define RING_MAX_NBYTES (1ull << 30)
#define RING_ALIGN (64u << 10)
#define PIPE_DEFAULT_NBYTES (1u << 20)
#define PIPE_MAX_NBYTES (1u << 30)
#define UNLIMITED_BDP_GBPS 10.0   /* buffer sizing for an unlimited rate with a delay */
#define VT_SHIFT 4                /* virtual time unit: 1/16 ns */
#define VT_PER_NS (1u << VT_SHIFT)

enum { DOWN = 0, UP = 1 };
enum { SIDE_CLI = 0, SIDE_SRV = 1 };
enum { MODE_RING = 0, MODE_PIPE = 1 };
/* epoll tags. Main: listener, signals, stats timer, a worker's failure. Workers: timer,
 * mailbox, and connections (TAG_CONN + 2 x slot + side, the slot's generation above). */
enum { TAG_LISTEN = 0, TAG_SIGNAL, TAG_STATS, TAG_WAKE, TAG_TIMER, TAG_MBOX, TAG_CONN };

static const char *const dir_name[2] = { "down", "up" };

struct timer {
	uint64_t at_ns;
	uint32_t idx;             /* heap position + 1; 0 while not queued */
	struct dir *owner;
};

struct seg {
	uint64_t end;             /* rd_total after the reads this segment covers */
	uint64_t t_first_ns;      /* when its first read returned: it takes reads until
				   * t_first_ns + seg_window_ns */
	uint64_t t_ns;            /* when its last read returned: deliverable at t_ns + delay,
				   * so no byte is early and none is late by more than the window */
};

struct sock {
	int fd;
	bool readable, writable;  /* edge-triggered readiness, cleared on EAGAIN */
};

struct conn;

struct dir {
	struct conn *conn;
	uint8_t kind;             /* DOWN or UP */
	uint8_t mode;             /* MODE_RING or MODE_PIPE */
	struct sock *src, *dst;
	uint64_t cap;             /* bytes the ring or the pipe may hold */
	uint64_t slot_max;        /* the most one slot takes: min(quantum, cap / 2) */
	uint8_t *ring;            /* MODE_RING */
	int pipe[2];              /* MODE_PIPE: read end, write end */
	uint64_t base, wr_total, ready_total, rd_total; /* see the DESIGN drawing */
	struct seg *segs;         /* delay > 0 only */
	uint32_t seg_head, seg_n;
	uint64_t eof_ns;          /* when src gave EOF */
	uint64_t resv_vt;         /* its slot on the pacer starts here (virtual time) */
	uint64_t resv_nbytes;     /* bytes of the slot not yet sent; 0: no slot */
	uint64_t resv_cost;       /* their virtual time, handed back if they are not sent */
	bool src_eof, dst_shut;
	bool pipe_full;           /* splice found the pipe full: read again once bytes left */
	bool backlogged;          /* bytes were left after its last slot (CATCHUP_NS credit) */
	bool queued;              /* on the run queue */
	struct dir *run_next;
	struct timer timer;       /* its slot, its next segment or its EOF */
};

struct conn {
	struct sock cli, srv;
	struct dir dir[2];
	uint32_t gen;             /* bumped at close: stale epoll events are dropped */
	bool used, connecting;
	struct conn *free_next;
};

struct link {                     /* one direction of the emulated link */
	/* Set at start-up, read-only once the workers run. */
	double rate_gbps, delay_ms;
	uint64_t delay_ns, seg_window_ns, burst_nbytes, ring_nbytes, quantum_nbytes;
	bool shaped;              /* rate > 0 */
	bool use_pipe;            /* splice through a pipe, else the ring */
	double vt_per_byte;       /* virtual time a byte takes at the rate */
	uint64_t burst_vt, catchup_vt;
	/* The pacer (DESIGN), written by every worker: alone on its cache line, away from the
	 * read-mostly fields above. */
	alignas(64) _Atomic uint64_t next_vt;
};

struct lem;

struct worker {
	struct lem *L;
	uint32_t id;
	int epfd, tfd, mbox[2];   /* mailbox: [0] read by this worker, [1] written by main */
	pthread_t thread;
	bool started, stop;
	struct conn *conns;       /* max_conns slots; [0, slots_used) have been handed out */
	uint32_t slots_used;
	struct conn *free_head;
	struct timer **heap;
	uint32_t heap_n, heap_cap;
	uint64_t armed_ns;        /* what tfd is armed for; 0: disarmed */
	struct dir *run_head, *run_tail;
	uint32_t run_n;
	/* Bytes delivered each way: written by this worker only (relaxed adds), read by the
	 * main thread for --stats-interval. */
	alignas(64) _Atomic uint64_t nbytes[2];
};

struct lem {
	/* Set at start-up, read-only once the workers run. */
	int family;
	struct sockaddr_storage target;
	socklen_t target_len;
	char listen_text[80], connect_text[80];
	int sockbuf;
	uint32_t max_conns, n_workers;
	uint64_t pipe_nbytes;     /* 0: no pipes */
	uint64_t epoch_ns;        /* virtual time 0 */
	struct link link[2];
	struct worker *workers;
	/* The main thread's. */
	int epfd, lfd, sfd, stats_fd, spare_fd, wake_fd;
	uint32_t next_worker;
	uint64_t accepted, rejected, start_ns, stats_ns, stats_nbytes[2];
	bool stop;
	/* Shared counters and flags, relaxed: nothing is published through them. */
	alignas(64) _Atomic uint32_t n_conns; /* + by main at accept, - by a worker at close */
	_Atomic uint64_t resets;
	_Atomic bool failed;      /* a worker stopped on an error; it also writes wake_fd */
	_Atomic bool pipe_warned;
};

/* CLOCK_MONOTONIC in ns (a vDSO call, ~20 ns). */
static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------------------------------ */
/* Timer heap (per worker)                                                                    */
/* ------------------------------------------------------------------------------------------ */

static void heap_put(struct worker *W, uint32_t i, struct timer *t)
{
	W->heap[i] = t;
	t->idx = i + 1;
}

static void heap_up(struct worker *W, uint32_t i)
{
	struct timer *t = W->heap[i];

	while (i > 0) {
		uint32_t p = (i - 1) / 2;
		if (W->heap[p]->at_ns <= t->at_ns)
			break;
		heap_put(W, i, W->heap[p]);
		i = p;
	}
	heap_put(W, i, t);
}

static void heap_down(struct worker *W, uint32_t i)
{
	struct timer *t = W->heap[i];

	for (;;) {
		uint32_t c = 2 * i + 1;
		if (c >= W->heap_n)
			break;
		if (c + 1 < W->heap_n && W->heap[c + 1]->at_ns < W->heap[c]->at_ns)
			c++;
		if (W->heap[c]->at_ns >= t->at_ns)
			break;
		heap_put(W, i, W->heap[c]);
		i = c;
	}
	heap_put(W, i, t);
}

static void timer_cancel(struct worker *W, struct timer *t)
{
	if (t->idx == 0)
		return;
	uint32_t i = t->idx - 1;
	struct timer *last = W->heap[--W->heap_n];

	t->idx = 0;
	if (last != t) {
		heap_put(W, i, last);
		heap_up(W, i);
		heap_down(W, last->idx - 1);
	}
}

/* Fire t at at_ns (CLOCK_MONOTONIC); 0 cancels. */
static void timer_set(struct worker *W, struct timer *t, uint64_t at_ns)
{
	if (at_ns == 0) {
		timer_cancel(W, t);
		return;
	}
	if (t->idx != 0) {
		if (t->at_ns == at_ns)
			return;
		t->at_ns = at_ns;
		heap_up(W, t->idx - 1);
		heap_down(W, t->idx - 1);
		return;
	}
	assert(W->heap_n < W->heap_cap);
	t->at_ns = at_ns;
	heap_put(W, W->heap_n++, t);
	heap_up(W, W->heap_n - 1);
}

/* Arm the timerfd for the earliest timer, when that changed. */
static void timer_arm(struct worker *W)
{
	uint64_t at = W->heap_n > 0 ? W->heap[0]->at_ns : 0;
	struct itimerspec its = { 0 };

	if (at == W->armed_ns)
		return;
	its.it_value.tv_sec = (time_t)(at / NS_PER_SEC);
	its.it_value.tv_nsec = (long)(at % NS_PER_SEC);
	if (timerfd_settime(W->tfd, TFD_TIMER_ABSTIME, &its, NULL) == 0)
		W->armed_ns = at;
}

/* ------------------------------------------------------------------------------------------ */
/* The pacers (shared by all workers; DESIGN)                                                 */
/* ------------------------------------------------------------------------------------------ */

static uint64_t vt_now(const struct lem *L)
{
	return (now_ns() - L->epoch_ns) << VT_SHIFT;
}

/* The CLOCK_MONOTONIC ns at which virtual time vt has come (rounded up). */
static uint64_t vt_to_ns(const struct lem *L, uint64_t vt)
{
	return L->epoch_ns + ((vt + VT_PER_NS - 1) >> VT_SHIFT);
}

static uint64_t vt_cost(const struct link *lk, uint64_t nbytes)
{
	return (uint64_t)((double)nbytes * lk->vt_per_byte + 0.5);
}

/*
 * Reserve `cost` of the link's time, starting no earlier than now - credit: the slot's start.
 * Relaxed: see DESIGN (the CAS alone orders reservations; nothing else is published).
 */
static uint64_t pacer_reserve(struct link *lk, uint64_t now, uint64_t cost, uint64_t credit)
{
	uint64_t floor = now > credit ? now - credit : 0;
	uint64_t next = atomic_load_explicit(&lk->next_vt, memory_order_relaxed);
	uint64_t t;

	do
		t = MAX(next, floor);
	while (!atomic_compare_exchange_weak_explicit(&lk->next_vt, &next, t + cost,
						      memory_order_relaxed, memory_order_relaxed));
	return t;
}

/*
 * Hand back the unsent rest of d's slot. next_vt cannot go below 0: it holds at least the
 * cost of every slot not yet handed back (a CAS only raises it), and this was one of them.
 */
static void dir_unreserve(struct link *lk, struct dir *d)
{
	if (d->resv_cost > 0)
		atomic_fetch_sub_explicit(&lk->next_vt, d->resv_cost, memory_order_relaxed);
	d->resv_nbytes = d->resv_cost = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Connections                                                                                */
/* ------------------------------------------------------------------------------------------ */

static void sock_tune(const struct lem *L, int fd)
{
	int one = 1;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* a relay adds no Nagle */
	if (L->sockbuf > 0) {
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &L->sockbuf, sizeof(L->sockbuf));
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &L->sockbuf, sizeof(L->sockbuf));
	}
}

static void close_fd(int fd, bool reset)
{
	if (fd < 0)
		return;
	if (reset) {
		struct linger lg = { .l_onoff = 1, .l_linger = 0 }; /* close() sends RST */
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	close(fd);
}

static void run_remove(struct worker *W, struct dir *d)
{
	if (!d->queued)
		return;
	struct dir *prev = NULL;

	for (struct dir **p = &W->run_head; *p != NULL; prev = *p, p = &(*p)->run_next) {
		if (*p == d) {
			*p = d->run_next;
			if (W->run_tail == d)
				W->run_tail = prev;
			W->run_n--;
			break;
		}
	}
	d->queued = false;
	d->run_next = NULL;
}

static void run_push(struct worker *W, struct dir *d)
{
	if (d->queued)
		return;
	d->queued = true;
	d->run_next = NULL;
	if (W->run_tail != NULL)
		W->run_tail->run_next = d;
	else
		W->run_head = d;
	W->run_tail = d;
	W->run_n++;
}

/* Release what dir_init() set up (any part of it). */
static void dir_free(struct worker *W, struct dir *d)
{
	timer_cancel(W, &d->timer);
	run_remove(W, d);
	dir_unreserve(&W->L->link[d->kind], d);
	if (d->ring != NULL)
		munmap(d->ring, d->cap);
	for (int i = 0; i < 2; i++)
		if (d->pipe[i] >= 0)
			close(d->pipe[i]);
	free(d->segs);
	d->ring = NULL;
	d->segs = NULL;
	d->pipe[0] = d->pipe[1] = -1;
}

/* Close both sockets (with RST when `reset`) and free the slot. */
static void conn_close(struct worker *W, struct conn *c, bool reset)
{
	struct lem *L = W->L;

	dir_free(W, &c->dir[DOWN]);
	dir_free(W, &c->dir[UP]);
	close_fd(c->cli.fd, reset);
	close_fd(c->srv.fd, reset);
	c->cli.fd = c->srv.fd = -1;
	if (reset)
		atomic_fetch_add_explicit(&L->resets, 1, memory_order_relaxed);
	c->used = false;
	c->gen++;
	c->free_next = W->free_head;
	W->free_head = c;
	atomic_fetch_sub_explicit(&L->n_conns, 1, memory_order_relaxed);
}

/* A pipe of --pipe-bytes for d; -errno (said once per run) if the kernel will not have it. */
static int dir_open_pipe(struct lem *L, struct dir *d)
{
	int got;

	if (pipe2(d->pipe, O_NONBLOCK | O_CLOEXEC) < 0) {
		d->pipe[0] = d->pipe[1] = -1;
		got = -errno;
	} else if ((got = fcntl(d->pipe[1], F_SETPIPE_SZ, (int)L->pipe_nbytes)) < 0) {
		got = -errno; /* EPERM: over /proc/sys/fs/pipe-max-size or pipe-user-pages-soft */
		close(d->pipe[0]);
		close(d->pipe[1]);
		d->pipe[0] = d->pipe[1] = -1;
	}
	if (got < 0) {
		if (!atomic_exchange_explicit(&L->pipe_warned, true, memory_order_relaxed))
			fprintf(stderr, "linkem: a pipe of %llu bytes: %s: copying through a buffer "
				"instead (said once)\n", (unsigned long long)L->pipe_nbytes,
				strerror(-got));
		return got;
	}
	d->cap = (uint64_t)got; /* F_SETPIPE_SZ rounds up to a power of two of pages */
	return 0;
}

static int dir_init(struct worker *W, struct conn *c, int kind)
{
	struct dir *d = &c->dir[kind];
	const struct link *lk = &W->L->link[kind];

	memset(d, 0, sizeof(*d));
	d->conn = c;
	d->kind = (uint8_t)kind;
	d->src = kind == DOWN ? &c->srv : &c->cli;
	d->dst = kind == DOWN ? &c->cli : &c->srv;
	d->pipe[0] = d->pipe[1] = -1;
	d->timer.owner = d;
	if (lk->use_pipe && dir_open_pipe(W->L, d) == 0) {
		d->mode = MODE_PIPE;
	} else {
		d->mode = MODE_RING;
		d->cap = lk->ring_nbytes;
		d->ring = mmap(NULL, d->cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS |
			       MAP_NORESERVE, -1, 0);
		if (d->ring == MAP_FAILED) {
			d->ring = NULL;
			return -ENOMEM;
		}
	}
	d->slot_max = MAX(1, MIN(lk->quantum_nbytes, d->cap / 2));
	if (lk->delay_ns > 0) {
		d->segs = calloc(SEGS_MAX, sizeof(*d->segs));
		if (d->segs == NULL)
			return -ENOMEM;
	}
	return 0;
}

static uint64_t ev_data(const struct worker *W, const struct conn *c, int side)
{
	uint32_t idx = (uint32_t)(c - W->conns);

	return (uint64_t)c->gen << 32 | (TAG_CONN + 2u * idx + (uint32_t)side);
}

/* The main thread handed us client cfd: open its connection to --connect. */
static void conn_open(struct worker *W, int cfd)
{
	struct lem *L = W->L;
	struct conn *c = W->free_head;
	int sfd, rc;

	if (c != NULL) {
		W->free_head = c->free_next;
	} else {
		/* Open connections <= n_conns <= max_conns slots: one is left. */
		assert(W->slots_used < L->max_conns);
		c = &W->conns[W->slots_used++];
	}
	c->used = true;
	c->cli = (struct sock){ .fd = cfd };
	c->srv = (struct sock){ .fd = -1 };
	c->connecting = false;
	memset(c->dir, 0, sizeof(c->dir));
	c->dir[DOWN].pipe[0] = c->dir[DOWN].pipe[1] = -1;
	c->dir[UP].pipe[0] = c->dir[UP].pipe[1] = -1;
	sock_tune(L, cfd);

	sfd = socket(L->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (sfd < 0) {
		fprintf(stderr, "linkem: socket: %s\n", strerror(errno));
		goto reset;
	}
	c->srv.fd = sfd;
	sock_tune(L, sfd);
	if (dir_init(W, c, DOWN) < 0 || dir_init(W, c, UP) < 0) {
		fprintf(stderr, "linkem: out of memory for a connection's buffers\n");
		goto reset;
	}
	rc = connect(sfd, (const struct sockaddr *)&L->target, L->target_len);
	if (rc < 0 && errno != EINPROGRESS) {
		if (errno != ECONNREFUSED) /* refusals are the server's business: quiet */
			fprintf(stderr, "linkem: connect %s: %s\n", L->connect_text,
				strerror(errno));
		goto reset;
	}
	c->connecting = rc < 0;
	if (!c->connecting)
		c->srv.writable = true;

	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET };
	ev.data.u64 = ev_data(W, c, SIDE_CLI);
	if (epoll_ctl(W->epfd, EPOLL_CTL_ADD, cfd, &ev) < 0)
		goto epoll_fail;
	ev.data.u64 = ev_data(W, c, SIDE_SRV);
	if (epoll_ctl(W->epfd, EPOLL_CTL_ADD, sfd, &ev) < 0)
		goto epoll_fail;
	return;
epoll_fail:
	fprintf(stderr, "linkem: epoll_ctl: %s\n", strerror(errno));
reset:
	conn_close(W, c, true);
}

/* Take the clients the main thread handed over; EOF: stop. */
static void on_mailbox(struct worker *W)
{
	int fds[MBOX_BATCH];
	ssize_t n;

	do
		n = read(W->mbox[0], fds, sizeof(fds));
	while (n < 0 && errno == EINTR);
	if (n == 0) {
		W->stop = true;
		return;
	}
	/* 4-byte writes to a pipe are atomic, so reads return whole descriptors. */
	for (ssize_t i = 0; i < n / (ssize_t)sizeof(int); i++) {
		if (W->stop)
			close_fd(fds[i], true);
		else
			conn_open(W, fds[i]);
	}
}

/* The listener is readable: hand clients to the workers, round-robin. */
static void on_accept(struct lem *L)
{
	for (int i = 0; i < ACCEPT_BATCH; i++) {
		int fd = accept4(L->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EMFILE || errno == ENFILE) {
				/* Out of descriptors: take the pending client off the backlog with
				 * the spare one, or the level-triggered listener spins. */
				if (L->spare_fd >= 0) {
					close(L->spare_fd);
					fd = accept4(L->lfd, NULL, NULL, SOCK_CLOEXEC);
					close_fd(fd, true);
					L->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
				}
				L->rejected++;
				fprintf(stderr, "linkem: accept: %s (client refused)\n",
					strerror(errno));
			} else if (errno != EAGAIN) {
				fprintf(stderr, "linkem: accept: %s\n", strerror(errno));
			}
			return;
		}
		if (atomic_load_explicit(&L->n_conns, memory_order_relaxed) >= L->max_conns) {
			if (L->rejected++ == 0)
				fprintf(stderr, "linkem: %u connections: refusing more\n",
					L->max_conns);
			close_fd(fd, true);
			continue;
		}
		struct worker *W = &L->workers[L->next_worker++ % L->n_workers];
		atomic_fetch_add_explicit(&L->n_conns, 1, memory_order_relaxed);
		if (write(W->mbox[1], &fd, sizeof(fd)) != (ssize_t)sizeof(fd)) {
			/* A mailbox full (64 KiB of descriptors not yet taken): refuse. */
			atomic_fetch_sub_explicit(&L->n_conns, 1, memory_order_relaxed);
			close_fd(fd, true);
			L->rejected++;
			continue;
		}
		L->accepted++;
	}
}

/* ------------------------------------------------------------------------------------------ */
/* The data path (a worker's own connections)                                                 */
/* ------------------------------------------------------------------------------------------ */

/* Whether socket fd has bytes to read (after splice said EAGAIN: was it the pipe?). */
static bool sock_has_input(int fd)
{
	int n = 0;

	return ioctl(fd, FIONREAD, &n) == 0 && n > 0;
}

/*
 * Read what src has into the free space; *progress when something happened. One call for
 * all the free space, not fixed chunks: through the ring, unshaped, 18-20 Gbit/s against
 * 12-14 with 1 MiB reads and 13 with 256 KiB on 2 cores (test_linkem --bench); the same on
 * 16. The socket bounds what one call returns.
 */
static int dir_read(struct worker *W, struct dir *d, bool *progress)
{
	const struct link *lk = &W->L->link[d->kind];
	uint64_t space = d->cap - (d->rd_total - d->wr_total);
	uint64_t now = 0;
	struct seg *last = NULL;
	ssize_t n;

	if (d->src_eof || !d->src->readable || space == 0 || d->pipe_full ||
	    (d->kind == DOWN && d->conn->connecting))
		return 0;
	if (lk->delay_ns > 0) {
		now = now_ns();
		if (d->seg_n > 0) {
			last = &d->segs[(d->seg_head + d->seg_n - 1) % SEGS_MAX];
			if (now - last->t_first_ns > lk->seg_window_ns)
				last = NULL;
		}
		if (last == NULL && d->seg_n == SEGS_MAX)
			return 0; /* the segment timer resumes reading */
	}

	if (d->mode == MODE_PIPE) {
		do
			n = splice(d->src->fd, NULL, d->pipe[1], NULL, space,
				   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		while (n < 0 && errno == EINTR);
	} else {
		uint64_t pos = (d->rd_total - d->base) % d->cap;
		uint64_t first = MIN(space, d->cap - pos);
		struct iovec iov[2] = { { d->ring + pos, first }, { d->ring, space - first } };

		do
			n = readv(d->src->fd, iov, space > first ? 2 : 1);
		while (n < 0 && errno == EINTR);
	}
	if (n < 0) {
		if (errno != EAGAIN) /* == EWOULDBLOCK on Linux */
			return -errno;
		/* A pipe holds so many buffers, not so many bytes: it may be full before cap. */
		if (d->mode == MODE_PIPE && d->rd_total != d->wr_total &&
		    sock_has_input(d->src->fd))
			d->pipe_full = true; /* the next write out of the pipe clears it */
		else
			d->src->readable = false;
		return 0;
	}
	*progress = true;
	if (n == 0) {
		d->src_eof = true;
		d->eof_ns = lk->delay_ns > 0 ? now : 0;
		return 0;
	}
	d->rd_total += (uint64_t)n;
	if (lk->delay_ns == 0) {
		d->ready_total = d->rd_total;
	} else if (last != NULL) {
		last->end = d->rd_total;
		last->t_ns = now;
	} else {
		d->segs[(d->seg_head + d->seg_n) % SEGS_MAX] =
			(struct seg){ .end = d->rd_total, .t_first_ns = now, .t_ns = now };
		d->seg_n++;
	}
	return 0;
}

/* Segments whose delay has passed become deliverable. */
static void dir_release(struct worker *W, struct dir *d)
{
	const struct link *lk = &W->L->link[d->kind];

	if (d->seg_n == 0)
		return;
	uint64_t now = now_ns();
	while (d->seg_n > 0) {
		const struct seg *s = &d->segs[d->seg_head];
		if (s->t_ns + lk->delay_ns > now)
			break;
		d->ready_total = s->end;
		d->seg_head = (d->seg_head + 1) % SEGS_MAX;
		d->seg_n--;
	}
}

/*
 * Write deliverable bytes as far as dst and the pacer allow: on a shaped link, the bytes of
 * d's slot once it has begun (reserving one first, of up to a quantum, when d has none).
 */
static int dir_write(struct worker *W, struct dir *d, bool *progress)
{
	struct link *lk = &W->L->link[d->kind];
	uint64_t pending = d->ready_total - d->wr_total, n = pending;
	ssize_t w;

	if (pending == 0 || !d->dst->writable || (d->kind == UP && d->conn->connecting))
		return 0;
	if (lk->shaped) {
		uint64_t now = vt_now(W->L);

		if (d->resv_nbytes == 0) {
			d->resv_nbytes = MIN(pending, d->slot_max);
			d->resv_cost = vt_cost(lk, d->resv_nbytes);
			d->resv_vt = pacer_reserve(lk, now, d->resv_cost,
						   d->backlogged ? lk->catchup_vt : lk->burst_vt);
		}
		if (d->resv_vt > now)
			return 0; /* dir_pump() sets the timer for the slot */
		n = d->resv_nbytes; /* <= pending: reserved out of it, and pending only grows */
	}

	if (d->mode == MODE_PIPE) {
		do
			w = splice(d->pipe[0], NULL, d->dst->fd, NULL, n,
				   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		while (w < 0 && errno == EINTR);
	} else {
		uint64_t pos = (d->wr_total - d->base) % d->cap;
		uint64_t first = MIN(n, d->cap - pos);
		struct iovec iov[2] = { { d->ring + pos, first }, { d->ring, n - first } };

		do
			w = writev(d->dst->fd, iov, n > first ? 2 : 1);
		while (w < 0 && errno == EINTR);
	}
	if (w <= 0) {
		if (w == 0)
			return -EIO; /* not for n > 0 bytes to a socket */
		if (errno != EAGAIN)
			return -errno;
		d->dst->writable = false; /* EPOLLOUT brings it back */
		dir_unreserve(lk, d);     /* its slot goes back to the link meanwhile */
		d->backlogged = false;    /* the receiver holds it back, not the link */
		return 0;
	}
	*progress = true;
	d->wr_total += (uint64_t)w;
	d->pipe_full = false;
	atomic_fetch_add_explicit(&W->nbytes[d->kind], (uint64_t)w, memory_order_relaxed);
	if (lk->shaped) {
		/* The rest of a partly written slot stays reserved: sent next round, or handed
		 * back at EAGAIN. */
		uint64_t cost = (uint64_t)w == d->resv_nbytes ? d->resv_cost :
				MIN(d->resv_cost, vt_cost(lk, (uint64_t)w));
		d->resv_nbytes -= (uint64_t)w;
		d->resv_cost -= cost;
		if (d->resv_nbytes == 0)
			d->backlogged = d->ready_total > d->wr_total;
	}
	if (d->mode == MODE_RING && d->wr_total == d->rd_total)
		d->base = d->rd_total; /* empty: restart at offset 0, keep the touched pages few */
	return 0;
}

/* Move d's bytes as far as they can go now; may close the connection. */
static void dir_pump(struct worker *W, struct dir *d)
{
	struct conn *c = d->conn;
	const struct link *lk = &W->L->link[d->kind];
	int rc = 0;

	for (int round = 0;; round++) {
		bool progress = false;

		if ((rc = dir_read(W, d, &progress)) < 0)
			goto reset;
		dir_release(W, d);
		if ((rc = dir_write(W, d, &progress)) < 0)
			goto reset;
		if (d->src_eof && !d->dst_shut && d->wr_total == d->rd_total &&
		    (lk->delay_ns == 0 || now_ns() >= d->eof_ns + lk->delay_ns)) {
			if (d->kind == UP && c->connecting)
				break; /* forwarded once connected */
			if (shutdown(d->dst->fd, SHUT_WR) < 0 && errno != ENOTCONN) {
				rc = -errno;
				goto reset;
			}
			d->dst_shut = true;
			if (c->dir[DOWN].dst_shut && c->dir[UP].dst_shut) {
				conn_close(W, c, false);
				return;
			}
		}
		if (!progress)
			break;
		if (round + 1 == PUMP_ROUNDS) {
			run_push(W, d); /* more to do: after the others had their turn */
			break;
		}
	}

	/* Wake up when its slot begins, or the next segment or the EOF becomes deliverable. */
	uint64_t at = 0, seg_at = 0;
	if (d->resv_nbytes > 0)
		at = vt_to_ns(W->L, d->resv_vt);
	if (d->seg_n > 0)
		seg_at = d->segs[d->seg_head].t_ns + lk->delay_ns;
	else if (d->src_eof && !d->dst_shut && d->wr_total == d->rd_total && lk->delay_ns > 0)
		seg_at = d->eof_ns + lk->delay_ns;
	if (seg_at != 0 && (at == 0 || seg_at < at))
		at = seg_at;
	timer_set(W, &d->timer, at);
	return;
reset:
	if (rc != -ECONNRESET && rc != -EPIPE && rc != -ETIMEDOUT && rc != -ECONNREFUSED &&
	    rc != -EHOSTUNREACH && rc != -ENETUNREACH && rc != -ENOTCONN)
		fprintf(stderr, "linkem: %s: %s\n", dir_name[d->kind], strerror(-rc));
	conn_close(W, c, true);
}

/* Pump both directions of c (the second only if the first left it open). */
static void conn_pump(struct worker *W, struct conn *c)
{
	uint32_t gen = c->gen;

	dir_pump(W, &c->dir[DOWN]);
	if (c->used && c->gen == gen)
		dir_pump(W, &c->dir[UP]);
}

static void on_conn_event(struct worker *W, uint64_t data, uint32_t events)
{
	struct lem *L = W->L;
	uint32_t slot = (uint32_t)data - TAG_CONN;
	uint32_t idx = slot / 2, side = slot % 2;

	if (idx >= W->slots_used)
		return;
	struct conn *c = &W->conns[idx];
	if (!c->used || c->gen != (uint32_t)(data >> 32))
		return; /* closed earlier in this batch */
	struct sock *s = side == SIDE_CLI ? &c->cli : &c->srv;
	if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		s->readable = true;
	if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
		s->writable = true;
	if (side == SIDE_SRV && c->connecting) {
		int err = 0;
		socklen_t len = sizeof(err);

		if (!(events & (EPOLLOUT | EPOLLHUP | EPOLLERR)))
			return;
		if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
			err = errno;
		if (err != 0) {
			if (err != ECONNREFUSED)
				fprintf(stderr, "linkem: connect %s: %s\n", L->connect_text,
					strerror(err));
			conn_close(W, c, true);
			return;
		}
		c->connecting = false;
	}
	conn_pump(W, c);
}

/* Directions whose slot, delay or EOF is due. */
static void run_timers(struct worker *W)
{
	uint64_t now = now_ns();

	while (W->heap_n > 0 && W->heap[0]->at_ns <= now) {
		struct timer *t = W->heap[0];
		timer_cancel(W, t);
		dir_pump(W, t->owner);
	}
}

/* Pump the directions that were queued when this pass began (later ones wait a pass). */
static void run_queue(struct worker *W)
{
	for (uint32_t n = W->run_n; n > 0 && W->run_head != NULL; n--) {
		struct dir *d = W->run_head;
		run_remove(W, d);
		dir_pump(W, d); /* may close connections, which leave the queue themselves */
	}
}

/* A worker thread: its connections until its mailbox says EOF. */
static void *worker_main(void *arg)
{
	struct worker *W = arg;
	struct lem *L = W->L;
	struct epoll_event evs[EVENTS_MAX];
	char name[16];

	snprintf(name, sizeof(name), "linkem-w%u", W->id);
	pthread_setname_np(pthread_self(), name);
	prctl(PR_SET_TIMERSLACK, 1UL); /* wake-ups on time, not up to 50 us late */
	while (!W->stop) {
		timer_arm(W);
		int n = epoll_wait(W->epfd, evs, EVENTS_MAX, W->run_head != NULL ? 0 : -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "linkem: worker %u: epoll_wait: %s\n", W->id,
				strerror(errno));
			atomic_store_explicit(&L->failed, true, memory_order_relaxed);
			uint64_t one = 1;
			if (write(L->wake_fd, &one, sizeof(one)) < 0) { /* main stops on it */
			}
			break;
		}
		for (int i = 0; i < n; i++) {
			uint64_t data = evs[i].data.u64;
			uint64_t junk;

			switch ((uint32_t)data) {
			case TAG_TIMER:
				if (read(W->tfd, &junk, sizeof(junk)) > 0)
					W->armed_ns = 0; /* one-shot: fired, so disarmed */
				break;
			case TAG_MBOX:
				on_mailbox(W);
				break;
			default:
				on_conn_event(W, data, evs[i].events);
				break;
			}
		}
		run_timers(W);
		run_queue(W);
	}
	for (uint32_t i = 0; i < W->slots_used; i++)
		if (W->conns[i].used)
			conn_close(W, &W->conns[i], false);
	return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Stats                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static uint64_t delivered(const struct lem *L, int kind)
{
	uint64_t sum = 0;

	for (uint32_t i = 0; i < L->n_workers; i++)
		sum += atomic_load_explicit(&L->workers[i].nbytes[kind], memory_order_relaxed);
	return sum;
}

static void print_stats(struct lem *L, bool final)
{
	uint64_t now = now_ns();
	double dt = (double)(now - (final ? L->start_ns : L->stats_ns)) / 1e9;

	fprintf(stderr, "linkem: %s t=%.1fs conns=%u accepted=%llu resets=%llu", final ? "total" :
		"stats", (double)(now - L->start_ns) / 1e9,
		atomic_load_explicit(&L->n_conns, memory_order_relaxed),
		(unsigned long long)L->accepted,
		(unsigned long long)atomic_load_explicit(&L->resets, memory_order_relaxed));
	for (int k = 0; k < 2; k++) {
		uint64_t total = delivered(L, k);
		uint64_t nb = final ? total : total - L->stats_nbytes[k];
		fprintf(stderr, " %s=%lluB %.3fGbit/s", dir_name[k], (unsigned long long)nb,
			dt > 0 ? (double)nb * 8 / dt / 1e9 : 0.0);
		L->stats_nbytes[k] = total;
	}
	fprintf(stderr, "\n");
	L->stats_ns = now;
}

/* ------------------------------------------------------------------------------------------ */
/* Start-up                                                                                   */
/* ------------------------------------------------------------------------------------------ */

static int usage(FILE *out)
{
	fprintf(out,
		"usage: linkem --listen HOST:PORT --connect HOST:PORT --rate-gbps X [OPTIONS]\n"
		"  --listen HOST:PORT     accept clients here (port 0: any free port; the ready\n"
		"                         line says which)\n"
		"  --connect HOST:PORT    and connect each one to this server\n"
		"  --rate-gbps X          down rate (server -> client), Gbit/s (10^9); 0: unlimited\n"
		"  --up-rate-gbps Y       up rate (client -> server); default X\n"
		"  --delay-ms D           one-way delay down, ms (fractions allowed); default 0\n"
		"  --up-delay-ms E        one-way delay up; default D\n"
		"  --burst-bytes B        burst, both directions (default per direction:\n"
		"                         max(64 KiB, 1 ms of its rate))\n"
		"  --buffer-bytes N       ring buffer per connection and direction, where no pipe\n"
		"                         is used (default max(4 MiB, 1.25 x rate x delay + 2\n"
		"                         bursts))\n"
		"  --pipe-bytes P         splice() through a pipe of P bytes per connection and\n"
		"                         direction where rate x delay fits 3/4 of it (default\n"
		"                         1 MiB, at most /proc/sys/fs/pipe-max-size); 0: never\n"
		"  --sockbuf-bytes N      SO_SNDBUF/SO_RCVBUF of every socket (default: the\n"
		"                         kernel's autotuning)\n"
		"  --max-conns N          connections at once (default 1024; more are reset)\n"
		"  --threads N            worker threads (default min(4, CPUs allowed)); each\n"
		"                         connection is served by one of them, round-robin\n"
		"  --cpus LIST            run all threads on these CPUs, e.g. 2 or 2-3,8\n"
		"  --stats-interval S     bytes and Gbit/s each way to stderr every S seconds\n"
		"  --help\n"
		"Sizes take B, KiB, MiB, GiB suffixes.\n");
	return out == stderr ? 2 : 0;
}

static int parse_double(const char *what, const char *text, double lo, double hi, double *v)
{
	char *end;
	double x;

	errno = 0;
	x = strtod(text, &end);
	if (errno != 0 || end == text || *end != '\0' || !isfinite(x) || x < lo || x > hi) {
		fprintf(stderr, "linkem: %s '%s': want a number in %g .. %g\n", what, text, lo, hi);
		return -EINVAL;
	}
	*v = x;
	return 0;
}

static int parse_bytes(const char *what, const char *text, uint64_t lo, uint64_t hi,
		       uint64_t *v)
{
	if (shadow_parse_size(text, v) < 0 || *v < lo || *v > hi) {
		fprintf(stderr, "linkem: %s '%s': want a size in %llu .. %llu bytes\n", what, text,
			(unsigned long long)lo, (unsigned long long)hi);
		return -EINVAL;
	}
	return 0;
}

/* --cpus: "0-3,8,10-11" into *set. */
static int parse_cpus(const char *text, cpu_set_t *set)
{
	if (shadow__cpuset_parse(text, set) < 0) {
		fprintf(stderr, "linkem: --cpus '%s': want a list like 2-3,8\n", text);
		return -EINVAL;
	}
	return 0;
}

/* HOST:PORT or [V6]:PORT; an empty HOST is NULL (any address). */
static int split_hostport(const char *text, char *host, size_t host_n, const char **port)
{
	const char *colon;

	if (text[0] == '[') {
		const char *close = strchr(text, ']');
		if (close == NULL || close[1] != ':' || (size_t)(close - text - 1) >= host_n)
			return -EINVAL;
		snprintf(host, host_n, "%.*s", (int)(close - text - 1), text + 1);
		colon = close + 1;
	} else {
		colon = strrchr(text, ':');
		if (colon == NULL || (size_t)(colon - text) >= host_n)
			return -EINVAL;
		snprintf(host, host_n, "%.*s", (int)(colon - text), text);
	}
	*port = colon + 1;
	return **port != '\0' ? 0 : -EINVAL;
}

static int resolve(const char *what, const char *text, bool passive, struct addrinfo **ai_ret)
{
	char host[256];
	const char *port;
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM,
				  .ai_flags = passive ? AI_PASSIVE : 0 };

	if (split_hostport(text, host, sizeof(host), &port) < 0) {
		fprintf(stderr, "linkem: %s '%s': want HOST:PORT\n", what, text);
		return -EINVAL;
	}
	int rc = getaddrinfo(host[0] != '\0' ? host : NULL, port, &hints, ai_ret);
	if (rc != 0) {
		fprintf(stderr, "linkem: %s '%s': %s\n", what, text, gai_strerror(rc));
		return -EINVAL;
	}
	return 0;
}

static void addr_text(const struct sockaddr *sa, socklen_t len, char *out, size_t n)
{
	char host[64], port[16];

	if (getnameinfo(sa, len, host, sizeof(host), port, sizeof(port),
			NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
		snprintf(out, n, "?");
		return;
	}
	snprintf(out, n, sa->sa_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
}

static int open_listener(struct lem *L, const char *text)
{
	struct addrinfo *ai, *a;
	int fd = -1, one = 1, err = 0;

	if (resolve("--listen", text, true, &ai) < 0)
		return -EINVAL;
	for (a = ai; a != NULL; a = a->ai_next) {
		fd = socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			err = errno;
			continue;
		}
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 1024) == 0)
			break;
		err = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	if (fd < 0) {
		fprintf(stderr, "linkem: --listen %s: %s\n", text, strerror(err));
		return -err;
	}
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	getsockname(fd, (struct sockaddr *)&ss, &len);
	addr_text((struct sockaddr *)&ss, len, L->listen_text, sizeof(L->listen_text));
	L->lfd = fd;
	return 0;
}


/* Burst, quantum, pacer constants, segment window, and pipe or ring of one direction. */
static void link_setup(const struct lem *L, struct link *lk, uint64_t burst, uint64_t ring)
{
	double bytes_per_ns = lk->rate_gbps / 8.0; /* 1 Gbit/s = 0.125 B/ns */
	double bdp_rate = bytes_per_ns > 0 ? bytes_per_ns : UNLIMITED_BDP_GBPS / 8.0;

	lk->delay_ns = (uint64_t)llround(lk->delay_ms * 1e6);
	lk->seg_window_ns = lk->delay_ns / SEG_SPLIT;
	if (burst == 0)
		burst = MAX((uint64_t)BURST_MIN_NBYTES,
				   (uint64_t)llround(bytes_per_ns * BURST_NS));
	lk->burst_nbytes = burst;
	lk->quantum_nbytes = MAX(1, burst / QUANTUM_DIV);
	if (ring == 0) {
		double want = 1.25 * bdp_rate * (double)lk->delay_ns + 2.0 * (double)burst;
		ring = want < (double)RING_MAX_NBYTES ? (uint64_t)want : RING_MAX_NBYTES;
		ring = MAX(ring, (uint64_t)RING_MIN_NBYTES);
		ring = (ring + RING_ALIGN - 1) / RING_ALIGN * RING_ALIGN;
	}
	lk->ring_nbytes = ring;
	/* A pipe must hold what the delay keeps in flight, with room for the reads to come. */
	lk->use_pipe = L->pipe_nbytes > 0 &&
		       bdp_rate * (double)lk->delay_ns <= 0.75 * (double)L->pipe_nbytes;
	lk->shaped = bytes_per_ns > 0;
	if (lk->shaped) {
		lk->vt_per_byte = (double)VT_PER_NS / bytes_per_ns;
		lk->burst_vt = vt_cost(lk, burst);
		lk->catchup_vt = MAX(lk->burst_vt, (uint64_t)CATCHUP_NS << VT_SHIFT);
	}
	atomic_init(&lk->next_vt, 0);
}

static void rate_text(double gbps, char *out, size_t n)
{
	if (gbps == 0)
		snprintf(out, n, "unlimited");
	else
		snprintf(out, n, "%gGbit/s", gbps);
}

/* /proc/sys/fs/pipe-max-size, or 0 if it cannot be read. */
static uint64_t pipe_max_nbytes(void)
{
	unsigned long long v = 0;
	FILE *f = fopen("/proc/sys/fs/pipe-max-size", "r");

	if (f == NULL)
		return 0;
	if (fscanf(f, "%llu", &v) != 1)
		v = 0;
	fclose(f);
	return v;
}

/* Room for every connection's descriptors; fewer connections if the limit cannot be raised. */
static void fit_fd_limit(struct lem *L, uint32_t n_threads)
{
	struct rlimit rl;
	rlim_t per_conn = 2 + 2 * (rlim_t)(L->link[DOWN].use_pipe + L->link[UP].use_pipe);
	rlim_t fixed = 32 + 4 * (rlim_t)n_threads;
	rlim_t want = per_conn * L->max_conns + fixed;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= want)
		return;
	rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
	setrlimit(RLIMIT_NOFILE, &rl);
	getrlimit(RLIMIT_NOFILE, &rl);
	if (rl.rlim_cur < want) {
		uint32_t fit = rl.rlim_cur > fixed + 16 * per_conn ?
			(uint32_t)((rl.rlim_cur - fixed) / per_conn) : 16;
		fprintf(stderr, "linkem: RLIMIT_NOFILE %llu: --max-conns lowered to %u\n",
			(unsigned long long)rl.rlim_cur, fit);
		L->max_conns = fit;
	}
}

/* The main thread's epoll: listener, signals (blocked here first, so that every thread
 * started later has them blocked too), stats timer, and the workers' failure eventfd. */
static int main_init(struct lem *L)
{
	sigset_t sigs;
	struct epoll_event ev = { .events = EPOLLIN };

	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	L->epfd = epoll_create1(EPOLL_CLOEXEC);
	L->sfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
	L->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	L->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (L->epfd < 0 || L->sfd < 0 || L->wake_fd < 0)
		return -errno;
	ev.data.u64 = TAG_LISTEN;
	if (epoll_ctl(L->epfd, EPOLL_CTL_ADD, L->lfd, &ev) < 0)
		return -errno;
	ev.data.u64 = TAG_SIGNAL;
	if (epoll_ctl(L->epfd, EPOLL_CTL_ADD, L->sfd, &ev) < 0)
		return -errno;
	ev.data.u64 = TAG_WAKE;
	if (epoll_ctl(L->epfd, EPOLL_CTL_ADD, L->wake_fd, &ev) < 0)
		return -errno;
	if (L->stats_fd >= 0) {
		ev.data.u64 = TAG_STATS;
		if (epoll_ctl(L->epfd, EPOLL_CTL_ADD, L->stats_fd, &ev) < 0)
			return -errno;
	}
	return 0;
}

/* Set up and start the workers (L->workers has n_workers zeroed entries). */
static int workers_start(struct lem *L)
{
	for (uint32_t i = 0; i < L->n_workers; i++) {
		struct worker *W = &L->workers[i];
		struct epoll_event ev = { .events = EPOLLIN };

		W->L = L;
		W->id = i;
		W->epfd = epoll_create1(EPOLL_CLOEXEC);
		W->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
		if (W->epfd < 0 || W->tfd < 0 || pipe2(W->mbox, O_NONBLOCK | O_CLOEXEC) < 0)
			return -errno;
		W->conns = calloc(L->max_conns, sizeof(*W->conns)); /* touched as handed out */
		W->heap_cap = 2 * L->max_conns + 2;
		W->heap = calloc(W->heap_cap, sizeof(*W->heap));
		if (W->conns == NULL || W->heap == NULL)
			return -ENOMEM;
		ev.data.u64 = TAG_TIMER;
		if (epoll_ctl(W->epfd, EPOLL_CTL_ADD, W->tfd, &ev) < 0)
			return -errno;
		ev.data.u64 = TAG_MBOX;
		if (epoll_ctl(W->epfd, EPOLL_CTL_ADD, W->mbox[0], &ev) < 0)
			return -errno;
		int rc = pthread_create(&W->thread, NULL, worker_main, W);
		if (rc != 0)
			return -rc;
		W->started = true;
	}
	return 0;
}

/* Close the mailboxes (the workers close their connections and return), join, release. */
static void workers_stop(struct lem *L)
{
	if (L->workers == NULL)
		return;
	for (uint32_t i = 0; i < L->n_workers; i++) {
		if (L->workers[i].mbox[1] >= 0)
			close(L->workers[i].mbox[1]);
		L->workers[i].mbox[1] = -1;
	}
	for (uint32_t i = 0; i < L->n_workers; i++)
		if (L->workers[i].started)
			pthread_join(L->workers[i].thread, NULL);
}

static void workers_free(struct lem *L)
{
	if (L->workers == NULL)
		return;
	for (uint32_t i = 0; i < L->n_workers; i++) {
		struct worker *W = &L->workers[i];
		int fds[3] = { W->epfd, W->tfd, W->mbox[0] };

		for (int k = 0; k < 3; k++)
			if (fds[k] >= 0)
				close(fds[k]);
		free(W->conns);
		free(W->heap);
	}
	free(L->workers);
	L->workers = NULL;
}

static void main_loop(struct lem *L)
{
	struct epoll_event evs[8];

	while (!L->stop) {
		int n = epoll_wait(L->epfd, evs, 8, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "linkem: epoll_wait: %s\n", strerror(errno));
			return;
		}
		for (int i = 0; i < n; i++) {
			uint64_t junk;

			switch (evs[i].data.u64) {
			case TAG_LISTEN:
				on_accept(L);
				break;
			case TAG_SIGNAL:
				L->stop = true;
				break;
			case TAG_STATS:
				if (read(L->stats_fd, &junk, sizeof(junk)) > 0)
					print_stats(L, false);
				break;
			case TAG_WAKE: /* a worker failed (it said why): exit 1 */
				return;
			default:
				break;
			}
		}
	}
}

int main(int argc, char **argv)
{
	enum {
		O_LISTEN = 256, O_CONNECT, O_RATE, O_UPRATE, O_DELAY, O_UPDELAY, O_BURST, O_BUFFER,
		O_PIPE, O_SOCKBUF, O_MAXCONNS, O_THREADS, O_CPUS, O_STATS, O_HELP
	};
	static const struct option options[] = {
		{ "listen", required_argument, NULL, O_LISTEN },
		{ "connect", required_argument, NULL, O_CONNECT },
		{ "rate-gbps", required_argument, NULL, O_RATE },
		{ "up-rate-gbps", required_argument, NULL, O_UPRATE },
		{ "delay-ms", required_argument, NULL, O_DELAY },
		{ "up-delay-ms", required_argument, NULL, O_UPDELAY },
		{ "burst-bytes", required_argument, NULL, O_BURST },
		{ "buffer-bytes", required_argument, NULL, O_BUFFER },
		{ "pipe-bytes", required_argument, NULL, O_PIPE },
		{ "sockbuf-bytes", required_argument, NULL, O_SOCKBUF },
		{ "max-conns", required_argument, NULL, O_MAXCONNS },
		{ "threads", required_argument, NULL, O_THREADS },
		{ "cpus", required_argument, NULL, O_CPUS },
		{ "stats-interval", required_argument, NULL, O_STATS },
		{ "help", no_argument, NULL, O_HELP },
		{ NULL, 0, NULL, 0 },
	};
	const char *listen_arg = NULL, *connect_arg = NULL, *rate = NULL, *up_rate = NULL;
	const char *delay = NULL, *up_delay = NULL, *burst = NULL, *buffer = NULL, *pipe_arg = NULL;
	const char *sockbuf = NULL, *max_conns = NULL, *threads = NULL, *cpus = NULL;
	const char *stats = NULL;
	static struct lem L = { .epfd = -1, .lfd = -1, .sfd = -1, .stats_fd = -1, .spare_fd = -1,
				.wake_fd = -1, .max_conns = MAX_CONNS_DEFAULT };
	int opt;

	while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
		switch (opt) {
		case O_LISTEN: listen_arg = optarg; break;
		case O_CONNECT: connect_arg = optarg; break;
		case O_RATE: rate = optarg; break;
		case O_UPRATE: up_rate = optarg; break;
		case O_DELAY: delay = optarg; break;
		case O_UPDELAY: up_delay = optarg; break;
		case O_BURST: burst = optarg; break;
		case O_BUFFER: buffer = optarg; break;
		case O_PIPE: pipe_arg = optarg; break;
		case O_SOCKBUF: sockbuf = optarg; break;
		case O_MAXCONNS: max_conns = optarg; break;
		case O_THREADS: threads = optarg; break;
		case O_CPUS: cpus = optarg; break;
		case O_STATS: stats = optarg; break;
		case O_HELP: case 'h': return usage(stdout);
		default: return usage(stderr);
		}
	}
	if (optind != argc || listen_arg == NULL || connect_arg == NULL || rate == NULL)
		return usage(stderr);

	/* Parse everything before starting anything. */
	uint64_t burst_nbytes = 0, ring_nbytes = 0, sockbuf_nbytes = 0;
	double stats_s = 0, conns = MAX_CONNS_DEFAULT, n_threads = 0;
	cpu_set_t cpu_set;
	struct link *dn = &L.link[DOWN], *up = &L.link[UP];

	L.pipe_nbytes = PIPE_DEFAULT_NBYTES;
	if (parse_double("--rate-gbps", rate, 0, 10000, &dn->rate_gbps) < 0 ||
	    (delay != NULL && parse_double("--delay-ms", delay, 0, 60000, &dn->delay_ms) < 0))
		return 2;
	up->rate_gbps = dn->rate_gbps;
	up->delay_ms = dn->delay_ms;
	if ((up_rate != NULL && parse_double("--up-rate-gbps", up_rate, 0, 10000,
					     &up->rate_gbps) < 0) ||
	    (up_delay != NULL && parse_double("--up-delay-ms", up_delay, 0, 60000,
					      &up->delay_ms) < 0) ||
	    (burst != NULL && parse_bytes("--burst-bytes", burst, 1, 1ull << 32,
					  &burst_nbytes) < 0) ||
	    (buffer != NULL && parse_bytes("--buffer-bytes", buffer, 4096, RING_MAX_NBYTES,
					   &ring_nbytes) < 0) ||
	    (pipe_arg != NULL && parse_bytes("--pipe-bytes", pipe_arg, 0, PIPE_MAX_NBYTES,
					     &L.pipe_nbytes) < 0) ||
	    (sockbuf != NULL && parse_bytes("--sockbuf-bytes", sockbuf, 4096, 1u << 30,
					    &sockbuf_nbytes) < 0) ||
	    (max_conns != NULL && parse_double("--max-conns", max_conns, 1, 65536, &conns) < 0) ||
	    (threads != NULL && parse_double("--threads", threads, 1, THREADS_MAX,
					     &n_threads) < 0) ||
	    (stats != NULL && parse_double("--stats-interval", stats, 0.001, 86400, &stats_s) < 0) ||
	    (cpus != NULL && parse_cpus(cpus, &cpu_set) < 0))
		return 2;
	if (L.pipe_nbytes > 0 && L.pipe_nbytes < 4096) {
		fprintf(stderr, "linkem: --pipe-bytes '%s': want 0 or at least 4 KiB\n", pipe_arg);
		return 2;
	}
	L.max_conns = (uint32_t)conns;
	L.sockbuf = (int)sockbuf_nbytes;
	if (pipe_arg == NULL) { /* the default stays within what any user may have */
		uint64_t max = pipe_max_nbytes();
		if (max >= 4096 && max < L.pipe_nbytes)
			L.pipe_nbytes = max;
	}

	char host[256];
	const char *port;
	if (split_hostport(listen_arg, host, sizeof(host), &port) < 0) {
		fprintf(stderr, "linkem: --listen '%s': want HOST:PORT\n", listen_arg);
		return 2;
	}
	struct addrinfo *target;
	if (resolve("--connect", connect_arg, false, &target) < 0)
		return 2;
	memcpy(&L.target, target->ai_addr, target->ai_addrlen);
	L.target_len = target->ai_addrlen;
	L.family = target->ai_family;
	freeaddrinfo(target);
	addr_text((struct sockaddr *)&L.target, L.target_len, L.connect_text,
		  sizeof(L.connect_text));

	signal(SIGPIPE, SIG_IGN);
	prctl(PR_SET_TIMERSLACK, 1UL); /* wake-ups on time, not up to 50 us late */
	if (cpus != NULL && sched_setaffinity(0, sizeof(cpu_set), &cpu_set) < 0) {
		fprintf(stderr, "linkem: --cpus '%s': %s\n", cpus, strerror(errno));
		return 1;
	}
	/* Threads started later inherit the mask: all of them run inside --cpus. */
	if (threads == NULL) {
		cpu_set_t allowed;
		int n = sched_getaffinity(0, sizeof(allowed), &allowed) == 0 ?
			CPU_COUNT(&allowed) : 1;
		n_threads = MIN(THREADS_DEFAULT_MAX, (unsigned)MAX(n, 1));
	}
	L.n_workers = (uint32_t)n_threads;
	L.epoch_ns = now_ns();
	link_setup(&L, dn, burst_nbytes, ring_nbytes);
	link_setup(&L, up, burst_nbytes, ring_nbytes);
	fit_fd_limit(&L, L.n_workers);
	if (stats != NULL) {
		uint64_t ns = (uint64_t)llround(stats_s * 1e9);
		struct itimerspec its = {
			.it_value = { (time_t)(ns / NS_PER_SEC), (long)(ns % NS_PER_SEC) },
		};
		its.it_interval = its.it_value;
		L.stats_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
		if (L.stats_fd < 0 || timerfd_settime(L.stats_fd, 0, &its, NULL) < 0) {
			fprintf(stderr, "linkem: timerfd: %s\n", strerror(errno));
			return 1;
		}
	}

	int rc = open_listener(&L, listen_arg);
	if (rc < 0)
		return 1;
	/* Workers hold atomics aligned to cache lines: aligned_alloc, not calloc. */
	size_t workers_nbytes = L.n_workers * sizeof(struct worker);
	L.workers = aligned_alloc(alignof(struct worker), workers_nbytes);
	if (L.workers == NULL)
		rc = -ENOMEM;
	else
		memset(L.workers, 0, workers_nbytes);
	for (uint32_t i = 0; rc == 0 && i < L.n_workers; i++) {
		struct worker *W = &L.workers[i];
		W->epfd = W->tfd = W->mbox[0] = W->mbox[1] = -1;
	}
	if (rc == 0)
		rc = main_init(&L);
	if (rc == 0)
		rc = workers_start(&L);
	if (rc < 0) {
		fprintf(stderr, "linkem: start-up: %s\n", strerror(-rc));
		workers_stop(&L);
		workers_free(&L);
		return 1;
	}

	char r_dn[32], r_up[32];
	rate_text(dn->rate_gbps, r_dn, sizeof(r_dn));
	rate_text(up->rate_gbps, r_up, sizeof(r_up));
	printf("linkem: ready listen=%s connect=%s rate=%s up-rate=%s delay=%gms up-delay=%gms "
	       "burst=%llu up-burst=%llu buffer=%llu up-buffer=%llu threads=%u pipe=%llu "
	       "up-pipe=%llu\n", L.listen_text, L.connect_text, r_dn, r_up, dn->delay_ms,
	       up->delay_ms, (unsigned long long)dn->burst_nbytes,
	       (unsigned long long)up->burst_nbytes, (unsigned long long)dn->ring_nbytes,
	       (unsigned long long)up->ring_nbytes, L.n_workers,
	       (unsigned long long)(dn->use_pipe ? L.pipe_nbytes : 0),
	       (unsigned long long)(up->use_pipe ? L.pipe_nbytes : 0));
	fflush(stdout);
	L.start_ns = L.stats_ns = now_ns();

	main_loop(&L);

	workers_stop(&L);
	if (L.stats_fd >= 0)
		print_stats(&L, true);
	workers_free(&L);
	close(L.lfd);
	close(L.epfd);
	close(L.sfd);
	close(L.wake_fd);
	if (L.stats_fd >= 0)
		close(L.stats_fd);
	if (L.spare_fd >= 0)
		close(L.spare_fd);
	return L.stop && !atomic_load_explicit(&L.failed, memory_order_relaxed) ? 0 : 1;
}
