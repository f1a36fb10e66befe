/* tp_zmq.c — the transport of transport.h over ZeroMQ 4.3 with CURVE.
 *
 * Sockets, per node: one PULL bound to its own address receives from every
 * peer; one PUSH per peer, connected to that peer's address, sends to it.
 * So each ordered pair of nodes has exactly one TCP connection and one
 * ZeroMQ pipe, which is FIFO (T1). With CURVE the PULL is a CURVE server
 * and each PUSH a CURVE client holding the peer's public key; a ZAP handler
 * (RFC 27: a REP socket on inproc://zeromq.zap.01 in this node's own
 * context, served inside tp_poll — no thread) admits only the membership's
 * public keys and names each connection's node id as its ZAP User-Id,
 * which libzmq then attaches to every message of that connection (T2).
 * The ZAP socket is bound before the PULL: libzmq 4.3 admits every CURVE
 * client when no handler is bound (curve_server.cpp, "Stonehouse").
 *
 * Choices: liveness comes from our own heartbeats, not ZMTP's
 * (ZMQ_HEARTBEAT_IVL/TTL/TIMEOUT): ZMTP PINGs are answered by the peer's
 * I/O thread even while its application is stuck, and they cannot carry
 * incarnations; a ZMTP timeout would only cut a silent TCP connection,
 * losing what sat in it. ZMQ_IMMEDIATE stays 0 (see open_push). Each node
 * has its own zmq context, because the ZAP endpoint is per context.
 *
 * Wire format: frame 1 is a 32-byte transport header followed by the
 * caller's header; frame 2, only if the payload is not empty, is the
 * payload. Little-endian:
 *
 *   off size field
 *     0    1 version   W_VERSION
 *     1    1 type      W_DATA or W_HB (heartbeat: exactly 32 bytes, 1 frame)
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
 *
 * Peer states (per peer, on the receiving and the sending side alike):
 *
 *        a message of it names our incarnation (both directions work)
 *   JOINING ------------------------------------------------------> UP
 *      ^   ^                                                         |
 *      |   +------- a newer incarnation speaks (RESTARTED) ----------+
 *      |                                                             |
 *      +-- a newer incarnation speaks -- DOWN <-- timeout, evicted, -+
 *                                                 broken
 *
 *   step                                       function
 *   JOINING -> UP                              peer_seen -> peer_up
 *   UP -> DOWN, nothing for dead_after_ms      timer_work -> peer_down
 *   UP -> (DOWN) -> JOINING, newer incarnation peer_seen
 *   DOWN -> JOINING, newer incarnation         peer_seen
 *   UP -> DOWN, W_HB_DEAD for our incarnation  handle_hb
 *   UP -> DOWN, seq gap in data or heartbeat   handle_hb, handle_data
 *
 * Invariants (besides T1-T5 of transport.h):
 *  Z1. A data message is accepted only from an UP peer whose incarnation
 *      sent it, addressed to our incarnation, with seq == recv_seq; each
 *      acceptance increments recv_seq. Heartbeats carry the sender's
 *      send_seq, and travel in the same pipe, so a heartbeat naming a seq
 *      other than recv_seq proves a loss (libzmq drops what sat in a TCP
 *      connection's buffers when it reconnects) -> TP_DOWN_BROKEN.
 *  Z2. tp_send sends only to an UP peer, with its known incarnation: data
 *      for a former incarnation still queued in the pipe reaches the new
 *      one and is dropped there as stale, never delivered.
 *  Z3. Every descriptor in the inner epoll that is reported readable is
 *      processed in that tp_poll (ZMQ_EVENTS, recv to EAGAIN, read), so
 *      tp_fd never stays readable with nothing to do; the PULL socket is
 *      drained to EAGAIN or, at poll_budget, the kick eventfd is raised.
 *  Z4. The timerfd is armed at or before the earliest of the next
 *      heartbeat, every UP peer's death deadline and every redial.
 *  Z6. Messages move through ZeroMQ's I/O thread on both sides (a round
 *      trip wakes six threads where raw TCP wakes two), so a waiting
 *      caller that spins must yield the core between polls.
 *  Z5. A peer is declared dead only for silence observed while this node
 *      itself was running: a gap of more than 2 * heartbeat_ms between
 *      two tp_poll calls restarts every UP peer's dead_after window.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "transport.h"

enum {
	W_LEN = 32,
	W_VERSION = 1,
	W_DATA = 1,
	W_HB = 2,
	W_HB_DEAD = 1,
};

struct wire {
	uint8_t version, type, flags, reserved;
	uint32_t src;
	uint64_t src_inc, dst_inc, seq;
};
_Static_assert(sizeof(struct wire) == W_LEN, "the wire header is 32 bytes");

/* What an inner-epoll event is: kind << 32 | peer index. */
enum tag_kind { K_PULL = 1, K_ZAP, K_PULLMON, K_PUSH, K_PUSHMON, K_TIMER,
                K_KICK };

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define ZAP_DOMAIN "capdsm"
#define RECONNECT_IVL_MS 100
#define REDIAL_US 1000000u /* after a handshake refusal, see mon_drain */
#define AUTH_REPEAT_US 1000000u
#define AUTH_SLOTS 8

struct peer {
	void *push;           /* PUSH connected to the peer; NULL for self */
	void *mon;            /* PAIR receiving the PUSH's monitor events */
	enum tp_peer_state state;
	uint64_t inc;         /* current incarnation, or the dead one */
	uint64_t cand;        /* newest incarnation heard of (JOINING) */
	uint64_t send_seq;    /* next seq in channel (our inc -> inc) */
	uint64_t recv_seq;    /* next seq expected in channel (inc -> ours) */
	uint64_t last_us;     /* when anything last arrived from it */
	uint64_t sent, received;
	enum tp_down_reason notify; /* a DOWN tp_send found, told by tp_poll */
	bool want_writable;   /* tp_send said -EAGAIN; on_writable pending */
	bool connected;       /* the PUSH finished a handshake */
	uint64_t redial_at;   /* recreate the PUSH then (0: no need) */
	uint32_t gen;         /* PUSHes created, names its monitor */
	uint8_t key[32];      /* its CURVE public key */
	char uid[12];         /* its ZAP User-Id: the decimal id */
	char address[TP_ADDR_LEN];
};

struct auth_slot {
	uint64_t hash, last_us;
};

struct tp {
	void *zctx;
	void *pull, *pullmon, *zap;
	int epfd, tfd, kfd;
	struct epoll_event *evs;
	int nevs;
	uint32_t self, n;
	bool plaintext;
	bool pull_more;       /* PULL may hold messages: drain it */
	bool kicked;          /* kfd raised */
	bool notify_pending;  /* some peer has a pending notify */
	uint64_t inc;
	uint64_t hb_us, dead_us;
	uint64_t next_hb;     /* when heartbeats are due */
	uint64_t deadline;    /* earliest timed work (Z4) */
	uint64_t last_poll;   /* when tp_poll last ran */
	uint32_t max_payload, qlimit, budget;
	struct tp_stats st;
	struct auth_slot auth[AUTH_SLOTS];
	struct peer *p;
	uint8_t secret[32], public[32];
	char secret_z85[TP_KEY_LEN + 1], public_z85[TP_KEY_LEN + 1];
};

/* ---- small helpers ---- */

