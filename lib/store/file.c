/*
 * file.c - the file:// store backend: a persistent, bounded directory with one file per entry.
 *
 * DESIGN
 *
 * file:///DIR?capacity=SIZE (default 64GiB). DIR must be absolute; it is created if missing
 * (its parent must exist). Layout:
 *
 *   DIR/.lock            flock(LOCK_EX | LOCK_NB) held by the one process that uses DIR
 *   DIR/tmp/<seq>        PUTs being written; whatever is there is removed at open
 *   DIR/v1/XX/<name>     one entry: <name> is the 32 hex digits of XXH3-128(key) in canonical
 *                        (big-endian) order, XX its first two; the 256 fan-out directories
 *                        are made on first use
 *
 * An entry file; integers little-endian (core/endian.h):
 *
 *   offset  bytes
 *        0      4  magic "SHSF"
 *        4      4  format version, 1
 *        8      4  key_nbytes, 1 .. SHADOW_STORE_KEY_NBYTES_MAX
 *       12      4  value_offset: 40 + key_nbytes rounded up to 4096 (always 4096 in v1)
 *       16      8  value_nbytes
 *       24      8  XXH3-64 of the value
 *       32      8  XXH3-64 of bytes [0, 32) followed by the key: the header checksum
 *       40         key, then zeros up to value_offset
 *   value_offset   value; the file ends with it: size == value_offset + value_nbytes
 *
 * The value starts 4096-aligned so that a later version can read it with O_DIRECT into
 * aligned buffers. The header checksum covers everything the scan at open trusts; the value
 * checksum is checked by every GET while it streams.
 *
 * Durability: a PUT writes DIR/tmp/<seq> (header and key from a per-handle buffer, the value
 * straight from the caller's iovec with pwritev: no copy), fsyncs it, renames it over
 * v1/XX/<name> and fsyncs v1/XX. After a crash an entry is either the old file or the new one;
 * a temporary is left at most, and open removes it. DELETE and eviction are not fsynced: after
 * a crash such an entry may come back, with a value that is still correct for its key.
 * Anything else found on disk (a torn, truncated or overwritten file, a stray name) is checked
 * before use: at open by its header, on GET by its header, size, key and value checksum. A
 * damaged entry is unlinked and counted in stats.corrupt; it reads as a miss if it was caught
 * before any byte landed, else as SHADOW_ECORRUPT.
 *
 * Requests. submit only queues the request on the handle's FIFO (priv[1] next, priv[2] prev,
 * priv[3] the owning handle while queued), so nothing is called back from submit. poll() runs
 * the requests queued when it starts, in order, each to completion with synchronous file
 * I/O: poll never waits for anything else, and the handle has no fd. A GET streams the value
 * into the caller's iovec with preadv in pieces of at most FILE_PIECE_NBYTES, calling on_data
 * after each; between pieces it checks the deadline and whether on_data cancelled it, so a
 * cancel from on_data stops writing into the iovec at once. The last on_data (landed ==
 * value_nbytes) comes only after the value checksum matched.
 *
 * Sharing. One process per directory: the flock on DIR/.lock; a second process gets -EBUSY
 * (the lock belongs to the open file description, so a child forked while the parent holds
 * it also holds it; the fd is O_CLOEXEC). Within a process, handles opened on one directory
 * (same realpath) share one refcounted struct file_inst: the in-memory index (hash of key ->
 * file size), the LRU list and the byte count. The capacity is fixed by the first open; a
 * later open that names another capacity fails with -EINVAL.
 *
 * Locks (docs/threads.md):
 *   file_registry_mu  the list of instances and their refcounts; taken by open and close only,
 *                     and held across the scan of a directory opened for the first time.
 *   inst->mu          the index, LRU, used bytes, evictions. Held for O(1) index work only,
 *                     never across a system call: file I/O, unlink and rename happen outside
 *                     it. (The hash table doubles under it when it fills: amortised O(1).)
 *   The two are never held together.
 *
 * Because files are written, renamed and unlinked outside inst->mu, two handles working on
 * one key at once can leave the index naming a file that a racing unlink removed. The index
 * records a generation per entry; a GET that then finds no file (or a damaged one) drops the
 * entry only if it is still the generation it looked up, and reads a miss, as after an
 * eviction. No interleaving serves a wrong value: every GET checks the file itself.
 *
 * EXISTS answers from the index by hash alone, without opening files, and does not touch the
 * LRU order; a GET verifies the stored key. After a restart the LRU order is the files'
 * modification times (the order they were written); reads before the restart are forgotten.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack: no allocation */
#include <xxhash.h>
#if defined(__x86_64__)
/* libxxhash's run-time dispatch to its AVX2/AVX-512 code (see format/chunk.c). */
#include <xxh_x86dispatch.h>
#endif

#include "core/alloc.h"
#include "core/clock.h"
#include "core/endian.h"
#include "core/log.h"
#include "store/store.h"

#define FILE_MAGIC "SHSF"
#define FILE_VERSION 1u
#define FILE_HDR_NBYTES 40u
#define FILE_OFF_CHECKSUM 32u
#define FILE_VALUE_ALIGN 4096u
#define FILE_READ_HDR_NBYTES (FILE_HDR_NBYTES + SHADOW_STORE_KEY_NBYTES_MAX)
#define FILE_PIECE_NBYTES (UINT64_C(4) << 20)  /* GET: bytes per preadv and on_data */
#define FILE_CAPACITY_DEFAULT (UINT64_C(64) << 30)
#define FILE_BUCKETS_MIN 1024u
#define FILE_NAME_NBYTES 32u                     /* hex digits of a 128-bit hash */
#define FILE_PATH_NBYTES 48u                     /* "v1/XX/" + name + NUL, relative to DIR */

SHADOW_STATIC_ASSERT(FILE_READ_HDR_NBYTES <= FILE_VALUE_ALIGN, "header and key fit one block");

/* One entry of the index. */
struct file_entry {
	struct file_entry *hnext;    /* hash chain */
	struct file_entry *lru_prev; /* toward the most recently used */
	struct file_entry *lru_next; /* toward the least recently used */
	uint64_t hi, lo;             /* XXH3-128 of the key */
	uint64_t file_nbytes;        /* what it counts against the capacity */
	uint64_t gen;                /* tells a replaced entry from its successor (DESIGN) */
};

