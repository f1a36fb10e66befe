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
#include "config.h"
#include "lock.h"
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
	uint64_t oid;
};

struct mapping {
	bool used, committed, revoked;
	uint32_t session;
	uint32_t next; /* the session's list */
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
};

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
};

/* epoll tags */
enum { EV_LISTEN = 1, EV_SIGNAL = 2, EV_CLIENT = 3, EV_UFFD = 4 };

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

/* capdsmd.c */
int node_watch_uffd(struct node *n, struct mapping *m);
void node_unwatch(struct node *n, int fd);
void node_close_session(struct node *n, struct session *s, const char *why);

static inline uint32_t node_sid(const struct node *n, const struct session *s)
{
	return (uint32_t)(s - n->sessions);
}

#endif /* CAPDSM_NODE_H */
