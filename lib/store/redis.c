/*
 * redis.c - the redis:// and redis+cluster:// stores: a lean, non-blocking RESP2 client that
 * streams GET replies straight into the caller's buffers.
 *
 * DESIGN
 *
 * Why not hiredis: it reads replies into its own growing buffer and then copies each into a
 * reply object, so a 16 MiB value is copied twice after the socket read and allocated once.
 * Here the payload of a bulk reply is read from the socket into the request's iovec (readv
 * with the iovec first and the receive buffer after it), so a value byte is copied once, by
 * the kernel. Only the part of a payload that arrived in the same read as its "$<len>" line
 * (at most RX_NBYTES) passes through the receive buffer.
 *
 * Objects (one handle, one thread; shadow.h):
 *
 *	redis_store --- nodes[] --- conns[connections] --- FIFO of rcmd (oldest first)
 *	     |                                              ^ tx: first one not fully sent
 *	     +--- slots[16384] -> node (cluster)
 *	     +--- reqs: the requests in flight (for deadlines)
 *	     +--- cmd pool: fixed, sized at open (no malloc per request)
 *
 * A request becomes one RESP command (an rcmd), or n_keys of them for EXISTS (one EXISTS per
 * key, because the answer has prefix semantics and keys live on different cluster nodes).
 * Commands are pipelined: appended to the least-loaded connection of the key's node and
 * written together by one sendmsg() per connection per poll. Replies come back in order, so
 * the FIFO's head owns the next reply. A PUT's value is sent from the caller's iovec
 * (sendmsg gathers header, value and trailer), never copied.
 *
 * Completion rules. A request completes once (store.c's shadow__store_complete): with its
 * reply, or earlier by deadline, cancel or connection loss. A command whose request completed
 * early becomes a zombie: still in its FIFO (a reply will come and must be read), but with no
 * request, so its reply is thrown away and the caller's buffers are never touched again. A
 * zombie not yet written is dropped; a PUT zombie caught half-written (its value is caller
 * memory) forces a connection reset, since the stream cannot be cut mid-command.
 *
 * Connections: IDLE (no socket; retry_at) -> CONNECTING (non-blocking connect) -> READY. The
 * handshake (AUTH, SELECT, or PING) is pipelined at the FIFO head; the connection counts as up
 * when its last handshake reply arrives. A lost connection fails every request with a command
 * on it (-ECONNRESET, or the connect error), and is retried by the poll loop with exponential
 * backoff (reconnect_min_ms .. reconnect_max_ms). A request routed to a node with no live or
 * retryable connection fails at once with the node's last error: a down store gives fast
 * misses, not deadline-long waits.
 *
 * Cluster: the slot map comes from CLUSTER SHARDS (Redis >= 7), or CLUSTER SLOTS when the
 * server does not know SHARDS. MOVED updates the slot's owner, re-sends the command there and
 * schedules a map refresh (at most one in flight, at most one per REFRESH_MIN_NS); ASK sends
 * ASKING and the command back to back to the named node. A command is redirected at most
 * REDIRECTS_MAX times.
 *
 * Untrusted input: every reply line, length and count is checked (resp.c); a bulk longer than
 * max_value_nbytes resets the connection (it cannot be skipped at a reasonable cost), one
 * longer than the request's iovec but within the limit is read and discarded. A reply that
 * breaks RESP resets the connection and counts a protocol error.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "store/resp.h"
#include "store/store.h"

#define RX_NBYTES (64u << 10)        /* receive buffer: lines and the tail of a read */
#define RX_CONTROL_MAX (64u << 20)   /* a control reply (slot map) may grow it to this */
#define READ_BUDGET (32u << 20)      /* bytes read from one connection per event */
#define TX_IOV 64u                   /* iovec entries per sendmsg */
#define RX_IOV 16u                   /* destination entries per readv */
#define HDR_MAX 640u                 /* an encoded command without its value */
#define TRL_MAX 48u                  /* "\r\n" after a value, then "$2\r\nEX\r\n$n\r\nttl\r\n" */
#define REDIRECTS_MAX 5u
#define NODES_MAX 1024u
#define REFRESH_MIN_NS (100 * SHADOW_NS_PER_MS)
#define PASSWORD_MAX 256u
#define USER_MAX 128u
#define NO_NODE 0xffffu

enum cmd_kind {
	K_GET,
	K_SET,
	K_DEL,
	K_EXISTS,
	/* internal, no request */
	K_AUTH,
	K_SELECT,
	K_PING,
	K_ASKING,
	K_SHARDS,
	K_SLOTS,
};

struct rconn;

struct rcmd {
	struct rcmd *prev, *next;     /* the connection's FIFO; next links the free list */
	struct rcmd *sibling;         /* the next command of the same request */
	struct shadow_store_req *req; /* NULL: internal, or a zombie */
	struct rconn *conn;
	uint8_t kind;
	uint8_t redirects;
	bool zombie;
	bool hs_last;                 /* the last command of a connection's handshake */
	uint32_t key_index;           /* EXISTS */
	uint32_t hdr_nbytes;
	uint32_t trl_nbytes;
	uint64_t total_nbytes;        /* header + value + trailer */
	uint64_t zombie_ns;           /* when its request completed without it */
	char trl[TRL_MAX];
	char hdr[HDR_MAX];
};

enum conn_state { C_IDLE, C_CONNECTING, C_READY };

struct rnode;

struct rconn {
	struct rnode *node;
	int fd;
	uint8_t state;
	bool up;                      /* handshake done */
	bool want_out;                /* EPOLLOUT registered */
	bool dirty;                   /* on the flush list */
	bool reset_pending;           /* a half-written PUT became a zombie */
	struct rconn *dirty_next;
	uint64_t connect_deadline_ns; /* connect and handshake */
	uint64_t retry_at_ns;         /* IDLE: when to try again */
	uint64_t last_rx_ns;
	uint32_t backoff_ms;
	uint32_t failures;            /* connection attempts that failed since the last one up */
	struct rcmd *head, *tail;     /* FIFO */
	struct rcmd *tx;              /* first command not fully sent */
	uint64_t tx_off;
	uint32_t n_cmds;
	/* receive side */
	uint8_t *rx;
	size_t rx_cap, rx_pos, rx_end;
	uint64_t bulk_left;           /* payload bytes of the current bulk still to come */
	uint64_t bulk_off;            /* value offset of the next payload byte */
	bool bulk_sink;               /* payload goes into the head GET's iovec */
	uint8_t crlf_left;            /* CRLF after a payload still to come */
	uint64_t skip;                /* values of an unexpected reply still to skip */
	int skip_status;              /* the head's status once skipped */
};

struct rnode {
	char host[256];
	uint16_t port;
	bool active;                  /* owns slots (cluster) or is the server */
	int last_error;
	struct sockaddr_storage addr;
	socklen_t addr_nbytes;
	struct rconn *conns;
};

struct redis_store {
	struct shadow_store base;
	bool cluster;
	int epfd;
	int timerfd;                  /* in epfd (data.ptr NULL): the next timer, for outer loops */
	uint64_t timer_armed_ns;      /* what timerfd is set to; UINT64_MAX: disarmed */
	uint32_t db;
	uint32_t ttl_s;
	uint32_t n_conns;             /* per node */
	char user[USER_MAX + 1];
	char password[PASSWORD_MAX + 1];
	bool have_password;
	struct rnode **nodes;
	uint32_t n_nodes;
	uint16_t *slots;              /* cluster: owner node index per slot, NO_NODE if unknown */
	struct rcmd *cmd_mem;
	struct rcmd *free_cmds;
	uint32_t n_free_cmds;
	struct shadow_store_req *reqs; /* in flight, via priv[4]/priv[5] */
	uint64_t next_req_deadline_ns;
	struct rconn *dirty_head;
	bool refresh_wanted;
	bool refresh_in_flight;
	bool shards_unsupported;
	bool map_loaded;
	uint64_t refresh_after_ns;
	bool progressed;
};

/* Backend fields of a request (priv[0] is the front end's). */
/*
 * Backend fields of a request, kept in its uintptr_t priv words (priv[0] is the front end's)
 * and read and written through these, never through a pointer cast of the words themselves.
 */
#define REQ_PENDING(r) ((r)->priv[2]) /* commands without a reply yet */
#define REQ_MISSING(r) ((r)->priv[3]) /* EXISTS: lowest index found missing */

static struct rcmd *req_cmds(const struct shadow_store_req *r)
{
	return (struct rcmd *)r->priv[1];
}

static void req_set_cmds(struct shadow_store_req *r, struct rcmd *cmd)
{
	r->priv[1] = (uintptr_t)cmd;
}

static struct shadow_store_req *req_prev(const struct shadow_store_req *r)
{
	return (struct shadow_store_req *)r->priv[4];
}

static struct shadow_store_req *req_next(const struct shadow_store_req *r)
{
	return (struct shadow_store_req *)r->priv[5];
}

static void req_set_prev(struct shadow_store_req *r, struct shadow_store_req *p)
{
	r->priv[4] = (uintptr_t)p;
}

static void req_set_next(struct shadow_store_req *r, struct shadow_store_req *n)
{
	r->priv[5] = (uintptr_t)n;
}

static struct redis_store *rs_of(struct shadow_store *s)
{
	return (struct redis_store *)s;
}

static void conn_fail(struct redis_store *rs, struct rconn *c, int err);

