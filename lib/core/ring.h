/*
 * ring.h - a bounded lock-free FIFO of pointers, after DPDK's rte_ring.
 *
 * DESIGN
 *
 * A ring is an array of `capacity` (a power of two) void * slots and two head/tail pairs of
 * free-running uint32_t indices; slot i lives at slots[i & mask]. Indices wrap modulo 2^32,
 * and every distance is computed with unsigned subtraction, so the ring holds exactly
 * `capacity` entries (no slot is sacrificed to tell full from empty):
 *
 *	cons.tail <= cons.head <= prod.tail <= prod.head <= cons.tail + capacity   (mod 2^32)
 *
 *	    [cons.tail, cons.head)  being read by consumers that have reserved them
 *	    [cons.head, prod.tail)  entries ready to dequeue
 *	    [prod.tail, prod.head)  being written by producers that have reserved them
 *	    [prod.head, cons.tail + capacity)  free
 *
 * Memory layout (the struct, then the slots; caller memory must be cache-line aligned):
 *
 *	line 0      capacity, mask                       read-only after init
 *	line 1      prod.head, prod.tail                 written by producers
 *	line 2      (guard)
 *	line 3      cons.head, cons.tail                 written by consumers
 *	line 4      (guard)
 *	line 5...   slots[capacity]
 *
 * The guard lines keep the adjacent-line prefetcher of x86 from pairing the producer and
 * consumer lines into one 128-byte false-sharing unit.
 *
 * An operation moves in three steps, enqueue shown (dequeue swaps prod and cons):
 *  1. reserve: read cons.tail to know the free space, then advance prod.head by n: a plain
 *     store for a single producer (sp), a CAS loop for many (mp);
 *  2. copy the pointers into the reserved slots (plain stores: the indices make them private);
 *  3. publish: multi-producer only, wait until prod.tail equals our old head (producers that
 *     reserved before us have published), then store prod.tail = new head with release.
 *
 * Memory orders (C11 <stdatomic.h>); each pairing is also noted at the atomic itself:
 *  - producer's release store of prod.tail  ->  consumer's acquire load of prod.tail:
 *    the slot writes are visible before a consumer reads them;
 *  - consumer's release store of cons.tail  ->  producer's acquire load of cons.tail:
 *    a consumer's slot reads are done before a producer overwrites the slot;
 *  - step 3's wait is an acquire load of the tail, pairing with the release store of the
 *    previous operation of the same side, so that our release carries their slot accesses too
 *    (happens-before is transitive only through synchronising pairs; a relaxed wait would be
 *    enough on x86 and ARMv8 hardware, but not in the C11 model nor for TSan);
 *  - heads (mp/mc): the head load and a failed CAS are acquire, a successful CAS is acq_rel.
 *    The release of the CAS that moved the head to h pairs with the acquire load of h by the
 *    next reserver of that side, so the tail value that the previous reserver checked against
 *    happens-before the next one's own tail load, which therefore reads a tail at least as new
 *    (read-read coherence). Without that, a head newer than the tail read could make the free
 *    or ready count wrap to a huge number and a CAS succeed on it. DPDK gets the same order
 *    from a relaxed load plus an acquire fence, which relies on hardware; this is the version
 *    the C11 model (and TSan) can prove, and on x86 it costs nothing. sp/sc heads are written
 *    only by their own thread, so those loads are relaxed.
 *
 * Threading: the function name says who may call it. sp/sc functions must have one calling
 * thread at a time on that side (the other side may be mp/mc); mixing sp and mp enqueues on one
 * ring is a bug. Reserving is lock-free; step 3 of mp/mc waits for earlier reservers of the
 * same side, so if one of them is preempted, we wait for it. The wait spins with a pause
 * instruction and, after SHADOW_RING_SPIN_BEFORE_YIELD rounds, calls sched_yield() (only then:
 * the uncontended path makes no syscall). Threads on a ring should still be pinned, one per
 * core, as in DPDK.
 *
 * Bulk operations move all n or nothing and return n or 0; burst operations move as many as
 * possible and return that count. count() and free_count() are snapshots, exact only when no
 * operation is in flight.
 */
#ifndef SHADOW_CORE_RING_H
#define SHADOW_CORE_RING_H

#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>

#include "core/common.h"

/* Largest capacity: distances must stay below 2^31 for the modular arithmetic. */
#define SHADOW_RING_CAPACITY_MAX (UINT32_C(1) << 31)
#define SHADOW_RING_SPIN_BEFORE_YIELD 256u

struct shadow__ring_headtail {
	_Atomic uint32_t head;
	_Atomic uint32_t tail;
};

struct shadow__ring {
	uint32_t capacity;
	uint32_t mask;
	alignas(SHADOW_CACHE_LINE) struct shadow__ring_headtail prod;
	alignas(SHADOW_CACHE_LINE) char prod_guard[SHADOW_CACHE_LINE];
	alignas(SHADOW_CACHE_LINE) struct shadow__ring_headtail cons;
	alignas(SHADOW_CACHE_LINE) char cons_guard[SHADOW_CACHE_LINE];
	alignas(SHADOW_CACHE_LINE) void *slots[];
};