/* What the handles of one directory share. */
struct file_inst {
	struct file_inst *next; /* file_registry (file_registry_mu) */
	uint32_t refs;          /* (file_registry_mu) */
	pid_t pid;              /* a forked child never joins its parent's instance */
	char *dir;              /* realpath */
	int dir_fd;
	int lock_fd;
	uint64_t capacity_nbytes; /* fixed at creation */
	_Atomic uint64_t tmp_seq; /* temporary file names; relaxed: only uniqueness matters */

	pthread_mutex_t mu;
	/* Under mu: */
	struct file_entry **buckets;
	uint64_t n_buckets; /* a power of two */
	uint64_t items;
	uint64_t used_nbytes;
	uint64_t evictions;
	uint64_t gen;
	struct file_entry lru; /* sentinel: lru.lru_next is the most recently used */
};

struct file_store {
	struct shadow_store base; /* first: the front end's part */
	struct file_inst *inst;
	struct shadow_store_req *q_head, *q_tail;
	uint32_t n_queued;
	struct shadow_store_req *streaming; /* the GET in its on_data loop, or NULL */
	bool stream_cancelled;              /* ... cancelled from inside on_data */
	uint64_t open_corrupt;              /* removed by this handle's open (see file_state) */
	uint8_t *hdr;                       /* FILE_VALUE_ALIGN bytes: a PUT's header block */
};

/* A key's hash and its path relative to DIR. */
struct file_key {
	uint64_t hi, lo;
	char path[FILE_PATH_NBYTES];
};

static pthread_mutex_t file_registry_mu = PTHREAD_MUTEX_INITIALIZER;
static struct file_inst *file_registry;

static inline struct file_store *to_fs(struct shadow_store *store)
{
	return (struct file_store *)store;
}

/* "v1/XX/<32 hex>": the canonical form of XXH128 is high64 then low64, big-endian. */
static void hash_path(uint64_t hi, uint64_t lo, char *path)
{
	snprintf(path, FILE_PATH_NBYTES, "v1/%02x/%016llx%016llx", (unsigned)(hi >> 56),
		 (unsigned long long)hi, (unsigned long long)lo);
}

static void key_hash(const void *key, size_t key_nbytes, struct file_key *k)
{
	XXH128_hash_t h = XXH3_128bits(key, key_nbytes);

	k->hi = h.high64;
	k->lo = h.low64;
	hash_path(k->hi, k->lo, k->path);
}

/* ------------------------------------------------------------------------------------------ */
/* Entry headers                                                                              */
/* ------------------------------------------------------------------------------------------ */

struct file_hdr {
	uint32_t key_nbytes;
	uint64_t value_offset;
	uint64_t value_nbytes;
	uint64_t value_sum;
	const uint8_t *key; /* inside the parsed buffer */
};

static uint64_t value_offset_for(uint32_t key_nbytes)
{
	return (FILE_HDR_NBYTES + (uint64_t)key_nbytes + FILE_VALUE_ALIGN - 1) &
	       ~(uint64_t)(FILE_VALUE_ALIGN - 1);
}

/* XXH3-64 of hdr[0, FILE_OFF_CHECKSUM) followed by the key. */
static uint64_t hdr_checksum(const uint8_t *hdr, const void *key, uint32_t key_nbytes)
{
	XXH3_state_t st;

	XXH3_64bits_reset(&st);
	XXH3_64bits_update(&st, hdr, FILE_OFF_CHECKSUM);
	XXH3_64bits_update(&st, key, key_nbytes);
	return XXH3_64bits_digest(&st);
}

/*
 * Check the untrusted bytes buf[0, n), read from the start of a file of file_nbytes, as an
 * entry header and key. 0 and *h filled, or SHADOW_ECORRUPT with *why set.
 */
static int hdr_parse(const uint8_t *buf, size_t n, uint64_t file_nbytes, struct file_hdr *h,
		     const char **why)
{
	uint64_t end;

	if (n < FILE_HDR_NBYTES) {
		*why = "shorter than a header";
		return SHADOW_ECORRUPT;
	}
	if (memcmp(buf, FILE_MAGIC, 4) != 0) {
		*why = "bad magic";
		return SHADOW_ECORRUPT;
	}
	if (shadow__load_le32(buf + 4) != FILE_VERSION) {
		*why = "unknown version";
		return SHADOW_ECORRUPT;
	}
	h->key_nbytes = shadow__load_le32(buf + 8);
	h->value_offset = shadow__load_le32(buf + 12);
	h->value_nbytes = shadow__load_le64(buf + 16);
	h->value_sum = shadow__load_le64(buf + 24);
	h->key = buf + FILE_HDR_NBYTES;
	if (h->key_nbytes < 1 || h->key_nbytes > SHADOW_STORE_KEY_NBYTES_MAX ||
	    h->value_offset != value_offset_for(h->key_nbytes)) {
		*why = "bad key length or value offset";
		return SHADOW_ECORRUPT;
	}
	if (n < FILE_HDR_NBYTES + h->key_nbytes) {
		*why = "shorter than its key";
		return SHADOW_ECORRUPT;
	}
	if (hdr_checksum(buf, h->key, h->key_nbytes) !=
	    shadow__load_le64(buf + FILE_OFF_CHECKSUM)) {
		*why = "header checksum mismatch";
		return SHADOW_ECORRUPT;
	}
	if (!shadow_add_u64(h->value_offset, h->value_nbytes, &end) || end != file_nbytes) {
		*why = "file size does not match its header (torn)";
		return SHADOW_ECORRUPT;
	}
	return 0;
}

/* Fill hdr[0, value_offset) for a PUT; returns value_offset. */
static uint64_t hdr_build(uint8_t *hdr, const char *key, uint32_t key_nbytes,
			  uint64_t value_nbytes, uint64_t value_sum)
{
	uint64_t value_offset = value_offset_for(key_nbytes);

	memcpy(hdr, FILE_MAGIC, 4);
	shadow__store_le32(hdr + 4, FILE_VERSION);
	shadow__store_le32(hdr + 8, key_nbytes);
	shadow__store_le32(hdr + 12, (uint32_t)value_offset);
	shadow__store_le64(hdr + 16, value_nbytes);
	shadow__store_le64(hdr + 24, value_sum);
	memcpy(hdr + FILE_HDR_NBYTES, key, key_nbytes);
	memset(hdr + FILE_HDR_NBYTES + key_nbytes, 0,
	       value_offset - FILE_HDR_NBYTES - key_nbytes);
	shadow__store_le64(hdr + FILE_OFF_CHECKSUM, hdr_checksum(hdr, key, key_nbytes));
	return value_offset;
}