/*
 * Set the timer fd to fire at `when` (CLOCK_MONOTONIC ns; UINT64_MAX disarms), so that the fd
 * shadow_store_fd() returns turns readable when a deadline passes even if no byte arrives.
 * One syscall only when the time changes.
 */
static void timer_arm(struct redis_store *rs, uint64_t when)
{
	struct itimerspec its = { 0 };

	if (when == rs->timer_armed_ns || rs->timerfd < 0)
		return;
	if (when != UINT64_MAX) {
		when = SHADOW_MAX(when, 1); /* 0 would disarm */
		its.it_value.tv_sec = (time_t)(when / SHADOW_NS_PER_SEC);
		its.it_value.tv_nsec = (long)(when % SHADOW_NS_PER_SEC);
	}
	if (timerfd_settime(rs->timerfd, TFD_TIMER_ABSTIME, &its, NULL) == 0)
		rs->timer_armed_ns = when;
}

/* Arm the timer for `when` if that comes before what it is set to. */
static void timer_arm_before(struct redis_store *rs, uint64_t when)
{
	if (when < rs->timer_armed_ns)
		timer_arm(rs, when);
}

/* ------------------------------------------------------------------------------------------ */
/* Requests and commands                                                                      */
/* ------------------------------------------------------------------------------------------ */

static struct rcmd *cmd_alloc(struct redis_store *rs)
{
	struct rcmd *cmd = rs->free_cmds;

	if (cmd == NULL)
		return NULL;
	rs->free_cmds = cmd->next;
	rs->n_free_cmds--;
	memset(cmd, 0, offsetof(struct rcmd, trl));
	return cmd;
}

static void cmd_free(struct redis_store *rs, struct rcmd *cmd)
{
	cmd->next = rs->free_cmds;
	rs->free_cmds = cmd;
	rs->n_free_cmds++;
}

static void req_list_remove(struct redis_store *rs, struct shadow_store_req *req)
{
	if (req_prev(req) != NULL)
		req_set_next(req_prev(req), req_next(req));
	else
		rs->reqs = req_next(req);
	if (req_next(req) != NULL)
		req_set_prev(req_next(req), req_prev(req));
}

/* Unlink `cmd` from its connection's FIFO (it must not be partly sent). */
static void fifo_unlink(struct rconn *c, struct rcmd *cmd)
{
	SHADOW_ASSERT(!(c->tx == cmd && c->tx_off > 0));
	if (c->tx == cmd)
		c->tx = cmd->next;
	if (cmd->prev != NULL)
		cmd->prev->next = cmd->next;
	else
		c->head = cmd->next;
	if (cmd->next != NULL)
		cmd->next->prev = cmd->prev;
	else
		c->tail = cmd->prev;
	cmd->prev = cmd->next = NULL;
	c->n_cmds--;
}

/* Whether no byte of `cmd` has been sent. */
static bool cmd_unsent(const struct rconn *c, const struct rcmd *cmd)
{
	for (const struct rcmd *t = c->tx; t != NULL; t = t->next) {
		if (t == cmd)
			return !(t == c->tx && c->tx_off > 0);
	}
	return false;
}

/* The request of `cmd` completed early: drop the command or leave it as a zombie. */
static void cmd_zombify(struct redis_store *rs, struct rcmd *cmd)
{
	struct rconn *c = cmd->conn;

	cmd->req = NULL;
	cmd->zombie = true;
	cmd->zombie_ns = shadow__now_ns();
	if (c == NULL) {
		cmd_free(rs, cmd);
		return;
	}
	if (cmd_unsent(c, cmd)) {
		fifo_unlink(c, cmd);
		cmd_free(rs, cmd);
		return;
	}
	if (c->head == cmd && c->bulk_left > 0)
		c->bulk_sink = false; /* the rest of its value goes nowhere */
	if (cmd->kind == K_SET && c->tx == cmd)
		c->reset_pending = true; /* its value is caller memory: cut the stream */
}

/* Complete `req` with `status` now, zombifying whatever commands it still has out. */
static void req_finish(struct redis_store *rs, struct shadow_store_req *req, int status)
{
	struct rcmd *cmd = req_cmds(req);

	while (cmd != NULL) {
		struct rcmd *next = cmd->sibling;
		cmd->sibling = NULL;
		if (cmd->req != NULL)
			cmd_zombify(rs, cmd);
		cmd = next;
	}
	req_set_cmds(req, NULL);
	req_list_remove(rs, req);
	rs->progressed = true;
	shadow__store_complete(&rs->base, req, status);
}

/* The reply of one command of `req` arrived with `status`; the last one completes it. */
static void req_cmd_done(struct redis_store *rs, struct rcmd *cmd, int status)
{
	struct shadow_store_req *req = cmd->req;

	/* Take the command out of the request's chain: it is being freed by the caller. */
	if (req_cmds(req) == cmd) {
		req_set_cmds(req, cmd->sibling);
	} else {
		for (struct rcmd *p = req_cmds(req); p != NULL; p = p->sibling) {
			if (p->sibling == cmd) {
				p->sibling = cmd->sibling;
				break;
			}
		}
	}
	cmd->sibling = NULL;
	cmd->req = NULL;
	if (status < 0) {
		req_finish(rs, req, status);
		return;
	}
	if (--REQ_PENDING(req) == 0) {
		if (req->op == SHADOW_STORE_EXISTS)
			req->n_found = (uint32_t)REQ_MISSING(req);
		req_finish(rs, req, 0);
	}
}

/* ------------------------------------------------------------------------------------------ */
/* Command encoding                                                                           */
/* ------------------------------------------------------------------------------------------ */

struct enc {
	char *p;
	size_t cap;
	bool ok;
};

static void enc_len(struct enc *e, char c, uint64_t v)
{
	size_t n = e->ok ? shadow__resp_put_len(e->p, e->cap, c, v) : 0;

	e->ok = n > 0;
	e->p += n;
	e->cap -= n;
}

static void enc_bulk(struct enc *e, const char *s, size_t n)
{
	size_t w = e->ok ? shadow__resp_put_bulk(e->p, e->cap, s, n) : 0;

	e->ok = w > 0;
	e->p += w;
	e->cap -= w;
}

static void enc_str(struct enc *e, const char *s)
{
	enc_bulk(e, s, strlen(s));
}

/*
 * Encode the command: hdr holds everything up to the value, trl what follows it. Keys are at
 * most SHADOW_STORE_KEY_NBYTES_MAX and passwords PASSWORD_MAX, so HDR_MAX always suffices.
 */
static void cmd_encode(struct redis_store *rs, struct rcmd *cmd, const char *key,
		       uint64_t value_nbytes, uint32_t ttl_s)
{
	struct enc e = { cmd->hdr, sizeof(cmd->hdr), true };
	char num[24];

	switch (cmd->kind) {
	case K_GET:
	case K_DEL:
	case K_EXISTS:
		enc_len(&e, '*', 2);
		enc_str(&e, cmd->kind == K_GET ? "GET" : cmd->kind == K_DEL ? "DEL" : "EXISTS");
		enc_str(&e, key);
		break;
	case K_SET: {
		enc_len(&e, '*', ttl_s != 0 ? 5 : 3);
		enc_str(&e, "SET");
		enc_str(&e, key);
		enc_len(&e, '$', value_nbytes);
		struct enc t = { cmd->trl, sizeof(cmd->trl), true };
		memcpy(t.p, "\r\n", 2);
		t.p += 2;
		t.cap -= 2;
		if (ttl_s != 0) {
			snprintf(num, sizeof(num), "%u", ttl_s);
			enc_str(&t, "EX");
			enc_str(&t, num);
		}
		SHADOW_ASSERT(t.ok);
		cmd->trl_nbytes = (uint32_t)(t.p - cmd->trl);
		break;
	}
	case K_AUTH:
		enc_len(&e, '*', rs->user[0] != '\0' ? 3 : 2);
		enc_str(&e, "AUTH");
		if (rs->user[0] != '\0')
			enc_str(&e, rs->user);
		enc_str(&e, rs->password);
		break;
	case K_SELECT:
		snprintf(num, sizeof(num), "%u", rs->db);
		enc_len(&e, '*', 2);
		enc_str(&e, "SELECT");
		enc_str(&e, num);
		break;
	case K_PING:
		enc_len(&e, '*', 1);
		enc_str(&e, "PING");
		break;
	case K_ASKING:
		enc_len(&e, '*', 1);
		enc_str(&e, "ASKING");
		break;
	case K_SHARDS:
	case K_SLOTS:
		enc_len(&e, '*', 2);
		enc_str(&e, "CLUSTER");
		enc_str(&e, cmd->kind == K_SHARDS ? "SHARDS" : "SLOTS");
		break;
	default:
		e.ok = false;
		break;
	}
	SHADOW_ASSERT(e.ok);
	cmd->hdr_nbytes = (uint32_t)(e.p - cmd->hdr);
	cmd->total_nbytes = cmd->hdr_nbytes + value_nbytes + cmd->trl_nbytes;
}

/* ------------------------------------------------------------------------------------------ */
/* Nodes and connections                                                                      */
/* ------------------------------------------------------------------------------------------ */