static uint64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int fail(char *err, size_t errlen, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
	if (err && errlen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return code;
}

static void put32(uint8_t *b, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		b[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *b, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		b[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *b)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--)
		v = v << 8 | b[i];
	return v;
}

static uint64_t get64(const uint8_t *b)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | b[i];
	return v;
}

static void wire_put(uint8_t *b, const struct wire *w)
{
	b[0] = w->version;
	b[1] = w->type;
	b[2] = w->flags;
	b[3] = 0;
	put32(b + 4, w->src);
	put64(b + 8, w->src_inc);
	put64(b + 16, w->dst_inc);
	put64(b + 24, w->seq);
}

static void wire_get(const uint8_t *b, struct wire *w)
{
	w->version = b[0];
	w->type = b[1];
	w->flags = b[2];
	w->reserved = b[3];
	w->src = get32(b + 4);
	w->src_inc = get64(b + 8);
	w->dst_inc = get64(b + 16);
	w->seq = get64(b + 24);
}

static uint64_t fnv1a(const char *s)
{
	uint64_t h = 1469598103934665603ull;
	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 1099511628211ull;
	return h;
}

/* Accepts "tcp://A.B.C.D:PORT" and "tcp://[v6]:PORT" with a numeric
 * address and a port 1..65535; sets *v6. Returns 0 or -EINVAL. */
static int check_address(const char *a, bool *v6)
{
	char host[INET6_ADDRSTRLEN + 2];
	const char *h, *colon, *end;
	unsigned char buf[sizeof(struct in6_addr)];

	if (strnlen(a, TP_ADDR_LEN) >= TP_ADDR_LEN ||
	    strncmp(a, "tcp://", 6) != 0)
		return -EINVAL;
	h = a + 6;
	colon = strrchr(h, ':');
	if (!colon || colon == h)
		return -EINVAL;
	*v6 = h[0] == '[';
	if (*v6) {
		if (colon[-1] != ']' || colon - h - 2 <= 0 ||
		    (size_t)(colon - h - 2) >= sizeof host)
			return -EINVAL;
		memcpy(host, h + 1, (size_t)(colon - h - 2));
		host[colon - h - 2] = 0;
	} else {
		if ((size_t)(colon - h) >= sizeof host)
			return -EINVAL;
		memcpy(host, h, (size_t)(colon - h));
		host[colon - h] = 0;
	}
	if (inet_pton(*v6 ? AF_INET6 : AF_INET, host, buf) != 1)
		return -EINVAL; /* "*", host names, interface names */
	errno = 0;
	unsigned long port = strtoul(colon + 1, (char **)&end, 10);
	if (errno || *end || end == colon + 1 || port == 0 || port > 65535)
		return -EINVAL;
	return 0;
}

/* Decodes a 40-character Z85 key into 32 bytes. Returns 0 or -EINVAL. */
static int decode_key(const char *z85, uint8_t out[32])
{
	if (strnlen(z85, TP_KEY_LEN + 1) != TP_KEY_LEN)
		return -EINVAL;
	return zmq_z85_decode(out, z85) ? 0 : -EINVAL;
}

static int set_int(void *s, int opt, int v)
{
	return zmq_setsockopt(s, opt, &v, sizeof v) ? -errno : 0;
}

/* Creates a socket with LINGER 0 (nothing outlives tp_close). */
static void *new_socket(struct tp *t, int type)
{
	void *s = zmq_socket(t->zctx, type);
	if (s && set_int(s, ZMQ_LINGER, 0)) {
		zmq_close(s);
		s = NULL;
	}
	return s;
}

static int ep_add_fd(struct tp *t, int fd, uint32_t kind, uint32_t idx)
{
	struct epoll_event ev = { .events = EPOLLIN,
		                  .data.u64 = (uint64_t)kind << 32 | idx };
	return epoll_ctl(t->epfd, EPOLL_CTL_ADD, fd, &ev) ? -errno : 0;
}

/* Watches socket s's ZMQ_FD, then primes it. A new socket's command queue
 * and pipes start with their reader marked awake, so libzmq sends no wake-
 * up — and ZMQ_FD never becomes readable — until the application has once
 * found the socket empty. ZMQ_EVENTS does that (Z3). Call it after the
 * socket's bind or connect. */
static int ep_add_sock(struct tp *t, void *s, uint32_t kind, uint32_t idx)
{
	int fd, ev, rc;
	size_t len = sizeof fd;
	if (zmq_getsockopt(s, ZMQ_FD, &fd, &len))
		return -errno;
	rc = ep_add_fd(t, fd, kind, idx);
	len = sizeof ev;
	if (!rc && zmq_getsockopt(s, ZMQ_EVENTS, &ev, &len))
		rc = -errno;
	return rc;
}

/* Starts monitoring `s` for `events` on a PAIR connected to a unique
 * inproc endpoint. Must run before s binds or connects. */
static void *monitor(struct tp *t, void *s, const char *name, int events)
{
	char ep[64];
	void *m;
	snprintf(ep, sizeof ep, "inproc://tp.mon.%s", name);
	if (zmq_socket_monitor(s, ep, events))
		return NULL;
	m = new_socket(t, ZMQ_PAIR);
	if (m && zmq_connect(m, ep)) {
		zmq_close(m);
		m = NULL;
	}
	return m;
}

