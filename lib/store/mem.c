/*
 * mem.c - the mem:// store: an in-process, bounded LRU map from keys to values, the embedded
 * default of a single node.
 *
 * DESIGN
 *
 * Instances and handles. An instance holds the data; handles are per-thread views of it.
 * Handles opened with the same NAME in one process share one instance (a registry under
 * `mem_registry_lock`, taken only at open and close); the last handle to close frees it.
 *
 * Entries. One allocation per entry, the value 64-byte aligned for the copy:
 *
 *	| struct mem_entry | key bytes | pad to 64 | value bytes ... |
 *
 * An entry is in the index (a chained hash table) and in the LRU list while it is current,
 * and holds a reference for that. A GET takes a second reference under the instance lock, drops
 * the lock, copies the value straight into the caller's iovec (the one copy a get costs), and
 * drops its reference; whoever drops the last one (a reader, or the writer that replaced or
 * evicted the entry) frees it. So an entry replaced or evicted during a copy stays valid until
 * the copy ends, and the lock is never held while bytes move.
 *
 * Capacity. used_nbytes counts every current entry's allocation; a PUT evicts from the LRU tail
 * until the new entry fits. Entries still being read after eviction are not counted (bounded by
 * the number of handles, one read each at a time).
 *
 * Requests. submit() only queues; poll() runs the queue in order, so nothing is called back
 * from submit. A GET copies in pieces of MEM_PIECE_NBYTES and reports each through on_data, so
 * a consumer on another thread can start on the first frames of a large value early.
 *
 * Threads: a handle belongs to one thread at a time; the instance is shared and guarded by its
 * `lock` (a mutex held for O(1) index and list updates only; docs/threads.md).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "core/clock.h"
#include "core/log.h"
#include "store/store.h"

#define MEM_DEFAULT_CAPACITY (UINT64_C(1) << 30)
#define MEM_NAME_MAX 64u
#define MEM_PIECE_NBYTES (UINT64_C(4) << 20)
#define MEM_BUCKETS_MIN 1024u

struct mem_entry {
	struct mem_entry *hnext;            /* index chain */
	struct mem_entry *lru_prev, *lru_next; /* head = most recently used */
	uint64_t hash;
	uint64_t alloc_nbytes;
	uint64_t value_nbytes;
	_Atomic uint32_t refs;
	uint32_t key_nbytes;
	uint8_t *value;
	char key[];
};

struct mem_instance {
	struct mem_instance *next; /* registry */
	char name[MEM_NAME_MAX + 1];
	uint32_t handles;          /* under mem_registry_lock */
	uint64_t capacity_nbytes;

	pthread_mutex_t lock;      /* everything below */
	struct mem_entry **buckets;
	uint64_t n_buckets;        /* a power of two */
	uint64_t items;
	uint64_t used_nbytes;
	uint64_t evictions;
	struct mem_entry *lru_head, *lru_tail;
};

struct mem_store {
	struct shadow_store base;
	struct mem_instance *inst;
	struct shadow_store_req *q_head, *q_tail; /* submitted, not started; link in priv[1] */
	struct shadow_store_req *active;          /* the GET being copied, or NULL */
	bool active_cancelled;                    /* cancel() from inside its on_data */
};

static pthread_mutex_t mem_registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct mem_instance *mem_registry;

static struct mem_store *mem_of(struct shadow_store *s)
{
	return (struct mem_store *)s;
}

/* ------------------------------------------------------------------------------------------ */
/* Entries (callers hold inst->lock unless noted)                                            */
/* ------------------------------------------------------------------------------------------ */

static uint64_t key_hash(const char *key, size_t n)
{
	return XXH3_64bits(key, n);
}

/* Without the lock: the caller owns a reference. */
static void entry_put_ref(struct mem_entry *e)
{
	/* acq_rel: the last owner's frees happen after every other owner's reads of the value. */
	if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1)
		free(e);
}