static int node_resolve(struct rnode *n)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_NUMERICSERV };
	struct addrinfo *ai = NULL;
	char port[8];

	snprintf(port, sizeof(port), "%u", n->port);
	int rc = getaddrinfo(n->host, port, &hints, &ai);
	if (rc != 0 || ai == NULL) {
		SHADOW_LOGE("redis: cannot resolve %s: %s", n->host, gai_strerror(rc));
		return -EHOSTUNREACH;
	}
	memcpy(&n->addr, ai->ai_addr, ai->ai_addrlen);
	n->addr_nbytes = ai->ai_addrlen;
	freeaddrinfo(ai);
	return 0;
}

/* The node at host:port, added (and resolved) if new; NULL with *err on failure. */
static struct rnode *node_get(struct redis_store *rs, const char *host, size_t host_nbytes,
			      uint16_t port, uint32_t *index_ret, int *err)
{
	for (uint32_t i = 0; i < rs->n_nodes; i++) {
		struct rnode *n = rs->nodes[i];
		if (n->port == port && strlen(n->host) == host_nbytes &&
		    memcmp(n->host, host, host_nbytes) == 0) {
			*index_ret = i;
			return n;
		}
	}
	if (rs->n_nodes == NODES_MAX || host_nbytes == 0 || host_nbytes >= sizeof(rs->nodes[0]->host)) {
		*err = host_nbytes == 0 ? SHADOW_EPROTO : SHADOW_ELIMIT;
		return NULL;
	}
	struct rnode **nodes = realloc(rs->nodes, (rs->n_nodes + 1) * sizeof(*nodes));
	if (nodes == NULL) {
		*err = -ENOMEM;
		return NULL;
	}
	rs->nodes = nodes;
	struct rnode *n = calloc(1, sizeof(*n) + rs->n_conns * sizeof(struct rconn));
	if (n == NULL) {
		*err = -ENOMEM;
		return NULL;
	}
	memcpy(n->host, host, host_nbytes);
	n->port = port;
	n->conns = (struct rconn *)(n + 1);
	for (uint32_t i = 0; i < rs->n_conns; i++) {
		n->conns[i].node = n;
		n->conns[i].fd = -1;
		n->conns[i].backoff_ms = rs->base.opts.reconnect_min_ms;
	}
	*err = node_resolve(n);
	if (*err < 0) {
		free(n);
		return NULL;
	}
	n->last_error = -ECONNREFUSED;
	rs->nodes[rs->n_nodes] = n;
	*index_ret = rs->n_nodes++;
	return n;
}

static void conn_mark_dirty(struct redis_store *rs, struct rconn *c)
{
	if (!c->dirty && c->tx != NULL) {
		c->dirty = true;
		c->dirty_next = rs->dirty_head;
		rs->dirty_head = c;
	}
}

static void conn_push(struct redis_store *rs, struct rconn *c, struct rcmd *cmd)
{
	cmd->conn = c;
	cmd->prev = c->tail;
	cmd->next = NULL;
	if (c->tail != NULL)
		c->tail->next = cmd;
	else
		c->head = cmd;
	c->tail = cmd;
	c->n_cmds++;
	if (c->tx == NULL) {
		c->tx = cmd;
		c->tx_off = 0;
	}
	conn_mark_dirty(rs, c);
}

static int conn_epoll(struct redis_store *rs, struct rconn *c, int op, bool out)
{
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP | (out ? EPOLLOUT : 0),
				  .data.ptr = c };

	if (epoll_ctl(rs->epfd, op, c->fd, &ev) < 0)
		return -errno;
	c->want_out = out;
	return 0;
}

/* Queue an internal command at the tail of `c`; -EBUSY if the pool is empty. */
static int conn_push_internal(struct redis_store *rs, struct rconn *c, enum cmd_kind kind)
{
	struct rcmd *cmd = cmd_alloc(rs);

	if (cmd == NULL)
		return -EBUSY;
	cmd->kind = (uint8_t)kind;
	cmd_encode(rs, cmd, NULL, 0, 0);
	conn_push(rs, c, cmd);
	return 0;
}

/* Start connecting `c` (IDLE). The handshake is queued at once; data may follow it. */
static int conn_connect(struct redis_store *rs, struct rconn *c)
{
	struct rnode *n = c->node;
	int fd, rc;

	SHADOW_ASSERT(c->state == C_IDLE && c->head == NULL);
	if (c->rx == NULL) {
		c->rx = malloc(RX_NBYTES);
		if (c->rx == NULL)
			return -ENOMEM;
		c->rx_cap = RX_NBYTES;
	}
	fd = socket(n->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
	if (fd < 0)
		return -errno;
	int one = 1;
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&n->addr, n->addr_nbytes) < 0 && errno != EINPROGRESS) {
		rc = -errno;
		close(fd);
		return rc;
	}
	c->fd = fd;
	c->state = C_CONNECTING;
	c->up = false;
	c->connect_deadline_ns = shadow__deadline_ns(
		shadow__now_ns(), (uint64_t)rs->base.opts.connect_timeout_ms * SHADOW_NS_PER_MS);
	timer_arm_before(rs, c->connect_deadline_ns);
	c->last_rx_ns = shadow__now_ns();
	rc = conn_epoll(rs, c, EPOLL_CTL_ADD, true);
	if (rc < 0) {
		close(fd);
		c->fd = -1;
		c->state = C_IDLE;
		return rc;
	}
	if (rs->have_password)
		rc = conn_push_internal(rs, c, K_AUTH);
	if (rc == 0 && rs->db != 0 && !rs->cluster)
		rc = conn_push_internal(rs, c, K_SELECT);
	if (rc == 0 && c->tail == NULL)
		rc = conn_push_internal(rs, c, K_PING);
	if (rc < 0) {
		conn_fail(rs, c, rc);
		return rc;
	}
	c->tail->hs_last = true;
	return 0;
}

/*
 * The connection for a new command to node `n`: the least loaded live one, else one whose
 * retry time has come (connecting it now). NULL if none: the node is down and backing off.
 */
static struct rconn *node_pick_conn(struct redis_store *rs, struct rnode *n, uint64_t now)
{
	struct rconn *best = NULL;

	for (uint32_t i = 0; i < rs->n_conns; i++) {
		struct rconn *c = &n->conns[i];
		if (c->state != C_IDLE && !c->reset_pending &&
		    (best == NULL || c->n_cmds < best->n_cmds))
			best = c;
	}
	if (best != NULL)
		return best;
	for (uint32_t i = 0; i < rs->n_conns; i++) {
		struct rconn *c = &n->conns[i];
		if (c->state == C_IDLE && c->retry_at_ns <= now) {
			int rc = conn_connect(rs, c);
			if (rc == 0)
				return c;
			n->last_error = rc;
		}
	}
	return NULL;
}

static void rx_reset(struct rconn *c)
{
	c->rx_pos = c->rx_end = 0;
	c->bulk_left = c->bulk_off = 0;
	c->bulk_sink = false;
	c->crlf_left = 0;
	c->skip = 0;
}

/*
 * Drop the connection: every request with a command on it fails with `err`, internal commands
 * are dropped, and the connection backs off before the poll loop retries it.
 */
static void conn_fail(struct redis_store *rs, struct rconn *c, int err)
{
	struct rnode *n = c->node;

	if (c->fd >= 0) {
		(void)epoll_ctl(rs->epfd, EPOLL_CTL_DEL, c->fd, NULL);
		close(c->fd);
		c->fd = -1;
		if (c->up)
			rs->base.stats.disconnects++;
	}
	/* Nothing is sent any more: fifo_unlink may take any command, zombify finds none unsent,
	 * and the connection leaves the flush list harmlessly if it is on it. */
	c->tx = NULL;
	c->tx_off = 0;
	while (c->head != NULL) {
		struct rcmd *cmd = c->head;
		fifo_unlink(c, cmd);
		cmd->conn = NULL;
		if (cmd->kind == K_SHARDS || cmd->kind == K_SLOTS)
			rs->refresh_in_flight = false;
		if (cmd->req != NULL)
			req_cmd_done(rs, cmd, err); /* zombifies the request's other commands */
		cmd_free(rs, cmd);
	}
	rx_reset(c);
	c->reset_pending = false;
	c->state = C_IDLE;
	if (c->up) {
		c->backoff_ms = rs->base.opts.reconnect_min_ms;
		c->failures = 0;
	} else {
		c->backoff_ms = SHADOW_MIN(c->backoff_ms * 2, rs->base.opts.reconnect_max_ms);
		c->failures++;
	}
	c->retry_at_ns = shadow__deadline_ns(shadow__now_ns(), c->backoff_ms * SHADOW_NS_PER_MS);
	c->up = false;
	n->last_error = err;
	if (rs->cluster)
		rs->refresh_wanted = true;
}

/* ------------------------------------------------------------------------------------------ */
/* Routing                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static struct rnode *route(struct redis_store *rs, const char *key)
{
	if (!rs->cluster)
		return rs->nodes[0];
	uint16_t idx = rs->slots[shadow__resp_key_slot(key, strlen(key))];
	if (idx != NO_NODE)
		return rs->nodes[idx];
	/* Unknown slot: any active node answers with MOVED. */
	for (uint32_t i = 0; i < rs->n_nodes; i++) {
		if (rs->nodes[i]->active)
			return rs->nodes[i];
	}
	return rs->nodes[0];
}

/* Send `cmd` (of a live request) to node `n`, after an ASKING if `asking`. */
static int cmd_send(struct redis_store *rs, struct rnode *n, struct rcmd *cmd, bool asking)
{
	struct rconn *c = node_pick_conn(rs, n, shadow__now_ns());

	if (c == NULL)
		return n->last_error < 0 ? n->last_error : -ECONNREFUSED;
	if (asking) {
		int rc = conn_push_internal(rs, c, K_ASKING);
		if (rc < 0)
			return rc;
	}
	conn_push(rs, c, cmd);
	return 0;
}

