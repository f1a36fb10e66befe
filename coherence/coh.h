/* coh.h — page-ownership coherence between nodes: a home-based directory
 * protocol (write-invalidate, sequential consistency as in Li & Hudak's Ivy,
 * fixed distributed manager = the object's home) as a pure state machine.
 *
 * One `struct coh_node` is one node's half of the protocol: the local state
 * of every page it tracks and, for the pages it is home of, the directory.
 * Inputs are calls (acquire, evict, a received message, a peer's death,
 * forgetting a destroyed object's page); outputs are actions handed, in
 * order, to a callback the driver supplies at init: send a message, install
 * a received payload into a frame, change a page's local access, complete a
 * request. The machine does no I/O, reads no clock, never touches page
 * contents and allocates only in coh_init.
 *
 * The protocol, its states, transitions, invariants (I1-I4, D1-D8, R1-R3,
 * C1-C3, F1-F4) and the handling of crashes, evictions, forgotten pages and
 * crossing messages are in PROTOCOL.md beside this file;
 * tests/coherence/sim.c checks them. */
#ifndef CAPDSM_COH_H
#define CAPDSM_COH_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A node id meaning "none" (e.g. the owner of a page nobody writes). */
#define COH_NONE UINT32_MAX

/* Local state of a page at one node; also the mode a request asks for. */
enum coh_mode {
	COH_INVALID = 0, /* no access; a non-home frame may be discarded */
	COH_READ = 1,    /* read-only mapping, the frame is current */
	COH_WRITE = 2,   /* read-write mapping, this node is the owner */
};

/* Directory state of a page at its home. */
enum coh_dir_state {
	COH_UNCACHED = 0,  /* nobody holds it; the home frame is current */
	COH_SHARED = 1,    /* the copyset's READ copies = the home frame */
	COH_EXCLUSIVE = 2, /* the owner holds it WRITE; home frame stale */
};

enum coh_msg_type {
	/* requester -> home */
	COH_M_READ_REQ = 1, /* want READ */
	COH_M_WRITE_REQ,    /* want WRITE (miss, or upgrade from READ) */
	COH_M_EVICT,        /* dropped my READ copy */
	COH_M_WRITEBACK,    /* dropped my WRITE copy: payload = its data */
	COH_M_INV_ACK,      /* my READ copy is gone (answers INVALIDATE) */
	COH_M_FETCH_REPLY,  /* answers FETCH: payload = data, mode = kept */
	/* home -> requester */
	COH_M_DATA,       /* grant `mode` with payload = the page */
	COH_M_GRANT,      /* grant WRITE to a READ holder, no payload */
	COH_M_INVALIDATE, /* drop your READ copy, then INV_ACK */
	COH_M_FETCH,      /* owner: keep `mode` (READ or INVALID), reply data */
	COH_M_NACK,       /* your request failed with `err` */
	COH_M__COUNT
};

#define COH_F_PAYLOAD 0x1u /* a page of data travels beside this header */

/* A page: object id and page number inside the object. */
struct coh_page_id {
	uint64_t oid;
	uint64_t pgno;
};

/* A protocol message header as it crosses the wire: fixed-width fields in
 * host byte order (the transport converts, or wraps it in protobuf-c), pads
 * zero. A page payload, when COH_F_PAYLOAD is set, travels beside it. */
struct coh_msg {
	uint8_t type;  /* enum coh_msg_type */
	uint8_t mode;  /* enum coh_mode; DATA/GRANT: granted, FETCH*: kept */
	uint8_t flags; /* COH_F_PAYLOAD */
	uint8_t pad0;  /* zero */
	int32_t err;   /* NACK: a negative errno; otherwise 0 */
	uint32_t src;  /* sender node */
	uint32_t dst;  /* receiver node */
	uint32_t seq;  /* the requester's request number for this page */
	uint32_t pad1; /* zero */
	uint64_t oid;
	uint64_t pgno;
};
_Static_assert(sizeof(struct coh_msg) == 40, "coh_msg is a wire header");

