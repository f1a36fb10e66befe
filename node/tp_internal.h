/* tp_internal.h — what the implementations of transport.h share: the
 * vtable tp.c dispatches through, the common head of struct tp (peers'
 * incarnations, counters, the timer and kick descriptors), the 32-byte wire
 * header, and the failure detector of tp_common.c. Internal to
 * capdsm_transport: every name here is tp__ or W_.
 *
 * An implementation's private struct begins with a struct tp, which begins
 * with its ops pointer; tp.c only ever sees the struct tp.
 */
#ifndef CAPDSM_NODE_TP_INTERNAL_H
#define CAPDSM_NODE_TP_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "transport.h"

/* ---- the transport header, common to every implementation ----
 *
 * Little-endian, 32 bytes, in front of every message:
 *
 *   off size field
 *     0    1 version   W_VERSION
 *     1    1 type      W_DATA or W_HB (heartbeat: nothing after the header)
 *     2    1 flags     W_HB: W_HB_DEAD = "your incarnation dst_inc is dead
 *                      to me"; otherwise 0
 *     3    1 reserved  0
 *     4    4 src       sender's node id
 *     8    8 src_inc   sender's incarnation (never 0)
 *    16    8 dst_inc   receiver's incarnation as the sender knows it (0:
 *                      unknown; a data message always names it)
 *    24    8 seq       W_DATA: its number in the channel (src_inc ->
 *                      dst_inc), from 0; W_HB: the number the sender's
 *                      next data message in that channel will carry
 */
enum {
	W_LEN = 32,
	W_VERSION = 1,
	W_DATA = 1,
	W_HB = 2,
	W_HB_DEAD = 1,
};

struct tp__wire {
	uint8_t version, type, flags, reserved;
	uint32_t src;
	uint64_t src_inc, dst_inc, seq;
};
_Static_assert(sizeof(struct tp__wire) == W_LEN, "the wire header is 32 bytes");

void tp__wire_put(uint8_t *b, const struct tp__wire *w);
void tp__wire_get(const uint8_t *b, struct tp__wire *w);
void tp__put32(uint8_t *b, uint32_t v);
uint32_t tp__get32(const uint8_t *b);

/* ---- the vtable ---- */

struct tp_ops {
	const char *name;
	/* Releases everything, the common part too (tp__fini). */
	void (*close)(struct tp *t);
	int (*poll)(struct tp *t, const struct tp_handlers *h, void *ctx);
	/* Sends a data message; tp.c has checked the arguments and that the
	 * peer is UP (tp__send_check). On success the implementation calls
	 * tp__sent, on -EAGAIN for lack of room tp__send_full. */
	int (*send)(struct tp *t, uint32_t peer, const void *hdr,
	            size_t hdrlen, const void *payload, size_t plen);
	/* Queues a heartbeat (W_LEN bytes, nothing after it). Returns 0,
	 * -EAGAIN if the peer's queue is full, -ENOTCONN if there is no
	 * connection to queue it on now. */
	int (*send_hb)(struct tp *t, uint32_t peer, const uint8_t *hb);
	/* The implementation's timed work (redials, handshake deadlines) at
	 * `now`: returns the callbacks it made and lowers *next to its
	 * earliest future deadline. */
	int (*timer)(struct tp *t, const struct tp_handlers *h, void *ctx,
	             uint64_t now, uint64_t *next);
	/* true if a tp_send to peer of the largest message would find room
	 * (on_writable is then due to a peer that saw -EAGAIN). */
	bool (*writable)(struct tp *t, uint32_t peer);
	/* tp_cork: hold (on) or release (off) sends; NULL if the
	 * implementation does not batch (tp.c then does nothing). */
	void (*cork)(struct tp *t, bool on);
};

/* ---- the common head of every struct tp ---- */

