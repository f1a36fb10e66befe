/* lock.h — byte-range locks on data objects, granted in FIFO order.
 *
 * A pure state machine: it keeps the table and says which requests are
 * granted; the daemon does every reply. Issue order is arrival order per
 * object, and a request is granted only when no earlier request (granted or
 * waiting) on an overlapping range conflicts with it — so a writer is never
 * starved by a stream of readers (fairness as in Ivy's and Munin's lock
 * managers). Shared locks are compatible with each other, exclusive with
 * nothing.
 *
 * Invariants (asserted in lock.c):
 *  L1. No two granted locks on overlapping ranges of one object conflict.
 *  L2. A waiting request stays waiting only while an earlier overlapping
 *      conflicting request exists (no lost wake-up).
 *  L3. The table never holds more than `max_locks` records; a full table is
 *      -ENOSPC for the caller and changes nothing.
 */
#ifndef CAPDSM_COH_LOCK_H
#define CAPDSM_COH_LOCK_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct coh_locktab;

struct coh_lock_req {
	uint64_t oid;    /* data object */
	uint64_t offset; /* bytes */
	uint64_t length; /* bytes, > 0 */
	bool exclusive;
	uint32_t owner;  /* who holds it: a client session */
	uint64_t tag;    /* the owner's request id, echoed on grant */
};

/* Called for each waiting request that becomes granted. */
typedef void (*coh_lock_grant_fn)(void *ctx, const struct coh_lock_req *r);

/* Allocates a table of `max_locks` records (the only allocation). Returns
 * 0, -EINVAL or -ENOMEM. */
int coh_lock_init(struct coh_locktab **out, uint32_t max_locks);
void coh_lock_free(struct coh_locktab *lt);

/* Asks for a lock. Returns 0 if granted now, 1 if queued (the grant comes
 * later through a grant callback), -EAGAIN if `try_only` and it would wait,
 * -EDEADLK if the owner itself holds or waits for a conflicting range of
 * the object (it would wait for itself), -ENOSPC if the table is full,
 * -EINVAL for a zero or overflowing range. */
int coh_lock_acquire(struct coh_locktab *lt, const struct coh_lock_req *r,
                     bool try_only);

/* Releases the owner's granted lock on exactly [offset, offset+length) of
 * oid, then grants every waiter that may now go. Returns 0 or -ENOENT. */
int coh_lock_release(struct coh_locktab *lt, uint32_t owner, uint64_t oid,
                     uint64_t offset, uint64_t length, coh_lock_grant_fn fn,
                     void *ctx);

/* Drops every lock and waiting request of `owner` (a client gone), then
 * grants what may now go. Returns how many records were dropped. */
unsigned coh_lock_release_owner(struct coh_locktab *lt, uint32_t owner,
                                coh_lock_grant_fn fn, void *ctx);

/* As coh_lock_release_owner, for every owner with (owner & mask) == value:
 * all sessions of a node that died, when owners encode the node. */
unsigned coh_lock_release_owners(struct coh_locktab *lt, uint32_t mask,
                                 uint32_t value, coh_lock_grant_fn fn,
                                 void *ctx);

/* Drops every record on object `oid` (the object is gone); each waiting
 * request dropped is passed to `dropped` so its owner can be told. */
unsigned coh_lock_drop_object(struct coh_locktab *lt, uint64_t oid,
                              coh_lock_grant_fn dropped, void *ctx);

/* Records in use (granted + waiting), and of those granted. */
uint32_t coh_lock_used(const struct coh_locktab *lt);
uint32_t coh_lock_granted(const struct coh_locktab *lt);

#ifdef __cplusplus
}
#endif
#endif /* CAPDSM_COH_LOCK_H */
