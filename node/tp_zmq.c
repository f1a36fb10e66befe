/* tp_zmq.c — the transport of transport.h over ZeroMQ 4.3 with CURVE
 * (TP_KIND_ZMQ). The wire header, incarnations and the failure detector
 * are tp_common.c's; this file moves messages through ZeroMQ.
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
 * Wire format: frame 1 is the 32-byte transport header (tp_internal.h)
 * followed by the caller's header; frame 2, only if the payload is not
 * empty, is the payload. A heartbeat is exactly 32 bytes in one frame.
 *
 * Invariants (besides T1-T5 of transport.h and F1-F4 of tp_common.c):
 *  Z3. Every descriptor in the inner epoll that is reported readable is
 *      processed in that tp_poll (ZMQ_EVENTS, recv to EAGAIN, read), so
 *      tp_fd never stays readable with nothing to do; the PULL socket is
 *      drained to EAGAIN or, at poll_budget, the kick eventfd is raised.
 *  Z6. Messages move through ZeroMQ's I/O thread on both sides (a round
 *      trip wakes six threads where raw TCP wakes two), so a waiting
 *      caller that spins must yield the core between polls.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <zmq.h>

#include "tp_internal.h"

/* What an inner-epoll event is (the index is the peer's id). */
enum tag_kind { K_PULL = TP__K_IMPL, K_ZAP, K_PULLMON, K_PUSH, K_PUSHMON };

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define ZAP_DOMAIN "capdsm"
#define RECONNECT_IVL_MS 100
#define REDIAL_US 1000000u /* after a handshake refusal, see mon_drain */

/* What a peer is to ZeroMQ; its state is the common t->p[id]. */
struct zpeer {
	void *push;           /* PUSH connected to the peer; NULL for self */
	void *mon;            /* PAIR receiving the PUSH's monitor events */
	uint64_t redial_at;   /* recreate the PUSH then (0: no need) */
	uint32_t gen;         /* PUSHes created, names its monitor */
	char uid[12];         /* its ZAP User-Id: the decimal id */
};

struct tp_zmq {
	struct tp b;          /* first: the common head */
	void *zctx;
	void *pull, *pullmon, *zap;
	struct zpeer *zp;     /* b.n entries */
};

static const struct tp_ops zmq_ops;

/* ---- small helpers ---- */

static int set_int(void *s, int opt, int v)
{
	return zmq_setsockopt(s, opt, &v, sizeof v) ? -errno : 0;
}

/* Creates a socket with LINGER 0 (nothing outlives tp_close). */
static void *new_socket(struct tp_zmq *z, int type)
{
	void *s = zmq_socket(z->zctx, type);
	if (s && set_int(s, ZMQ_LINGER, 0)) {
		zmq_close(s);
		s = NULL;
	}
	return s;
}

/* Watches socket s's ZMQ_FD, then primes it. A new socket's command queue
 * and pipes start with their reader marked awake, so libzmq sends no wake-
 * up — and ZMQ_FD never becomes readable — until the application has once
 * found the socket empty. ZMQ_EVENTS does that (Z3). Call it after the
 * socket's bind or connect. */
static int ep_add_sock(struct tp_zmq *z, void *s, uint32_t kind, uint32_t idx)
{
	int fd, ev, rc;
	size_t len = sizeof fd;
	if (zmq_getsockopt(s, ZMQ_FD, &fd, &len))
		return -errno;
	rc = tp__ep_add(&z->b, fd, EPOLLIN, tp__tag(kind, 0, idx));
	len = sizeof ev;
	if (!rc && zmq_getsockopt(s, ZMQ_EVENTS, &ev, &len))
		rc = -errno;
	return rc;
}

/* Starts monitoring `s` for `events` on a PAIR connected to a unique
 * inproc endpoint. Must run before s binds or connects. */
static void *monitor(struct tp_zmq *z, void *s, const char *name, int events)
{
	char ep[64];
	void *m;
	snprintf(ep, sizeof ep, "inproc://tp.mon.%s", name);
	if (zmq_socket_monitor(s, ep, events))
		return NULL;
	m = new_socket(z, ZMQ_PAIR);
	if (m && zmq_connect(m, ep)) {
		zmq_close(m);
		m = NULL;
	}
	return m;
}