/* One peer as the failure detector sees it (T3). */
struct tp__peer {
	enum tp_peer_state state;
	uint64_t inc;         /* current incarnation, or the dead one */
	uint64_t cand;        /* newest incarnation heard of (JOINING) */
	uint64_t send_seq;    /* next seq in channel (our inc -> inc) */
	uint64_t recv_seq;    /* next seq expected in channel (inc -> ours) */
	uint64_t last_us;     /* when anything last arrived from it */
	uint64_t sent, received;
	enum tp_down_reason notify; /* a DOWN tp_send found, told by tp_poll */
	bool want_writable;   /* tp_send said -EAGAIN; on_writable pending */
	bool connected;       /* our outgoing connection finished a handshake */
	uint8_t key[32];      /* its X25519 (CURVE) public key, if keyed */
	char address[TP_ADDR_LEN];
};

struct tp__auth_slot {
	uint64_t hash, last_us;
};

#define TP__AUTH_SLOTS 8

struct tp {
	const struct tp_ops *ops; /* first: tp.c dispatches through it */
	int epfd, tfd, kfd;
	struct epoll_event *evs;  /* room for nevs events of epfd */
	int nevs;
	uint32_t self, n;
	bool plaintext;
	bool rx_more;         /* messages may wait unread: drain, and judge
	                         no one's silence yet */
	bool kicked;          /* kfd raised */
	bool notify_pending;  /* some peer has a pending notify */
	uint64_t inc;
	uint64_t hb_us, dead_us;
	uint64_t next_hb;     /* when heartbeats are due */
	uint64_t deadline;    /* earliest timed work (F3) */
	uint64_t last_poll;   /* when tp_poll last ran */
	uint32_t max_payload, qlimit, budget;
	struct tp_stats st;
	struct tp__auth_slot auth[TP__AUTH_SLOTS];
	struct tp__peer *p;   /* n entries, indexed by id */
	uint8_t secret[32], public[32]; /* ours, if keyed */
	char desc[160];       /* tp_describe: what the implementation chose */
};

/* What an inner-epoll event is: kind << 48 | generation << 32 | index.
 * The generation (16 bits) lets an implementation ignore an event that
 * the same epoll_wait returned for a descriptor it has since replaced. */
enum { TP__K_TIMER = 1, TP__K_KICK = 2, TP__K_IMPL = 8 };

static inline uint64_t tp__tag(uint32_t kind, uint32_t gen, uint32_t idx)
{
	return (uint64_t)kind << 48 | (uint64_t)(gen & 0xffff) << 32 | idx;
}

struct tp__event {
	uint32_t kind, idx, events;
	uint16_t gen;
};

/* Decodes t->evs[i] (an event of t->epfd). */
static inline struct tp__event tp__event(const struct epoll_event *ev)
{
	return (struct tp__event){ .kind = (uint32_t)(ev->data.u64 >> 48),
		                   .gen = (uint16_t)(ev->data.u64 >> 32),
		                   .idx = (uint32_t)ev->data.u64,
		                   .events = ev->events };
}

/* Origin arguments of tp__receive besides a node id. */
#define TP__ANYONE UINT32_MAX        /* plaintext: the header's claim */
#define TP__NOBODY (UINT32_MAX - 1)  /* no authenticated origin: spoofed */

enum tp__rx {
	TP__RX_OK,        /* delivered, or a heartbeat taken into account */
	TP__RX_STALE,     /* counted in drop_stale */
	TP__RX_MALFORMED, /* counted in drop_malformed */
	TP__RX_SPOOFED,   /* counted in drop_spoofed */
	TP__RX_OVERSIZE,  /* counted in drop_oversize */
};

/* ---- tp_common.c ---- */