/* "MOVED 3999 127.0.0.1:6381" / "ASK ...": follow it. Returns 0 or an error for the request. */
static int redirect(struct redis_store *rs, struct rconn *from, struct rcmd *cmd,
		    const char *text, size_t len, bool ask)
{
	char buf[300];
	unsigned slot;
	int consumed = 0;

	if (len >= sizeof(buf))
		return SHADOW_EPROTO;
	memcpy(buf, text, len);
	buf[len] = '\0';
	char *addr = strchr(buf, ' ');
	if (addr == NULL || sscanf(addr + 1, "%u %n", &slot, &consumed) != 1 || consumed == 0 ||
	    slot >= SHADOW__CLUSTER_SLOTS)
		return SHADOW_EPROTO;
	addr = addr + 1 + consumed;
	char *colon = strrchr(addr, ':');
	unsigned long port;
	char *end;
	if (colon == NULL || (port = strtoul(colon + 1, &end, 10)) == 0 || port > 65535 ||
	    *end != '\0')
		return SHADOW_EPROTO;
	const char *host = addr;
	size_t host_nbytes = (size_t)(colon - addr);
	if (host_nbytes == 0) { /* an unknown endpoint: the node that answered */
		host = from->node->host;
		host_nbytes = strlen(host);
	}
	if (++cmd->redirects > REDIRECTS_MAX)
		return SHADOW_EPROTO;
	uint32_t idx;
	int err = 0;
	struct rnode *n = node_get(rs, host, host_nbytes, (uint16_t)port, &idx, &err);
	if (n == NULL)
		return err;
	if (ask) {
		rs->base.stats.asked++;
	} else {
		rs->base.stats.moved++;
		rs->slots[slot] = (uint16_t)idx;
		n->active = true;
		rs->refresh_wanted = true;
	}
	return cmd_send(rs, n, cmd, ask);
}

/* ------------------------------------------------------------------------------------------ */
/* Cluster slot map                                                                           */
/* ------------------------------------------------------------------------------------------ */

static bool node_str_eq(const struct shadow__resp_node *n, const char *s)
{
	size_t len = strlen(s);

	return n->type == SHADOW__RESP_BULK && n->n >= 0 && n->str_nbytes == len &&
	       memcmp(n->str, s, len) == 0;
}

static const struct shadow__resp_node *map_get(const struct shadow__resp_node *m, const char *k)
{
	if (m->type != SHADOW__RESP_ARRAY)
		return NULL;
	for (int64_t i = 0; i + 1 < m->n; i += 2) {
		if (node_str_eq(&m->elems[i], k))
			return &m->elems[i + 1];
	}
	return NULL;
}

static int assign_slots(struct redis_store *rs, uint16_t *map, int64_t lo, int64_t hi,
			const char *host, size_t host_nbytes, int64_t port, const struct rconn *from)
{
	uint32_t idx;
	int err = 0;

	if (lo < 0 || hi < lo || hi >= (int64_t)SHADOW__CLUSTER_SLOTS || port <= 0 || port > 65535)
		return SHADOW_EPROTO;
	if (host_nbytes == 0 || (host_nbytes == 1 && host[0] == '?')) {
		host = from->node->host; /* "" or "?": the node that answered */
		host_nbytes = strlen(host);
	}
	struct rnode *n = node_get(rs, host, host_nbytes, (uint16_t)port, &idx, &err);
	if (n == NULL)
		return err;
	for (int64_t s = lo; s <= hi; s++)
		map[s] = (uint16_t)idx;
	return 0;
}

/* CLUSTER SHARDS: [ [ "slots", [lo, hi, ...], "nodes", [ {k, v, ...}, ... ] ], ... ]. */
static int apply_shards(struct redis_store *rs, const struct shadow__resp_node *t, uint16_t *map,
			const struct rconn *from)
{
	if (t->type != SHADOW__RESP_ARRAY)
		return SHADOW_EPROTO;
	for (int64_t i = 0; i < t->n; i++) {
		const struct shadow__resp_node *slots = map_get(&t->elems[i], "slots");
		const struct shadow__resp_node *nodes = map_get(&t->elems[i], "nodes");
		const struct shadow__resp_node *master = NULL;

		if (slots == NULL || nodes == NULL || slots->type != SHADOW__RESP_ARRAY ||
		    nodes->type != SHADOW__RESP_ARRAY || slots->n % 2 != 0)
			return SHADOW_EPROTO;
		for (int64_t j = 0; j < nodes->n && master == NULL; j++) {
			const struct shadow__resp_node *role = map_get(&nodes->elems[j], "role");
			const struct shadow__resp_node *health = map_get(&nodes->elems[j], "health");
			if (role != NULL && node_str_eq(role, "master") &&
			    (health == NULL || node_str_eq(health, "online")))
				master = &nodes->elems[j];
		}
		if (master == NULL || slots->n == 0)
			continue; /* no live master: its slots stay unknown */
		const struct shadow__resp_node *ep = map_get(master, "endpoint");
		const struct shadow__resp_node *ip = map_get(master, "ip");
		const struct shadow__resp_node *port = map_get(master, "port");
		if (ep == NULL || ep->type != SHADOW__RESP_BULK || ep->n < 0 ||
		    (ep->str_nbytes == 1 && ep->str[0] == '?'))
			ep = ip;
		if (ep == NULL || ep->type != SHADOW__RESP_BULK || ep->n < 0 || port == NULL ||
		    port->type != SHADOW__RESP_INT)
			return SHADOW_EPROTO;
		for (int64_t j = 0; j < slots->n; j += 2) {
			if (slots->elems[j].type != SHADOW__RESP_INT ||
			    slots->elems[j + 1].type != SHADOW__RESP_INT)
				return SHADOW_EPROTO;
			int rc = assign_slots(rs, map, slots->elems[j].n, slots->elems[j + 1].n,
					      ep->str, ep->str_nbytes, port->n, from);
			if (rc < 0)
				return rc;
		}
	}
	return 0;
}