static struct mem_entry **index_slot(struct mem_instance *in, uint64_t hash, const char *key,
				     size_t key_nbytes)
{
	struct mem_entry **p = &in->buckets[hash & (in->n_buckets - 1)];

	while (*p != NULL && !((*p)->hash == hash && (*p)->key_nbytes == key_nbytes &&
			       memcmp((*p)->key, key, key_nbytes) == 0))
		p = &(*p)->hnext;
	return p;
}

static void lru_unlink(struct mem_instance *in, struct mem_entry *e)
{
	if (e->lru_prev != NULL)
		e->lru_prev->lru_next = e->lru_next;
	else
		in->lru_head = e->lru_next;
	if (e->lru_next != NULL)
		e->lru_next->lru_prev = e->lru_prev;
	else
		in->lru_tail = e->lru_prev;
	e->lru_prev = e->lru_next = NULL;
}

static void lru_push_head(struct mem_instance *in, struct mem_entry *e)
{
	e->lru_prev = NULL;
	e->lru_next = in->lru_head;
	if (in->lru_head != NULL)
		in->lru_head->lru_prev = e;
	else
		in->lru_tail = e;
	in->lru_head = e;
}

/* Unlink `e` (found at *slot) from index and LRU; returns it with the index's reference. */
static struct mem_entry *index_remove(struct mem_instance *in, struct mem_entry **slot)
{
	struct mem_entry *e = *slot;

	*slot = e->hnext;
	e->hnext = NULL;
	lru_unlink(in, e);
	in->items--;
	in->used_nbytes -= e->alloc_nbytes;
	return e;
}

/* Double the table when it averages more than one entry per bucket. Failure is harmless. */
static void index_maybe_grow(struct mem_instance *in)
{
	if (in->items <= in->n_buckets || in->n_buckets > (UINT64_C(1) << 40))
		return;
	uint64_t n = in->n_buckets * 2;
	struct mem_entry **b = calloc(n, sizeof(*b));
	if (b == NULL)
		return; /* longer chains, still correct */
	for (uint64_t i = 0; i < in->n_buckets; i++) {
		struct mem_entry *e = in->buckets[i];
		while (e != NULL) {
			struct mem_entry *next = e->hnext;
			e->hnext = b[e->hash & (n - 1)];
			b[e->hash & (n - 1)] = e;
			e = next;
		}
	}
	free(in->buckets);
	in->buckets = b;
	in->n_buckets = n;
}

/* ------------------------------------------------------------------------------------------ */
/* Instances                                                                                  */
/* ------------------------------------------------------------------------------------------ */

static void instance_free(struct mem_instance *in)
{
	for (uint64_t i = 0; i < in->n_buckets; i++) {
		struct mem_entry *e = in->buckets[i];
		while (e != NULL) {
			struct mem_entry *next = e->hnext;
			entry_put_ref(e);
			e = next;
		}
	}
	free(in->buckets);
	pthread_mutex_destroy(&in->lock);
	free(in);
}

static int instance_get(const char *name, uint64_t capacity, bool capacity_given,
			struct mem_instance **in_ret)
{
	struct mem_instance *in;
	int rc = 0;

	pthread_mutex_lock(&mem_registry_lock);
	for (in = mem_registry; in != NULL; in = in->next) {
		if (strcmp(in->name, name) == 0)
			break;
	}
	if (in != NULL) {
		if (capacity_given && capacity != in->capacity_nbytes) {
			SHADOW_LOGE("mem://%s is open with capacity %llu; cannot reopen with %llu",
				    name, (unsigned long long)in->capacity_nbytes,
				    (unsigned long long)capacity);
			rc = -EINVAL;
			goto out;
		}
		in->handles++;
		*in_ret = in;
		goto out;
	}
	in = calloc(1, sizeof(*in));
	if (in == NULL) {
		rc = -ENOMEM;
		goto out;
	}
	in->buckets = calloc(MEM_BUCKETS_MIN, sizeof(*in->buckets));
	if (in->buckets == NULL) {
		free(in);
		rc = -ENOMEM;
		goto out;
	}
	in->n_buckets = MEM_BUCKETS_MIN;
	pthread_mutex_init(&in->lock, NULL);
	memcpy(in->name, name, strlen(name) + 1);
	in->capacity_nbytes = capacity;
	in->handles = 1;
	in->next = mem_registry;
	mem_registry = in;
	*in_ret = in;
out:
	pthread_mutex_unlock(&mem_registry_lock);
	return rc;
}

