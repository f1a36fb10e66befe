/* node.h — capdsmd's internal state, shared by its files.
 *
 * One thread runs everything (one epoll loop): client requests, userfaultfd
 * events and signals, so no state here needs a lock. Every table is an array
 * sized by the config at startup; nothing grows afterwards.
 *
 * Who owns what:
 *   - struct dobj  : a data object's memory — its memfd (read-write), a
 *     read-only reopening of it for read-only mappings, and the daemon's own
 *     mapping. Owned by the object's record in caps (priv pointer) and freed
 *     by on_destroy.
 *   - struct mapping: one map() of a range into one client, holding its own
 *     derived capability slot (so a revocation reaches it); owned by the
 *     session, charged to the session's bank.
 *   - struct session: one client connection: its c-list, process object,
 *     userfaultfd, frame reader and waits.
 */
#ifndef CAPDSM_NODE_H
#define CAPDSM_NODE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "caps.h"
#include "coh.h"
#include "config.h"
#include "lock.h"
#include "transport.h"
#include "wire.h"

#define NODE_NIL UINT32_MAX
#define NODE_INBOX 16      /* capabilities waiting for capdsm_recv */
#define NODE_ARENA (64u << 10) /* bytes for decoding one request */
#define NODE_IN (sizeof(struct wire_hdr) + WIRE_MSG_MAX)
#define NODE_HELLO_MS 5000    /* a connection that never says hello */
#define NODE_PARTIAL_MS 10000 /* a frame begun and never finished */

struct dobj {
	bool used;
	int memfd;     /* read-write */
	int rofd;      /* the same file, opened read-only */
	uint8_t *base; /* the daemon's mapping */
	uint64_t size; /* bytes asked for */
	uint32_t pages;
	uint64_t oid;  /* in this node's capability space */
	/* In a cluster: where the object lives. At its home, home == self and
	 * home_oid == oid; elsewhere this is a proxy whose frames cache the
	 * pages this node holds. gid names it in the coherence protocol. */
	uint32_t home;
	uint64_t home_oid;
	uint64_t gid;
	bool coherent;  /* its pages are registered with the coherence node */
	uint32_t rslot; /* proxy: a live remote slot at the home, for locks */
	uint32_t maps;  /* head of its mappings' list (mapping.next_obj), so
	                 * a page's mappings are found without a pool scan */
};

struct mapping {
	bool used, committed, revoked;
	uint32_t session;
	uint32_t next; /* the session's list */
	uint32_t dobj; /* its object's record, NODE_NIL once it is gone */
	uint32_t next_obj; /* the object's list */
	/* Sequential read-ahead (cluster.c): the page after the last read
	 * fault, the end of what was asked for ahead of it, and the page
	 * left unmapped in that window so that touching it faults and moves
	 * the window on (Linux's readahead marker). */
	uint64_t seq_next, pf_end, pf_mark;
	uint32_t pf_win; /* the next window, pages (0: start again) */
	uint64_t id;   /* (generation << 32) | index */
	uint64_t oid;
	uint32_t slot; /* derived capability the mapping holds */
	uint32_t rights;
	uint64_t offset, length, addr;
	uint64_t bank; /* pays CAP_CHARGE_MAPPING */
	int uffd;      /* the userfaultfd of this mapping alone, or -1 */
};

enum rd_state { RD_HDR, RD_PAYLOAD, RD_DRAIN };

struct session {
	bool used, hello;
	int fd;
	uint32_t gen;
	pid_t pid;
	uid_t uid;
	uint32_t clist;
	uint64_t proc_oid;
	uint32_t proc_slot;
	uint64_t bank;
	uint32_t maps; /* head of this session's mapping list */

	/* frame reader: header and message are read together into `in`
	 * (NODE_IN bytes), so a small request costs one receive */
	enum rd_state rd;
	struct wire_hdr hdr;
	uint8_t *in;
	uint32_t have; /* bytes in `in` */
	uint8_t *msg;  /* in + sizeof hdr: the message being handled */
	int rxfd;     /* a descriptor that came with the frame */
	uint8_t *arena;
	size_t arena_used;

	/* a write whose payload is arriving */
	uint64_t pl_id;      /* request id */
	uint64_t pl_oid;
	uint8_t *pl_dst;
	uint64_t pl_left;
	int pl_status;
	char pl_err[160];

	/* liveness: a session must say hello within NODE_HELLO_MS of opening
	 * and finish a frame it started within NODE_PARTIAL_MS. The sweep
	 * stamps stall_ms when it first sees a partial frame; any byte
	 * received clears it (no clock read on the request path). */
	uint64_t opened_ms, stall_ms;