/* Read up to `nbytes` at `off`; the count read (short only at end of file) or -errno. */
static ssize_t pread_full(int fd, void *buf, size_t nbytes, off_t off)
{
	size_t got = 0;

	while (got < nbytes) {
		ssize_t n = pread(fd, (uint8_t *)buf + got, nbytes - got, off + (off_t)got);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

/* Move past `n` bytes of an iovec being consumed, dropping entries used up. */
static void iov_advance(struct iovec **iov, int *cnt, size_t n)
{
	while (*cnt > 0 && n >= (*iov)->iov_len) {
		n -= (*iov)->iov_len;
		(*iov)++;
		(*cnt)--;
	}
	if (*cnt > 0) {
		(*iov)->iov_base = (uint8_t *)(*iov)->iov_base + n;
		(*iov)->iov_len -= n;
	}
}

/* Write the whole of iov (consumed) at offset 0; 0 or -errno. */
static int pwritev_full(int fd, struct iovec *iov, int cnt)
{
	off_t off = 0;

	while (cnt > 0) {
		ssize_t n = pwritev(fd, iov, cnt, off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EIO;
		off += n;
		iov_advance(&iov, &cnt, (size_t)n);
	}
	return 0;
}

/* Read into all of iov (consumed) from `off`; the count read (short only at EOF) or -errno. */
static int64_t preadv_full(int fd, struct iovec *iov, int cnt, off_t off)
{
	int64_t got = 0;

	while (cnt > 0) {
		ssize_t n = preadv(fd, iov, cnt, off + got);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			break;
		got += n;
		iov_advance(&iov, &cnt, (size_t)n);
	}
	return got;
}

/* Bytes [off, off + len) of the value in iov as entries of out[]; returns how many. */
static int iov_slice(const struct iovec *iov, uint32_t n, uint64_t off, uint64_t len,
		     struct iovec *out)
{
	uint32_t i = 0;
	int k = 0;

	while (i < n && off >= iov[i].iov_len) {
		off -= iov[i].iov_len;
		i++;
	}
	for (; i < n && len > 0; i++) {
		uint64_t take = SHADOW_MIN(len, iov[i].iov_len - off);

		out[k].iov_base = (uint8_t *)iov[i].iov_base + off;
		out[k].iov_len = (size_t)take;
		k++;
		len -= take;
		off = 0;
	}
	SHADOW_ASSERT(len == 0);
	return k;
}

/* fsync a directory relative to dir_fd; 0 or -errno. */
static int fsync_dir_at(int dir_fd, const char *path)
{
	int fd = openat(dir_fd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int rc = 0;

	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0)
		rc = -errno;
	close(fd);
	return rc;
}

/* unlinkat() that counts a file already gone as removed; 0 or -errno. */
static int unlink_at(int dir_fd, const char *path)
{
	return unlinkat(dir_fd, path, 0) == 0 || errno == ENOENT ? 0 : -errno;
}

/* ------------------------------------------------------------------------------------------ */
/* The index (callers hold inst->mu)                                                          */
/* ------------------------------------------------------------------------------------------ */

static struct file_entry *idx_find(const struct file_inst *inst, uint64_t hi, uint64_t lo)
{
	struct file_entry *e = inst->buckets[lo & (inst->n_buckets - 1)];

	while (e != NULL && (e->hi != hi || e->lo != lo))
		e = e->hnext;
	return e;
}

static void lru_unlink(struct file_entry *e)
{
	e->lru_prev->lru_next = e->lru_next;
	e->lru_next->lru_prev = e->lru_prev;
}

static void lru_push_front(struct file_inst *inst, struct file_entry *e)
{
	e->lru_prev = &inst->lru;
	e->lru_next = inst->lru.lru_next;
	inst->lru.lru_next->lru_prev = e;
	inst->lru.lru_next = e;
}

/* Double the table; on allocation failure keep the old one (longer chains, still correct). */
static void idx_grow(struct file_inst *inst)
{
	uint64_t nb = inst->n_buckets * 2;
	struct file_entry **b = calloc(nb, sizeof(*b));

	if (b == NULL)
		return;
	for (uint64_t i = 0; i < inst->n_buckets; i++) {
		struct file_entry *e = inst->buckets[i];
		while (e != NULL) {
			struct file_entry *next = e->hnext;
			e->hnext = b[e->lo & (nb - 1)];
			b[e->lo & (nb - 1)] = e;
			e = next;
		}
	}
	free(inst->buckets);
	inst->buckets = b;
	inst->n_buckets = nb;
}

/* Insert `e` (not present) as the most recently used. */
static void idx_insert(struct file_inst *inst, struct file_entry *e)
{
	if (inst->items >= inst->n_buckets)
		idx_grow(inst);
	struct file_entry **slot = &inst->buckets[e->lo & (inst->n_buckets - 1)];
	e->hnext = *slot;
	*slot = e;
	e->gen = ++inst->gen;
	lru_push_front(inst, e);
	inst->items++;
	inst->used_nbytes += e->file_nbytes;
}

static void idx_remove(struct file_inst *inst, struct file_entry *e)
{
	struct file_entry **p = &inst->buckets[e->lo & (inst->n_buckets - 1)];

	while (*p != e) {
		SHADOW_ASSERT(*p != NULL);
		p = &(*p)->hnext;
	}
	*p = e->hnext;
	lru_unlink(e);
	SHADOW_ASSERT(inst->items > 0 && inst->used_nbytes >= e->file_nbytes);
	inst->items--;
	inst->used_nbytes -= e->file_nbytes;
}

/*
 * Take least recently used entries out of the index until used <= capacity, counting them as
 * evictions; they are chained on their lru_next into *victims for the caller to unlink and
 * free outside the lock.
 */
static void idx_evict(struct file_inst *inst, struct file_entry **victims)
{
	while (inst->used_nbytes > inst->capacity_nbytes) {
		struct file_entry *e = inst->lru.lru_prev;

		SHADOW_ASSERT(e != &inst->lru);
		idx_remove(inst, e);
		inst->evictions++;
		e->lru_next = *victims;
		*victims = e;
	}
}

/* Unlink and free a chain of victims from idx_evict (no lock held). */
static void unlink_victims(struct file_inst *inst, struct file_entry *victims)
{
	char path[FILE_PATH_NBYTES];

	while (victims != NULL) {
		struct file_entry *next = victims->lru_next;

		hash_path(victims->hi, victims->lo, path);
		int rc = unlink_at(inst->dir_fd, path);
		if (rc < 0)
			SHADOW_LOG_RATELIMITED(SHADOW_LOG_WARN, "file store %s: evicting %s: %s",
					       inst->dir, path, shadow_strerror(rc));
		free(victims);
		victims = next;
	}
}

/* Drop the entry of `k` if it is still generation `gen`; frees it. */
static void inst_drop(struct file_inst *inst, const struct file_key *k, uint64_t gen)
{
	struct file_entry *e;

	pthread_mutex_lock(&inst->mu);
	e = idx_find(inst, k->hi, k->lo);
	if (e != NULL && e->gen == gen)
		idx_remove(inst, e);
	else
		e = NULL;
	pthread_mutex_unlock(&inst->mu);
	free(e);
}

/* ------------------------------------------------------------------------------------------ */
/* Opening a directory                                                                        */
/* ------------------------------------------------------------------------------------------ */

struct scan_item {
	struct file_entry *e;
	struct timespec mtime;
};

static int scan_item_cmp(const void *a, const void *b)
{
	const struct scan_item *x = a, *y = b;

	if (x->mtime.tv_sec != y->mtime.tv_sec)
		return x->mtime.tv_sec < y->mtime.tv_sec ? -1 : 1;
	if (x->mtime.tv_nsec != y->mtime.tv_nsec)
		return x->mtime.tv_nsec < y->mtime.tv_nsec ? -1 : 1;
	if (x->e->hi != y->e->hi)
		return x->e->hi < y->e->hi ? -1 : 1;
	return x->e->lo < y->e->lo ? -1 : x->e->lo > y->e->lo;
}

static bool is_entry_name(const char *name, unsigned xx)
{
	if (strlen(name) != FILE_NAME_NBYTES)
		return false;
	for (const char *c = name; *c != '\0'; c++) {
		if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f')))
			return false;
	}
	static const char hex[] = "0123456789abcdef";

	return name[0] == hex[(xx >> 4) & 15] && name[1] == hex[xx & 15];
}

/* Errors that say the process, not the file, is in trouble: the open fails. */
static bool errno_is_fatal(int err)
{
	return err == ENOMEM || err == EMFILE || err == ENFILE;
}

/*
 * Check one file of v1/XX/ (untrusted). Returns 1 with *item filled for a valid entry; 0 for
 * a file left alone (not a regular file, unreadable: logged) or removed as damaged
 * (*corrupt incremented); a negative code when the open must fail.
 */
static int scan_one(struct file_inst *inst, int sub_fd, unsigned xx, const char *name,
		    struct scan_item *item, uint64_t *corrupt)
{
	uint8_t buf[FILE_READ_HDR_NBYTES];
	struct file_hdr h;
	struct file_key k;
	struct stat st;
	const char *why = "name is not a key hash";
	int fd, rc = 0;

	fd = openat(sub_fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		int err = errno;
		if (errno_is_fatal(err))
			return -err;
		if (err != ENOENT)
			SHADOW_LOG_RATELIMITED(SHADOW_LOG_WARN,
					       "file store %s: v1/%02x/%s: %s, left alone",
					       inst->dir, xx, name, shadow_strerror(-err));
		return 0;
	}
	if (fstat(fd, &st) < 0) {
		int err = errno;
		rc = errno_is_fatal(err) ? -err : 0;
		SHADOW_LOG_RATELIMITED(SHADOW_LOG_WARN, "file store %s: v1/%02x/%s: %s", inst->dir,
				       xx, name, shadow_strerror(-err));
		goto out_close;
	}
	if (!S_ISREG(st.st_mode)) {
		SHADOW_LOG_RATELIMITED(SHADOW_LOG_WARN, "file store %s: v1/%02x/%s: not a regular "
				       "file, left alone", inst->dir, xx, name);
		goto out_close;
	}
	if (is_entry_name(name, xx)) {
		ssize_t n = pread_full(fd, buf, sizeof(buf), 0);
		if (n < 0) {
			rc = errno_is_fatal((int)-n) ? (int)n : 0;
			SHADOW_LOG_RATELIMITED(SHADOW_LOG_WARN, "file store %s: v1/%02x/%s: %s",
					       inst->dir, xx, name, shadow_strerror((int)n));
			goto out_close;
		}
		if (hdr_parse(buf, (size_t)n, (uint64_t)st.st_size, &h, &why) == 0) {
			key_hash(h.key, h.key_nbytes, &k);
			if (strcmp(k.path + 6, name) == 0) {
				item->e = calloc(1, sizeof(*item->e));
				if (item->e == NULL) {
					rc = -ENOMEM;
					goto out_close;
				}
				item->e->hi = k.hi;
				item->e->lo = k.lo;
				item->e->file_nbytes = (uint64_t)st.st_size;
				item->mtime = st.st_mtim;
				rc = 1;
				goto out_close;
			}
			why = "stored key does not hash to the file name";
		}
	}
	SHADOW_LOG_RATELIMITED(SHADOW_LOG_WARN, "file store %s: v1/%02x/%s: %s; removed", inst->dir,
			       xx, name, why);
	rc = unlink_at(sub_fd, name);
	if (rc < 0)
		SHADOW_LOG_RATELIMITED(SHADOW_LOG_WARN, "file store %s: removing v1/%02x/%s: %s",
				       inst->dir, xx, name, shadow_strerror(rc));
	rc = 0;
	(*corrupt)++;
out_close:
	close(fd);
	return rc;
}

/* Open directory `path` under dir_fd for reading, without following a final symlink. */
static int dir_open_at(int dir_fd, const char *path, DIR **d_ret)
{
	int fd = openat(dir_fd, path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	*d_ret = fdopendir(fd);
	if (*d_ret == NULL) {
		int rc = -errno;
		close(fd);
		return rc;
	}
	return 0;
}

/* The next entry other than "." and "..": 1 (in *de_ret), 0 at the end, or -errno. */
static int dir_next(DIR *d, struct dirent **de_ret)
{
	for (;;) {
		errno = 0;
		struct dirent *de = readdir(d);
		if (de == NULL)
			return -errno;
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
			*de_ret = de;
			return 1;
		}
	}
}

/* Scan one fan-out directory into *items (grown as needed). */
static int scan_dir(struct file_inst *inst, unsigned xx, struct scan_item **items, size_t *n,
		    size_t *cap, uint64_t *corrupt)
{
	char sub[8];
	struct dirent *de = NULL;
	DIR *d;
	int rc;

	snprintf(sub, sizeof(sub), "v1/%02x", xx);
	rc = dir_open_at(inst->dir_fd, sub, &d);
	if (rc < 0)
		return rc == -ENOENT ? 0 : rc;
	while ((rc = dir_next(d, &de)) == 1) {
		if (*n == *cap) {
			size_t nc = *cap ? *cap * 2 : 1024;
			struct scan_item *p = realloc(*items, nc * sizeof(*p));
			if (p == NULL) {
				rc = -ENOMEM;
				break;
			}
			*items = p;
			*cap = nc;
		}
		rc = scan_one(inst, dirfd(d), xx, de->d_name, &(*items)[*n], corrupt);
		if (rc < 0)
			break;
		*n += (size_t)rc;
	}
	closedir(d);
	return rc;
}

/* Build the index from v1/, oldest file least recently used; evict beyond the capacity. */
static int inst_scan(struct file_inst *inst, uint64_t *corrupt)
{
	struct scan_item *items = NULL;
	struct file_entry *victims = NULL;
	size_t n = 0, cap = 0;
	int rc = 0;

	for (unsigned xx = 0; xx < 256; xx++) {
		rc = scan_dir(inst, xx, &items, &n, &cap, corrupt);
		if (rc < 0) {
			SHADOW_LOGE("file store %s: reading v1/%02x: %s", inst->dir, xx,
				    shadow_strerror(rc));
			goto err_free_items;
		}
	}
	while (inst->n_buckets < n)
		inst->n_buckets *= 2;
	inst->buckets = calloc(inst->n_buckets, sizeof(*inst->buckets));
	if (inst->buckets == NULL) {
		rc = -ENOMEM;
		goto err_free_items;
	}
	if (n > 0)
		qsort(items, n, sizeof(*items), scan_item_cmp);
	/* Nobody else sees the instance yet; the lock is taken for the helpers' rule. */
	pthread_mutex_lock(&inst->mu);
	for (size_t i = 0; i < n; i++)
		idx_insert(inst, items[i].e); /* oldest first: the newest ends most recent */
	idx_evict(inst, &victims);
	pthread_mutex_unlock(&inst->mu);
	free(items);
	unlink_victims(inst, victims);
	return 0;

err_free_items:
	for (size_t i = 0; i < n; i++)
		free(items[i].e);
	free(items);
	return rc;
}

/* Remove whatever a previous run left in tmp/ (PUTs it never finished). */
static int inst_empty_tmp(struct file_inst *inst)
{
	struct dirent *de = NULL;
	DIR *d;
	int rc = dir_open_at(inst->dir_fd, "tmp", &d);

	if (rc < 0)
		return rc;
	while ((rc = dir_next(d, &de)) == 1) {
		int err = unlink_at(dirfd(d), de->d_name);
		if (err < 0)
			SHADOW_LOGW("file store %s: removing tmp/%s: %s", inst->dir, de->d_name,
				    shadow_strerror(err));
	}
	closedir(d);
	return rc;
}

static int mkdir_at(int dir_fd, const char *path, bool *made)
{
	if (mkdirat(dir_fd, path, 0755) == 0) {
		*made = true;
		return 0;
	}
	return errno == EEXIST ? 0 : -errno;
}

static void inst_free(struct file_inst *inst)
{
	struct file_entry *e = inst->lru.lru_next;

	while (e != NULL && e != &inst->lru) {
		struct file_entry *next = e->lru_next;
		free(e);
		e = next;
	}
	free(inst->buckets);
	pthread_mutex_destroy(&inst->mu);
	close(inst->lock_fd); /* releases the flock */
	close(inst->dir_fd);
	free(inst->dir);
}

/* Lock, prepare and scan `dir` (a realpath, taken over) into a new instance. */
static int inst_create(char *dir, uint64_t capacity, struct file_inst **inst_ret,
		       uint64_t *corrupt)
{
	struct file_inst *inst;
	bool made = false;
	int rc;

	inst = calloc(1, sizeof(*inst));
	if (inst == NULL) {
		free(dir);
		return -ENOMEM;
	}
	inst->dir = dir;
	inst->refs = 1;
	inst->pid = getpid();
	inst->capacity_nbytes = capacity;
	inst->n_buckets = FILE_BUCKETS_MIN;
	inst->lru.lru_next = inst->lru.lru_prev = &inst->lru;
	atomic_init(&inst->tmp_seq, 0);
	rc = pthread_mutex_init(&inst->mu, NULL);
	if (rc != 0) {
		rc = -rc;
		goto err_free_inst;
	}
	inst->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (inst->dir_fd < 0) {
		rc = -errno;
		SHADOW_LOGE("file store %s: %s", dir, shadow_strerror(rc));
		goto err_destroy_mutex;
	}
	inst->lock_fd = openat(inst->dir_fd, ".lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC,
			       0644);
	if (inst->lock_fd < 0) {
		rc = -errno;
		SHADOW_LOGE("file store %s: .lock: %s", dir, shadow_strerror(rc));
		goto err_close_dir;
	}
	if (flock(inst->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
		SHADOW_LOGE("file store %s: %s", dir,
			    rc == -EBUSY ? "in use by another process" : shadow_strerror(rc));
		goto err_close_lock;
	}
	rc = mkdir_at(inst->dir_fd, "v1", &made);
	if (rc == 0)
		rc = mkdir_at(inst->dir_fd, "tmp", &made);
	if (rc == 0 && made && fsync(inst->dir_fd) < 0)
		rc = -errno;
	if (rc == 0)
		rc = inst_empty_tmp(inst);
	if (rc < 0) {
		SHADOW_LOGE("file store %s: preparing v1/ and tmp/: %s", dir, shadow_strerror(rc));
		goto err_close_lock;
	}
	rc = inst_scan(inst, corrupt);
	if (rc < 0)
		goto err_close_lock;
	SHADOW_LOGI("file store %s: %llu entries, %llu bytes, %llu damaged removed, %llu evicted",
		    dir, (unsigned long long)inst->items, (unsigned long long)inst->used_nbytes,
		    (unsigned long long)*corrupt, (unsigned long long)inst->evictions);
	*inst_ret = inst;
	return 0;

err_close_lock:
	close(inst->lock_fd);
err_close_dir:
	close(inst->dir_fd);
err_destroy_mutex:
	pthread_mutex_destroy(&inst->mu);
err_free_inst:
	free(inst->dir);
	free(inst);
	return rc;
}

static int file_open(const struct shadow__url *url, const struct shadow_store_options *opts,
		     struct shadow_store **store_ret)
{
	static const char *const known[] = { "capacity", NULL };
	uint64_t capacity = FILE_CAPACITY_DEFAULT;
	const char *cap_text = shadow__url_query(url, "capacity");
	struct file_inst *inst;
	struct file_store *fs;
	char *dir;
	int rc;

	(void)opts;
	if (url->n_hosts != 0 || url->user != NULL || url->password != NULL ||
	    url->path[0] != '/') {
		SHADOW_LOGE("file store URL: expected file:///ABSOLUTE/DIR[?capacity=SIZE]");
		return -EINVAL;
	}
	rc = shadow__url_check_query(url, known);
	if (rc < 0)
		return rc;
	if (cap_text != NULL && (shadow_parse_size(cap_text, &capacity) < 0 || capacity == 0)) {
		SHADOW_LOGE("file store URL: capacity=%s is not a size above 0", cap_text);
		return -EINVAL;
	}
	if (mkdir(url->path, 0755) < 0 && errno != EEXIST) {
		rc = -errno;
		SHADOW_LOGE("file store %s: %s", url->path, shadow_strerror(rc));
		return rc;
	}
	dir = realpath(url->path, NULL);
	if (dir == NULL) {
		rc = -errno;
		SHADOW_LOGE("file store %s: %s", url->path, shadow_strerror(rc));
		return rc;
	}
	fs = calloc(1, sizeof(*fs));
	if (fs == NULL) {
		rc = -ENOMEM;
		goto err_free_dir;
	}
	fs->hdr = shadow__alloc_aligned(FILE_VALUE_ALIGN, FILE_VALUE_ALIGN);
	if (fs->hdr == NULL) {
		rc = -ENOMEM;
		goto err_free_fs;
	}

	pthread_mutex_lock(&file_registry_mu);
	for (inst = file_registry; inst != NULL; inst = inst->next) {
		if (inst->pid == getpid() && strcmp(inst->dir, dir) == 0)
			break;
	}
	if (inst != NULL) {
		if (cap_text != NULL && capacity != inst->capacity_nbytes) {
			SHADOW_LOGE("file store %s: capacity %llu, but already open with %llu",
				    dir, (unsigned long long)capacity,
				    (unsigned long long)inst->capacity_nbytes);
			rc = -EINVAL;
		} else {
			inst->refs++;
		}
		free(dir);
	} else {
		rc = inst_create(dir, capacity, &inst, &fs->open_corrupt); /* takes dir */
		if (rc == 0) {
			inst->next = file_registry;
			file_registry = inst;
		}
	}
	pthread_mutex_unlock(&file_registry_mu);
	if (rc < 0)
		goto err_free_hdr;

	fs->inst = inst;
	*store_ret = &fs->base;
	return 0;

err_free_hdr:
	shadow__free_aligned(fs->hdr);
err_free_fs:
	free(fs);
	return rc;
err_free_dir:
	free(dir);
	return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* The request queue                                                                          */
/* ------------------------------------------------------------------------------------------ */

#define Q_NEXT(r) ((struct shadow_store_req *)(r)->priv[1])
#define Q_PREV(r) ((struct shadow_store_req *)(r)->priv[2])

static void queue_push(struct file_store *fs, struct shadow_store_req *req)
{
	req->priv[1] = 0;
	req->priv[2] = (uintptr_t)fs->q_tail;
	req->priv[3] = (uintptr_t)fs;
	if (fs->q_tail != NULL)
		fs->q_tail->priv[1] = (uintptr_t)req;
	else
		fs->q_head = req;
	fs->q_tail = req;
	fs->n_queued++;
}

static void queue_remove(struct file_store *fs, struct shadow_store_req *req)
{
	SHADOW_ASSERT(req->priv[3] == (uintptr_t)fs && fs->n_queued > 0);
	if (Q_PREV(req) != NULL)
		Q_PREV(req)->priv[1] = req->priv[1];
	else
		fs->q_head = Q_NEXT(req);
	if (Q_NEXT(req) != NULL)
		Q_NEXT(req)->priv[2] = req->priv[2];
	else
		fs->q_tail = Q_PREV(req);
	req->priv[1] = req->priv[2] = req->priv[3] = 0;
	fs->n_queued--;
}

/* ------------------------------------------------------------------------------------------ */
/* Requests                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* A file found damaged: out of the index (if still `gen`), unlinked, counted. */
static void remove_corrupt(struct file_store *fs, const struct file_key *k, uint64_t gen,
			   const char *why)
{
	struct file_inst *inst = fs->inst;

	SHADOW_LOG_RATELIMITED(SHADOW_LOG_WARN, "file store %s: %s: %s; removed", inst->dir,
			       k->path, why);
	inst_drop(inst, k, gen);
	int rc = unlink_at(inst->dir_fd, k->path);
	if (rc < 0)
		SHADOW_LOG_RATELIMITED(SHADOW_LOG_WARN, "file store %s: removing %s: %s", inst->dir,
				       k->path, shadow_strerror(rc));
	fs->base.stats.corrupt++;
}

/*
 * Stream the value (h->value_nbytes > 0, fits the iovec) from fd into req's iovec. Returns 0,
 * or the request's failure status.
 */
static int get_stream(struct file_store *fs, struct shadow_store_req *req, int fd,
		      const struct file_hdr *h, const struct file_key *k, uint64_t gen)
{
	struct iovec piece[SHADOW_STORE_IOV_MAX];
	const uint64_t total = h->value_nbytes;
	XXH3_state_t st;
	uint64_t off = 0;
	int rc = 0;

	XXH3_64bits_reset(&st);
	fs->streaming = req;
	fs->stream_cancelled = false;
	while (off < total) {
		uint64_t len = SHADOW_MIN(total - off, FILE_PIECE_NBYTES);
		int np = iov_slice(req->iov, req->iov_count, off, len, piece);
		struct iovec rd[SHADOW_STORE_IOV_MAX];

		if (off > 0 && shadow__now_ns() > req->deadline_ns) {
			rc = -ETIMEDOUT;
			break;
		}
		memcpy(rd, piece, (size_t)np * sizeof(rd[0])); /* preadv_full consumes its copy */
		int64_t got = preadv_full(fd, rd, np, (off_t)(h->value_offset + off));
		if (got < 0) {
			rc = (int)got;
			SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR, "file store %s: reading %s: %s",
					       fs->inst->dir, k->path, shadow_strerror(rc));
			break;
		}
		if ((uint64_t)got < len) {
			/* Truncated since its header was checked: torn. A miss if nothing was
			 * reported landed yet. */
			remove_corrupt(fs, k, gen, "shorter than its header says (torn)");
			rc = req->landed_nbytes == 0 ? SHADOW_EMISS : SHADOW_ECORRUPT;
			break;
		}
		/* Hash before on_data: the consumer may change landed bytes from then on. */
		for (int i = 0; i < np; i++)
			XXH3_64bits_update(&st, piece[i].iov_base, piece[i].iov_len);
		off += len;
		if (off == total && XXH3_64bits_digest(&st) != h->value_sum) {
			remove_corrupt(fs, k, gen, "value checksum mismatch");
			rc = SHADOW_ECORRUPT;
			break;
		}
		shadow__store_landed(req, off);
		if (fs->stream_cancelled) {
			rc = -ECANCELED;
			break;
		}
	}
	fs->streaming = NULL;
	return rc;
}

static int file_get(struct file_store *fs, struct shadow_store_req *req)
{
	struct file_inst *inst = fs->inst;
	size_t key_nbytes = strlen(req->key);
	uint8_t buf[FILE_READ_HDR_NBYTES];
	const char *why = NULL;
	struct file_entry *e;
	struct file_hdr h;
	struct file_key k;
	struct stat st;
	uint64_t gen = 0;
	ssize_t n;
	int fd, rc;

	key_hash(req->key, key_nbytes, &k);
	pthread_mutex_lock(&inst->mu);
	e = idx_find(inst, k.hi, k.lo);
	if (e != NULL) {
		lru_unlink(e);
		lru_push_front(inst, e);
		gen = e->gen;
	}
	pthread_mutex_unlock(&inst->mu);
	if (e == NULL)
		return SHADOW_EMISS;

	fd = openat(inst->dir_fd, k.path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		if (rc == -ENOENT) { /* unlinked by a racing handle (see DESIGN) */
			inst_drop(inst, &k, gen);
			return SHADOW_EMISS;
		}
		SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR, "file store %s: opening %s: %s", inst->dir,
				       k.path, shadow_strerror(rc));
		return rc;
	}
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		goto out_close;
	}
	n = pread_full(fd, buf, sizeof(buf), 0);
	if (n < 0) {
		rc = (int)n;
		SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR, "file store %s: reading %s: %s", inst->dir,
				       k.path, shadow_strerror(rc));
		goto out_close;
	}
	/* The file may have been damaged or replaced since open checked it: check it again. */
	if (S_ISREG(st.st_mode)) {
		rc = hdr_parse(buf, (size_t)n, (uint64_t)st.st_size, &h, &why);
	} else {
		why = "not a regular file";
		rc = SHADOW_ECORRUPT;
	}
	if (rc < 0) {
		remove_corrupt(fs, &k, gen, why);
		rc = SHADOW_EMISS;
		goto out_close;
	}
	if (h.key_nbytes != key_nbytes || memcmp(h.key, req->key, key_nbytes) != 0) {
		/* Another key with the same 128-bit hash owns the file. */
		SHADOW_LOGD("file store %s: %s holds another key (hash collision)", inst->dir,
			    k.path);
		rc = SHADOW_EMISS;
		goto out_close;
	}
	/* A racing PUT from another handle may have indexed another size: the file is right. */
	pthread_mutex_lock(&inst->mu);
	e = idx_find(inst, k.hi, k.lo);
	if (e != NULL && e->gen == gen && e->file_nbytes != (uint64_t)st.st_size) {
		inst->used_nbytes = inst->used_nbytes - e->file_nbytes + (uint64_t)st.st_size;
		e->file_nbytes = (uint64_t)st.st_size;
	}
	pthread_mutex_unlock(&inst->mu);

	req->value_nbytes = h.value_nbytes;
	if (h.value_nbytes > shadow__iov_nbytes(req->iov, req->iov_count) ||
	    h.value_nbytes > fs->base.opts.max_value_nbytes) {
		rc = SHADOW_ELIMIT;
		goto out_close;
	}
	if (h.value_nbytes > 0) {
		rc = get_stream(fs, req, fd, &h, &k, gen);
	} else if (XXH3_64bits(NULL, 0) != h.value_sum) {
		remove_corrupt(fs, &k, gen, "value checksum mismatch");
		rc = SHADOW_ECORRUPT;
	}
out_close:
	close(fd);
	if (rc == SHADOW_EMISS)
		req->value_nbytes = 0;
	return rc;
}

static int file_put(struct file_store *fs, struct shadow_store_req *req)
{
	struct file_inst *inst = fs->inst;
	uint32_t key_nbytes = (uint32_t)strlen(req->key);
	uint64_t value_nbytes = shadow__iov_nbytes(req->iov, req->iov_count);
	struct iovec wr[1 + SHADOW_STORE_IOV_MAX];
	struct file_entry *e, *old, *victims = NULL;
	char tmp[32], fan[8];
	struct file_key k;
	XXH3_state_t st;
	uint64_t file_nbytes;
	int fd, rc;

	if (!shadow_add_u64(value_offset_for(key_nbytes), value_nbytes, &file_nbytes) ||
	    file_nbytes > inst->capacity_nbytes)
		return SHADOW_ELIMIT;
	e = calloc(1, sizeof(*e));
	if (e == NULL)
		return -ENOMEM;
	key_hash(req->key, key_nbytes, &k);
	e->hi = k.hi;
	e->lo = k.lo;
	e->file_nbytes = file_nbytes;

	XXH3_64bits_reset(&st);
	for (uint32_t i = 0; i < req->iov_count; i++)
		XXH3_64bits_update(&st, req->iov[i].iov_base, req->iov[i].iov_len);
	wr[0].iov_base = fs->hdr; /* value_offset <= FILE_VALUE_ALIGN: keys are short */
	wr[0].iov_len = hdr_build(fs->hdr, req->key, key_nbytes, value_nbytes,
				  XXH3_64bits_digest(&st));
	for (uint32_t i = 0; i < req->iov_count; i++)
		wr[1 + i] = req->iov[i];

	snprintf(tmp, sizeof(tmp), "tmp/%016llx",
		 (unsigned long long)atomic_fetch_add_explicit(&inst->tmp_seq, 1,
							       memory_order_relaxed));
	fd = openat(inst->dir_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		rc = -errno;
		goto err_log;
	}
	rc = pwritev_full(fd, wr, 1 + (int)req->iov_count);
	if (rc == 0 && fsync(fd) < 0)
		rc = -errno;
	if (close(fd) < 0 && rc == 0)
		rc = -errno;
	if (rc < 0)
		goto err_unlink_tmp;

	memcpy(fan, k.path, 5);
	fan[5] = '\0';
	if (renameat(inst->dir_fd, tmp, inst->dir_fd, k.path) < 0) {
		rc = -errno;
		if (rc != -ENOENT)
			goto err_unlink_tmp;
		/* The fan-out directory's first entry. */
		if (mkdirat(inst->dir_fd, fan, 0755) < 0 && errno != EEXIST) {
			rc = -errno;
			goto err_unlink_tmp;
		}
		rc = fsync_dir_at(inst->dir_fd, "v1");
		if (rc < 0)
			goto err_unlink_tmp;
		if (renameat(inst->dir_fd, tmp, inst->dir_fd, k.path) < 0) {
			rc = -errno;
			goto err_unlink_tmp;
		}
	}
	rc = fsync_dir_at(inst->dir_fd, fan);
	if (rc < 0) {
		/* In place but maybe not durable: keep it indexed; the caller sees the error. */
		SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR, "file store %s: fsync %s: %s", inst->dir,
				       fan, shadow_strerror(rc));
	}

	pthread_mutex_lock(&inst->mu);
	old = idx_find(inst, k.hi, k.lo);
	if (old != NULL)
		idx_remove(inst, old);
	idx_insert(inst, e);
	idx_evict(inst, &victims);
	SHADOW_ASSERT(inst->lru.lru_next == e); /* it fits, so it is never its own victim */
	pthread_mutex_unlock(&inst->mu);
	free(old);
	unlink_victims(inst, victims);
	return rc;

err_unlink_tmp:
	unlinkat(inst->dir_fd, tmp, 0);
err_log:
	SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR, "file store %s: writing %s: %s", inst->dir, k.path,
			       shadow_strerror(rc));
	free(e);
	return rc;
}