enum coh_act_type {
	/* Send `msg` to msg.dst. With COH_F_PAYLOAD in msg.flags, attach this
	 * node's frame of `page` as it is now (before any later action). */
	COH_ACT_SEND = 1,
	/* Copy the payload of the message being received into this node's
	 * frame of `page`. Only during coh_recv. */
	COH_ACT_INSTALL,
	/* The page's local access is now `mode`: WRITE map read-write, READ
	 * write-protect every mapping, INVALID unmap. At a non-home node the
	 * frame may be discarded after INVALID; at the home the frame is the
	 * home copy and is always kept (`at_home`). */
	COH_ACT_ACCESS,
	/* The request for `mode` on `page` finished: err 0 = granted (the
	 * access is in place: resolve the fault, do the explicit read or
	 * write), or -EHOSTDOWN (the page's home died), -ENOENT / -EREMOTE
	 * (the home does not know the page, or forgot it: the object is
	 * gone; -ENOENT also when this node forgets it), -ENOBUFS (its
	 * queue is full). */
	COH_ACT_DONE,
};

/* One action. Valid only during the callback; the driver copies what it
 * keeps. */
struct coh_action {
	enum coh_act_type type;
	enum coh_mode mode; /* ACCESS: new local state; DONE: mode asked */
	enum coh_mode prev; /* ACCESS: the local state before (a page that
	                     * was INVALID is mapped nowhere: nothing to
	                     * write-protect) */
	int err;            /* DONE */
	bool at_home;       /* this node is the page's home */
	uint64_t cookie;    /* the driver's cookie given to coh_page_add;
	                     * 0 on the NACK of a page not tracked here */
	struct coh_page_id page;
	struct coh_msg msg; /* SEND */
};

/* Receives each action, in order. It must not call back into the same
 * coh_node (such calls fail with -EDEADLK); it may queue work for later. */
typedef void (*coh_act_fn)(void *ctx, const struct coh_action *a);

struct coh_config {
	uint32_t self;            /* this node's id, < max_nodes */
	uint32_t max_nodes;       /* ids are 0..max_nodes-1; sizes copysets */
	uint32_t max_pages;       /* pages this node tracks, home or not */
	uint32_t max_home_pages;  /* of those, pages it is the home of */
	uint32_t max_outstanding; /* this node's own requests in flight; the
	                           * same on every node of a cluster */
	uint32_t max_queued;      /* requests waiting at this home, all pages;
	                           * 0 = max_nodes * max_outstanding, which
	                           * never overflows */
	coh_act_fn act;
	void *act_ctx;
};

struct coh_stats {
	uint64_t msgs_in, msgs_out;
	uint64_t ignored_dead;    /* messages from a peer already down */
	uint64_t hits, requests;  /* coh_acquire satisfied at once / sent */
	uint64_t queued;          /* requests that waited at this home */
	uint64_t nacks;           /* NACKs this home sent */
	uint64_t evict_crossed;   /* EVICT that crossed an INVALIDATE */
	uint64_t fetch_crossed;   /* FETCH that found its page written back */
	uint64_t wb_as_reply;     /* WRITEBACK taken as a FETCH reply */
	uint64_t fetch_fallback;  /* FETCH finished from the home copy: the
	                           * owner died */
	uint64_t failed_hostdown; /* requests failed because the home died */
	uint64_t forgotten;       /* pages dropped by coh_page_forget */
	uint64_t ignored_unknown; /* EVICT, WRITEBACK, INV_ACK, FETCH_REPLY,
	                           * DATA, GRANT or NACK about a page not
	                           * tracked here (forgotten), dropped */
};

/* Snapshot of one page, for tests, the checker and metrics. */
struct coh_page_info {
	uint32_t home;
	enum coh_mode local;
	enum coh_mode pending; /* COH_INVALID: no request in flight */
	bool is_home;          /* the fields below are valid only at the home */
	enum coh_dir_state state;
	uint32_t owner;   /* COH_NONE unless EXCLUSIVE */
	uint32_t sharers; /* copyset size */
	bool busy;        /* a request is being served (transient) */
	uint32_t queued;  /* requests waiting behind it */
};

struct coh_node;

/* Allocates the node's fixed pools (the only allocation). Returns 0,
 * -EINVAL for a bad config or -ENOMEM. The caller frees with coh_free. */
int coh_init(struct coh_node **out, const struct coh_config *cfg);
void coh_free(struct coh_node *n);

/* Starts tracking a page homed at `home` (self or a peer), INVALID here and
 * UNCACHED at its home; `cookie` is echoed in every action on it. Returns
 * 0, -EINVAL, -EEXIST or -ENOSPC (page or directory pool full). */
int coh_page_add(struct coh_node *n, struct coh_page_id id, uint32_t home,
                 uint64_t cookie);