/* Bytes needed by shadow__ring_init() for `capacity`, or 0 if capacity is not valid. */
size_t shadow__ring_memsize(uint32_t capacity) SHADOW_INTERNAL;

/*
 * Initialise an empty ring in caller memory of shadow__ring_memsize(capacity) bytes, aligned to
 * SHADOW_CACHE_LINE. Returns 0, or -EINVAL if capacity is not a power of two in
 * 2 .. SHADOW_RING_CAPACITY_MAX or r is misaligned. Not thread-safe: publish the ring to other
 * threads afterwards (thread creation or a release store does).
 */
int shadow__ring_init(struct shadow__ring *r, uint32_t capacity) SHADOW_INTERNAL;

/*
 * shadow__ring_init() on memory from shadow__alloc_aligned(). Returns 0, -EINVAL as above, or
 * -ENOMEM. Free with shadow__ring_free() once no thread uses the ring.
 */
int shadow__ring_create(struct shadow__ring **ring_ret, uint32_t capacity) SHADOW_INTERNAL;

/* Free a ring from shadow__ring_create(); NULL is accepted. Entries are not touched. */
void shadow__ring_free(struct shadow__ring *r) SHADOW_INTERNAL;

/* A pause for spin loops: lets the sibling hyperthread run and eases the memory pipeline. */
static inline void shadow__cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ volatile("yield" ::: "memory");
#endif
}

enum shadow__ring_mode { SHADOW_RING_BULK, SHADOW_RING_BURST };

/*
 * Step 3 of an operation: wait until `ht->tail` == old (earlier reservers have published),
 * then publish new_tail.
 */
static inline void shadow__ring_publish(struct shadow__ring_headtail *ht, uint32_t old,
					uint32_t new_tail, bool single)
{
	if (!single) {
		unsigned spins = 0;

		/*
		 * acquire: pairs with the release store below by the previous reserver of this
		 * side, so that its slot accesses happen-before our release and reach the other
		 * side.
		 */
		while (atomic_load_explicit(&ht->tail, memory_order_acquire) != old) {
			if (++spins < SHADOW_RING_SPIN_BEFORE_YIELD) {
				shadow__cpu_relax();
			} else {
				spins = 0;
				sched_yield();
			}
		}
	}
	/*
	 * release: pairs with the other side's acquire load of this tail in its reserve step, so
	 * that our slot writes (enqueue) or reads (dequeue) are complete before it uses the slots.
	 */
	atomic_store_explicit(&ht->tail, new_tail, memory_order_release);
}

static inline uint32_t shadow__ring_do_enqueue(struct shadow__ring *r, void *const *objs,
					       uint32_t n, enum shadow__ring_mode mode, bool single)
{
	uint32_t old_head, new_head, free_entries, cons_tail;

	/*
	 * sp: relaxed, only this thread writes prod.head. mp: acquire, pairs with the acq_rel CAS
	 * of the producer that wrote it, so our cons.tail load below is at least as new as the one
	 * it checked against (DESIGN, "heads").
	 */
	old_head = atomic_load_explicit(&r->prod.head,
					single ? memory_order_relaxed : memory_order_acquire);
	do {
		/*
		 * acquire: pairs with the consumers' release store of cons.tail in
		 * shadow__ring_publish(), so their reads of the slots we reserve are done.
		 */
		cons_tail = atomic_load_explicit(&r->cons.tail, memory_order_acquire);
		/*
		 * Never wraps below 0: cons_tail is at least as new as the tail old_head was
		 * reserved on. Above capacity only if old_head is stale, and then the CAS fails.
		 */
		free_entries = r->capacity + cons_tail - old_head;
		if (shadow_unlikely(n > free_entries)) {
			if (mode == SHADOW_RING_BULK || free_entries == 0)
				return 0;
			n = free_entries;
		}
		new_head = old_head + n;
		if (single) {
			/* relaxed: only this thread reads prod.head. */
			atomic_store_explicit(&r->prod.head, new_head, memory_order_relaxed);
			break;
		}
		/*
		 * acq_rel on success: release pairs with the next producer's acquire load of
		 * prod.head (carrying our cons.tail read); acquire on failure: as for the load
		 * above.
		 */
	} while (!atomic_compare_exchange_weak_explicit(&r->prod.head, &old_head, new_head,
							memory_order_acq_rel,
							memory_order_acquire));

	for (uint32_t i = 0; i < n; i++)
		r->slots[(old_head + i) & r->mask] = objs[i];

	shadow__ring_publish(&r->prod, old_head, new_head, single);
	return n;
}

static inline uint32_t shadow__ring_do_dequeue(struct shadow__ring *r, void **objs, uint32_t n,
					       enum shadow__ring_mode mode, bool single)
{
	uint32_t old_head, new_head, entries, prod_tail;