	/* an explicit read or write under coherence, page by page through
	 * the staging buffer (clustered nodes only) */
	struct {
		bool active, write;
		uint64_t id;      /* the request */
		uint32_t dobj;    /* index into n->dobjs */
		uint64_t off, len, done;
		uint64_t wait_pg; /* page awaited, or UINT64_MAX for any DONE */
		uint64_t pf_end;  /* pages below it were asked for ahead */
		/* Where the session's last explicit read ended: a read that
		 * starts there reads ahead past its own end, into the next. */
		uint32_t ra_dobj;
		uint64_t ra_next;
	} op;
	uint8_t *stage;     /* NODE_STAGE bytes, clustered nodes only */

	/* a request answered by another node */
	bool remote_wait;
	uint64_t remote_id;   /* the client's request id */
	uint32_t remote_node;
	uint64_t lock_nodes[4]; /* nodes holding this session's locks */

	/* waits */
	bool lock_waiting;
	bool recv_waiting;
	uint64_t recv_id;
	uint32_t inbox[NODE_INBOX];
	unsigned in_head, in_count;
};

struct node_counters {
	uint64_t requests, errors, sessions_opened, sessions_refused;
	uint64_t faults_missing, faults_minor, faults_wp, faults_refused;
	uint64_t bytes_read, bytes_written, mappings_revoked;
	uint64_t locks_granted, locks_waited;
	uint64_t prefetch_asked;  /* pages asked for ahead of a sequential
	                             reader (clustered nodes) */
	uint64_t prefetch_mapped; /* of those, mapped into the reader before
	                             it touched them */
};

/* A capability imported from another node: its remote slot there and the
 * root of what this node derived from it, in the daemon's own c-list. */
struct rimport {
	bool used;
	uint32_t home;
	uint32_t rslot;
	uint32_t root;  /* slot in n->imports_clist */
	uint32_t dobj;  /* proxy, for a data object */
};

/* A page fault waiting for the coherence protocol. */
struct parked {
	bool used;
	uint32_t map;    /* mapping index */
	uint64_t map_id; /* so a reused mapping record is not mistaken */
	uint32_t dobj;
	uint64_t pgno;   /* UINT64_MAX: retry on any DONE */
	uint64_t addr, flags;
	uint32_t tid;
};

#define NODE_STAGE (256u << 10) /* bytes per explicit request, clustered */
#define NODE_PREMAP_Q 128u      /* read-ahead pages mapped per batch */
#define NODE_RA_START 16u       /* a mapping's first read-ahead window */

struct node {
	struct node_config cfg;
	struct cap_space *cs;
	struct coh_locktab *locks;
	struct session *sessions;
	struct dobj *dobjs;
	struct mapping *maps;
	uint32_t nmaps_used, nobjs_used, nsessions_used;
	uint32_t frames_used;
	int epfd, lfd, sigfd;
	bool stopping;
	uint8_t *out;  /* packed replies, WIRE_MSG_MAX */
	struct node_counters ct;

	/* cluster (cfg.nodes > 1) */
	bool clustered;
	struct tp *tp;
	struct coh_node *coh;
	uint32_t outstanding_max; /* the coherence node's max_outstanding */
	uint32_t remote_waits;    /* sessions awaiting another node's answer */
	bool release_deferred;    /* imports to release once no request of
	                             this node is in flight */
	/* read-ahead pages to map at the end of this round (cluster.c) */
	struct premap_req {
		uint32_t map, dobj;
		uint64_t map_id, pgno;
	} pmq[NODE_PREMAP_Q];
	uint32_t npmq;
	uint32_t imports_clist;
	struct rimport *imports;  /* cfg.sturdy records */
	uint32_t *peer_clist;     /* per node: what it imported from us */
	struct parked *parked;    /* cfg.mappings * 4 records */
	uint32_t nparked;
	uint32_t parked_hi;       /* no record at or past it is used: scans
	                           * stop there (faults park first-free) */
	struct { struct coh_page_id pg; int err; uint64_t cookie; } *doneq;
	uint32_t ndone, doneq_max;
	struct { uint32_t dobj; uint64_t pgno; } *ring; /* held remote pages */
	uint32_t ring_head, ring_count, ring_max;
	uint32_t remote_frames;   /* remote pages held now */
	const void *rx_payload;   /* the payload of the message in coh_recv */
	size_t rx_plen;
	uint8_t *peer_out;        /* packed peer messages */
	/* Coherence messages wait here until the coherence call that made
	 * them has returned and its later actions (unmapping a page this
	 * node gave away) are done: a peer must not act on a reply before
	 * the sender stopped using the page. Payloads are copied at SEND. */
	struct node_outmsg {
		uint32_t dst;
		uint32_t hdrlen;
		bool payload;
		uint8_t hdr[TP_MAX_HDR];
		uint8_t page[4096];
	} *outq;
	uint32_t noutq, outq_max;
	uint64_t peer_ct_in, peer_ct_out, peer_ct_bad;
};

/* Lock owners: a local session is its index; a session of another node is
 * NODE_REMOTE_OWNER | node << 16 | session. */
#define NODE_REMOTE_OWNER 0x80000000u