/* CLUSTER SLOTS: [ [lo, hi, [host, port, id, ...], replicas...], ... ]. */
static int apply_slots(struct redis_store *rs, const struct shadow__resp_node *t, uint16_t *map,
		       const struct rconn *from)
{
	if (t->type != SHADOW__RESP_ARRAY)
		return SHADOW_EPROTO;
	for (int64_t i = 0; i < t->n; i++) {
		const struct shadow__resp_node *r = &t->elems[i];
		if (r->type != SHADOW__RESP_ARRAY || r->n < 3 || r->elems[0].type != SHADOW__RESP_INT ||
		    r->elems[1].type != SHADOW__RESP_INT)
			return SHADOW_EPROTO;
		const struct shadow__resp_node *m = &r->elems[2];
		if (m->type != SHADOW__RESP_ARRAY || m->n < 2 || m->elems[0].type != SHADOW__RESP_BULK ||
		    m->elems[0].n < 0 || m->elems[1].type != SHADOW__RESP_INT)
			return SHADOW_EPROTO;
		int rc = assign_slots(rs, map, r->elems[0].n, r->elems[1].n, m->elems[0].str,
				      m->elems[0].str_nbytes, m->elems[1].n, from);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static void apply_map(struct redis_store *rs, struct rcmd *cmd, const struct shadow__resp_node *t,
		      const struct rconn *from)
{
	uint16_t *map = malloc(SHADOW__CLUSTER_SLOTS * sizeof(*map));
	int rc;

	if (map == NULL)
		return; /* keep the old map; a later redirect asks again */
	for (uint32_t s = 0; s < SHADOW__CLUSTER_SLOTS; s++)
		map[s] = NO_NODE;
	rc = cmd->kind == K_SHARDS ? apply_shards(rs, t, map, from) : apply_slots(rs, t, map, from);
	if (rc < 0) {
		SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR, "redis %s:%u: malformed CLUSTER %s reply",
				       from->node->host, from->node->port,
				       cmd->kind == K_SHARDS ? "SHARDS" : "SLOTS");
		rs->base.stats.protocol_errors++;
		free(map);
		return;
	}
	for (uint32_t i = 0; i < rs->n_nodes; i++)
		rs->nodes[i]->active = false;
	for (uint32_t s = 0; s < SHADOW__CLUSTER_SLOTS; s++) {
		if (map[s] != NO_NODE)
			rs->nodes[map[s]]->active = true;
	}
	memcpy(rs->slots, map, SHADOW__CLUSTER_SLOTS * sizeof(*map));
	free(map);
	rs->map_loaded = true;
}

/* Ask some live node for the slot map (at most one request in flight). */
static void refresh_start(struct redis_store *rs, uint64_t now)
{
	for (uint32_t i = 0; i < rs->n_nodes; i++) {
		struct rnode *n = rs->nodes[(i + (uint32_t)(now >> 20)) % rs->n_nodes];
		if (!n->active && rs->map_loaded)
			continue;
		struct rconn *c = node_pick_conn(rs, n, now);
		if (c == NULL)
			continue;
		if (conn_push_internal(rs, c, rs->shards_unsupported ? K_SLOTS : K_SHARDS) == 0) {
			rs->refresh_in_flight = true;
			rs->refresh_wanted = false;
			rs->refresh_after_ns = now + REFRESH_MIN_NS;
		}
		return;
	}
}

/* ------------------------------------------------------------------------------------------ */
/* Receiving                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* Pop the FIFO head once its reply is fully consumed; complete its request with `status`. */
static void head_done(struct redis_store *rs, struct rconn *c, int status)
{
	struct rcmd *cmd = c->head;

	SHADOW_ASSERT(cmd != NULL && c->tx != cmd);
	fifo_unlink(c, cmd);
	if (cmd->req != NULL)
		req_cmd_done(rs, cmd, status);
	cmd_free(rs, cmd);
}

/* Start skipping one reply value (of `line`) for the head, which then completes with `st`. */
static void skip_reply(struct rconn *c, const struct shadow__resp_line *l, int st)
{
	c->skip_status = st;
	c->skip = 0;
	if (l->type == SHADOW__RESP_ARRAY && l->n > 0) {
		c->skip = (uint64_t)l->n;
	} else if (l->type == SHADOW__RESP_BULK && l->n >= 0) {
		c->bulk_left = (uint64_t)l->n;
		c->bulk_sink = false;
		c->crlf_left = 2;
	}
}

static bool text_is(const struct shadow__resp_line *l, const char *prefix)
{
	size_t n = strlen(prefix);

	return l->text_nbytes >= n && memcmp(l->text, prefix, n) == 0;
}

/*
 * An error reply for the head. Returns 0 when handled (head completed or redirected), or an
 * error that resets the connection (a failed handshake).
 */
static int on_error_reply(struct redis_store *rs, struct rconn *c, const struct shadow__resp_line *l)
{
	struct rcmd *cmd = c->head;
	int len = (int)SHADOW_MIN(l->text_nbytes, 200u);

	switch (cmd->kind) {
	case K_AUTH:
	case K_SELECT:
	case K_PING:
		SHADOW_LOGE("redis %s:%u: handshake refused: %.*s", c->node->host, c->node->port,
			    len, l->text);
		return cmd->kind == K_AUTH || text_is(l, "NOAUTH") || text_is(l, "WRONGPASS") ?
			       -EACCES : SHADOW_ESERVER;
	case K_SHARDS:
		rs->shards_unsupported = true; /* Redis < 7: CLUSTER SLOTS next time */
		rs->refresh_wanted = true;
		rs->refresh_in_flight = false;
		rs->refresh_after_ns = 0;
		head_done(rs, c, 0);
		return 0;
	case K_SLOTS:
	case K_ASKING:
		if (cmd->kind == K_SLOTS)
			rs->refresh_in_flight = false;
		SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR, "redis %s:%u: %.*s", c->node->host,
				       c->node->port, len, l->text);
		head_done(rs, c, 0);
		return 0;
	default:
		break;
	}
	bool moved = text_is(l, "MOVED "), ask = text_is(l, "ASK ");
	if ((moved || ask) && rs->cluster && cmd->req != NULL) {
		fifo_unlink(c, cmd);
		int rc = redirect(rs, c, cmd, l->text, l->text_nbytes, ask);
		if (rc < 0) {
			req_cmd_done(rs, cmd, rc);
			cmd_free(rs, cmd);
		}
		return 0;
	}
	SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR, "redis %s:%u: %.*s", c->node->host,
			       c->node->port, len, l->text);
	head_done(rs, c, SHADOW_ESERVER);
	return 0;
}

/* Handle one reply line for the head command. Returns 0 or an error that resets `c`. */
static int on_line(struct redis_store *rs, struct rconn *c, const struct shadow__resp_line *l)
{
	struct rcmd *cmd = c->head;
	struct shadow_store_req *req = cmd->req;

	if (l->type == SHADOW__RESP_ERROR)
		return on_error_reply(rs, c, l);

	switch (cmd->kind) {
	case K_GET:
		if (l->type != SHADOW__RESP_BULK)
			break;
		if (l->n < 0) {
			head_done(rs, c, SHADOW_EMISS);
			return 0;
		}
		if ((uint64_t)l->n > rs->base.opts.max_value_nbytes) {
			SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR,
					       "redis %s:%u: value of %lld bytes exceeds the limit",
					       c->node->host, c->node->port, (long long)l->n);
			if (req != NULL) {
				req->value_nbytes = (uint64_t)l->n;
				req_cmd_done(rs, cmd, SHADOW_ELIMIT);
			}
			return SHADOW_ELIMIT; /* too long to skip: reset */
		}
		c->bulk_left = (uint64_t)l->n;
		c->bulk_off = 0;
		c->crlf_left = 2;
		c->bulk_sink = req != NULL;
		c->skip_status = 0;
		if (req != NULL) {
			req->value_nbytes = (uint64_t)l->n;
			if ((uint64_t)l->n > shadow__iov_nbytes(req->iov, req->iov_count)) {
				c->bulk_sink = false;
				c->skip_status = SHADOW_ELIMIT;
			}
		}
		return 0;
	case K_SET:
		if (l->type != SHADOW__RESP_SIMPLE)
			break;
		head_done(rs, c, text_is(l, "OK") ? 0 : SHADOW_EPROTO);
		return 0;
	case K_DEL:
	case K_EXISTS:
		if (l->type != SHADOW__RESP_INT)
			break;
		if (req != NULL && cmd->kind == K_DEL)
			req->n_found = l->n > 0;
		if (req != NULL && cmd->kind == K_EXISTS && l->n <= 0 &&
		    cmd->key_index < REQ_MISSING(req))
			REQ_MISSING(req) = cmd->key_index;
		head_done(rs, c, 0);
		return 0;
	case K_AUTH:
	case K_SELECT:
	case K_PING:
	case K_ASKING:
		if (l->type != SHADOW__RESP_SIMPLE)
			return SHADOW_EPROTO;
		if (cmd->hs_last) {
			c->up = true;
			c->backoff_ms = rs->base.opts.reconnect_min_ms;
			c->node->last_error = 0;
			rs->base.stats.connects++;
			rs->progressed = true;
		}
		head_done(rs, c, 0);
		return 0;
	default:
		return SHADOW_EPROTO; /* control replies are parsed as trees */
	}
	/* A well-framed reply of the wrong type: skip it, fail the request, keep the stream. */
	SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR, "redis %s:%u: unexpected reply type '%c'",
			       c->node->host, c->node->port, l->type);
	skip_reply(c, l, SHADOW_EPROTO);
	if (c->skip == 0 && c->bulk_left == 0 && c->crlf_left == 0)
		head_done(rs, c, SHADOW_EPROTO);
	return 0;
}

/* A control command at the head: parse its whole reply as a tree once it is all in rx. */
static int on_control(struct redis_store *rs, struct rconn *c)
{
	struct shadow__resp_node *tree = NULL;
	int64_t n = shadow__resp_parse_tree(c->rx + c->rx_pos, c->rx_end - c->rx_pos, &tree);

	if (n == -EAGAIN)
		return -EAGAIN;
	if (n < 0)
		return (int)n;
	c->rx_pos += (size_t)n;
	struct rcmd *cmd = c->head;
	if (tree->type == SHADOW__RESP_ERROR) {
		struct shadow__resp_line l = { .type = SHADOW__RESP_ERROR, .text = tree->str,
					       .text_nbytes = tree->str_nbytes };
		free(tree);
		return on_error_reply(rs, c, &l);
	}
	apply_map(rs, cmd, tree, c);
	free(tree);
	rs->refresh_in_flight = false;
	rs->progressed = true;
	head_done(rs, c, 0);
	return 0;
}

/* The payload and CRLF of a bulk are consumed: finish the head or continue skipping. */
static void bulk_done(struct redis_store *rs, struct rconn *c)
{
	if (c->skip > 0)
		return; /* an element of a skipped array */
	head_done(rs, c, c->skip_status);
}

/* Consume what rx holds. Returns 0 (needs more bytes), or an error that resets `c`. */
static int conn_process(struct redis_store *rs, struct rconn *c)
{
	for (;;) {
		size_t avail = c->rx_end - c->rx_pos;

		if (c->bulk_left > 0) {
			if (avail == 0)
				return 0;
			uint64_t take = SHADOW_MIN((uint64_t)avail, c->bulk_left);
			struct shadow_store_req *req = c->head->req;
			if (c->bulk_sink) {
				shadow__iov_copy_in(req->iov, req->iov_count, c->bulk_off,
						    c->rx + c->rx_pos, take);
			}
			c->rx_pos += take;
			c->bulk_off += take;
			c->bulk_left -= take;
			if (c->bulk_sink) {
				rs->progressed = true;
				shadow__store_landed(req, c->bulk_off); /* may cancel: sink off */
			}
			continue;
		}
		if (c->crlf_left > 0) {
			if (avail == 0)
				return 0;
			char want = c->crlf_left == 2 ? '\r' : '\n';
			if (c->rx[c->rx_pos] != want)
				return SHADOW_EPROTO;
			c->rx_pos++;
			if (--c->crlf_left == 0) {
				if (c->skip == 0)
					bulk_done(rs, c);
			}
			continue;
		}
		if (avail == 0)
			return 0;
		if (c->head == NULL || c->tx == c->head)
			return SHADOW_EPROTO; /* a reply to nothing we sent */
		if (c->skip == 0 && (c->head->kind == K_SHARDS || c->head->kind == K_SLOTS)) {
			int rc = on_control(rs, c);
			if (rc == -EAGAIN)
				return 0;
			if (rc < 0)
				return rc;
			continue;
		}
		struct shadow__resp_line l;
		int rc = shadow__resp_parse_line(c->rx + c->rx_pos, avail, &l);
		if (rc == -EAGAIN)
			return 0;
		if (rc < 0)
			return rc;
		c->rx_pos += l.line_nbytes;
		if (c->skip > 0) {
			c->skip--;
			if (l.type == SHADOW__RESP_ARRAY && l.n > 0) {
				c->skip += (uint64_t)l.n;
			} else if (l.type == SHADOW__RESP_BULK && l.n >= 0) {
				c->bulk_left = (uint64_t)l.n;
				c->bulk_sink = false;
				c->crlf_left = 2; /* bulk_done finishes the head after it */
			}
			if (c->skip == 0 && c->bulk_left == 0 && c->crlf_left == 0)
				head_done(rs, c, c->skip_status);
			continue;
		}
		rc = on_line(rs, c, &l);
		if (rc < 0)
			return rc;
	}
}

