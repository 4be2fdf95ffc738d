/*
 * store.h - what the store front end (store.c) and its backends (mem.c, file.c, redis*.c)
 * share: the backend ops table, the parsed URL, and the completion helpers.
 *
 * DESIGN
 *
 * One front end, several backends. shadow_store_open() parses the URL, picks the backend by
 * scheme and lets it allocate its handle, whose first member is a struct shadow_store. The
 * front end validates every request before a backend sees it (so backends may trust a
 * request's shape), applies the default deadline, counts requests in flight against
 * max_requests, and owns completion:
 *
 *   backend finishes a request -> shadow__store_complete(): status, counters, onto done list
 *   shadow_store_poll()         -> ops->poll() (I/O, on_data callbacks), then drains the done
 *                                  list calling on_done in completion order
 *
 * so on_done runs only from poll (or close), never inside submit, and a callback that submits
 * a new request cannot recurse into the backend's I/O loop. on_data is called by backends from
 * inside ops->poll() through shadow__store_landed(); a callback may submit or cancel there, so
 * a backend must re-check the request it is streaming after every on_data.
 *
 * req->priv[0] is the front end's (the owning handle while in flight, then the done-list
 * link); priv[1..5] are the backend's until it completes the request, after which priv[1]
 * holds the status until on_done (req->status reads PENDING until then).
 * Threads: everything here runs on the handle's one thread at a time (shadow.h).
 */
#ifndef SHADOW_STORE_STORE_H
#define SHADOW_STORE_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/common.h"

#define SHADOW__URL_HOSTS_MAX 64u
#define SHADOW__URL_QUERY_MAX 16u
#define SHADOW__URL_MAX 4096u

/* A parsed store URL; every string is NUL-terminated inside `buf`. */
struct shadow__url {
	const char *scheme;   /* "mem", "file", "redis", "redis+cluster" */
	const char *user;     /* NULL if absent */
	const char *password; /* NULL if absent (an empty password is "") */
	const char *path;     /* after the authority, "" if none; file: the directory */
	struct {
		const char *host; /* name or address; IPv6 without brackets */
		uint16_t port;    /* 0 if absent */
	} hosts[SHADOW__URL_HOSTS_MAX];
	uint32_t n_hosts;
	struct {
		const char *name;
		const char *value;
	} query[SHADOW__URL_QUERY_MAX];
	uint32_t n_query;
	char buf[2 * SHADOW__URL_MAX + 8]; /* the text, then a copy of its path */
};

/*
 * Parse "scheme://[user[:password]@]host[:port][,host[:port]...][/path][?k=v&k=v]". Percent
 * escapes (%XX) are decoded in user, password, path and query values. The authority may be
 * empty (mem://NAME is read as host NAME; file:///dir has an empty one). Returns 0 or -EINVAL
 * (the log says what is wrong, without the password).
 */
int shadow__url_parse(const char *text, struct shadow__url *url_ret) SHADOW_INTERNAL;

/* The query value for `name`, or NULL. */
const char *shadow__url_query(const struct shadow__url *url, const char *name) SHADOW_INTERNAL;

/* Parse a decimal uint32 in [lo, hi] from the query into *v if present. 0 or -EINVAL. */
int shadow__url_query_u32(const struct shadow__url *url, const char *name, uint32_t lo,
			  uint32_t hi, uint32_t *v) SHADOW_INTERNAL;

/* Fail with -EINVAL (and log) if the URL's query has a name not in `known` (NULL-ended). */
int shadow__url_check_query(const struct shadow__url *url, const char *const *known)
	SHADOW_INTERNAL;

struct shadow__store_ops {
	const char *scheme;
	/* Allocate and open; (*store_ret)->ops etc. are set by the front end afterwards. */
	int (*open)(const struct shadow__url *url, const struct shadow_store_options *opts,
		    struct shadow_store **store_ret);
	/* Complete everything in flight with -ECANCELED (the front end then calls on_done). */
	void (*close)(struct shadow_store *store);
	/* Free the handle; nothing is in flight. */
	void (*destroy)(struct shadow_store *store);
	/* Take a validated request (status PENDING, deadline set); 0 or -errno. */
	int (*submit)(struct shadow_store *store, struct shadow_store_req *req);
	/*
	 * Make progress, waiting for I/O until wait_until_ns at most (0: do not wait); returns
	 * early when anything completes or lands. 0 or a negative code for the handle itself.
	 */
	int (*poll)(struct shadow_store *store, uint64_t wait_until_ns);
	/* Complete `req` with -ECANCELED now, or return -ENOENT if it is not in flight. */
	int (*cancel)(struct shadow_store *store, struct shadow_store_req *req);
	int (*fd)(const struct shadow_store *store);
	/* Fill the state fields of *stats (evictions, items, used, capacity, nodes). */
	void (*state)(const struct shadow_store *store, struct shadow_store_stats *stats);
};

/* The front end's part of every handle; backends embed it first. */
struct shadow_store {
	const struct shadow__store_ops *ops;
	struct shadow_store_options opts;
	struct shadow_store_stats stats; /* counters; state fields filled on demand */
	uint32_t in_flight;
	struct shadow_store_req *done_head; /* completed, on_done not yet called */
	struct shadow_store_req *done_tail;
};

extern const struct shadow__store_ops shadow__store_mem_ops SHADOW_INTERNAL;
extern const struct shadow__store_ops shadow__store_file_ops SHADOW_INTERNAL;
extern const struct shadow__store_ops shadow__store_redis_ops SHADOW_INTERNAL;
extern const struct shadow__store_ops shadow__store_redis_cluster_ops SHADOW_INTERNAL;

/*
 * A backend has finished `req` with `status` (0 or negative): counts it and queues it for the
 * end of the current (or next) poll, which sets req->status and calls on_done. Must be called
 * exactly once per request; the backend must not touch the request afterwards.
 */
void shadow__store_complete(struct shadow_store *store, struct shadow_store_req *req,
			    int status) SHADOW_INTERNAL;

/*
 * GET progress: bytes [0, landed) of the value are in place; calls on_data if set. The
 * callback may cancel `req` (through ops->cancel, re-entering the backend) or submit others:
 * after this returns, the backend must check whether `req` is still its to stream.
 */
static inline void shadow__store_landed(struct shadow_store_req *req, uint64_t landed)
{
	req->landed_nbytes = landed;
	if (req->on_data != NULL)
		req->on_data(req, req->value_nbytes, landed);
}

/* Total bytes of an iovec (the front end has checked it cannot overflow). */
static inline uint64_t shadow__iov_nbytes(const struct iovec *iov, uint32_t n)
{
	uint64_t sum = 0;

	for (uint32_t i = 0; i < n; i++)
		sum += iov[i].iov_len;
	return sum;
}

/*
 * Copy `nbytes` from `src` into the iovec at value offset `off`. The caller has checked that
 * off + nbytes fits. For backends that copy (mem://); sockets and files read into the iovec.
 */
void shadow__iov_copy_in(const struct iovec *iov, uint32_t n, uint64_t off, const void *src,
			 uint64_t nbytes) SHADOW_INTERNAL;

#endif /* SHADOW_STORE_STORE_H */