static int open_push(struct tp_zmq *z, uint32_t i, char *err, size_t errlen);

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
static int zap_serve(struct tp_zmq *z, const struct tp_handlers *h,
                     void *ctx)
{
	struct tp *t = &z->b;
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
			if (zmq_msg_recv(m, z->zap,
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
			events += tp__auth_fail(t, h, ctx,
			                    "refused a %s handshake from %s: "
			                    "only CURVE with a member key is "
			                    "admitted", mech, addr);
			rc = zap_reply(z->zap, nparts > 1 ? &part[1] : NULL,
			               "400", "CURVE only", "");
		} else {
			const uint8_t *k = zmq_msg_data(&part[6]);
			uint32_t who = UINT32_MAX;
			for (uint32_t i = 0; i < t->n; i++)
				if (memcmp(t->p[i].key, k, 32) == 0)
					who = i;
			zmq_z85_encode(key, k, 32);
			if (who == t->self) {
				events += tp__auth_fail(t, h, ctx,
				                    "refused CURVE key %s from %s: "
				                    "it is this node's own key", key,
				                    addr);
			} else if (who == UINT32_MAX) {
				events += tp__auth_fail(t, h, ctx,
				                    "refused CURVE key %s from %s: "
				                    "not a cluster member", key, addr);
			} else {
				uid = z->zp[who].uid;
			}
			rc = zap_reply(z->zap, &part[1], uid ? "200" : "400",
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
static void schedule_redial(struct tp_zmq *z, struct zpeer *p)
{
	if (p->redial_at)
		return;
	p->redial_at = tp__now_us() + REDIAL_US;
	tp__wake_at(&z->b, p->redial_at);
}

static void close_push(struct tp_zmq *z, uint32_t i)
{
	struct tp *t = &z->b;
	struct zpeer *p = &z->zp[i];
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
	t->p[i].connected = false;
	t->p[i].want_writable = false;
}

/* Replaces peer i's PUSH. What was queued in the old one is gone, so an
 * UP peer goes DOWN (T1: a loss is never silent). Returns callbacks. */
static int redial(struct tp_zmq *z, const struct tp_handlers *h, void *ctx,
                  uint32_t i)
{
	struct zpeer *p = &z->zp[i];
	int events = tp__peer_down(&z->b, h, ctx, i, TP_DOWN_BROKEN);

	p->redial_at = 0;
	close_push(z, i);
	if (open_push(z, i, NULL, 0)) {
		close_push(z, i);
		p->redial_at = tp__now_us() + REDIAL_US; /* try again later */
	}
	return events;
}

/* Drains one monitor PAIR (events: a 6-byte frame with a uint16 event and
 * a uint32 value, then the endpoint). `id` is the peer whose PUSH it
 * watches, or UINT32_MAX for the PULL. Returns callbacks made. */
static int mon_drain(struct tp_zmq *z, const struct tp_handlers *h,
                     void *ctx, void *mon, uint32_t id)
{
	struct tp *t = &z->b;
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

		struct tp__peer *p = id < t->n ? &t->p[id] : NULL;
		struct zpeer *zp = id < t->n ? &z->zp[id] : NULL;
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
				events += tp__auth_fail(t, h, ctx,
				                    "node %u (%s) refused this "
				                    "node's key (ZAP status %u)",
				                    id, p->address, value);
				schedule_redial(z, zp);
			}
			break;
		case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
			if (p)
				schedule_redial(z, zp);
			if (p)
				events += tp__auth_fail(t, h, ctx,
				                    "handshake with node %u (%s) "
				                    "failed: %s", id, p->address,
				                    proto_error(value));
			else
				events += tp__auth_fail(t, h, ctx,
				                    "handshake of a connection to "
				                    "%s failed: %s", ep,
				                    proto_error(value));
			break;
		case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
			if (p)
				events += tp__auth_fail(t, h, ctx,
				                    "handshake with node %u (%s) "
				                    "failed: %s", id, p->address,
				                    strerror((int)value));
			else
				events += tp__auth_fail(t, h, ctx,
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

/* Receives and handles one message from the PULL. Returns 1 if one was
 * consumed (delivered or dropped), 0 if none was queued, or -errno. */
static int recv_one(struct tp_zmq *z, const struct tp_handlers *h, void *ctx,
                    uint64_t now, int *events)
{
	struct tp *t = &z->b;
	zmq_msg_t f0, f1;
	int nframes = 1;
	size_t len0, plen = 0;
	uint32_t origin = TP__ANYONE;
	const uint8_t *b;

	zmq_msg_init(&f0);
	zmq_msg_init(&f1);
	if (zmq_msg_recv(&f0, z->pull, ZMQ_DONTWAIT) < 0) {
		int e = errno;
		zmq_msg_close(&f0);
		zmq_msg_close(&f1);
		return e == EAGAIN ? 0 : -e;
	}
	/* Multipart messages arrive whole: the rest is already queued. */
	if (zmq_msg_more(&f0)) {
		int more;
		if (zmq_msg_recv(&f1, z->pull, ZMQ_DONTWAIT) < 0)
			goto malformed;
		nframes = 2;
		more = zmq_msg_more(&f1);
		while (more) {
			zmq_msg_t x;
			zmq_msg_init(&x);
			if (zmq_msg_recv(&x, z->pull, ZMQ_DONTWAIT) < 0)
				more = 0;
			else
				more = zmq_msg_more(&x);
			zmq_msg_close(&x);
			nframes++;
		}
	}

	len0 = zmq_msg_size(&f0);
	b = zmq_msg_data(&f0);
	if (nframes > 2 || len0 < W_LEN)
		goto malformed;
	if (!t->plaintext) {
		/* T2: the origin is the ZAP User-Id of the connection. */
		const char *uid = zmq_msg_gets(&f0, "User-Id");
		origin = TP__NOBODY;
		for (uint32_t i = 0; uid && i < t->n; i++)
			if (!strcmp(uid, z->zp[i].uid))
				origin = i;
	}
	if (nframes == 2)
		plen = zmq_msg_size(&f1);
	tp__receive(t, h, ctx, b, b + W_LEN, len0 - W_LEN,
	            plen ? zmq_msg_data(&f1) : NULL, plen, nframes == 2, origin,
	            now, events);
	goto out;
malformed:
	t->st.drop_malformed++;
out:
	zmq_msg_close(&f0);
	zmq_msg_close(&f1);
	return 1;
}

/* ---- sending ---- */

static int zt_send_hb(struct tp *t, uint32_t peer, const uint8_t *hb)
{
	struct tp_zmq *z = (struct tp_zmq *)t;
	if (!z->zp[peer].push)
		return -ENOTCONN;
	return zmq_send(z->zp[peer].push, hb, W_LEN, ZMQ_DONTWAIT) == W_LEN
	               ? 0
	               : -EAGAIN;
}

/* Redials PUSHes that were refused (see schedule_redial). */
static int zt_timer(struct tp *t, const struct tp_handlers *h, void *ctx,
                     uint64_t now, uint64_t *next)
{
	struct tp_zmq *z = (struct tp_zmq *)t;
	int events = 0;

	for (uint32_t i = 0; i < t->n; i++) {
		struct zpeer *p = &z->zp[i];
		if (p->redial_at && now >= p->redial_at)
			events += redial(z, h, ctx, i);
		if (p->redial_at && p->redial_at < *next)
			*next = p->redial_at;
	}
	return events;
}

static bool zt_writable(struct tp *t, uint32_t peer)
{
	struct tp_zmq *z = (struct tp_zmq *)t;
	int zev = 0;
	size_t zl = sizeof zev;
	return z->zp[peer].push &&
	       zmq_getsockopt(z->zp[peer].push, ZMQ_EVENTS, &zev, &zl) == 0 &&
	       (zev & ZMQ_POLLOUT);
}

static int zt_send(struct tp *t, uint32_t peer, const void *hdr,
                       size_t hdrlen, const void *payload, size_t plen)
{
	struct tp_zmq *z = (struct tp_zmq *)t;
	struct tp__peer *p = &t->p[peer];
	void *push = z->zp[peer].push;
	zmq_msg_t m;
	struct tp__wire w;

	if (!push)
		return -EAGAIN; /* being recreated (redial) */

	w = (struct tp__wire){ .version = W_VERSION, .type = W_DATA,
		               .src = t->self, .src_inc = t->inc,
		               .dst_inc = p->inc, .seq = p->send_seq };
	if (zmq_msg_init_size(&m, W_LEN + hdrlen))
		return -errno;
	tp__wire_put(zmq_msg_data(&m), &w);
	if (hdrlen)
		memcpy((uint8_t *)zmq_msg_data(&m) + W_LEN, hdr, hdrlen);
	if (zmq_msg_send(&m, push, ZMQ_DONTWAIT | (plen ? ZMQ_SNDMORE : 0)) <
	    0) {
		int e = errno;
		zmq_msg_close(&m);
		if (e == EAGAIN)
			tp__send_full(t, peer);
		return -e;
	}
	if (plen && zmq_send(push, payload, plen, ZMQ_DONTWAIT) < 0) {
		/* Once a first frame is queued libzmq always takes the rest
		 * (lb_t::has_out); failing here means the pipe is torn down.
		 * The channel's state is unknown: crash-stop it (T1). */
		int e = errno;
		tp__notify_down(t, peer, TP_DOWN_BROKEN);
		return -e;
	}
	tp__sent(t, peer, hdrlen + plen);
	return 0;
}

/* ---- polling ---- */

static int zt_poll(struct tp *t, const struct tp_handlers *h, void *ctx)
{
	struct tp_zmq *z = (struct tp_zmq *)t;
	uint64_t now = tp__now_us();
	int events = 0, rc, k;

	rc = tp__poll_begin(t, now);
	if (rc)
		return rc;
	k = epoll_wait(t->epfd, t->evs, t->nevs, 0);
	if (k < 0 && errno != EINTR)
		return -errno;
	for (int i = 0; i < k; i++) { /* Z3 */
		struct tp__event ev = tp__event(&t->evs[i]);
		uint32_t idx = ev.idx;
		int zev;
		size_t zl = sizeof zev;

		switch (ev.kind) {
		case K_PULL:
			t->rx_more = true;
			break;
		case K_ZAP:
			rc = zap_serve(z, h, ctx);
			if (rc < 0)
				return rc;
			events += rc;
			break;
		case K_PULLMON:
			rc = mon_drain(z, h, ctx, z->pullmon, UINT32_MAX);
			if (rc < 0)
				return rc;
			events += rc;
			break;
		case K_PUSHMON:
			if (!z->zp[idx].mon)
				break;
			rc = mon_drain(z, h, ctx, z->zp[idx].mon, idx);
			if (rc < 0)
				return rc;
			events += rc;
			break;
		case K_PUSH:
			/* Processes the socket's commands, which clears its
			 * ZMQ_FD; room regained is checked below. */
			if (z->zp[idx].push)
				zmq_getsockopt(z->zp[idx].push, ZMQ_EVENTS, &zev,
				               &zl);
			break;
		case TP__K_TIMER:
		case TP__K_KICK:
			rc = tp__clear(t, ev.kind);
			if (rc)
				return rc;
			break;
		}
	}

	if (t->rx_more) {
		uint32_t n = 0;
		for (; n < t->budget; n++) {
			rc = recv_one(z, h, ctx, now, &events);
			if (rc < 0)
				return rc;
			if (rc == 0)
				break;
		}
		t->rx_more = n == t->budget;
		if (t->rx_more)
			tp__kick(t); /* Z3: stay readable while messages wait */
	}

	return events + tp__poll_end(t, h, ctx, now);
}

/* ---- set-up and tear-down ---- */

static void zt_close(struct tp *t)
{
	struct tp_zmq *z = (struct tp_zmq *)t;

	if (z->zp) {
		for (uint32_t i = 0; i < t->n; i++) {
			if (z->zp[i].mon)
				zmq_close(z->zp[i].mon);
			if (z->zp[i].push)
				zmq_close(z->zp[i].push);
		}
	}
	if (z->pullmon)
		zmq_close(z->pullmon);
	if (z->pull)
		zmq_close(z->pull);
	if (z->zap)
		zmq_close(z->zap);
	if (z->zctx)
		zmq_ctx_term(z->zctx);
	free(z->zp);
	tp__fini(t);
	free(z);
}

/* Creates and connects the PUSH to peer i, with its monitor. */
static int open_push(struct tp_zmq *z, uint32_t i, char *err, size_t errlen)
{
	struct tp *t = &z->b;
	struct zpeer *p = &z->zp[i];
	const char *address = t->p[i].address;
	char name[24];
	bool v6 = false;
	int rc;

	tp__parse_address(address, &v6, NULL, NULL);
	p->push = new_socket(z, ZMQ_PUSH);
	if (!p->push)
		return tp__fail(err, errlen, -errno, "zmq_socket(PUSH): %s",
		                zmq_strerror(errno));
	/* IMMEDIATE 0: messages queue while the connection (re)establishes,
	 * so a peer that is UP never sees -EAGAIN for a reconnect. */
	if ((rc = set_int(p->push, ZMQ_SNDHWM, (int)t->qlimit)) ||
	    (rc = set_int(p->push, ZMQ_IMMEDIATE, 0)) ||
	    (rc = set_int(p->push, ZMQ_RECONNECT_IVL, RECONNECT_IVL_MS)) ||
	    (rc = set_int(p->push, ZMQ_IPV6, v6)))
		return tp__fail(err, errlen, rc, "zmq_setsockopt(PUSH): %s",
		                zmq_strerror(-rc));
	if (!t->plaintext &&
	    (zmq_setsockopt(p->push, ZMQ_CURVE_SERVERKEY, t->p[i].key, 32) ||
	     zmq_setsockopt(p->push, ZMQ_CURVE_PUBLICKEY, t->public, 32) ||
	     zmq_setsockopt(p->push, ZMQ_CURVE_SECRETKEY, t->secret, 32)))
		return tp__fail(err, errlen, -errno, "CURVE options: %s",
		                zmq_strerror(errno));
	snprintf(name, sizeof name, "%u.%u", i, p->gen++);
	p->mon = monitor(z, p->push, name,
	                 ZMQ_EVENT_HANDSHAKE_SUCCEEDED |
	                         ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
	                         ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
	                         ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
	                         ZMQ_EVENT_DISCONNECTED);
	if (!p->mon)
		return tp__fail(err, errlen, -errno, "monitor: %s",
		                zmq_strerror(errno));
	if (zmq_connect(p->push, address))
		return tp__fail(err, errlen, -errno, "connect %s: %s", address,
		                zmq_strerror(errno));
	if ((rc = ep_add_sock(z, p->push, K_PUSH, i)) ||
	    (rc = ep_add_sock(z, p->mon, K_PUSHMON, i)))
		return tp__fail(err, errlen, rc, "epoll: %s", strerror(-rc));
	return 0;
}

int tp__zmq_open(struct tp **out, const struct tp_config *cfg, char *err,
                 size_t errlen)
{
	struct tp_zmq *z;
	struct tp *t;
	const char *self_addr;
	bool v6 = false;
	int rc;

	z = calloc(1, sizeof *z);
	if (!z)
		return tp__fail(err, errlen, -ENOMEM, "out of memory");
	t = &z->b;
	rc = tp__init(t, &zmq_ops, cfg, (int)(2 * cfg->npeers + 8), err,
	              errlen);
	if (rc)
		goto err;
	z->zp = calloc(t->n, sizeof *z->zp);
	if (!z->zp) {
		rc = tp__fail(err, errlen, -ENOMEM, "out of memory");
		goto err;
	}
	for (uint32_t i = 0; i < t->n; i++)
		snprintf(z->zp[i].uid, sizeof z->zp[i].uid, "%u", i);
	self_addr = t->p[t->self].address;

	z->zctx = zmq_ctx_new();
	if (!z->zctx) {
		rc = tp__fail(err, errlen, -errno, "zmq_ctx_new: %s",
		              zmq_strerror(errno));
		goto err;
	}
	zmq_ctx_set(z->zctx, ZMQ_IO_THREADS, 1);
	zmq_ctx_set(z->zctx, ZMQ_MAX_SOCKETS, (int)(2 * t->n + 16));
	zmq_ctx_set(z->zctx, ZMQ_BLOCKY, 0);

	/* The ZAP handler first: without it libzmq admits any CURVE key. */
	if (!t->plaintext) {
		z->zap = new_socket(z, ZMQ_REP);
		if (!z->zap || zmq_bind(z->zap, ZAP_ENDPOINT)) {
			rc = tp__fail(err, errlen, -errno, "ZAP handler: %s",
			              zmq_strerror(errno));
			goto err;
		}
		if ((rc = ep_add_sock(z, z->zap, K_ZAP, 0))) {
			tp__fail(err, errlen, rc, "epoll: %s", strerror(-rc));
			goto err;
		}
	}

	z->pull = new_socket(z, ZMQ_PULL);
	if (!z->pull) {
		rc = tp__fail(err, errlen, -errno, "zmq_socket(PULL): %s",
		              zmq_strerror(errno));
		goto err;
	}
	tp__parse_address(self_addr, &v6, NULL, NULL);
	int64_t maxmsg = (int64_t)W_LEN + TP_MAX_HDR + t->max_payload;
	if ((rc = set_int(z->pull, ZMQ_RCVHWM, (int)t->qlimit)) ||
	    (rc = set_int(z->pull, ZMQ_IPV6, v6)) ||
	    (zmq_setsockopt(z->pull, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) &&
	     (rc = -errno))) {
		tp__fail(err, errlen, rc, "zmq_setsockopt(PULL): %s",
		         zmq_strerror(-rc));
		goto err;
	}
	if (!t->plaintext &&
	    (set_int(z->pull, ZMQ_CURVE_SERVER, 1) ||
	     zmq_setsockopt(z->pull, ZMQ_CURVE_SECRETKEY, t->secret, 32) ||
	     zmq_setsockopt(z->pull, ZMQ_ZAP_DOMAIN, ZAP_DOMAIN,
	                    strlen(ZAP_DOMAIN)))) {
		rc = tp__fail(err, errlen, -errno, "CURVE options: %s",
		              zmq_strerror(errno));
		goto err;
	}
	z->pullmon = monitor(z, z->pull, "pull",
	                     ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
	                             ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL);
	if (!z->pullmon) {
		rc = tp__fail(err, errlen, -errno, "monitor: %s",
		              zmq_strerror(errno));
		goto err;
	}
	if (zmq_bind(z->pull, self_addr)) {
		rc = tp__fail(err, errlen, -errno, "bind %s: %s", self_addr,
		              zmq_strerror(errno));
		goto err;
	}
	if ((rc = ep_add_sock(z, z->pull, K_PULL, 0)) ||
	    (rc = ep_add_sock(z, z->pullmon, K_PULLMON, 0))) {
		tp__fail(err, errlen, rc, "epoll: %s", strerror(-rc));
		goto err;
	}

	for (uint32_t i = 0; i < t->n; i++) {
		if (i == t->self)
			continue;
		rc = open_push(z, i, err, errlen);
		if (rc)
			goto err;
	}

	tp__start(t);
	*out = t;
	return 0;
err:
	zt_close(t);
	return rc;
}

static const struct tp_ops zmq_ops = {
	.name = "zmq",
	.close = zt_close,
	.poll = zt_poll,
	.send = zt_send,
	.send_hb = zt_send_hb,
	.timer = zt_timer,
	.writable = zt_writable,
};