uint64_t tp__now_us(void);
int tp__fail(char *err, size_t errlen, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* Accepts "tcp://A.B.C.D:PORT" and "tcp://[v6]:PORT" with a numeric
 * address and a port 1..65535. Sets *v6 and, if sa is not NULL, the
 * socket address (*salen its length). Returns 0 or -EINVAL. */
int tp__parse_address(const char *a, bool *v6, struct sockaddr_storage *sa,
                      unsigned *salen);
/* Decodes a 40-character Z85 key into 32 bytes. Returns 0 or -EINVAL. */
int tp__decode_key(const char *z85, uint8_t out[32]);
/* Checks the whole config before anything is created (both kinds). */
int tp__check_config(const struct tp_config *c, char *err, size_t errlen);
/* Fills the common head from a checked config and creates epfd (with the
 * timerfd and the kick eventfd in it). nevs: events one epoll_wait may
 * return. On failure the caller's close releases what was made. */
int tp__init(struct tp *t, const struct tp_ops *ops,
             const struct tp_config *cfg, int nevs, char *err, size_t errlen);
/* Arms the first tp_poll: drain, heartbeats at once. */
void tp__start(struct tp *t);
/* Releases the common head (descriptors, peers) and wipes the keys. */
void tp__fini(struct tp *t);
int tp__ep_add(struct tp *t, int fd, uint32_t events, uint64_t tag);
void tp__arm(struct tp *t, uint64_t at_us);
void tp__kick(struct tp *t);
/* Lowers t->deadline to at_us (and rearms) if that is sooner (F3). */
void tp__wake_at(struct tp *t, uint64_t at_us);

int tp__auth_fail(struct tp *t, const struct tp_handlers *h, void *ctx,
                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));
int tp__peer_down(struct tp *t, const struct tp_handlers *h, void *ctx,
                  uint32_t id, enum tp_down_reason why);
void tp__send_hb(struct tp *t, uint32_t id);
/* Handles one received message: b is its W_LEN-byte header, hdr/hdrlen
 * the caller's header after it, payload/plen the payload; has_payload
 * says a payload part was present at all (a heartbeat must have none).
 * origin is the authenticated sender, TP__ANYONE or TP__NOBODY. Decodes
 * and checks everything, applies the incarnation rules, delivers data in
 * order (F1) and counts drops. Adds callbacks made to *events. */
enum tp__rx tp__receive(struct tp *t, const struct tp_handlers *h, void *ctx,
                        const uint8_t *b, const uint8_t *hdr, size_t hdrlen,
                        const void *payload, size_t plen, bool has_payload,
                        uint32_t origin, uint64_t now, int *events);

/* tp_send's argument and state checks; 0 if the implementation may try. */
int tp__send_check(struct tp *t, uint32_t peer, const void *hdr,
                   size_t hdrlen, const void *payload, size_t plen);
/* Accounting of an accepted data message (next seq, counters). */
void tp__sent(struct tp *t, uint32_t peer, size_t bytes);
/* Accounting of a refusal for lack of room: on_writable becomes due. */
void tp__send_full(struct tp *t, uint32_t peer);
/* The channel's state is unknown after a failed send: crash-stop the
 * peer (T1), reported by the next tp_poll. */
void tp__notify_down(struct tp *t, uint32_t peer, enum tp_down_reason why);

/* The common first and last steps of every tp_poll: stall detection (F4)
 * and the kick; then pending DOWN notices, on_writable, and timed work.
 * poll_begin returns 0 or -errno, poll_end the callbacks it made. */
int tp__poll_begin(struct tp *t, uint64_t now);
int tp__poll_end(struct tp *t, const struct tp_handlers *h, void *ctx,
                 uint64_t now);
/* Reads the timerfd (TP__K_TIMER) or the kick (TP__K_KICK) reported
 * readable, so it stops being so. Returns 0 or -errno. */
int tp__clear(struct tp *t, uint32_t kind);

/* ---- the implementations ---- */

int tp__zmq_open(struct tp **out, const struct tp_config *cfg, char *err,
                 size_t errlen);
int tp__tcp_open(struct tp **out, const struct tp_config *cfg, char *err,
                 size_t errlen);

#endif
