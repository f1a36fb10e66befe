/* capdsm.h — libcapdsm, the client library of capdsm.
 *
 * A program connects to its node's daemon (capdsmd) over a Unix socket and
 * from then on names capabilities by slot index in its c-list there, as it
 * names files by descriptor. Data objects are used through explicit
 * read/write/lock (byte granularity) or mapped into the address space with
 * the `map` operation of a process capability (Donnelley and Shapiro,
 * cap-talk 2007): the daemon then serves the mapping's page faults through
 * userfaultfd, as an external pager.
 *
 * Every function returns 0 (or a byte count where it says so) or a negative
 * errno-style code; after a failure the daemon's one-line reason is in
 * capdsm_strerror(). A `struct capdsm` is one connection; it is not
 * thread-safe — use one per thread, or a lock around it.
 *
 * Error codes, beside those of caps/caps.h (-EBADF, -EKEYREVOKED, -EPERM,
 * -ENOTTY, -EDQUOT, -ENOSPC, -EACCES):
 *   -ERANGE       offset/length outside the object
 *   -EAGAIN       a try-lock would have to wait
 *   -ECONNRESET   the daemon closed the connection
 *   -EPROTO       the daemon sent something malformed
 */
#ifndef CAPDSM_CAPDSM_H
#define CAPDSM_CAPDSM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CAPDSM_API __attribute__((visibility("default")))

/* Rights; the same bits as caps/caps.h CAP_R_*. */
#define CAPDSM_R_READ (1u << 0)
#define CAPDSM_R_WRITE (1u << 1)
#define CAPDSM_R_LOCK (1u << 2)
#define CAPDSM_R_MAP (1u << 3)
#define CAPDSM_R_GRANT (1u << 4)
#define CAPDSM_R_ALL 0x1fu

/* The slot value that means "the bank this session is charged to". */
#define CAPDSM_SESSION_BANK UINT32_MAX

#define CAPDSM_REF_MAX 96 /* bytes for a sturdy reference, with its NUL */

/* Lock flags. */
#define CAPDSM_LOCK_SHARED 0u
#define CAPDSM_LOCK_EXCLUSIVE 1u
#define CAPDSM_LOCK_TRY 2u

struct capdsm;

struct capdsm_cap_info {
	uint64_t oid;
	uint32_t kind; /* 1 data object, 2 process, 3 space bank */
	uint32_t rights;
	uint32_t depth; /* derivations from the capability minted first */
	uint64_t size;  /* bytes, for a data object */
};

struct capdsm_bank_info {
	uint64_t oid, parent;
	uint64_t limit_bytes, limit_objects; /* 0: no limit of its own */
	uint64_t used_bytes, used_objects;   /* includes sub-banks */
	uint32_t children;
};

/* Connects to the daemon listening on `socket_path`. If `bank_ref` is not
 * NULL, the session (its slots, objects and mappings) is charged to that
 * bank instead of the node's root bank. Returns 0 and a connection the
 * caller closes with capdsm_close(), -ENOENT/-ECONNREFUSED (no daemon),
 * -EACCES, or an error of the daemon. */
CAPDSM_API int capdsm_connect(const char *socket_path, const char *bank_ref,
                              struct capdsm **out);
/* Adaptive waiting for replies, as the daemon's node.poll_us: after each
 * request, try for up to `us` microseconds to receive the reply without
 * sleeping (yielding the CPU between tries), then sleep in recv(). Waking
 * a sleeping thread costs tens of microseconds on virtual machines, so a
 * few hundred microseconds of polling makes short requests (a lock, a
 * remote 4 KiB read) several times faster, at the price of a busy CPU
 * while waiting. 0 (the default, or the environment's CAPDSM_POLL_US at
 * connect) sleeps at once. Returns 0, or -EINVAL for c NULL or us above
 * CAPDSM_POLL_US_MAX. The spin-then-block idea is that of adaptive
 * mutexes and of Linux's busy-poll sockets (SO_BUSY_POLL). */
#define CAPDSM_POLL_US_MAX 1000000u
CAPDSM_API int capdsm_set_poll_us(struct capdsm *c, uint32_t us);
/* Unmaps every mapping, closes the connection; the daemon releases this
 * session's locks, mappings and slots. Cannot fail. */
CAPDSM_API void capdsm_close(struct capdsm *c);
/* The daemon's reason for the last failure (or a local one); never NULL.
 * With c == NULL: why the last capdsm_connect() of this thread failed. */
CAPDSM_API const char *capdsm_strerror(const struct capdsm *c);
/* The slot holding this process's own process capability (map, grant). */
CAPDSM_API uint32_t capdsm_self(const struct capdsm *c);

/* ---- objects and capabilities ---- */

/* Creates a data object of `size` bytes (rounded up to pages for its
 * charge), paid by the bank in `bank_slot`; puts a capability with all
 * rights in *slot. */