static void instance_put(struct mem_instance *in)
{
	bool last;

	pthread_mutex_lock(&mem_registry_lock);
	last = --in->handles == 0;
	if (last) {
		struct mem_instance **p = &mem_registry;
		while (*p != in)
			p = &(*p)->next;
		*p = in->next;
	}
	pthread_mutex_unlock(&mem_registry_lock);
	if (last)
		instance_free(in);
}

/* ------------------------------------------------------------------------------------------ */
/* Operations                                                                                 */
/* ------------------------------------------------------------------------------------------ */

static int mem_put(struct mem_instance *in, const struct shadow_store_req *req)
{
	size_t key_nbytes = strlen(req->key);
	uint64_t value_nbytes = shadow__iov_nbytes(req->iov, req->iov_count);
	uint64_t value_off = (sizeof(struct mem_entry) + key_nbytes + 63) & ~UINT64_C(63);
	uint64_t alloc;

	if (!shadow_add_u64(value_off, value_nbytes, &alloc) || alloc > in->capacity_nbytes ||
	    alloc > SIZE_MAX)
		return SHADOW_ELIMIT;
	struct mem_entry *e = aligned_alloc(64, (alloc + 63) & ~UINT64_C(63));
	if (e == NULL)
		return -ENOMEM;
	memset(e, 0, sizeof(*e));
	e->hash = key_hash(req->key, key_nbytes);
	e->alloc_nbytes = alloc;
	e->value_nbytes = value_nbytes;
	e->key_nbytes = (uint32_t)key_nbytes;
	atomic_init(&e->refs, 1); /* the index's */
	e->value = (uint8_t *)e + value_off;
	memcpy(e->key, req->key, key_nbytes);
	uint64_t off = 0;
	for (uint32_t i = 0; i < req->iov_count; i++) {
		memcpy(e->value + off, req->iov[i].iov_base, req->iov[i].iov_len);
		off += req->iov[i].iov_len;
	}

	/* Entries to free once the lock is dropped: the replaced one and the evicted ones. */
	struct mem_entry *dead = NULL;

	pthread_mutex_lock(&in->lock);
	struct mem_entry **slot = index_slot(in, e->hash, e->key, key_nbytes);
	if (*slot != NULL) {
		struct mem_entry *old = index_remove(in, slot);
		old->hnext = dead;
		dead = old;
	}
	while (in->used_nbytes + alloc > in->capacity_nbytes && in->lru_tail != NULL) {
		struct mem_entry *victim = in->lru_tail;
		struct mem_entry **vs = index_slot(in, victim->hash, victim->key,
						   victim->key_nbytes);
		SHADOW_ASSERT(*vs == victim);
		index_remove(in, vs);
		in->evictions++;
		victim->hnext = dead;
		dead = victim;
	}
	slot = index_slot(in, e->hash, e->key, key_nbytes);
	*slot = e;
	lru_push_head(in, e);
	in->items++;
	in->used_nbytes += alloc;
	index_maybe_grow(in);
	pthread_mutex_unlock(&in->lock);

	while (dead != NULL) {
		struct mem_entry *next = dead->hnext;
		entry_put_ref(dead);
		dead = next;
	}
	return 0;
}

/* Look up `key`, touching it in the LRU; returns it with a reference for the caller. */
static struct mem_entry *mem_lookup_ref(struct mem_instance *in, const char *key)
{
	size_t n = strlen(key);
	uint64_t h = key_hash(key, n);
	struct mem_entry *e;

	pthread_mutex_lock(&in->lock);
	e = *index_slot(in, h, key, n);
	if (e != NULL) {
		atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed); /* under the lock */
		lru_unlink(in, e);
		lru_push_head(in, e);
	}
	pthread_mutex_unlock(&in->lock);
	return e;
}