/*
 * Build the readv destination for the current bulk: the unfilled part of the head GET's
 * iovec (up to RX_IOV entries, at most bulk_left bytes). Returns the entry count.
 */
static int rx_dest_iov(const struct rconn *c, struct iovec *out)
{
	const struct shadow_store_req *req = c->head->req;
	uint64_t off = c->bulk_off, left = c->bulk_left;
	int n = 0;

	for (uint32_t i = 0; i < req->iov_count && left > 0 && n < (int)RX_IOV; i++) {
		uint64_t len = req->iov[i].iov_len;
		if (off >= len) {
			off -= len;
			continue;
		}
		uint64_t take = SHADOW_MIN(len - off, left);
		out[n].iov_base = (uint8_t *)req->iov[i].iov_base + off;
		out[n].iov_len = take;
		n++;
		left -= take;
		off = 0;
	}
	return n;
}

/* Make room in rx: compact, or grow it for a control reply. 0, or an error that resets. */
static int rx_make_room(struct rconn *c)
{
	if (c->rx_pos > 0 && (c->rx_pos == c->rx_end || c->rx_cap - c->rx_end < RX_NBYTES / 4)) {
		memmove(c->rx, c->rx + c->rx_pos, c->rx_end - c->rx_pos);
		c->rx_end -= c->rx_pos;
		c->rx_pos = 0;
	}
	if (c->rx_end < c->rx_cap)
		return 0;
	/* Full with one incomplete item: only a control reply may be that long. */
	if (c->head == NULL || (c->head->kind != K_SHARDS && c->head->kind != K_SLOTS) ||
	    c->rx_cap >= RX_CONTROL_MAX)
		return SHADOW_EPROTO;
	uint8_t *rx = realloc(c->rx, c->rx_cap * 2);
	if (rx == NULL)
		return -ENOMEM;
	c->rx = rx;
	c->rx_cap *= 2;
	return 0;
}

/* Read and process until the socket is drained or the budget is spent. */
static int conn_read(struct redis_store *rs, struct rconn *c)
{
	uint64_t budget = READ_BUDGET;

	for (;;) {
		int rc = conn_process(rs, c);
		if (rc < 0)
			return rc;
		if (c->reset_pending)
			return -ECONNRESET;
		if (budget == 0)
			return 0; /* level-triggered epoll reports the rest */

		struct iovec iov[RX_IOV + 1];
		int n = 0;
		if (c->bulk_left > 0 && c->bulk_sink && c->rx_pos == c->rx_end)
			n = rx_dest_iov(c, iov);
		uint64_t dest = shadow__iov_nbytes(iov, (uint32_t)n);
		rc = rx_make_room(c);
		if (rc < 0)
			return rc;
		iov[n].iov_base = c->rx + c->rx_end;
		iov[n].iov_len = c->rx_cap - c->rx_end;
		n++;

		ssize_t got = readv(c->fd, iov, n);
		if (got < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) /* == EWOULDBLOCK on Linux */
				return 0;
			return -errno;
		}
		if (got == 0)
			return -ECONNRESET; /* the server closed the connection */
		c->last_rx_ns = shadow__now_coarse_ns();
		budget -= SHADOW_MIN(budget, (uint64_t)got);
		uint64_t into_dest = SHADOW_MIN((uint64_t)got, dest);
		c->rx_end += (size_t)((uint64_t)got - into_dest);
		if (into_dest > 0) {
			struct shadow_store_req *req = c->head->req;
			c->bulk_off += into_dest;
			c->bulk_left -= into_dest;
			rs->progressed = true;
			shadow__store_landed(req, c->bulk_off);
		}
	}
}

/* ------------------------------------------------------------------------------------------ */
/* Sending                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* The iovec of `cmd` from byte `off` on: header, value (a PUT's), trailer. */
static int cmd_tx_iov(const struct rcmd *cmd, uint64_t off, struct iovec *out, int max)
{
	int n = 0;

#define ADD_SEG(base, len)                                                           \
	do {                                                                          \
		uint64_t l_ = (len);                                                   \
		if (off >= l_) {                                                       \
			off -= l_;                                                     \
		} else if (n < max) {                                                  \
			out[n].iov_base = (uint8_t *)(base) + off;                     \
			out[n].iov_len = l_ - off;                                     \
			n++;                                                           \
			off = 0;                                                       \
		}                                                                      \
	} while (0)

	ADD_SEG(cmd->hdr, cmd->hdr_nbytes);
	if (cmd->kind == K_SET && cmd->req != NULL) {
		for (uint32_t i = 0; i < cmd->req->iov_count; i++)
			ADD_SEG(cmd->req->iov[i].iov_base, cmd->req->iov[i].iov_len);
	}
	ADD_SEG(cmd->trl, cmd->trl_nbytes);
#undef ADD_SEG
	return n;
}

static int conn_flush(struct redis_store *rs, struct rconn *c)
{
	if (c->state != C_READY)
		return 0; /* sent once connected */
	while (c->tx != NULL) {
		struct iovec iov[TX_IOV];
		int n = 0;
		uint64_t off = c->tx_off;

		for (struct rcmd *cmd = c->tx; cmd != NULL && n < (int)TX_IOV; cmd = cmd->next) {
			/* A PUT zombie past its first byte would need its (gone) value. */
			if (cmd->kind == K_SET && cmd->req == NULL && cmd->zombie)
				return -ECONNRESET;
			n += cmd_tx_iov(cmd, off, iov + n, (int)TX_IOV - n);
			off = 0;
		}
		struct msghdr msg = { .msg_iov = iov, .msg_iovlen = (size_t)n };
		ssize_t sent = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
		if (sent < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) /* == EWOULDBLOCK on Linux */ {
				if (!c->want_out)
					return conn_epoll(rs, c, EPOLL_CTL_MOD, true);
				return 0;
			}
			return -errno;
		}
		uint64_t left = (uint64_t)sent;
		while (left > 0) {
			uint64_t rem = c->tx->total_nbytes - c->tx_off;
			if (left < rem) {
				c->tx_off += left;
				break;
			}
			left -= rem;
			c->tx = c->tx->next;
			c->tx_off = 0;
		}
	}
	if (c->want_out)
		return conn_epoll(rs, c, EPOLL_CTL_MOD, false);
	return 0;
}

static void flush_dirty(struct redis_store *rs)
{
	struct rconn *c = rs->dirty_head;

	rs->dirty_head = NULL;
	while (c != NULL) {
		struct rconn *next = c->dirty_next;
		c->dirty = false;
		if (c->fd >= 0 && c->tx != NULL) {
			int rc = c->reset_pending ? -ECONNRESET : conn_flush(rs, c);
			if (rc < 0)
				conn_fail(rs, c, rc);
		}
		c = next;
	}
}

/* ------------------------------------------------------------------------------------------ */
/* The poll loop                                                                              */
/* ------------------------------------------------------------------------------------------ */

static void conn_event(struct redis_store *rs, struct rconn *c, uint32_t events)
{
	int rc = 0;

	if (c->state == C_CONNECTING) {
		int err = 0;
		socklen_t len = sizeof(err);
		if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
			return;
		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
			err = errno;
		if (err != 0) {
			conn_fail(rs, c, -err);
			return;
		}
		c->state = C_READY;
		events |= EPOLLOUT;
	}
	if (events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP))
		rc = conn_read(rs, c);
	if (rc == 0 && c->fd >= 0 && (events & EPOLLOUT))
		rc = c->reset_pending ? -ECONNRESET : conn_flush(rs, c);
	if (rc < 0) {
		if (rc == SHADOW_EPROTO) {
			rs->base.stats.protocol_errors++;
			SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR,
					       "redis %s:%u: reply breaks the protocol; reconnecting",
					       c->node->host, c->node->port);
			/* The request whose reply broke says so; the others lost their
			 * connection. */
			if (c->head != NULL && c->head->req != NULL)
				req_cmd_done(rs, c->head, SHADOW_EPROTO);
		}
		conn_fail(rs, c, rc == SHADOW_EPROTO || rc == SHADOW_ELIMIT ? -ECONNRESET : rc);
	}
}