CAPDSM_API int capdsm_object_create(struct capdsm *c, uint32_t bank_slot,
                                    uint64_t size, uint32_t *slot);
/* Destroys the object for everyone: needs a capability with every right
 * (-EPERM otherwise). Every capability to it is revoked, every mapping of
 * it loses its pages, and its charge returns to the bank that paid. */
CAPDSM_API int capdsm_object_destroy(struct capdsm *c, uint32_t slot);
CAPDSM_API int capdsm_cap_info(struct capdsm *c, uint32_t slot,
                               struct capdsm_cap_info *info);
/* A new slot with a subset of the rights; a wider set is -EPERM. */
CAPDSM_API int capdsm_restrict(struct capdsm *c, uint32_t slot,
                               uint32_t rights, uint32_t *new_slot);
/* Exports a sturdy reference that carries only `rights` (a subset, else
 * -EPERM). The slot needs the grant right; the reference need not have it,
 * so one made without grant can be used but not passed on. */
CAPDSM_API int capdsm_restrict_export(struct capdsm *c, uint32_t slot,
                                      uint32_t rights, char *ref, size_t len);
/* Revokes the capability and everything derived from it, on every path. */
CAPDSM_API int capdsm_revoke(struct capdsm *c, uint32_t slot);
CAPDSM_API int capdsm_drop(struct capdsm *c, uint32_t slot);
/* Sturdy references (text, at most CAPDSM_REF_MAX bytes with the NUL). */
CAPDSM_API int capdsm_export(struct capdsm *c, uint32_t slot, char *ref,
                             size_t len);
CAPDSM_API int capdsm_import(struct capdsm *c, const char *ref,
                             uint32_t *slot);
CAPDSM_API int capdsm_revoke_ref(struct capdsm *c, const char *ref);
/* Transfer through the daemon: sends the capability in `slot` (grant
 * right) with `rights` to the process named by the process capability in
 * `process_slot`; the receiver takes it with capdsm_recv(), which waits. */
CAPDSM_API int capdsm_send(struct capdsm *c, uint32_t slot,
                           uint32_t process_slot, uint32_t rights);
CAPDSM_API int capdsm_recv(struct capdsm *c, uint32_t *slot);

/* ---- explicit access ---- */

/* Reads `len` bytes at `offset` (bytes) into buf. Returns 0. Large requests
 * are split into frames of at most 16 MiB. */
CAPDSM_API int capdsm_read(struct capdsm *c, uint32_t slot, uint64_t offset,
                           void *buf, size_t len);
CAPDSM_API int capdsm_write(struct capdsm *c, uint32_t slot, uint64_t offset,
                            const void *buf, size_t len);
/* Locks a byte range, shared or exclusive (flags), waiting in FIFO order
 * unless CAPDSM_LOCK_TRY; released by capdsm_unlock with the same range or
 * when the connection closes or the process dies. */
CAPDSM_API int capdsm_lock(struct capdsm *c, uint32_t slot, uint64_t offset,
                           uint64_t len, unsigned flags);
CAPDSM_API int capdsm_unlock(struct capdsm *c, uint32_t slot,
                             uint64_t offset, uint64_t len);

/* ---- mapping ---- */

/* map(process, object, offset, length, rights): places bytes [offset,
 * offset+len) of the object (both page aligned) into this process with
 * `rights` (CAPDSM_R_READ, optionally | CAPDSM_R_WRITE); the process
 * capability must be this process's own. A store through a read-only
 * mapping faults (SIGSEGV) as one to read-only memory does. */
CAPDSM_API int capdsm_map(struct capdsm *c, uint32_t process_slot,
                          uint32_t slot, uint64_t offset, uint64_t len,
                          uint32_t rights, void **addr);
CAPDSM_API int capdsm_unmap(struct capdsm *c, void *addr);

/* ---- banks ---- */

CAPDSM_API int capdsm_bank_create(struct capdsm *c, uint32_t parent_slot,
                                  uint64_t limit_bytes, uint64_t limit_objects,
                                  uint32_t *slot);
CAPDSM_API int capdsm_bank_info(struct capdsm *c, uint32_t slot,
                                struct capdsm_bank_info *info);
CAPDSM_API int capdsm_bank_destroy(struct capdsm *c, uint32_t slot);

/* ---- counters ---- */

/* Calls fn(name, value, arg) for each of the daemon's counters. */
CAPDSM_API int capdsm_stats(struct capdsm *c,
                            void (*fn)(const char *name, uint64_t value,
                                       void *arg),
                            void *arg);

/* Rights as text: "read,write,lock,map,grant", "all". */
CAPDSM_API int capdsm_rights_parse(const char *s, uint32_t *rights);
CAPDSM_API int capdsm_rights_format(uint32_t rights, char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif /* CAPDSM_CAPDSM_H */