static int mem_get(struct mem_store *ms, struct shadow_store_req *req)
{
	struct mem_entry *e = mem_lookup_ref(ms->inst, req->key);
	int rc = 0;

	if (e == NULL)
		return SHADOW_EMISS;
	req->value_nbytes = e->value_nbytes;
	if (e->value_nbytes > ms->base.opts.max_value_nbytes ||
	    e->value_nbytes > shadow__iov_nbytes(req->iov, req->iov_count)) {
		rc = SHADOW_ELIMIT;
		goto out;
	}
	ms->active = req;
	ms->active_cancelled = false;
	for (uint64_t off = 0; off < e->value_nbytes;) {
		uint64_t n = SHADOW_MIN(MEM_PIECE_NBYTES, e->value_nbytes - off);

		shadow__iov_copy_in(req->iov, req->iov_count, off, e->value + off, n);
		off += n;
		shadow__store_landed(req, off);
		if (ms->active_cancelled) {
			rc = -ECANCELED;
			break;
		}
		if (off < e->value_nbytes && shadow__now_ns() > req->deadline_ns) {
			rc = -ETIMEDOUT;
			break;
		}
	}
	ms->active = NULL;
	if (rc == 0 && ms->active_cancelled)
		rc = -ECANCELED;
out:
	entry_put_ref(e);
	return rc;
}

static int mem_delete(struct mem_instance *in, struct shadow_store_req *req)
{
	size_t n = strlen(req->key);
	struct mem_entry *e = NULL;

	pthread_mutex_lock(&in->lock);
	struct mem_entry **slot = index_slot(in, key_hash(req->key, n), req->key, n);
	if (*slot != NULL)
		e = index_remove(in, slot);
	pthread_mutex_unlock(&in->lock);
	req->n_found = e != NULL;
	if (e != NULL)
		entry_put_ref(e);
	return 0;
}