/* Deadlines, connect timeouts, stalls, reconnects, map refresh; returns the next timer. */
static uint64_t run_timers(struct redis_store *rs, uint64_t now)
{
	uint64_t next = UINT64_MAX;

	if (now >= rs->next_req_deadline_ns) {
		uint64_t min = UINT64_MAX;
		struct shadow_store_req *req = rs->reqs;
		while (req != NULL) {
			struct shadow_store_req *nx = req_next(req);
			if (req->deadline_ns <= now)
				req_finish(rs, req, -ETIMEDOUT);
			else
				min = SHADOW_MIN(min, req->deadline_ns);
			req = nx;
		}
		rs->next_req_deadline_ns = min;
	}
	next = rs->next_req_deadline_ns;

	/* Twice the default request timeout: requests queued behind a zombie meet their own
	 * deadlines first, the reset only frees the connection for what comes after. */
	uint64_t stall_ns = 2 * (uint64_t)rs->base.opts.request_timeout_ms * SHADOW_NS_PER_MS;
	for (uint32_t i = 0; i < rs->n_nodes; i++) {
		struct rnode *n = rs->nodes[i];
		for (uint32_t j = 0; j < rs->n_conns; j++) {
			struct rconn *c = &n->conns[j];
			if (c->state == C_IDLE) {
				if (!n->active)
					continue;
				if (c->retry_at_ns <= now && conn_connect(rs, c) < 0)
					continue;
				if (c->state == C_IDLE) {
					next = SHADOW_MIN(next, c->retry_at_ns);
					continue;
				}
			}
			if (!c->up) {
				if (now >= c->connect_deadline_ns) {
					SHADOW_LOG_RATELIMITED(SHADOW_LOG_WARN,
							       "redis %s:%u: connect timed out",
							       n->host, n->port);
					conn_fail(rs, c, -ETIMEDOUT);
					next = SHADOW_MIN(next, c->retry_at_ns);
					continue;
				}
				next = SHADOW_MIN(next, c->connect_deadline_ns);
			}
			/*
			 * A server that stopped answering: a zombie waits at the head and nothing
			 * came for 2 x request_timeout_ms since its request gave up. The
			 * connection is reset (a reconnect may find the server recovered), and
			 * what is still queued behind the zombie fails as on any lost connection.
			 */
			if (c->head != NULL && c->head->zombie) {
				uint64_t since = SHADOW_MAX(c->last_rx_ns, c->head->zombie_ns);
				uint64_t stall = shadow__deadline_ns(since, stall_ns);
				if (now >= stall) {
					SHADOW_LOG_RATELIMITED(SHADOW_LOG_WARN,
							       "redis %s:%u: no reply for %u ms; "
							       "reconnecting", n->host, n->port,
							       2 * rs->base.opts.request_timeout_ms);
					conn_fail(rs, c, -ECONNRESET);
				} else {
					next = SHADOW_MIN(next, stall);
				}
			}
		}
	}
	if (rs->cluster && rs->refresh_wanted && !rs->refresh_in_flight) {
		if (now >= rs->refresh_after_ns)
			refresh_start(rs, now);
		else
			next = SHADOW_MIN(next, rs->refresh_after_ns);
	}
	return next;
}

/* One round: timers, writes, then wait for events until `until` at most. */
static int poll_round(struct redis_store *rs, uint64_t until)
{
	struct epoll_event ev[64];
	uint64_t now = shadow__now_ns();
	uint64_t next = run_timers(rs, now);
	int ms = 0;

	timer_arm(rs, next);
	flush_dirty(rs);
	if (!rs->progressed && rs->base.done_head == NULL) {
		uint64_t wake = SHADOW_MIN(until, next);
		if (wake == UINT64_MAX)
			ms = -1;
		else if (wake > now)
			ms = (int)SHADOW_MIN((wake - now + SHADOW_NS_PER_MS - 1) / SHADOW_NS_PER_MS,
					     (uint64_t)INT_MAX);
	}
	int n = epoll_wait(rs->epfd, ev, (int)SHADOW_ARRAY_SIZE(ev), ms);
	if (n < 0)
		return errno == EINTR ? 0 : -errno;
	for (int i = 0; i < n; i++) {
		struct rconn *c = ev[i].data.ptr;
		if (c == NULL) { /* the timer: clear it; run_timers acts next round */
			uint64_t ticks;
			if (read(rs->timerfd, &ticks, sizeof(ticks)) < 0 && errno != EAGAIN)
				return -errno;
			rs->timer_armed_ns = UINT64_MAX;
			continue;
		}
		if (c->fd >= 0)
			conn_event(rs, c, ev[i].events);
	}
	flush_dirty(rs); /* commands submitted by callbacks go out now */
	return 0;
}

static int redis_poll(struct shadow_store *s, uint64_t until)
{
	struct redis_store *rs = rs_of(s);

	rs->progressed = false;
	for (;;) {
		int rc = poll_round(rs, until);
		if (rc < 0)
			return rc;
		if (rs->progressed || s->done_head != NULL || shadow__now_ns() >= until ||
		    s->in_flight == 0)
			return 0;
	}
}

/* ------------------------------------------------------------------------------------------ */
/* Submission                                                                                 */
/* ------------------------------------------------------------------------------------------ */

static int redis_submit(struct shadow_store *s, struct shadow_store_req *req)
{
	struct redis_store *rs = rs_of(s);
	uint32_t n_cmds = req->op == SHADOW_STORE_EXISTS ? req->n_keys : 1;
	uint64_t value_nbytes = 0;
	uint32_t ttl = req->ttl_s != 0 ? req->ttl_s : rs->ttl_s;

	if (rs->n_free_cmds < n_cmds)
		return -EBUSY;
	if (req->op == SHADOW_STORE_PUT)
		value_nbytes = shadow__iov_nbytes(req->iov, req->iov_count);

	/* Build every command first, then route: a routing failure completes the request
	 * (from the next poll), it is not a submit error. */
	req_set_cmds(req, NULL);
	REQ_PENDING(req) = n_cmds;
	REQ_MISSING(req) = req->op == SHADOW_STORE_EXISTS ? req->n_keys : 0;
	req_set_prev(req, NULL);
	req_set_next(req, rs->reqs);
	if (rs->reqs != NULL)
		req_set_prev(rs->reqs, req);
	rs->reqs = req;
	rs->next_req_deadline_ns = SHADOW_MIN(rs->next_req_deadline_ns, req->deadline_ns);
	timer_arm_before(rs, req->deadline_ns);

	struct rcmd *last = NULL;
	for (uint32_t i = 0; i < n_cmds; i++) {
		struct rcmd *cmd = cmd_alloc(rs);
		SHADOW_ASSERT(cmd != NULL);
		cmd->req = req;
		cmd->key_index = i;
		cmd->kind = req->op == SHADOW_STORE_GET      ? K_GET :
			    req->op == SHADOW_STORE_PUT      ? K_SET :
			    req->op == SHADOW_STORE_DELETE   ? K_DEL :
							       K_EXISTS;
		cmd_encode(rs, cmd, req->op == SHADOW_STORE_EXISTS ? req->keys[i] : req->key,
			   value_nbytes, ttl);
		if (last == NULL)
			req_set_cmds(req, cmd);
		else
			last->sibling = cmd;
		last = cmd;
	}
	uint64_t now = shadow__now_ns();
	for (struct rcmd *cmd = req_cmds(req); cmd != NULL;) {
		struct rcmd *next = cmd->sibling;
		const char *key = req->op == SHADOW_STORE_EXISTS ? req->keys[cmd->key_index] : req->key;
		struct rnode *n = route(rs, key);
		struct rconn *c = node_pick_conn(rs, n, now);
		if (c == NULL) {
			/* The node is down: fail fast. The request completes from the next poll;
			 * its other commands are zombified (unsent ones dropped). */
			int err = n->last_error < 0 ? n->last_error : -ECONNREFUSED;
			req_cmd_done(rs, cmd, err);
			cmd_free(rs, cmd);
			break;
		}
		conn_push(rs, c, cmd);
		cmd = next;
	}
	return 0;
}

static int redis_cancel(struct shadow_store *s, struct shadow_store_req *req)
{
	struct redis_store *rs = rs_of(s);

	for (struct shadow_store_req *r = rs->reqs; r != NULL; r = req_next(r)) {
		if (r == req) {
			req_finish(rs, req, -ECANCELED);
			return 0;
		}
	}
	return -ENOENT;
}

/* ------------------------------------------------------------------------------------------ */
/* Open and close                                                                             */
/* ------------------------------------------------------------------------------------------ */

static const char *const redis_query_names[] = { "connections", "ttl", NULL };

/* Run the loop until every active node has a connection up (or failed) or `deadline`. */
static bool wait_connected(struct redis_store *rs, uint64_t deadline, int *err_ret)
{
	for (;;) {
		bool pending = false, any_up = false;
		int err = -ECONNREFUSED;

		for (uint32_t i = 0; i < rs->n_nodes; i++) {
			struct rnode *n = rs->nodes[i];
			if (!n->active)
				continue;
			for (uint32_t j = 0; j < rs->n_conns; j++) {
				struct rconn *c = &n->conns[j];
				any_up |= c->up;
				pending |= !c->up && c->failures == 0;
			}
			if (n->last_error < 0)
				err = n->last_error;
		}
		uint64_t now = shadow__now_ns();
		if (!pending || now >= deadline) {
			*err_ret = pending ? -ETIMEDOUT : err;
			return any_up;
		}
		if (poll_round(rs, deadline) < 0) {
			*err_ret = -EIO;
			return any_up;
		}
	}
}