static int file_delete(struct file_store *fs, struct shadow_store_req *req)
{
	struct file_inst *inst = fs->inst;
	struct file_entry *e;
	struct file_key k;

	key_hash(req->key, strlen(req->key), &k);
	pthread_mutex_lock(&inst->mu);
	e = idx_find(inst, k.hi, k.lo);
	if (e != NULL)
		idx_remove(inst, e);
	pthread_mutex_unlock(&inst->mu);
	if (e == NULL)
		return 0;
	free(e);
	req->n_found = 1;
	int rc = unlink_at(inst->dir_fd, k.path);
	if (rc < 0) {
		SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR, "file store %s: removing %s: %s",
				       inst->dir, k.path, shadow_strerror(rc));
		return rc;
	}
	return 0;
}

static int file_exists(struct file_store *fs, struct shadow_store_req *req)
{
	struct file_inst *inst = fs->inst;
	struct file_key k;
	uint32_t i;

	/* One lock per key: the hash is computed outside it. */
	for (i = 0; i < req->n_keys; i++) {
		key_hash(req->keys[i], strlen(req->keys[i]), &k);
		pthread_mutex_lock(&inst->mu);
		bool found = idx_find(inst, k.hi, k.lo) != NULL;
		pthread_mutex_unlock(&inst->mu);
		if (!found)
			break;
	}
	req->n_found = i;
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Ops                                                                                        */
/* ------------------------------------------------------------------------------------------ */

static int file_submit(struct shadow_store *store, struct shadow_store_req *req)
{
	queue_push(to_fs(store), req);
	return 0;
}

static int file_poll(struct shadow_store *store, uint64_t wait_until_ns)
{
	struct file_store *fs = to_fs(store);
	/* Only what was queued now: requests submitted from on_data wait for the next poll. */
	uint32_t budget = fs->n_queued;

	(void)wait_until_ns; /* the I/O below is synchronous: there is nothing to wait for */
	while (budget-- > 0 && fs->q_head != NULL) {
		struct shadow_store_req *req = fs->q_head;
		int rc;

		queue_remove(fs, req);
		if (shadow__now_ns() > req->deadline_ns) {
			rc = -ETIMEDOUT;
		} else {
			switch (req->op) {
			case SHADOW_STORE_GET:
				rc = file_get(fs, req);
				break;
			case SHADOW_STORE_PUT:
				rc = file_put(fs, req);
				break;
			case SHADOW_STORE_DELETE:
				rc = file_delete(fs, req);
				break;
			case SHADOW_STORE_EXISTS:
				rc = file_exists(fs, req);
				break;
			default:
				SHADOW_ASSERT(false); /* the front end validated the op */
				rc = -EINVAL;
				break;
			}
		}
		shadow__store_complete(store, req, rc);
	}
	return 0;
}

static int file_cancel(struct shadow_store *store, struct shadow_store_req *req)
{
	struct file_store *fs = to_fs(store);

	if (req == fs->streaming) {
		/* Called from its on_data: get_stream stops after it returns. */
		fs->stream_cancelled = true;
		return 0;
	}
	if (req->priv[3] != (uintptr_t)fs)
		return -ENOENT;
	queue_remove(fs, req);
	shadow__store_complete(store, req, -ECANCELED);
	return 0;
}

static void file_close(struct shadow_store *store)
{
	struct file_store *fs = to_fs(store);

	SHADOW_ASSERT(fs->streaming == NULL); /* callbacks must not close */
	while (fs->q_head != NULL) {
		struct shadow_store_req *req = fs->q_head;

		queue_remove(fs, req);
		shadow__store_complete(store, req, -ECANCELED);
	}
}

static void file_destroy(struct shadow_store *store)
{
	struct file_store *fs = to_fs(store);
	struct file_inst *inst = fs->inst;
	bool last;

	pthread_mutex_lock(&file_registry_mu);
	last = --inst->refs == 0;
	if (last) {
		struct file_inst **p = &file_registry;
		while (*p != inst)
			p = &(*p)->next;
		*p = inst->next;
	}
	pthread_mutex_unlock(&file_registry_mu);
	if (last) {
		inst_free(inst);
		free(inst);
	}
	shadow__free_aligned(fs->hdr);
	free(fs);
}

static int file_fd(const struct shadow_store *store)
{
	(void)store;
	return -1;
}

static void file_state(const struct shadow_store *store, struct shadow_store_stats *stats)
{
	const struct file_store *fs = (const struct file_store *)store;
	struct file_inst *inst = fs->inst;

	pthread_mutex_lock(&inst->mu);
	stats->evictions = inst->evictions;
	stats->items = inst->items;
	stats->used_nbytes = inst->used_nbytes;
	pthread_mutex_unlock(&inst->mu);
	stats->capacity_nbytes = inst->capacity_nbytes;
	/* The front end zeroes the counters after open() returns, so the entries this handle's
	 * open removed are added here. */
	stats->corrupt += fs->open_corrupt;
}

const struct shadow__store_ops shadow__store_file_ops = {
	.scheme = "file",
	.open = file_open,
	.close = file_close,
	.destroy = file_destroy,
	.submit = file_submit,
	.poll = file_poll,
	.cancel = file_cancel,
	.fd = file_fd,
	.state = file_state,
};