/* Arms the timerfd at the absolute monotonic time `at_us` (Z4). */
static void arm(struct tp *t, uint64_t at_us)
{
	struct itimerspec its = { 0 };
	if (at_us == 0)
		at_us = 1; /* zero would disarm */
	its.it_value.tv_sec = (time_t)(at_us / 1000000u);
	its.it_value.tv_nsec = (long)(at_us % 1000000u) * 1000;
	timerfd_settime(t->tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

static void kick(struct tp *t)
{
	uint64_t one = 1;
	if (!t->kicked && write(t->kfd, &one, sizeof one) == sizeof one)
		t->kicked = true;
}

/* ---- reporting ---- */

/* Counts a refusal, keeps its text, and calls on_auth_fail unless the same
 * text was reported less than a second ago (a refused client retries every
 * RECONNECT_IVL_MS). Returns the number of callbacks made (0 or 1). */
static int auth_fail(struct tp *t, const struct tp_handlers *h, void *ctx,
                     const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int auth_fail(struct tp *t, const struct tp_handlers *h, void *ctx,
                     const char *fmt, ...)
{
	char buf[sizeof t->st.last_auth_failure];
	struct auth_slot *slot = &t->auth[0];
	uint64_t now = now_us(), hash;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	t->st.auth_failures++;
	memcpy(t->st.last_auth_failure, buf, sizeof buf);

	hash = fnv1a(buf);
	for (int i = 0; i < AUTH_SLOTS; i++) {
		if (t->auth[i].hash == hash) {
			slot = &t->auth[i];
			break;
		}
		if (t->auth[i].last_us < slot->last_us)
			slot = &t->auth[i];
	}
	if (slot->hash == hash && slot->last_us &&
	    now - slot->last_us < AUTH_REPEAT_US)
		return 0;
	slot->hash = hash;
	slot->last_us = now;
	if (h && h->on_auth_fail) {
		h->on_auth_fail(ctx, buf);
		return 1;
	}
	return 0;
}

static void send_hb(struct tp *t, struct peer *p);

static int peer_up(struct tp *t, const struct tp_handlers *h, void *ctx,
                   uint32_t id, uint64_t inc, uint64_t now)
{
	struct peer *p = &t->p[id];
	p->state = TP_PEER_UP;
	p->inc = inc;
	p->send_seq = p->recv_seq = 0;
	p->sent = p->received = 0;
	p->last_us = now;
	p->want_writable = false;
	t->st.peers_up++;
	/* Our heartbeat naming it goes first, before anything the callback
	 * sends, so the peer comes UP without waiting for hb_ms. */
	send_hb(t, p);
	if (h && h->on_peer) {
		h->on_peer(ctx, id, true, inc, TP_DOWN_NONE);
		return 1;
	}
	return 0;
}

static int peer_down(struct tp *t, const struct tp_handlers *h, void *ctx,
                     uint32_t id, enum tp_down_reason why)
{
	struct peer *p = &t->p[id];
	if (p->state != TP_PEER_UP)
		return 0; /* T3: down at most once per incarnation */
	p->state = TP_PEER_DOWN;
	p->want_writable = false;
	t->st.peers_down++;
	if (why == TP_DOWN_BROKEN)
		t->st.broken++;
	if (h && h->on_peer) {
		h->on_peer(ctx, id, false, p->inc, why);
		return 1;
	}
	return 0;
}

static int open_push(struct tp *t, uint32_t i, char *err, size_t errlen);

/* ---- the ZAP handler ---- */

static int zap_reply(void *zap, const zmq_msg_t *reqid, const char *status,
                     const char *text, const char *uid)
{
	const char *v = "1.0";
	zmq_msg_t id;
	int rc = 0;

	zmq_msg_init(&id);
	if (reqid)
		zmq_msg_copy(&id, (zmq_msg_t *)reqid);
	if (zmq_send(zap, v, 3, ZMQ_SNDMORE) < 0 ||
	    zmq_msg_send(&id, zap, ZMQ_SNDMORE) < 0 ||
	    zmq_send(zap, status, 3, ZMQ_SNDMORE) < 0 ||
	    zmq_send(zap, text, strlen(text), ZMQ_SNDMORE) < 0 ||
	    zmq_send(zap, uid, strlen(uid), ZMQ_SNDMORE) < 0 ||
	    zmq_send(zap, "", 0, 0) < 0)
		rc = -errno;
	zmq_msg_close(&id);
	return rc;
}

static void msg_str(zmq_msg_t *m, char *out, size_t outlen)
{
	size_t len = zmq_msg_size(m);
	if (len >= outlen)
		len = outlen - 1;
	memcpy(out, zmq_msg_data(m), len);
	out[len] = 0;
	for (size_t i = 0; i < len; i++)
		if (out[i] < 0x20 || out[i] > 0x7e)
			out[i] = '?';
}

/* Answers every pending ZAP request (RFC 27): frames version, request id,
 * domain, address, routing id, mechanism, credentials. Admits a CURVE key
 * of the membership other than our own, with the node id as User-Id.
 * Returns callbacks made, or a negative errno. */
static int zap_serve(struct tp *t, const struct tp_handlers *h, void *ctx)
{
	int events = 0;

	for (;;) {
		zmq_msg_t part[7];
		int nparts = 0, more = 1, rc = 0;
		bool extra = false;
		char addr[64] = "?", mech[16] = "?", key[TP_KEY_LEN + 1] = "";
		const char *uid = NULL;

		/* A request arrives whole, so only its first frame may be
		 * missing; frames past the seventh are read and dropped. */
		while (more) {
			zmq_msg_t x, *m = nparts < 7 ? &part[nparts] : &x;
			zmq_msg_init(m);
			if (zmq_msg_recv(m, t->zap,
			                 nparts || extra ? 0 : ZMQ_DONTWAIT) < 0) {
				rc = -errno;
				zmq_msg_close(m);
				break;
			}
			more = zmq_msg_more(m);
			if (m == &x) {
				extra = true;
				zmq_msg_close(&x);
			} else {
				nparts++;
			}
		}
		if (rc == -EAGAIN && nparts == 0)
			return events;
		if (rc < 0) {
			for (int i = 0; i < nparts; i++)
				zmq_msg_close(&part[i]);
			return rc;
		}
		if (nparts == 7) {
			msg_str(&part[3], addr, sizeof addr);
			msg_str(&part[5], mech, sizeof mech);
		}
		if (nparts != 7 || extra || strcmp(mech, "CURVE") != 0 ||
		    zmq_msg_size(&part[6]) != 32) {
			events += auth_fail(t, h, ctx,
			                    "refused a %s handshake from %s: "
			                    "only CURVE with a member key is "
			                    "admitted", mech, addr);
			rc = zap_reply(t->zap, nparts > 1 ? &part[1] : NULL,
			               "400", "CURVE only", "");
		} else {
			const uint8_t *k = zmq_msg_data(&part[6]);
			uint32_t who = UINT32_MAX;
			for (uint32_t i = 0; i < t->n; i++)
				if (memcmp(t->p[i].key, k, 32) == 0)
					who = i;
			zmq_z85_encode(key, k, 32);
			if (who == t->self) {
				events += auth_fail(t, h, ctx,
				                    "refused CURVE key %s from %s: "
				                    "it is this node's own key", key,
				                    addr);
			} else if (who == UINT32_MAX) {
				events += auth_fail(t, h, ctx,
				                    "refused CURVE key %s from %s: "
				                    "not a cluster member", key, addr);
			} else {
				uid = t->p[who].uid;
			}
			rc = zap_reply(t->zap, &part[1], uid ? "200" : "400",
			               uid ? "OK" : "not a cluster member",
			               uid ? uid : "");
		}
		for (int i = 0; i < nparts; i++)
			zmq_msg_close(&part[i]);
		if (rc < 0)
			return rc;
	}
}

/* ---- socket monitors ---- */

static const char *proto_error(uint32_t v)
{
	switch (v) {
	case ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
		return "cryptographic error (a wrong server key, or a client "
		       "that does not own the key it presents)";
	case ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
		return "security mechanism mismatch (plaintext on one side, "
		       "CURVE on the other)";
	case ZMQ_PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE:
		return "CURVE key exchange failed";
	case ZMQ_PROTOCOL_ERROR_ZMTP_UNEXPECTED_COMMAND:
	case ZMQ_PROTOCOL_ERROR_ZMTP_INVALID_SEQUENCE:
		return "unexpected handshake command";
	default:
		if (v >= ZMQ_PROTOCOL_ERROR_ZMTP_MALFORMED_COMMAND_UNSPECIFIED &&
		    v <= ZMQ_PROTOCOL_ERROR_ZMTP_INVALID_METADATA)
			return "malformed handshake command";
		if (v >= ZMQ_PROTOCOL_ERROR_ZAP_UNSPECIFIED &&
		    v < ZMQ_PROTOCOL_ERROR_WS_UNSPECIFIED)
			return "ZAP protocol error";
		return "protocol error";
	}
}

/* libzmq 4.3 ends a connecting session for good after a protocol error in
 * the handshake (session_base_t::engine_error: no reconnect), so a PUSH
 * refused once — a ZAP refusal, a mechanism mismatch — would never try
 * again, even after the peer is fixed and restarted. Such a PUSH is
 * recreated REDIAL_US later by timer_work -> redial. */
static void schedule_redial(struct tp *t, struct peer *p)
{
	if (p->redial_at)
		return;
	p->redial_at = now_us() + REDIAL_US;
	if (p->redial_at < t->deadline) {
		t->deadline = p->redial_at;
		arm(t, t->deadline);
	}
}

static void close_push(struct tp *t, struct peer *p)
{
	int fd;
	size_t len = sizeof fd;
	if (p->push && !zmq_getsockopt(p->push, ZMQ_FD, &fd, &len))
		epoll_ctl(t->epfd, EPOLL_CTL_DEL, fd, NULL);
	len = sizeof fd;
	if (p->mon && !zmq_getsockopt(p->mon, ZMQ_FD, &fd, &len))
		epoll_ctl(t->epfd, EPOLL_CTL_DEL, fd, NULL);
	if (p->mon)
		zmq_close(p->mon);
	if (p->push)
		zmq_close(p->push);
	p->mon = p->push = NULL;
	p->connected = false;
	p->want_writable = false;
}

/* Replaces peer i's PUSH. What was queued in the old one is gone, so an
 * UP peer goes DOWN (T1: a loss is never silent). Returns callbacks. */
static int redial(struct tp *t, const struct tp_handlers *h, void *ctx,
                  uint32_t i)
{
	struct peer *p = &t->p[i];
	int events = peer_down(t, h, ctx, i, TP_DOWN_BROKEN);

	p->redial_at = 0;
	close_push(t, p);
	if (open_push(t, i, NULL, 0)) {
		close_push(t, p);
		p->redial_at = now_us() + REDIAL_US; /* try again later */
	}
	return events;
}

/* Drains one monitor PAIR (events: a 6-byte frame with a uint16 event and
 * a uint32 value, then the endpoint). `id` is the peer whose PUSH it
 * watches, or UINT32_MAX for the PULL. Returns callbacks made. */
static int mon_drain(struct tp *t, const struct tp_handlers *h, void *ctx,
                     void *mon, uint32_t id)
{
	int events = 0;

	for (;;) {
		uint8_t ev[6];
		char ep[TP_ADDR_LEN] = "";
		uint16_t what;
		uint32_t value;
		int more = 0, r;
		size_t ml = sizeof more;

		r = zmq_recv(mon, ev, sizeof ev, ZMQ_DONTWAIT);
		if (r < 0)
			return errno == EAGAIN ? events : -errno;
		zmq_getsockopt(mon, ZMQ_RCVMORE, &more, &ml);
		while (more) { /* the endpoint, then nothing in 4.3 */
			zmq_msg_t m;
			zmq_msg_init(&m);
			if (zmq_msg_recv(&m, mon, 0) < 0) {
				zmq_msg_close(&m);
				break;
			}
			more = zmq_msg_more(&m);
			if (!ep[0])
				msg_str(&m, ep, sizeof ep);
			zmq_msg_close(&m);
		}
		if (r != (int)sizeof ev)
			continue;
		memcpy(&what, ev, 2);
		memcpy(&value, ev + 2, 4);

		struct peer *p = id < t->n ? &t->p[id] : NULL;
		switch (what) {
		case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
			if (p)
				p->connected = true;
			break;
		case ZMQ_EVENT_DISCONNECTED:
			if (p)
				p->connected = false;
			break;
		case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
			/* On the PULL the ZAP handler has already said why. */
			if (p) {
				events += auth_fail(t, h, ctx,
				                    "node %u (%s) refused this "
				                    "node's key (ZAP status %u)",
				                    id, p->address, value);
				schedule_redial(t, p);
			}
			break;
		case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
			if (p)
				schedule_redial(t, p);
			if (p)
				events += auth_fail(t, h, ctx,
				                    "handshake with node %u (%s) "
				                    "failed: %s", id, p->address,
				                    proto_error(value));
			else
				events += auth_fail(t, h, ctx,
				                    "handshake of a connection to "
				                    "%s failed: %s", ep,
				                    proto_error(value));
			break;
		case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
			if (p)
				events += auth_fail(t, h, ctx,
				                    "handshake with node %u (%s) "
				                    "failed: %s", id, p->address,
				                    strerror((int)value));
			else
				events += auth_fail(t, h, ctx,
				                    "handshake of a connection to "
				                    "%s failed: %s", ep,
				                    strerror((int)value));
			break;
		default:
			break;
		}
	}
}

/* ---- receiving ---- */

enum seen { SEEN_CURRENT, SEEN_JOINING, SEEN_STALE };

/* Applies the incarnation rules to a valid message from `id` carrying its
 * incarnation `inc` and its idea `dst` of ours (T3). A newer incarnation
 * ends the current one (TP_DOWN_RESTARTED) and starts JOINING; it becomes
 * UP only once a message of it names our incarnation, which proves both
 * directions work (a one-way link — traffic filtered one way, or our
 * connection to it refused — never comes UP). Returns SEEN_CURRENT for a message of the UP
 * incarnation, SEEN_JOINING for one of an incarnation still joining,
 * SEEN_STALE for one of an older or dead incarnation. */
static enum seen peer_seen(struct tp *t, const struct tp_handlers *h,
                           void *ctx, uint32_t id, uint64_t inc, uint64_t dst,
                           uint64_t now, int *events)
{
	struct peer *p = &t->p[id];

	if (p->state == TP_PEER_UP) {
		if (inc == p->inc) {
			p->last_us = now;
			return SEEN_CURRENT;
		}
		if (inc < p->inc)
			return SEEN_STALE;
		*events += peer_down(t, h, ctx, id, TP_DOWN_RESTARTED);
		p->state = TP_PEER_JOINING;
	} else if (p->state == TP_PEER_DOWN) {
		if (inc <= p->inc)
			return SEEN_STALE;
		p->state = TP_PEER_JOINING;
	}
	if (inc < p->cand)
		return SEEN_STALE;
	if (inc > p->cand) {
		p->cand = inc;
		send_hb(t, p); /* tell it our incarnation now, not in hb_ms */
	}
	if (dst != t->inc)
		return SEEN_JOINING;
	*events += peer_up(t, h, ctx, id, inc, now);
	return SEEN_CURRENT;
}

static void handle_hb(struct tp *t, const struct tp_handlers *h, void *ctx,
                      const struct wire *w, int *events)
{
	struct peer *p = &t->p[w->src];

	t->st.hb_recv++;
	if (w->dst_inc != t->inc)
		return; /* it does not know us yet, or knew a former us */
	if (w->flags & W_HB_DEAD)
		*events += peer_down(t, h, ctx, w->src, TP_DOWN_EVICTED);
	else if (w->seq != p->recv_seq)
		*events += peer_down(t, h, ctx, w->src, TP_DOWN_BROKEN); /* Z1 */
}

static void handle_data(struct tp *t, const struct tp_handlers *h, void *ctx,
                        const struct wire *w, const uint8_t *hdr,
                        size_t hdrlen, const void *payload, size_t plen,
                        int *events)
{
	struct peer *p = &t->p[w->src];

	if (w->dst_inc != t->inc) {
		t->st.drop_stale++; /* Z2: meant for a former incarnation */
		return;
	}
	if (w->seq != p->recv_seq) {
		*events += peer_down(t, h, ctx, w->src, TP_DOWN_BROKEN); /* Z1 */
		return;
	}
	p->recv_seq++;
	p->received++;
	t->st.msgs_recv++;
	t->st.bytes_recv += hdrlen + plen;
	if (h && h->on_msg) {
		h->on_msg(ctx, w->src, hdrlen ? hdr : NULL, hdrlen,
		          plen ? payload : NULL, plen);
		(*events)++;
	}
}

/* Receives and handles one message from the PULL. Returns 1 if one was
 * consumed (delivered or dropped), 0 if none was queued, or -errno. */
static int recv_one(struct tp *t, const struct tp_handlers *h, void *ctx,
                    uint64_t now, int *events)
{
	zmq_msg_t f0, f1;
	int nframes = 1;
	struct wire w;
	size_t len0, plen = 0;
	const uint8_t *b;

	zmq_msg_init(&f0);
	zmq_msg_init(&f1);
	if (zmq_msg_recv(&f0, t->pull, ZMQ_DONTWAIT) < 0) {
		int e = errno;
		zmq_msg_close(&f0);
		zmq_msg_close(&f1);
		return e == EAGAIN ? 0 : -e;
	}
	/* Multipart messages arrive whole: the rest is already queued. */
	if (zmq_msg_more(&f0)) {
		int more;
		if (zmq_msg_recv(&f1, t->pull, ZMQ_DONTWAIT) < 0)
			goto malformed;
		nframes = 2;
		more = zmq_msg_more(&f1);
		while (more) {
			zmq_msg_t x;
			zmq_msg_init(&x);
			if (zmq_msg_recv(&x, t->pull, ZMQ_DONTWAIT) < 0)
				more = 0;
			else
				more = zmq_msg_more(&x);
			zmq_msg_close(&x);
			nframes++;
		}
	}

	/* Decode and check everything, then act. */
	len0 = zmq_msg_size(&f0);
	b = zmq_msg_data(&f0);
	if (nframes > 2 || len0 < W_LEN)
		goto malformed;
	wire_get(b, &w);
	if (w.version != W_VERSION || w.reserved ||
	    (w.type != W_DATA && w.type != W_HB) || w.src >= t->n ||
	    w.src == t->self || w.src_inc == 0)
		goto malformed;
	if (w.type == W_HB && (nframes != 1 || len0 != W_LEN ||
	                       (w.flags & ~W_HB_DEAD)))
		goto malformed;
	if (w.type == W_DATA && w.flags)
		goto malformed;
	if (!t->plaintext) {
		const char *uid = zmq_msg_gets(&f0, "User-Id");
		if (!uid || strcmp(uid, t->p[w.src].uid) != 0) {
			t->st.drop_spoofed++; /* T2 */
			goto out;
		}
	}
	if (nframes == 2)
		plen = zmq_msg_size(&f1);
	if (len0 - W_LEN > TP_MAX_HDR || plen > t->max_payload) {
		t->st.drop_oversize++;
		goto out;
	}
	switch (peer_seen(t, h, ctx, w.src, w.src_inc, w.dst_inc, now,
	                  events)) {
	case SEEN_STALE:
		t->st.drop_stale++;
		goto out;
	case SEEN_JOINING: /* its data cannot name us: stale; a heartbeat
	                      has done its work in peer_seen */
		if (w.type == W_HB)
			t->st.hb_recv++;
		else
			t->st.drop_stale++;
		goto out;
	case SEEN_CURRENT:
		break;
	}
	if (w.type == W_HB)
		handle_hb(t, h, ctx, &w, events);
	else
		handle_data(t, h, ctx, &w, b + W_LEN, len0 - W_LEN,
		            plen ? zmq_msg_data(&f1) : NULL, plen, events);
	goto out;
malformed:
	t->st.drop_malformed++;
out:
	zmq_msg_close(&f0);
	zmq_msg_close(&f1);
	return 1;
}

/* ---- sending ---- */

static void send_hb(struct tp *t, struct peer *p)
{
	uint8_t b[W_LEN];
	struct wire w = { .version = W_VERSION, .type = W_HB, .src = t->self,
		          .src_inc = t->inc };

	if (p->state == TP_PEER_UP) {
		w.dst_inc = p->inc;
		w.seq = p->send_seq;
	} else if (p->state == TP_PEER_DOWN) {
		w.dst_inc = p->inc;
		w.flags = W_HB_DEAD;
	} else {
		w.dst_inc = p->cand; /* 0 until we have heard of one */
	}
	wire_put(b, &w);
	if (!p->push)
		return;
	if (zmq_send(p->push, b, W_LEN, ZMQ_DONTWAIT) == W_LEN)
		t->st.hb_sent++;
	else if (p->state == TP_PEER_UP)
		t->st.hb_dropped++; /* only the queue-full case matters */
}

/* Heartbeats when due; DOWN for every UP peer silent for dead_after
 * (skipped while the PULL still holds unread messages: they may be the
 * proof of life); rearms the timer (Z4). Returns callbacks made. */
static int timer_work(struct tp *t, const struct tp_handlers *h, void *ctx,
                      uint64_t now)
{
	int events = 0;
	uint64_t dl;

	if (now >= t->next_hb) {
		for (uint32_t i = 0; i < t->n; i++)
			if (i != t->self)
				send_hb(t, &t->p[i]);
		t->next_hb = now + t->hb_us;
	}
	dl = t->next_hb;
	for (uint32_t i = 0; i < t->n; i++) {
		struct peer *p = &t->p[i];
		uint64_t d = p->last_us + t->dead_us;
		if (p->redial_at && now >= p->redial_at)
			events += redial(t, h, ctx, i);
		if (p->redial_at && p->redial_at < dl)
			dl = p->redial_at;
		if (p->state != TP_PEER_UP)
			continue;
		if (now >= d && !t->pull_more) {
			events += peer_down(t, h, ctx, i, TP_DOWN_TIMEOUT);
			continue;
		}
		if (d < dl)
			dl = d;
	}
	t->deadline = dl;
	arm(t, dl);
	return events;
}

int tp_send(struct tp *t, uint32_t peer, const void *hdr, size_t hdrlen,
            const void *payload, size_t plen)
{
	struct peer *p;
	zmq_msg_t m;
	struct wire w;

	if (peer >= t->n || peer == t->self || (plen && !payload) ||
	    (hdrlen && !hdr))
		return -EINVAL;
	if (hdrlen > TP_MAX_HDR || plen > t->max_payload)
		return -EMSGSIZE;
	p = &t->p[peer];
	if (p->state == TP_PEER_DOWN)
		return -EHOSTDOWN;
	if (p->state == TP_PEER_JOINING)
		return -ENOTCONN;
	if (!p->push)
		return -EAGAIN; /* being recreated (redial) */

	w = (struct wire){ .version = W_VERSION, .type = W_DATA,
		           .src = t->self, .src_inc = t->inc,
		           .dst_inc = p->inc, .seq = p->send_seq };
	if (zmq_msg_init_size(&m, W_LEN + hdrlen))
		return -errno;
	wire_put(zmq_msg_data(&m), &w);
	if (hdrlen)
		memcpy((uint8_t *)zmq_msg_data(&m) + W_LEN, hdr, hdrlen);
	if (zmq_msg_send(&m, p->push,
	                 ZMQ_DONTWAIT | (plen ? ZMQ_SNDMORE : 0)) < 0) {
		int e = errno;
		zmq_msg_close(&m);
		if (e == EAGAIN) {
			p->want_writable = true;
			t->st.send_full++;
		}
		return -e;
	}
	if (plen && zmq_send(p->push, payload, plen, ZMQ_DONTWAIT) < 0) {
		/* Once a first frame is queued libzmq always takes the rest
		 * (lb_t::has_out); failing here means the pipe is torn down.
		 * The channel's state is unknown: crash-stop it (T1). */
		int e = errno;
		p->state = TP_PEER_DOWN;
		p->notify = TP_DOWN_BROKEN;
		t->notify_pending = true;
		kick(t);
		return -e;
	}
	p->send_seq++;
	p->sent++;
	p->want_writable = false;
	t->st.msgs_sent++;
	t->st.bytes_sent += hdrlen + plen;
	return 0;
}

/* ---- polling ---- */

int tp_poll(struct tp *t, const struct tp_handlers *h, void *ctx)
{
	uint64_t now = now_us();
	int events = 0, rc, k;

	/* Z5: after our own stall (SIGSTOP, swapping, a blocked loop) the
	 * backlog may not even be read by ZeroMQ's I/O thread yet: we cannot
	 * judge anyone's silence, so every UP peer gets a fresh window. If
	 * they judged us dead meanwhile, their heartbeats say so (EVICTED). */
	if (t->last_poll && now - t->last_poll > 2 * t->hb_us) {
		t->st.stalls++;
		for (uint32_t i = 0; i < t->n; i++)
			if (t->p[i].state == TP_PEER_UP && t->p[i].last_us < now)
				t->p[i].last_us = now;
	}
	t->last_poll = now;

	if (t->kicked) {
		uint64_t v;
		if (read(t->kfd, &v, sizeof v) < 0 && errno != EAGAIN)
			return -errno;
		t->kicked = false;
	}
	k = epoll_wait(t->epfd, t->evs, t->nevs, 0);
	if (k < 0 && errno != EINTR)
		return -errno;
	for (int i = 0; i < k; i++) { /* Z3 */
		uint32_t kind = (uint32_t)(t->evs[i].data.u64 >> 32);
		uint32_t idx = (uint32_t)t->evs[i].data.u64;
		uint64_t v;
		int zev;
		size_t zl = sizeof zev;

		switch (kind) {
		case K_PULL:
			t->pull_more = true;
			break;
		case K_ZAP:
			rc = zap_serve(t, h, ctx);
			if (rc < 0)
				return rc;
			events += rc;
			break;
		case K_PULLMON:
			rc = mon_drain(t, h, ctx, t->pullmon, UINT32_MAX);
			if (rc < 0)
				return rc;
			events += rc;
			break;
		case K_PUSHMON:
			if (!t->p[idx].mon)
				break;
			rc = mon_drain(t, h, ctx, t->p[idx].mon, idx);
			if (rc < 0)
				return rc;
			events += rc;
			break;
		case K_PUSH:
			/* Processes the socket's commands, which clears its
			 * ZMQ_FD; room regained is checked below. */
			zmq_getsockopt(t->p[idx].push, ZMQ_EVENTS, &zev, &zl);
			break;
		case K_TIMER:
			if (read(t->tfd, &v, sizeof v) < 0 && errno != EAGAIN)
				return -errno;
			break;
		case K_KICK:
			if (read(t->kfd, &v, sizeof v) < 0 && errno != EAGAIN)
				return -errno;
			break;
		}
	}

	if (t->pull_more) {
		uint32_t n = 0;
		for (; n < t->budget; n++) {
			rc = recv_one(t, h, ctx, now, &events);
			if (rc < 0)
				return rc;
			if (rc == 0)
				break;
		}
		t->pull_more = n == t->budget;
		if (t->pull_more)
			kick(t); /* Z3: stay readable while messages wait */
	}

	if (t->notify_pending) {
		t->notify_pending = false;
		for (uint32_t i = 0; i < t->n; i++) {
			struct peer *p = &t->p[i];
			if (!p->notify)
				continue;
			t->st.peers_down++;
			if (p->notify == TP_DOWN_BROKEN)
				t->st.broken++;
			if (h && h->on_peer) {
				h->on_peer(ctx, i, false, p->inc, p->notify);
				events++;
			}
			p->notify = TP_DOWN_NONE;
		}
	}

	for (uint32_t i = 0; i < t->n; i++) {
		struct peer *p = &t->p[i];
		int zev = 0;
		size_t zl = sizeof zev;
		if (!p->want_writable || !p->push)
			continue;
		if (zmq_getsockopt(p->push, ZMQ_EVENTS, &zev, &zl) == 0 &&
		    (zev & ZMQ_POLLOUT)) {
			p->want_writable = false;
			if (h && h->on_writable) {
				h->on_writable(ctx, i);
				events++;
			}
		}
	}

	if (now >= t->deadline)
		events += timer_work(t, h, ctx, now);
	return events;
}

int tp_next_timeout_ms(struct tp *t)
{
	uint64_t now = now_us();
	if (t->pull_more || t->kicked || now >= t->deadline)
		return 0;
	uint64_t ms = (t->deadline - now + 999) / 1000;
	return ms > INT_MAX ? INT_MAX : (int)ms;
}

int tp_run(struct tp *t, const struct tp_handlers *h, void *ctx,
           int timeout_ms, uint32_t spin_us)
{
	uint64_t start = now_us();
	uint64_t end = timeout_ms < 0 ? UINT64_MAX
	                              : start + (uint64_t)timeout_ms * 1000u;

	for (;;) {
		int n = tp_poll(t, h, ctx);
		if (n != 0)
			return n;
		uint64_t now = now_us();
		if (now >= end)
			return 0;
		if (now - start < spin_us) {
			/* Z6: ZeroMQ's I/O thread must run for anything to
			 * arrive; on a machine with few cores a spin that does
			 * not yield delays it (measured: p99 of milliseconds). */
			sched_yield();
			continue;
		}
		int wait = -1;
		if (end != UINT64_MAX) {
			uint64_t ms = (end - now + 999) / 1000;
			wait = ms > INT_MAX ? INT_MAX : (int)ms;
		}
		struct pollfd pfd = { .fd = t->epfd, .events = POLLIN };
		if (poll(&pfd, 1, wait) < 0 && errno != EINTR)
			return -errno;
	}
}

/* ---- set-up and tear-down ---- */

int tp_keypair(char pub[TP_KEY_LEN + 1], char sec[TP_KEY_LEN + 1])
{
	if (!zmq_has("curve"))
		return -ENOTSUP;
	return zmq_curve_keypair(pub, sec) ? -errno : 0;
}

/* Checks the whole config before anything is created. */
static int check_config(const struct tp_config *c, char *err, size_t errlen)
{
	bool seen[TP_MAX_PEERS] = { false };
	bool v6;

	if (!c->peers || c->npeers == 0 || c->npeers > TP_MAX_PEERS)
		return fail(err, errlen, -EINVAL,
		            "membership must list 1..%u nodes (got %u)",
		            TP_MAX_PEERS, c->npeers);
	if (c->self >= c->npeers)
		return fail(err, errlen, -EINVAL,
		            "self id %u is not in the membership of %u nodes",
		            c->self, c->npeers);
	for (uint32_t i = 0; i < c->npeers; i++) {
		const struct tp_peer_cfg *pc = &c->peers[i];
		uint8_t k[32];
		if (pc->id >= c->npeers || seen[pc->id])
			return fail(err, errlen, -EINVAL,
			            "node ids must be 0..%u, each once (entry %u "
			            "has id %u)", c->npeers - 1, i, pc->id);
		seen[pc->id] = true;
		if (check_address(pc->address, &v6))
			return fail(err, errlen, -EINVAL,
			            "node %u: address \"%.*s\" is not "
			            "tcp://NUMERIC-IP:PORT (no \"*\", no host "
			            "names)", pc->id, (int)TP_ADDR_LEN - 1,
			            pc->address);
		for (uint32_t j = 0; j < i; j++)
			if (!strcmp(c->peers[j].address, pc->address))
				return fail(err, errlen, -EINVAL,
				            "nodes %u and %u share address %s",
				            c->peers[j].id, pc->id, pc->address);
		if (c->plaintext)
			continue;
		if (decode_key(pc->public_key, k))
			return fail(err, errlen, -EINVAL,
			            "node %u: public key is missing or not 40 "
			            "Z85 characters; a daemon without a cluster "
			            "key is refused (plaintext must be set "
			            "explicitly)", pc->id);
		for (uint32_t j = 0; j < i; j++)
			if (!strcmp(c->peers[j].public_key, pc->public_key))
				return fail(err, errlen, -EINVAL,
				            "nodes %u and %u share a public key",
				            c->peers[j].id, pc->id);
	}
	if (!c->plaintext) {
		uint8_t k[32];
		char pub[TP_KEY_LEN + 1];
		const struct tp_peer_cfg *me = NULL;
		if (!zmq_has("curve"))
			return fail(err, errlen, -ENOTSUP,
			            "libzmq was built without CURVE");
		if (decode_key(c->secret_key, k))
			return fail(err, errlen, -EINVAL,
			            "secret key is missing or not 40 Z85 "
			            "characters; a daemon without a cluster key "
			            "is refused (plaintext must be set "
			            "explicitly)");
		if (zmq_curve_public(pub, c->secret_key))
			return fail(err, errlen, -EINVAL,
			            "cannot derive the public key: %s",
			            zmq_strerror(errno));
		for (uint32_t i = 0; i < c->npeers; i++)
			if (c->peers[i].id == c->self)
				me = &c->peers[i];
		if (strcmp(pub, me->public_key) != 0)
			return fail(err, errlen, -EINVAL,
			            "the secret key does not belong to node %u: "
			            "its public key is %s, the membership says %s",
			            c->self, pub, me->public_key);
	}
	if (c->heartbeat_ms > 600000 || c->dead_after_ms > 3600000 ||
	    c->max_payload > TP_MAX_PAYLOAD || c->queue_limit > 1000000)
		return fail(err, errlen, -EINVAL, "a limit is out of range");
	uint32_t hb = c->heartbeat_ms ? c->heartbeat_ms : 100;
	uint32_t dead = c->dead_after_ms ? c->dead_after_ms : 1000;
	if (dead < 2 * hb)
		return fail(err, errlen, -EINVAL,
		            "dead_after_ms (%u) must be at least twice "
		            "heartbeat_ms (%u)", dead, hb);
	return 0;
}

void tp_close(struct tp *t)
{
	if (!t)
		return;
	if (t->p) {
		for (uint32_t i = 0; i < t->n; i++) {
			if (t->p[i].mon)
				zmq_close(t->p[i].mon);
			if (t->p[i].push)
				zmq_close(t->p[i].push);
		}
	}
	if (t->pullmon)
		zmq_close(t->pullmon);
	if (t->pull)
		zmq_close(t->pull);
	if (t->zap)
		zmq_close(t->zap);
	if (t->zctx)
		zmq_ctx_term(t->zctx);
	if (t->epfd >= 0)
		close(t->epfd);
	if (t->tfd >= 0)
		close(t->tfd);
	if (t->kfd >= 0)
		close(t->kfd);
	free(t->evs);
	free(t->p);
	explicit_bzero(t->secret, sizeof t->secret);
	explicit_bzero(t->secret_z85, sizeof t->secret_z85);
	free(t);
}

/* Creates and connects the PUSH to peer i, with its monitor. */
static int open_push(struct tp *t, uint32_t i, char *err, size_t errlen)
{
	struct peer *p = &t->p[i];
	char name[24];
	bool v6 = false;
	int rc;

	check_address(p->address, &v6);
	p->push = new_socket(t, ZMQ_PUSH);
	if (!p->push)
		return fail(err, errlen, -errno, "zmq_socket(PUSH): %s",
		            zmq_strerror(errno));
	/* IMMEDIATE 0: messages queue while the connection (re)establishes,
	 * so a peer that is UP never sees -EAGAIN for a reconnect. */
	if ((rc = set_int(p->push, ZMQ_SNDHWM, (int)t->qlimit)) ||
	    (rc = set_int(p->push, ZMQ_IMMEDIATE, 0)) ||
	    (rc = set_int(p->push, ZMQ_RECONNECT_IVL, RECONNECT_IVL_MS)) ||
	    (rc = set_int(p->push, ZMQ_IPV6, v6)))
		return fail(err, errlen, rc, "zmq_setsockopt(PUSH): %s",
		            zmq_strerror(-rc));
	if (!t->plaintext &&
	    (zmq_setsockopt(p->push, ZMQ_CURVE_SERVERKEY, p->key, 32) ||
	     zmq_setsockopt(p->push, ZMQ_CURVE_PUBLICKEY, t->public, 32) ||
	     zmq_setsockopt(p->push, ZMQ_CURVE_SECRETKEY, t->secret, 32)))
		return fail(err, errlen, -errno, "CURVE options: %s",
		            zmq_strerror(errno));
	snprintf(name, sizeof name, "%u.%u", i, p->gen++);
	p->mon = monitor(t, p->push, name,
	                 ZMQ_EVENT_HANDSHAKE_SUCCEEDED |
	                         ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
	                         ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
	                         ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
	                         ZMQ_EVENT_DISCONNECTED);
	if (!p->mon)
		return fail(err, errlen, -errno, "monitor: %s",
		            zmq_strerror(errno));
	if (zmq_connect(p->push, p->address))
		return fail(err, errlen, -errno, "connect %s: %s", p->address,
		            zmq_strerror(errno));
	if ((rc = ep_add_sock(t, p->push, K_PUSH, i)) ||
	    (rc = ep_add_sock(t, p->mon, K_PUSHMON, i)))
		return fail(err, errlen, rc, "epoll: %s", strerror(-rc));
	return 0;
}

int tp_open(struct tp **out, const struct tp_config *cfg, char *err,
            size_t errlen)
{
	struct tp *t;
	const char *self_addr = NULL;
	bool v6 = false;
	int rc;

	if (err && errlen)
		err[0] = 0;
	if (!out || !cfg)
		return fail(err, errlen, -EINVAL, "no config");
	*out = NULL;
	rc = check_config(cfg, err, errlen);
	if (rc)
		return rc;

	t = calloc(1, sizeof *t);
	if (!t)
		return fail(err, errlen, -ENOMEM, "out of memory");
	t->epfd = t->tfd = t->kfd = -1;
	t->self = cfg->self;
	t->n = cfg->npeers;
	t->plaintext = cfg->plaintext;
	t->hb_us = (uint64_t)(cfg->heartbeat_ms ? cfg->heartbeat_ms : 100) * 1000;
	t->dead_us = (uint64_t)(cfg->dead_after_ms ? cfg->dead_after_ms : 1000) *
	             1000;
	t->max_payload = cfg->max_payload ? cfg->max_payload : TP_DEFAULT_PAYLOAD;
	t->qlimit = cfg->queue_limit ? cfg->queue_limit : 1024;
	t->budget = cfg->poll_budget ? cfg->poll_budget : 256;
	t->inc = cfg->incarnation;
	if (!t->inc) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		t->inc = (uint64_t)ts.tv_sec * 1000000u +
		         (uint64_t)ts.tv_nsec / 1000u;
	}
	t->p = calloc(t->n, sizeof *t->p);
	t->nevs = (int)(2 * t->n + 8);
	t->evs = calloc((size_t)t->nevs, sizeof *t->evs);
	if (!t->p || !t->evs) {
		rc = fail(err, errlen, -ENOMEM, "out of memory");
		goto err;
	}
	for (uint32_t i = 0; i < cfg->npeers; i++) {
		const struct tp_peer_cfg *pc = &cfg->peers[i];
		struct peer *p = &t->p[pc->id];
		memcpy(p->address, pc->address, sizeof p->address);
		p->address[sizeof p->address - 1] = 0;
		snprintf(p->uid, sizeof p->uid, "%u", pc->id);
		if (!cfg->plaintext)
			decode_key(pc->public_key, p->key);
		if (pc->id == t->self)
			self_addr = p->address;
	}
	if (!cfg->plaintext) {
		memcpy(t->secret_z85, cfg->secret_key, TP_KEY_LEN);
		decode_key(t->secret_z85, t->secret);
		memcpy(t->public, t->p[t->self].key, 32);
	}

	t->epfd = epoll_create1(EPOLL_CLOEXEC);
	t->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	t->kfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (t->epfd < 0 || t->tfd < 0 || t->kfd < 0) {
		rc = fail(err, errlen, -errno, "epoll/timerfd/eventfd: %s",
		          strerror(errno));
		goto err;
	}
	if ((rc = ep_add_fd(t, t->tfd, K_TIMER, 0)) ||
	    (rc = ep_add_fd(t, t->kfd, K_KICK, 0))) {
		fail(err, errlen, rc, "epoll: %s", strerror(-rc));
		goto err;
	}

	t->zctx = zmq_ctx_new();
	if (!t->zctx) {
		rc = fail(err, errlen, -errno, "zmq_ctx_new: %s",
		          zmq_strerror(errno));
		goto err;
	}
	zmq_ctx_set(t->zctx, ZMQ_IO_THREADS, 1);
	zmq_ctx_set(t->zctx, ZMQ_MAX_SOCKETS, (int)(2 * t->n + 16));
	zmq_ctx_set(t->zctx, ZMQ_BLOCKY, 0);

	/* The ZAP handler first: without it libzmq admits any CURVE key. */
	if (!t->plaintext) {
		t->zap = new_socket(t, ZMQ_REP);
		if (!t->zap || zmq_bind(t->zap, ZAP_ENDPOINT)) {
			rc = fail(err, errlen, -errno, "ZAP handler: %s",
			          zmq_strerror(errno));
			goto err;
		}
		if ((rc = ep_add_sock(t, t->zap, K_ZAP, 0))) {
			fail(err, errlen, rc, "epoll: %s", strerror(-rc));
			goto err;
		}
	}

	t->pull = new_socket(t, ZMQ_PULL);
	if (!t->pull) {
		rc = fail(err, errlen, -errno, "zmq_socket(PULL): %s",
		          zmq_strerror(errno));
		goto err;
	}
	check_address(self_addr, &v6);
	int64_t maxmsg = (int64_t)W_LEN + TP_MAX_HDR + t->max_payload;
	if ((rc = set_int(t->pull, ZMQ_RCVHWM, (int)t->qlimit)) ||
	    (rc = set_int(t->pull, ZMQ_IPV6, v6)) ||
	    (zmq_setsockopt(t->pull, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) &&
	     (rc = -errno))) {
		fail(err, errlen, rc, "zmq_setsockopt(PULL): %s",
		     zmq_strerror(-rc));
		goto err;
	}
	if (!t->plaintext &&
	    (set_int(t->pull, ZMQ_CURVE_SERVER, 1) ||
	     zmq_setsockopt(t->pull, ZMQ_CURVE_SECRETKEY, t->secret, 32) ||
	     zmq_setsockopt(t->pull, ZMQ_ZAP_DOMAIN, ZAP_DOMAIN,
	                    strlen(ZAP_DOMAIN)))) {
		rc = fail(err, errlen, -errno, "CURVE options: %s",
		          zmq_strerror(errno));
		goto err;
	}
	t->pullmon = monitor(t, t->pull, "pull",
	                     ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
	                             ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL);
	if (!t->pullmon) {
		rc = fail(err, errlen, -errno, "monitor: %s",
		          zmq_strerror(errno));
		goto err;
	}
	if (zmq_bind(t->pull, self_addr)) {
		rc = fail(err, errlen, -errno, "bind %s: %s", self_addr,
		          zmq_strerror(errno));
		goto err;
	}
	if ((rc = ep_add_sock(t, t->pull, K_PULL, 0)) ||
	    (rc = ep_add_sock(t, t->pullmon, K_PULLMON, 0))) {
		fail(err, errlen, rc, "epoll: %s", strerror(-rc));
		goto err;
	}

	for (uint32_t i = 0; i < t->n; i++) {
		if (i == t->self)
			continue;
		rc = open_push(t, i, err, errlen);
		if (rc)
			goto err;
	}

	/* First tp_poll: drain, send the first heartbeats at once. */
	t->pull_more = true;
	t->next_hb = t->deadline = now_us();
	arm(t, t->deadline);
	*out = t;
	return 0;
err:
	tp_close(t);
	return rc;
}

/* ---- queries ---- */

int tp_fd(struct tp *t)
{
	return t->epfd;
}

bool tp_peer_alive(struct tp *t, uint32_t peer)
{
	return peer < t->n && peer != t->self &&
	       t->p[peer].state == TP_PEER_UP;
}

int tp_peer_info(struct tp *t, uint32_t peer, struct tp_peer_info *out)
{
	const struct peer *p;
	if (peer >= t->n || !out)
		return -EINVAL;
	p = &t->p[peer];
	*out = (struct tp_peer_info){
		.state = peer == t->self ? TP_PEER_UP : p->state,
		.incarnation = peer == t->self ? t->inc
		             : p->state == TP_PEER_JOINING ? p->cand
		                                           : p->inc,
		.silent_ms = p->last_us ? (now_us() - p->last_us) / 1000 : 0,
		.connected = p->connected,
		.sent = p->sent,
		.received = p->received,
	};
	return 0;
}

uint64_t tp_incarnation(struct tp *t)
{
	return t->inc;
}

void tp_stats(struct tp *t, struct tp_stats *out)
{
	*out = t->st;
}

const char *tp_down_reason_str(enum tp_down_reason why)
{
	switch (why) {
	case TP_DOWN_NONE:
		return "none";
	case TP_DOWN_TIMEOUT:
		return "timeout";
	case TP_DOWN_RESTARTED:
		return "restarted";
	case TP_DOWN_EVICTED:
		return "evicted";
	case TP_DOWN_BROKEN:
		return "broken";
	}
	return "?";
}