	/*
	 * sc: relaxed, only this thread writes cons.head. mc: acquire, pairs with the acq_rel CAS
	 * of the consumer that wrote it, so our prod.tail load below is at least as new as the one
	 * it checked against (DESIGN, "heads").
	 */
	old_head = atomic_load_explicit(&r->cons.head,
					single ? memory_order_relaxed : memory_order_acquire);
	do {
		/*
		 * acquire: pairs with the producers' release store of prod.tail in
		 * shadow__ring_publish(), so the slot writes up to prod_tail are visible.
		 */
		prod_tail = atomic_load_explicit(&r->prod.tail, memory_order_acquire);
		entries = prod_tail - old_head;
		/*
		 * Never wraps below 0: prod_tail is at least as new as the tail old_head was
		 * reserved on. Too large only if old_head is stale, and then the CAS fails.
		 */
		if (shadow_unlikely(n > entries)) {
			if (mode == SHADOW_RING_BULK || entries == 0)
				return 0;
			n = entries;
		}
		new_head = old_head + n;
		if (single) {
			/* relaxed: only this thread reads cons.head. */
			atomic_store_explicit(&r->cons.head, new_head, memory_order_relaxed);
			break;
		}
		/*
		 * acq_rel on success: release pairs with the next consumer's acquire load of
		 * cons.head (carrying our prod.tail read); acquire on failure: as for the load
		 * above.
		 */
	} while (!atomic_compare_exchange_weak_explicit(&r->cons.head, &old_head, new_head,
							memory_order_acq_rel,
							memory_order_acquire));

	for (uint32_t i = 0; i < n; i++)
		objs[i] = r->slots[(old_head + i) & r->mask];

	shadow__ring_publish(&r->cons, old_head, new_head, single);
	return n;
}

/* Enqueue all n pointers or none; returns n or 0. One producer thread at a time. */
static inline uint32_t shadow__ring_sp_enqueue_bulk(struct shadow__ring *r, void *const *objs,
						    uint32_t n)
{
	return shadow__ring_do_enqueue(r, objs, n, SHADOW_RING_BULK, true);
}

/* Enqueue all n pointers or none; returns n or 0. Any number of producer threads. */
static inline uint32_t shadow__ring_mp_enqueue_bulk(struct shadow__ring *r, void *const *objs,
						    uint32_t n)
{
	return shadow__ring_do_enqueue(r, objs, n, SHADOW_RING_BULK, false);
}

/* Enqueue as many of the n pointers as fit; returns how many. One producer thread. */
static inline uint32_t shadow__ring_sp_enqueue_burst(struct shadow__ring *r, void *const *objs,
						     uint32_t n)
{
	return shadow__ring_do_enqueue(r, objs, n, SHADOW_RING_BURST, true);
}

/* Enqueue as many of the n pointers as fit; returns how many. Any number of producers. */
static inline uint32_t shadow__ring_mp_enqueue_burst(struct shadow__ring *r, void *const *objs,
						     uint32_t n)
{
	return shadow__ring_do_enqueue(r, objs, n, SHADOW_RING_BURST, false);
}

/* Dequeue exactly n pointers into objs, or none; returns n or 0. One consumer thread. */
static inline uint32_t shadow__ring_sc_dequeue_bulk(struct shadow__ring *r, void **objs,
						    uint32_t n)
{
	return shadow__ring_do_dequeue(r, objs, n, SHADOW_RING_BULK, true);
}

/* Dequeue exactly n pointers into objs, or none; returns n or 0. Any number of consumers. */
static inline uint32_t shadow__ring_mc_dequeue_bulk(struct shadow__ring *r, void **objs,
						    uint32_t n)
{
	return shadow__ring_do_dequeue(r, objs, n, SHADOW_RING_BULK, false);
}

/* Dequeue up to n pointers; returns how many. One consumer thread. */
static inline uint32_t shadow__ring_sc_dequeue_burst(struct shadow__ring *r, void **objs,
						     uint32_t n)
{
	return shadow__ring_do_dequeue(r, objs, n, SHADOW_RING_BURST, true);
}

/* Dequeue up to n pointers; returns how many. Any number of consumers. */
static inline uint32_t shadow__ring_mc_dequeue_burst(struct shadow__ring *r, void **objs,
						     uint32_t n)
{
	return shadow__ring_do_dequeue(r, objs, n, SHADOW_RING_BURST, false);
}

static inline uint32_t shadow__ring_capacity(const struct shadow__ring *r)
{
	return r->capacity;
}

/* Entries ready to dequeue: a snapshot, exact when the ring is quiescent. Any thread. */
static inline uint32_t shadow__ring_count(struct shadow__ring *r)
{
	/*
	 * acquire on cons.tail first: orders the prod.tail load after it, so prod.tail is at
	 * least the value that cons.tail had reached and the difference never goes negative.
	 */
	uint32_t cons_tail = atomic_load_explicit(&r->cons.tail, memory_order_acquire);
	uint32_t prod_tail = atomic_load_explicit(&r->prod.tail, memory_order_relaxed);
	uint32_t count = prod_tail - cons_tail;

	/* Producers may have lapped the consumers between the two loads. */
	return count > r->capacity ? r->capacity : count;
}

/* Free slots: capacity - count, a snapshot like shadow__ring_count(). */
static inline uint32_t shadow__ring_free_count(struct shadow__ring *r)
{
	return r->capacity - shadow__ring_count(r);
}

#endif /* SHADOW_CORE_RING_H */