static int mem_exists(struct mem_instance *in, struct shadow_store_req *req)
{
	uint32_t found = 0;

	pthread_mutex_lock(&in->lock);
	for (; found < req->n_keys; found++) {
		const char *k = req->keys[found];
		size_t n = strlen(k);
		if (*index_slot(in, key_hash(k, n), k, n) == NULL)
			break;
	}
	pthread_mutex_unlock(&in->lock);
	req->n_found = found;
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Backend ops                                                                                */
/* ------------------------------------------------------------------------------------------ */

static const char *const mem_query_names[] = { "capacity", NULL };

static int mem_open(const struct shadow__url *url, const struct shadow_store_options *opts,
		    struct shadow_store **store_ret)
{
	const char *name = url->n_hosts == 1 ? url->hosts[0].host : "default";
	uint64_t capacity = MEM_DEFAULT_CAPACITY;
	const char *cap;
	struct mem_store *ms;
	int rc;

	(void)opts;
	if (url->n_hosts > 1 || (url->n_hosts == 1 && url->hosts[0].port != 0) ||
	    url->user != NULL || url->password != NULL || url->path[0] != '\0' ||
	    strlen(name) > MEM_NAME_MAX) {
		SHADOW_LOGE("mem:// URL: expected mem://[NAME][?capacity=SIZE], NAME up to %u bytes",
			    MEM_NAME_MAX);
		return -EINVAL;
	}
	rc = shadow__url_check_query(url, mem_query_names);
	if (rc < 0)
		return rc;
	cap = shadow__url_query(url, "capacity");
	if (cap != NULL && (shadow_parse_size(cap, &capacity) < 0 || capacity == 0)) {
		SHADOW_LOGE("mem:// URL: capacity=%s is not a size", cap);
		return -EINVAL;
	}
	ms = calloc(1, sizeof(*ms));
	if (ms == NULL)
		return -ENOMEM;
	rc = instance_get(name, capacity, cap != NULL, &ms->inst);
	if (rc < 0) {
		free(ms);
		return rc;
	}
	*store_ret = &ms->base;
	return 0;
}

static struct shadow_store_req *queue_next(const struct shadow_store_req *req)
{
	return (struct shadow_store_req *)req->priv[1];
}

static void queue_push(struct mem_store *ms, struct shadow_store_req *req)
{
	req->priv[1] = 0;
	if (ms->q_tail != NULL)
		ms->q_tail->priv[1] = (uintptr_t)req;
	else
		ms->q_head = req;
	ms->q_tail = req;
}

static struct shadow_store_req *queue_pop(struct mem_store *ms)
{
	struct shadow_store_req *req = ms->q_head;

	if (req != NULL) {
		ms->q_head = queue_next(req);
		if (ms->q_head == NULL)
			ms->q_tail = NULL;
	}
	return req;
}

static int mem_submit(struct shadow_store *s, struct shadow_store_req *req)
{
	queue_push(mem_of(s), req);
	return 0;
}

static int mem_poll(struct shadow_store *s, uint64_t wait_until_ns)
{
	struct mem_store *ms = mem_of(s);
	/* Only what was queued when poll began: requests submitted by callbacks wait for the
	 * next poll, so a callback that always resubmits cannot keep poll from returning. */
	struct shadow_store_req *last = ms->q_tail;
	struct shadow_store_req *req;

	(void)wait_until_ns; /* never waits: all work is memory copies */
	while (last != NULL && (req = queue_pop(ms)) != NULL) {
		int rc;

		if (shadow__now_ns() > req->deadline_ns) {
			rc = -ETIMEDOUT;
		} else {
			switch (req->op) {
			case SHADOW_STORE_GET:
				rc = mem_get(ms, req);
				break;
			case SHADOW_STORE_PUT:
				rc = mem_put(ms->inst, req);
				break;
			case SHADOW_STORE_DELETE:
				rc = mem_delete(ms->inst, req);
				break;
			default:
				rc = mem_exists(ms->inst, req);
				break;
			}
		}
		shadow__store_complete(s, req, rc);
		if (req == last)
			break;
	}
	return 0;
}

static int mem_cancel(struct shadow_store *s, struct shadow_store_req *req)
{
	struct mem_store *ms = mem_of(s);

	if (ms->active == req) {
		ms->active_cancelled = true; /* mem_get completes it after its on_data returns */
		return 0;
	}
	struct shadow_store_req *prev = NULL;
	for (struct shadow_store_req *r = ms->q_head; r != NULL; prev = r, r = queue_next(r)) {
		if (r != req)
			continue;
		if (prev != NULL)
			prev->priv[1] = req->priv[1];
		else
			ms->q_head = queue_next(req);
		if (ms->q_tail == req)
			ms->q_tail = prev;
		shadow__store_complete(s, req, -ECANCELED);
		return 0;
	}
	return -ENOENT;
}

static void mem_close(struct shadow_store *s)
{
	struct mem_store *ms = mem_of(s);
	struct shadow_store_req *req;

	while ((req = queue_pop(ms)) != NULL)
		shadow__store_complete(s, req, -ECANCELED);
}

static void mem_destroy(struct shadow_store *s)
{
	struct mem_store *ms = mem_of(s);

	instance_put(ms->inst);
	free(ms);
}

static void mem_state(const struct shadow_store *s, struct shadow_store_stats *st)
{
	struct mem_instance *in = ((const struct mem_store *)s)->inst;

	pthread_mutex_lock(&in->lock);
	st->evictions = in->evictions;
	st->items = in->items;
	st->used_nbytes = in->used_nbytes;
	pthread_mutex_unlock(&in->lock);
	st->capacity_nbytes = in->capacity_nbytes;
}

const struct shadow__store_ops shadow__store_mem_ops = {
	.scheme = "mem",
	.open = mem_open,
	.close = mem_close,
	.destroy = mem_destroy,
	.submit = mem_submit,
	.poll = mem_poll,
	.cancel = mem_cancel,
	.fd = NULL,
	.state = mem_state,
};