/* epoll tags */
enum { EV_LISTEN = 1, EV_SIGNAL = 2, EV_CLIENT = 3, EV_UFFD = 4, EV_PEER = 5 };

/* requests.c */
void node_on_frame(struct node *n, struct session *s);
void node_on_payload_done(struct node *n, struct session *s);
void node_session_release(struct node *n, struct session *s);
void node_on_destroy(void *ctx, uint64_t oid, enum cap_kind kind, void *priv);
int node_send_reply(struct node *n, struct session *s, void *reply,
                    const void *payload, uint32_t payload_len, int fd);
void node_send_error(struct node *n, struct session *s, uint64_t id,
                     int status, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
void node_check_mappings(struct node *n);

/* pager.c */
void node_pager_events(struct node *n, struct mapping *m);
/* Write-protects a mapping that lost its capability. */
void node_pager_revoke(struct node *n, struct session *s, struct mapping *m);

/* cluster.c */
int node_cluster_init(struct node *n, char *err, size_t errlen);
void node_cluster_fini(struct node *n);
void node_cluster_events(struct node *n);
/* Registers a new object's pages at its home. */
int node_cluster_object(struct node *n, struct dobj *d);
/* Before a data object is destroyed: forget its pages. */
void node_cluster_forget(struct node *n, struct dobj *d);
/* A fault on a coherent object: resolves it now, or parks it. */
void node_cluster_fault(struct node *n, struct mapping *m, uint64_t addr,
                        uint64_t flags, uint32_t tid);
/* Starts an explicit read or write on a coherent object (the write's
 * payload is already in s->stage). */
void node_cluster_rw(struct node *n, struct session *s);
/* Imports a reference homed elsewhere; the reply comes later. */
void node_cluster_import(struct node *n, struct session *s, uint64_t id,
                         const char *ref, uint32_t home);
/* Lock or unlock on a proxy object, at its home. */
void node_cluster_lock(struct node *n, struct session *s, uint64_t id,
                       struct dobj *d, uint64_t off, uint64_t len,
                       bool excl, bool try_only, bool unlock);
/* After revocations: tell importers what they lost. */
void node_cluster_check_exports(struct node *n);
void node_cluster_session_closed(struct node *n, struct session *s);
/* Lets go of every import nothing is derived from any more (its sessions
 * closed or dropped it): the root here and, by a Drop, the home's slot for
 * this node. Without it each import would hold records on both nodes for
 * good. */
void node_cluster_release_imports(struct node *n);
void node_cluster_mapping_freed(struct node *n, struct mapping *m);
/* Whether this node awaits an answer from another node: a coherence
 * request in flight, or a session's remote import or lock. */
bool node_cluster_awaiting(const struct node *n);
/* At the end of each round of the event loop: work deferred to it (the
 * read-ahead pages that arrived, mapped in runs). */
void node_cluster_idle(struct node *n);
void node_lock_granted(void *ctx, const struct coh_lock_req *r);
/* Internal to node/: resumes what waited for coherence DONEs; answers a
 * remote owner's lock grant. */
void node__drain(struct node *n);
void node__flush(struct node *n);
void node__remote_granted(struct node *n, const struct coh_lock_req *r);

/* requests.c, for cluster.c */
void node__reply_data(struct node *n, struct session *s, uint64_t id,
                      const void *payload, uint32_t len);
void node__reply_slot(struct node *n, struct session *s, uint64_t id,
                      uint32_t slot);
/* The proxy of another node's object (found or made). NULL with *rc. */
struct dobj *node__proxy(struct node *n, uint32_t home, uint64_t home_oid,
                         uint64_t size, int *rc);

/* pager.c, for the cluster */
int node_pager_resolve(struct node *n, struct mapping *m, uint64_t addr,
                       uint64_t flags, bool read_only_page);
void node_pager_zap_page(struct node *n, struct dobj *d, uint64_t pgno,
                         bool keep);
void node_pager_protect_page(struct node *n, struct dobj *d, uint64_t pgno);
void node_refuse_fault(struct node *n, struct session *s, uint32_t tid,
                       uint64_t addr, const char *why);
/* Maps `pages` neighbouring pages the node holds, present in the object's
 * file, into a mapping before they are touched (read-ahead), from addr:
 * write-protected when read_only_page. Pages mapped already are left as
 * they are. 0, or a negative errno from the ioctls. */
int node_pager_premap(struct node *n, struct mapping *m, uint64_t addr,
                      uint32_t pages, bool read_only_page);

/* capdsmd.c */
int node_watch_uffd(struct node *n, struct mapping *m);
void node_unwatch(struct node *n, int fd);
void node_close_session(struct node *n, struct session *s, const char *why);

static inline uint32_t node_sid(const struct node *n, const struct session *s)
{
	return (uint32_t)(s - n->sessions);
}

#endif /* CAPDSM_NODE_H */