/* Connect every connection of every active node once (open time). */
static void connect_all(struct redis_store *rs)
{
	for (uint32_t i = 0; i < rs->n_nodes; i++) {
		struct rnode *n = rs->nodes[i];
		if (!n->active)
			continue;
		for (uint32_t j = 0; j < rs->n_conns; j++) {
			struct rconn *c = &n->conns[j];
			if (c->state == C_IDLE) {
				int rc = conn_connect(rs, c);
				if (rc < 0)
					n->last_error = rc;
			}
		}
	}
}

/* Cluster: read the slot map through the seeds, one after the other. */
static int load_map(struct redis_store *rs, uint64_t deadline)
{
	int err = -ECONNREFUSED;

	for (uint32_t seed = 0; seed < rs->n_nodes && !rs->map_loaded; seed++) {
		struct rnode *n = rs->nodes[seed];
		struct rconn *c = node_pick_conn(rs, n, shadow__now_ns());
		if (c == NULL)
			continue;
		for (int attempt = 0; attempt < 2 && !rs->map_loaded; attempt++) {
			if (conn_push_internal(rs, c, rs->shards_unsupported ? K_SLOTS : K_SHARDS) < 0)
				return -ENOMEM;
			rs->refresh_in_flight = true;
			while (rs->refresh_in_flight && c->fd >= 0 && shadow__now_ns() < deadline) {
				if (poll_round(rs, deadline) < 0)
					break;
			}
			if (c->fd < 0 || !rs->shards_unsupported)
				break; /* SHARDS answered, or the node failed */
		}
		if (!rs->map_loaded)
			err = n->last_error < 0 ? n->last_error : SHADOW_EPROTO;
	}
	if (!rs->map_loaded) {
		if (shadow__now_ns() >= deadline)
			err = -ETIMEDOUT;
		return err;
	}
	rs->refresh_wanted = false;
	rs->refresh_after_ns = shadow__now_ns() + REFRESH_MIN_NS;
	return 0;
}

static void redis_destroy(struct shadow_store *s);

static int redis_open_common(const struct shadow__url *url, const struct shadow_store_options *opts,
			     bool cluster, struct shadow_store **store_ret)
{
	struct redis_store *rs;
	uint32_t max_cmds;
	int rc;

	rc = shadow__url_check_query(url, redis_query_names);
	if (rc < 0)
		return rc;
	if (url->n_hosts == 0 || (!cluster && url->n_hosts != 1)) {
		SHADOW_LOGE("%s:// URL: expected %s", url->scheme,
			    cluster ? "host:port[,host:port...]" : "exactly one host:port");
		return -EINVAL;
	}
	rs = calloc(1, sizeof(*rs));
	if (rs == NULL)
		return -ENOMEM;
	rs->base.opts = *opts; /* the front end sets it again after open */
	rs->cluster = cluster;
	rs->epfd = -1;
	rs->timerfd = -1;
	rs->timer_armed_ns = UINT64_MAX;
	rs->n_conns = opts->connections;
	rs->ttl_s = opts->ttl_s;
	rs->next_req_deadline_ns = UINT64_MAX;
	rc = shadow__url_query_u32(url, "connections", 1, 64, &rs->n_conns);
	if (rc == 0)
		rc = shadow__url_query_u32(url, "ttl", 0, UINT32_MAX, &rs->ttl_s);
	if (rc < 0)
		goto fail;
	rs->base.opts.connections = rs->n_conns;

	/* Credentials: the URL's, else SHADOW_REDIS_PASSWORD. */
	const char *password = url->password;
	if (password == NULL)
		password = getenv("SHADOW_REDIS_PASSWORD");
	if ((url->user != NULL && strlen(url->user) > USER_MAX) ||
	    (password != NULL && strlen(password) > PASSWORD_MAX) ||
	    (url->user != NULL && password == NULL)) {
		SHADOW_LOGE("%s:// URL: user needs a password; user <= %u and password <= %u bytes",
			    url->scheme, USER_MAX, PASSWORD_MAX);
		rc = -EINVAL;
		goto fail;
	}
	if (url->user != NULL)
		memcpy(rs->user, url->user, strlen(url->user) + 1);
	if (password != NULL) {
		memcpy(rs->password, password, strlen(password) + 1);
		rs->have_password = true;
	}
	if (url->path[0] != '\0' && strcmp(url->path, "/") != 0) {
		char *end;
		unsigned long db = strtoul(url->path + 1, &end, 10);
		if (cluster || url->path[1] < '0' || url->path[1] > '9' || *end != '\0' ||
		    db > 65535) {
			SHADOW_LOGE("%s:// URL: the path must be /DB (a number; none for a cluster)",
				    url->scheme);
			rc = -EINVAL;
			goto fail;
		}
		rs->db = (uint32_t)db;
	}

	/* Commands: every request in flight one, EXISTS more; the pool bounds both. */
	max_cmds = SHADOW_MAX(opts->max_requests * 2u, 4096u);
	rs->cmd_mem = calloc(max_cmds, sizeof(*rs->cmd_mem));
	rs->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (rs->cmd_mem == NULL || rs->epfd < 0) {
		rc = rs->epfd < 0 ? -errno : -ENOMEM;
		goto fail;
	}
	rs->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	struct epoll_event tev = { .events = EPOLLIN, .data.ptr = NULL };
	if (rs->timerfd < 0 || epoll_ctl(rs->epfd, EPOLL_CTL_ADD, rs->timerfd, &tev) < 0) {
		rc = -errno;
		goto fail;
	}
	for (uint32_t i = 0; i < max_cmds; i++)
		cmd_free(rs, &rs->cmd_mem[i]);
	if (cluster) {
		rs->slots = malloc(SHADOW__CLUSTER_SLOTS * sizeof(*rs->slots));
		if (rs->slots == NULL) {
			rc = -ENOMEM;
			goto fail;
		}
		for (uint32_t i = 0; i < SHADOW__CLUSTER_SLOTS; i++)
			rs->slots[i] = NO_NODE;
	}
	for (uint32_t i = 0; i < url->n_hosts; i++) {
		uint32_t idx;
		const char *h = url->hosts[i].host;
		struct rnode *n = node_get(rs, h, strlen(h), url->hosts[i].port ? url->hosts[i].port : 6379,
					   &idx, &rc);
		if (n == NULL)
			goto fail;
		n->active = true;
	}

	/* Every connection is opened and checked before open returns (shadow.h). */
	uint64_t deadline = shadow__deadline_ns(shadow__now_ns(),
						(uint64_t)opts->connect_timeout_ms * SHADOW_NS_PER_MS);
	rs->base.in_flight = 0;
	if (cluster) {
		rc = load_map(rs, deadline);
		if (rc < 0) {
			SHADOW_LOGE("redis+cluster: no seed node gave a slot map: %s", shadow_strerror(rc));
			goto fail;
		}
	}
	connect_all(rs);
	if (!wait_connected(rs, deadline, &rc)) {
		SHADOW_LOGE("%s:// %s:%u: cannot connect: %s", url->scheme, rs->nodes[0]->host,
			    rs->nodes[0]->port, shadow_strerror(rc));
		goto fail;
	}
	*store_ret = &rs->base;
	return 0;
fail:
	redis_destroy(&rs->base);
	return rc;
}

static int redis_open(const struct shadow__url *url, const struct shadow_store_options *opts,
		      struct shadow_store **store_ret)
{
	return redis_open_common(url, opts, false, store_ret);
}

static int redis_cluster_open(const struct shadow__url *url,
			      const struct shadow_store_options *opts, struct shadow_store **store_ret)
{
	return redis_open_common(url, opts, true, store_ret);
}

static void redis_close(struct shadow_store *s)
{
	struct redis_store *rs = rs_of(s);

	while (rs->reqs != NULL)
		req_finish(rs, rs->reqs, -ECANCELED);
}

static void redis_destroy(struct shadow_store *s)
{
	struct redis_store *rs = rs_of(s);

	for (uint32_t i = 0; i < rs->n_nodes; i++) {
		struct rnode *n = rs->nodes[i];
		for (uint32_t j = 0; j < rs->n_conns; j++) {
			struct rconn *c = &n->conns[j];
			if (c->fd >= 0)
				close(c->fd);
			free(c->rx);
		}
		free(n);
	}
	free(rs->nodes);
	free(rs->slots);
	free(rs->cmd_mem);
	if (rs->timerfd >= 0)
		close(rs->timerfd);
	if (rs->epfd >= 0)
		close(rs->epfd);
	explicit_bzero(rs->password, sizeof(rs->password));
	free(rs);
}

static int redis_fd(const struct shadow_store *s)
{
	return ((const struct redis_store *)s)->epfd;
}

static void redis_state(const struct shadow_store *s, struct shadow_store_stats *st)
{
	const struct redis_store *rs = (const struct redis_store *)s;
	uint32_t active = 0;

	for (uint32_t i = 0; i < rs->n_nodes; i++)
		active += rs->nodes[i]->active;
	st->nodes = active;
}

#define REDIS_OPS(name, scheme_text, open_fn)  \
	const struct shadow__store_ops name = { \
		.scheme = scheme_text,          \
		.open = open_fn,                \
		.close = redis_close,           \
		.destroy = redis_destroy,       \
		.submit = redis_submit,         \
		.poll = redis_poll,             \
		.cancel = redis_cancel,         \
		.fd = redis_fd,                 \
		.state = redis_state,           \
	}

REDIS_OPS(shadow__store_redis_ops, "redis", redis_open);
REDIS_OPS(shadow__store_redis_cluster_ops, "redis+cluster", redis_cluster_open);
