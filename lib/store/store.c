/*
 * store.c - the store front end: URL parsing, options, request validation, deadlines,
 * counters and completion (store.h has the DESIGN).
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/log.h"
#include "store/store.h"

static const struct shadow__store_ops *const store_backends[] = {
	&shadow__store_mem_ops,
	&shadow__store_file_ops,
	&shadow__store_redis_ops,
	&shadow__store_redis_cluster_ops,
};

uint64_t shadow_now_ns(void)
{
	return shadow__now_ns();
}

/* ------------------------------------------------------------------------------------------ */
/* Sizes and URLs                                                                             */
/* ------------------------------------------------------------------------------------------ */

int shadow_parse_size(const char *text, uint64_t *nbytes_ret)
{
	static const struct {
		const char *suffix;
		unsigned shift;
	} units[] = {
		{ "", 0 },     { "B", 0 },	{ "K", 10 },   { "KiB", 10 }, { "M", 20 },
		{ "MiB", 20 }, { "G", 30 },	{ "GiB", 30 }, { "T", 40 },   { "TiB", 40 },
	};
	const char *p = text;
	uint64_t v = 0;

	if (text == NULL || !isdigit((unsigned char)*p))
		return -EINVAL;
	for (; isdigit((unsigned char)*p); p++) {
		if (!shadow_mul_u64(v, 10, &v) || !shadow_add_u64(v, (uint64_t)(*p - '0'), &v))
			return -EINVAL;
	}
	for (size_t i = 0; i < SHADOW_ARRAY_SIZE(units); i++) {
		if (strcmp(p, units[i].suffix) != 0)
			continue;
		if (units[i].shift != 0 && v > (UINT64_MAX >> units[i].shift))
			return -EINVAL;
		v <<= units[i].shift;
		if (v > (UINT64_C(1) << 63))
			return -EINVAL;
		*nbytes_ret = v;
		return 0;
	}
	return -EINVAL;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decode %XX escapes in place; -EINVAL on a malformed escape or an escaped NUL. */
static int url_unescape(char *s)
{
	char *w = s;

	for (const char *r = s; *r != '\0'; r++) {
		if (*r != '%') {
			*w++ = *r;
			continue;
		}
		int hi = hexval((unsigned char)r[1]);
		int lo = hi < 0 ? -1 : hexval((unsigned char)r[2]);
		if (lo < 0 || (hi | lo) == 0)
			return -EINVAL;
		*w++ = (char)(hi << 4 | lo);
		r += 2;
	}
	*w = '\0';
	return 0;
}

static int url_parse_port(const char *s, uint16_t *port_ret)
{
	unsigned long v = 0;

	if (*s == '\0')
		return -EINVAL;
	for (; *s != '\0'; s++) {
		if (!isdigit((unsigned char)*s))
			return -EINVAL;
		v = v * 10 + (unsigned long)(*s - '0');
		if (v > 65535)
			return -EINVAL;
	}
	if (v == 0)
		return -EINVAL;
	*port_ret = (uint16_t)v;
	return 0;
}

/* One "host[:port]" or "[v6addr][:port]" entry, in place. */
static int url_parse_host(char *s, struct shadow__url *url)
{
	char *port = NULL;

	if (url->n_hosts == SHADOW__URL_HOSTS_MAX)
		return -EINVAL;
	if (*s == '[') {
		char *end = strchr(s, ']');
		if (end == NULL || (end[1] != '\0' && end[1] != ':'))
			return -EINVAL;
		*end = '\0';
		if (end[1] == ':')
			port = end + 2;
		s++;
	} else {
		port = strchr(s, ':');
		if (port != NULL)
			*port++ = '\0';
	}
	if (*s == '\0')
		return -EINVAL;
	url->hosts[url->n_hosts].host = s;
	url->hosts[url->n_hosts].port = 0;
	if (port != NULL && url_parse_port(port, &url->hosts[url->n_hosts].port) < 0)
		return -EINVAL;
	url->n_hosts++;
	return 0;
}

static int url_parse_query(char *q, struct shadow__url *url)
{
	while (q != NULL && *q != '\0') {
		char *next = strchr(q, '&');
		if (next != NULL)
			*next++ = '\0';
		char *eq = strchr(q, '=');
		if (eq == NULL || eq == q || url->n_query == SHADOW__URL_QUERY_MAX)
			return -EINVAL;
		*eq = '\0';
		if (url_unescape(eq + 1) < 0)
			return -EINVAL;
		url->query[url->n_query].name = q;
		url->query[url->n_query].value = eq + 1;
		url->n_query++;
		q = next;
	}
	return 0;
}

int shadow__url_parse(const char *text, struct shadow__url *url_ret)
{
	struct shadow__url *url = url_ret;
	size_t len = strnlen(text, SHADOW__URL_MAX + 1);

	memset(url, 0, offsetof(struct shadow__url, buf));
	if (len > SHADOW__URL_MAX) {
		SHADOW_LOGE("store URL longer than %u bytes", SHADOW__URL_MAX);
		return -EINVAL;
	}
	memcpy(url->buf, text, len + 1);

	char *sep = strstr(url->buf, "://");
	if (sep == NULL || sep == url->buf)
		goto bad;
	*sep = '\0';
	url->scheme = url->buf;
	for (const char *c = url->scheme; *c != '\0'; c++) {
		if (!islower((unsigned char)*c) && *c != '+')
			goto bad;
	}

	char *rest = sep + 3;
	char *query = strchr(rest, '?');
	if (query != NULL)
		*query++ = '\0';
	char *path = strchr(rest, '/');
	/* The path keeps its leading '/', so it is moved to the spare half of buf (the path is
	 * shorter than the text) before the authority is cut at the slash. */
	if (path != NULL) {
		size_t plen = strlen(path);
		char *spare = url->buf + len + 1;

		SHADOW_ASSERT(len + 1 + plen + 1 <= sizeof(url->buf));
		memcpy(spare, path, plen + 1);
		*path = '\0';
		path = spare;
		if (url_unescape(path) < 0)
			goto bad;
	}
	url->path = path != NULL ? path : "";

	char *at = strrchr(rest, '@');
	if (at != NULL) {
		*at = '\0';
		char *colon = strchr(rest, ':');
		if (colon != NULL) {
			*colon = '\0';
			url->password = colon + 1;
			if (url_unescape(colon + 1) < 0)
				goto bad;
		}
		url->user = *rest != '\0' ? rest : NULL;
		if (url->user != NULL && url_unescape(rest) < 0)
			goto bad;
		rest = at + 1;
	}
	while (*rest != '\0') {
		char *comma = strchr(rest, ',');
		if (comma != NULL)
			*comma = '\0';
		if (url_parse_host(rest, url) < 0)
			goto bad;
		if (comma == NULL)
			break;
		rest = comma + 1;
		if (*rest == '\0')
			goto bad;
	}
	if (url_parse_query(query, url) < 0)
		goto bad;
	return 0;
bad:
	SHADOW_LOGE("malformed store URL (expected scheme://[user[:password]@]host[:port]"
		    "[,host[:port]...][/path][?name=value&...])");
	return -EINVAL;
}

const char *shadow__url_query(const struct shadow__url *url, const char *name)
{
	for (uint32_t i = 0; i < url->n_query; i++) {
		if (strcmp(url->query[i].name, name) == 0)
			return url->query[i].value;
	}
	return NULL;
}

int shadow__url_query_u32(const struct shadow__url *url, const char *name, uint32_t lo,
			  uint32_t hi, uint32_t *v)
{
	const char *s = shadow__url_query(url, name);
	char *end;

	if (s == NULL)
		return 0;
	errno = 0;
	unsigned long long x = strtoull(s, &end, 10);
	if (!isdigit((unsigned char)*s) || *end != '\0' || errno != 0 || x < lo || x > hi) {
		SHADOW_LOGE("store URL: %s=%s is not a number in [%u, %u]", name, s, lo, hi);
		return -EINVAL;
	}
	*v = (uint32_t)x;
	return 0;
}

int shadow__url_check_query(const struct shadow__url *url, const char *const *known)
{
	for (uint32_t i = 0; i < url->n_query; i++) {
		const char *const *k = known;
		while (*k != NULL && strcmp(*k, url->query[i].name) != 0)
			k++;
		if (*k == NULL) {
			SHADOW_LOGE("store URL: unknown option '%s' for %s://", url->query[i].name,
				    url->scheme);
			return -EINVAL;
		}
	}
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Handles                                                                                    */
/* ------------------------------------------------------------------------------------------ */

void shadow_store_options_default(struct shadow_store_options *opts_ret)
{
	memset(opts_ret, 0, sizeof(*opts_ret));
	opts_ret->size = sizeof(*opts_ret);
	opts_ret->connections = 2;
	opts_ret->connect_timeout_ms = 1000;
	opts_ret->request_timeout_ms = 5000;
	opts_ret->max_requests = 1024;
	opts_ret->max_value_nbytes = UINT64_C(4) << 30;
	opts_ret->ttl_s = 0;
	opts_ret->reconnect_min_ms = 10;
	opts_ret->reconnect_max_ms = 2000;
}

static int options_resolve(const struct shadow_store_options *in, struct shadow_store_options *out)
{
	shadow_store_options_default(out);
	if (in != NULL) {
		if (in->size < sizeof(size_t)) {
			SHADOW_LOGE("store options: size %zu too small", in->size);
			return -EINVAL;
		}
		memcpy((char *)out + sizeof(size_t), (const char *)in + sizeof(size_t),
		       SHADOW_MIN(in->size, sizeof(*out)) - sizeof(size_t));
		out->size = sizeof(*out);
	}
	if (out->connections < 1 || out->connections > 64 || out->max_requests < 1 ||
	    out->max_requests > 65536 || out->connect_timeout_ms == 0 ||
	    out->request_timeout_ms == 0 || out->max_value_nbytes == 0 ||
	    out->max_value_nbytes > (UINT64_C(1) << 62) || out->reconnect_min_ms == 0 ||
	    out->reconnect_max_ms < out->reconnect_min_ms) {
		SHADOW_LOGE("store options out of range");
		return -EINVAL;
	}
	return 0;
}

int shadow_store_open(const char *url_text, const struct shadow_store_options *opts,
		      struct shadow_store **store_ret)
{
	struct shadow_store_options o;
	struct shadow__url *url;
	struct shadow_store *store = NULL;
	int rc;

	if (url_text == NULL || store_ret == NULL)
		return -EINVAL;
	rc = options_resolve(opts, &o);
	if (rc < 0)
		return rc;
	url = malloc(sizeof(*url)); /* 8 KiB: not on the stack of a daemon's thread */
	if (url == NULL)
		return -ENOMEM;
	rc = shadow__url_parse(url_text, url);
	if (rc < 0)
		goto out;

	const struct shadow__store_ops *ops = NULL;
	for (size_t i = 0; i < SHADOW_ARRAY_SIZE(store_backends); i++) {
		if (strcmp(store_backends[i]->scheme, url->scheme) == 0)
			ops = store_backends[i];
	}
	if (ops == NULL) {
		SHADOW_LOGE("store URL: unknown scheme '%s' (mem, file, redis, redis+cluster)",
			    url->scheme);
		rc = SHADOW_EUNKNOWN_NAME;
		goto out;
	}
	rc = ops->open(url, &o, &store);
	if (rc < 0)
		goto out;
	store->ops = ops;
	store->opts = o;
	store->stats.size = sizeof(store->stats); /* zeroed by the backend; open may count */
	store->in_flight = 0;
	store->done_head = store->done_tail = NULL;
	*store_ret = store;
out:
	free(url);
	return rc;
}

/* Call on_done for everything completed so far; returns how many. */
static int store_drain_done(struct shadow_store *store)
{
	int n = 0;

	while (store->done_head != NULL) {
		struct shadow_store_req *req = store->done_head;

		store->done_head = (struct shadow_store_req *)req->priv[0];
		if (store->done_head == NULL)
			store->done_tail = NULL;
		req->priv[0] = 0;
		/* The status becomes visible only now, with on_done: a request completed inside
		 * submit (a node known to be down) still reads PENDING until the next poll. */
		req->status = (int)(intptr_t)req->priv[1];
		req->priv[1] = 0;
		n++;
		if (req->on_done != NULL)
			req->on_done(req); /* may submit: new completions only come from ops->poll */
	}
	return n;
}

void shadow_store_close(struct shadow_store *store)
{
	if (store == NULL)
		return;
	/* Everything in flight completes with -ECANCELED; its on_done calls run here, while the
	 * handle still exists, then the backend frees it. */
	store->ops->close(store);
	store_drain_done(store);
	SHADOW_ASSERT(store->in_flight == 0);
	store->ops->destroy(store);
}

static bool key_ok(const char *key)
{
	if (key == NULL)
		return false;
	size_t n = strnlen(key, SHADOW_STORE_KEY_NBYTES_MAX + 1);
	return n >= 1 && n <= SHADOW_STORE_KEY_NBYTES_MAX;
}

static int req_validate(const struct shadow_store *store, const struct shadow_store_req *req)
{
	switch (req->op) {
	case SHADOW_STORE_GET:
	case SHADOW_STORE_PUT:
	case SHADOW_STORE_DELETE:
		if (!key_ok(req->key))
			return -EINVAL;
		break;
	case SHADOW_STORE_EXISTS:
		if (req->keys == NULL || req->n_keys < 1 || req->n_keys > SHADOW_STORE_EXISTS_MAX)
			return -EINVAL;
		for (uint32_t i = 0; i < req->n_keys; i++) {
			if (!key_ok(req->keys[i]))
				return -EINVAL;
		}
		return 0;
	default:
		return -EINVAL;
	}
	if (req->op == SHADOW_STORE_DELETE)
		return 0;
	if (req->iov_count > SHADOW_STORE_IOV_MAX || (req->iov_count > 0 && req->iov == NULL))
		return -EINVAL;
	uint64_t total = 0;
	for (uint32_t i = 0; i < req->iov_count; i++) {
		if (req->iov[i].iov_len > 0 && req->iov[i].iov_base == NULL)
			return -EINVAL;
		if (!shadow_add_u64(total, req->iov[i].iov_len, &total))
			return -EINVAL;
	}
	if (req->op == SHADOW_STORE_PUT && total > store->opts.max_value_nbytes)
		return SHADOW_ELIMIT;
	return 0;
}

int shadow_store_submit(struct shadow_store *store, struct shadow_store_req *req)
{
	int rc;

	if (store == NULL || req == NULL)
		return -EINVAL;
	rc = req_validate(store, req);
	if (rc < 0) {
		SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR, "store: malformed request (op %u): %s",
				       req->op, shadow_strerror(rc));
		return rc;
	}
	if (store->in_flight >= store->opts.max_requests)
		return -EBUSY;
	req->status = SHADOW_STORE_PENDING;
	req->n_found = 0;
	req->value_nbytes = 0;
	req->landed_nbytes = 0;
	memset(req->priv, 0, sizeof(req->priv));
	req->priv[0] = (uintptr_t)store; /* the owner, for cancel; the done-list link later */
	uint64_t deadline = req->deadline_ns;
	if (deadline == 0) {
		deadline = shadow__deadline_ns(shadow__now_ns(),
					       store->opts.request_timeout_ms * SHADOW_NS_PER_MS);
		req->deadline_ns = deadline;
	}
	/* Counted first: a backend may complete the request inside submit (a node known to be
	 * down); on_done still waits for the next poll. */
	store->in_flight++;
	rc = store->ops->submit(store, req);
	if (rc < 0) {
		store->in_flight--;
		req->status = rc;
		return rc;
	}
	return 0;
}

void shadow__store_complete(struct shadow_store *store, struct shadow_store_req *req, int status)
{
	struct shadow_store_stats *s = &store->stats;

	SHADOW_ASSERT(req->status == SHADOW_STORE_PENDING);
	SHADOW_ASSERT(status <= 0);
	SHADOW_ASSERT(store->in_flight > 0);
	store->in_flight--;
	switch (req->op) {
	case SHADOW_STORE_GET:
		s->gets++;
		if (status == 0) {
			s->hits++;
			s->bytes_in += req->value_nbytes;
		} else if (status == SHADOW_EMISS) {
			s->misses++;
		}
		break;
	case SHADOW_STORE_PUT:
		if (status == 0) {
			s->puts++;
			s->bytes_out += shadow__iov_nbytes(req->iov, req->iov_count);
		}
		break;
	case SHADOW_STORE_DELETE:
		s->deletes += status == 0;
		break;
	case SHADOW_STORE_EXISTS:
		s->exists_keys += req->n_keys;
		break;
	default:
		break;
	}
	if (status < 0 && status != SHADOW_EMISS) {
		s->errors++;
		s->timeouts += status == -ETIMEDOUT;
		s->cancels += status == -ECANCELED;
		s->oversize += status == SHADOW_ELIMIT;
		s->server_errors += status == SHADOW_ESERVER;
	}
	/* The backend is done with priv[1..5]; the status waits in priv[1] for the drain. */
	req->priv[0] = 0;
	req->priv[1] = (uintptr_t)(intptr_t)status;
	if (store->done_tail != NULL)
		store->done_tail->priv[0] = (uintptr_t)req;
	else
		store->done_head = req;
	store->done_tail = req;
}

int shadow_store_poll(struct shadow_store *store, int timeout_ms)
{
	uint64_t until = 0;
	int rc;

	if (store == NULL)
		return -EINVAL;
	/* Completions left from a close-time drain or an earlier poll go first. */
	if (store->done_head != NULL)
		return store_drain_done(store);
	if (store->in_flight == 0) {
		/*
		 * Nothing can complete, so never wait; but a backend with an fd may have events
		 * to take in (a connection finishing, a handshake reply, a timer come due, a peer
		 * closing an idle connection). One round that does not block consumes them, so
		 * the fd a caller sleeps on does not stay readable: before this, a Redis store's
		 * connect-timeout timer fired after the handshake and left the fd readable for
		 * good, and every shadowd fetch thread without a request spun on a core
		 * (test_store_redis: test_fd_quiet_when_idle).
		 */
		if (store->ops->fd != NULL && store->ops->fd(store) >= 0) {
			rc = store->ops->poll(store, 0);
			if (rc < 0)
				return rc;
		}
		return store_drain_done(store);
	}
	if (timeout_ms < 0)
		until = UINT64_MAX;
	else if (timeout_ms > 0)
		until = shadow__deadline_ns(shadow__now_ns(), (uint64_t)timeout_ms * SHADOW_NS_PER_MS);
	rc = store->ops->poll(store, until);
	int n = store_drain_done(store);
	return rc < 0 ? rc : n;
}

int shadow_store_wait(struct shadow_store *store, struct shadow_store_req *req)
{
	if (store == NULL || req == NULL)
		return -EINVAL;
	while (req->status == SHADOW_STORE_PENDING) {
		int rc = shadow_store_poll(store, -1);
		if (rc < 0)
			return rc;
	}
	return req->status;
}

int shadow_store_cancel(struct shadow_store *store, struct shadow_store_req *req)
{
	if (store == NULL || req == NULL || req->status != SHADOW_STORE_PENDING ||
	    req->priv[0] != (uintptr_t)store)
		return -ENOENT; /* done, never submitted, or another handle's */
	return store->ops->cancel(store, req);
}

int shadow_store_fd(const struct shadow_store *store)
{
	return store != NULL && store->ops->fd != NULL ? store->ops->fd(store) : -1;
}

int shadow_store_stats(const struct shadow_store *store, struct shadow_store_stats *stats_ret)
{
	struct shadow_store_stats s;

	if (store == NULL || stats_ret == NULL || stats_ret->size < sizeof(size_t))
		return -EINVAL;
	s = store->stats;
	s.in_flight = store->in_flight;
	s.nodes = 1;
	store->ops->state(store, &s);
	size_t n = SHADOW_MIN(stats_ret->size, sizeof(s));
	memcpy((char *)stats_ret + sizeof(size_t), (const char *)&s + sizeof(size_t),
	       n - sizeof(size_t));
	return 0;
}

void shadow__iov_copy_in(const struct iovec *iov, uint32_t n, uint64_t off, const void *src,
			 uint64_t nbytes)
{
	const uint8_t *s = src;
	uint32_t i = 0;

	while (i < n && off >= iov[i].iov_len) {
		off -= iov[i].iov_len;
		i++;
	}
	for (; i < n && nbytes > 0; i++) {
		uint64_t take = SHADOW_MIN(nbytes, iov[i].iov_len - off);
		if (take == 0)
			continue; /* an empty entry may have a NULL base */
		memcpy((uint8_t *)iov[i].iov_base + off, s, take);
		s += take;
		nbytes -= take;
		off = 0;
	}
	SHADOW_ASSERT(nbytes == 0);
}