/* Stops tracking a page. Only when it is quiet here: INVALID, no request,
 * and at the home UNCACHED and not busy. Returns 0, -ENOENT or -EBUSY. */
int coh_page_remove(struct coh_node *n, struct coh_page_id id);

/* Stops tracking a page whatever its state, because its object is gone:
 * the page record (and, at the home, its directory entry and queued
 * requests) returns to the pools at once. In order, it emits
 * ACCESS(INVALID) if the page is mapped READ or WRITE here (unmap; the
 * driver then discards the frame itself, home copy included); at the home,
 * NACK(-ENOENT) to the requester being served and to each queued one, in
 * arrival order; DONE(-ENOENT) for this node's own request on the page, if
 * any. Nothing else is sent: invalidations and fetches under way are
 * abandoned, and their late answers (like a late DATA, GRANT or NACK here)
 * find no page and are dropped by coh_recv. Other nodes keep their records
 * and copies until they forget the page too; a request they send for it
 * meanwhile is NACKed -ENOENT by a home that has forgotten it, or waits
 * until it does (PROTOCOL.md, "Forgetting a page"). The daemon forgets a
 * destroyed object's pages on every node; a page id must never be added
 * again once forgotten (its old messages may still be in flight). O(1) plus
 * the queue. Returns 0, or -ENOENT (not tracked) or -EDEADLK (from an
 * action callback), which change nothing. */
int coh_page_forget(struct coh_node *n, struct coh_page_id id);

/* Asks for `mode` (READ or WRITE) on a page: a read miss, a write miss or
 * an upgrade. Returns 0 when the page is already held in `mode` or better
 * (a hit: nothing emitted); 1 when a request is under way and a DONE action
 * will finish it (it may already have been emitted, at the home); -EBUSY if
 * a weaker request is under way (retry after its DONE); -EHOSTDOWN if the
 * home is down; -EAGAIN at max_outstanding; -ENOBUFS if this home's queue
 * is full; -ENOENT, -EINVAL. A rejected call changes nothing. */
int coh_acquire(struct coh_node *n, struct coh_page_id id, enum coh_mode mode);

/* Drops this node's copy of a page (its frame pool is full): a READ copy is
 * dropped, a WRITE copy written back to the home. Returns 0; -ENODATA when
 * it holds nothing; -EBUSY while a request for it is under way; -ENOENT.
 * With the home down, a WRITE copy's data is gone with it. */
int coh_evict(struct coh_node *n, struct coh_page_id id);

/* Handles a message from a peer. Checks everything first: a malformed
 * header is -EBADMSG, one the protocol state cannot explain is -EPROTO;
 * these change nothing and emit nothing. A message about a page not
 * tracked here (never added, removed or forgotten) is not an error: a
 * request is NACKed -ENOENT (-EREMOTE if the page is tracked but homed
 * elsewhere) so the requester does not hang, an INVALIDATE is acked, and
 * anything else is dropped (counted in fetch_crossed for a FETCH,
 * ignored_unknown otherwise); returns 0. Messages from a peer already
 * declared down are ignored (returns 0). */
int coh_recv(struct coh_node *n, const struct coh_msg *m);

/* The failure detector declares `dead` down for good (crash-stop; it may
 * come back only under a new id). Every directory forgets it, every request
 * waiting on it finishes, requests homed at it fail with -EHOSTDOWN, and
 * its later messages are ignored. Returns 0 (also if already down) or
 * -EINVAL. O(pages tracked + queued requests). */
int coh_peer_down(struct coh_node *n, uint32_t dead);

/* Read-only queries: they may be called from an action callback (then they
 * see the transition half done). */
int coh_page_info(const struct coh_node *n, struct coh_page_id id,
                  struct coh_page_info *out);
/* 1 if `node` is in the page's copyset at this home, 0 if not, -ENOENT if
 * this node is not the page's home. */
int coh_dir_has_copy(const struct coh_node *n, struct coh_page_id id,
                     uint32_t node);
void coh_get_stats(const struct coh_node *n, struct coh_stats *out);
uint32_t coh_outstanding(const struct coh_node *n);
bool coh_peer_is_down(const struct coh_node *n, uint32_t node);

/* Names for logs. Never NULL. */
const char *coh_msg_name(unsigned type);
const char *coh_mode_name(unsigned mode);

#ifdef __cplusplus
}
#endif
#endif /* CAPDSM_COH_H */
