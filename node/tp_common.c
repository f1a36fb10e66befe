/* tp_common.c — what every transport of transport.h does the same way:
 * config checks, addresses and keys, the wire header, and the incarnation
 * and failure-detector state machine that turns received headers into
 * on_msg and on_peer calls. An implementation (tp_zmq.c, tp_tcp.c) only
 * moves bytes: it hands each received message to tp__receive, queues the
 * heartbeats tp__send_hb builds, and brackets its tp_poll with
 * tp__poll_begin / tp__poll_end.
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
 *   UP -> DOWN, nothing for dead_after_ms      timer_work -> tp__peer_down
 *   UP -> (DOWN) -> JOINING, newer incarnation peer_seen
 *   DOWN -> JOINING, newer incarnation         peer_seen
 *   UP -> DOWN, W_HB_DEAD for our incarnation  handle_hb
 *   UP -> DOWN, seq gap in data or heartbeat   handle_hb, handle_data
 *
 * Invariants (besides T1-T5 of transport.h; the implementations add
 * their own, Z* in tp_zmq.c and C* in tp_tcp.c):
 *  F1. A data message is accepted only from an UP peer whose incarnation
 *      sent it, addressed to our incarnation, with seq == recv_seq; each
 *      acceptance increments recv_seq. Heartbeats carry the sender's
 *      send_seq, and travel in the same channel, so a heartbeat naming a
 *      seq other than recv_seq proves a loss (what sat in a TCP
 *      connection's buffers when it broke) -> TP_DOWN_BROKEN.
 *  F2. tp_send sends only to an UP peer, with its known incarnation: data
 *      for a former incarnation still on its way reaches the new one and
 *      is dropped there as stale, never delivered.
 *  F3. The timerfd is armed at or before the earliest of the next
 *      heartbeat, every UP peer's death deadline and every deadline of
 *      the implementation (redials, handshakes).
 *  F4. A peer is declared dead only for silence observed while this node
 *      itself was running: a gap of more than 2 * heartbeat_ms between
 *      two tp_poll calls restarts every UP peer's dead_after window.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>
#include <zmq.h>

#include "tp_internal.h"

#define AUTH_REPEAT_US 1000000u

/* ---- small helpers ---- */

uint64_t tp__now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int tp__fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
	if (err && errlen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return code;
}

void tp__put32(uint8_t *b, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		b[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *b, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		b[i] = (uint8_t)(v >> (8 * i));
}

uint32_t tp__get32(const uint8_t *b)
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

void tp__wire_put(uint8_t *b, const struct tp__wire *w)
{
	b[0] = w->version;
	b[1] = w->type;
	b[2] = w->flags;
	b[3] = 0;
	tp__put32(b + 4, w->src);
	put64(b + 8, w->src_inc);
	put64(b + 16, w->dst_inc);
	put64(b + 24, w->seq);
}

void tp__wire_get(const uint8_t *b, struct tp__wire *w)
{
	w->version = b[0];
	w->type = b[1];
	w->flags = b[2];
	w->reserved = b[3];
	w->src = tp__get32(b + 4);
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

int tp__parse_address(const char *a, bool *v6, struct sockaddr_storage *sa,
                      unsigned *salen)
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
	if (!sa)
		return 0;
	memset(sa, 0, sizeof *sa);
	if (*v6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)sa;
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)port);
		memcpy(&s6->sin6_addr, buf, sizeof s6->sin6_addr);
		*salen = sizeof *s6;
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)sa;
		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)port);
		memcpy(&s4->sin_addr, buf, sizeof s4->sin_addr);
		*salen = sizeof *s4;
	}
	return 0;
}

int tp__decode_key(const char *z85, uint8_t out[32])
{
	if (strnlen(z85, TP_KEY_LEN + 1) != TP_KEY_LEN)
		return -EINVAL;
	return zmq_z85_decode(out, z85) ? 0 : -EINVAL;
}

int tp__check_config(const struct tp_config *c, char *err, size_t errlen)
{
	bool seen[TP_MAX_PEERS] = { false };
	bool v6;

	if (c->kind != TP_KIND_ZMQ && c->kind != TP_KIND_TCP &&
	    c->kind != TP_KIND_RDMA)
		return tp__fail(err, errlen, -EINVAL,
		                "unknown transport kind %d", (int)c->kind);
	if (!c->peers || c->npeers == 0 || c->npeers > TP_MAX_PEERS)
		return tp__fail(err, errlen, -EINVAL,
		                "membership must list 1..%u nodes (got %u)",
		                TP_MAX_PEERS, c->npeers);
	if (c->self >= c->npeers)
		return tp__fail(err, errlen, -EINVAL,
		                "self id %u is not in the membership of %u nodes",
		                c->self, c->npeers);
	for (uint32_t i = 0; i < c->npeers; i++) {
		const struct tp_peer_cfg *pc = &c->peers[i];
		uint8_t k[32];
		if (pc->id >= c->npeers || seen[pc->id])
			return tp__fail(err, errlen, -EINVAL,
			                "node ids must be 0..%u, each once (entry "
			                "%u has id %u)", c->npeers - 1, i, pc->id);
		seen[pc->id] = true;
		if (tp__parse_address(pc->address, &v6, NULL, NULL))
			return tp__fail(err, errlen, -EINVAL,
			                "node %u: address \"%.*s\" is not "
			                "tcp://NUMERIC-IP:PORT (no \"*\", no host "
			                "names)", pc->id, (int)TP_ADDR_LEN - 1,
			                pc->address);
		for (uint32_t j = 0; j < i; j++)
			if (!strcmp(c->peers[j].address, pc->address))
				return tp__fail(err, errlen, -EINVAL,
				                "nodes %u and %u share address %s",
				                c->peers[j].id, pc->id,
				                pc->address);
		if (c->plaintext)
			continue;
		if (tp__decode_key(pc->public_key, k))
			return tp__fail(err, errlen, -EINVAL,
			                "node %u: public key is missing or not 40 "
			                "Z85 characters; a daemon without a "
			                "cluster key is refused (plaintext must be "
			                "set explicitly)", pc->id);
		for (uint32_t j = 0; j < i; j++)
			if (!strcmp(c->peers[j].public_key, pc->public_key))
				return tp__fail(err, errlen, -EINVAL,
				                "nodes %u and %u share a public key",
				                c->peers[j].id, pc->id);
	}
	if (sodium_init() < 0)
		return tp__fail(err, errlen, -ENOTSUP, "libsodium cannot start");
	if (!c->plaintext) {
		uint8_t k[32], pk[32];
		char pub[TP_KEY_LEN + 1];
		const struct tp_peer_cfg *me = NULL;
		if (c->kind == TP_KIND_ZMQ && !zmq_has("curve"))
			return tp__fail(err, errlen, -ENOTSUP,
			                "libzmq was built without CURVE");
		if (tp__decode_key(c->secret_key, k))
			return tp__fail(err, errlen, -EINVAL,
			                "secret key is missing or not 40 Z85 "
			                "characters; a daemon without a cluster "
			                "key is refused (plaintext must be set "
			                "explicitly)");
		/* A CURVE key pair is an X25519 one (crypto_box_keypair). */
		crypto_scalarmult_base(pk, k);
		zmq_z85_encode(pub, pk, 32);
		sodium_memzero(k, sizeof k);
		for (uint32_t i = 0; i < c->npeers; i++)
			if (c->peers[i].id == c->self)
				me = &c->peers[i];
		if (strcmp(pub, me->public_key) != 0)
			return tp__fail(err, errlen, -EINVAL,
			                "the secret key does not belong to node "
			                "%u: its public key is %s, the membership "
			                "says %s", c->self, pub, me->public_key);
	}
	if (c->heartbeat_ms > 600000 || c->dead_after_ms > 3600000 ||
	    c->max_payload > TP_MAX_PAYLOAD || c->queue_limit > 1000000 ||
	    c->send_buffer > (1u << 30))
		return tp__fail(err, errlen, -EINVAL, "a limit is out of range");
	uint32_t hb = c->heartbeat_ms ? c->heartbeat_ms : 100;
	uint32_t dead = c->dead_after_ms ? c->dead_after_ms : 1000;
	if (dead < 2 * hb)
		return tp__fail(err, errlen, -EINVAL,
		                "dead_after_ms (%u) must be at least twice "
		                "heartbeat_ms (%u)", dead, hb);
	return 0;
}

/* ---- descriptors ---- */

int tp__ep_add(struct tp *t, int fd, uint32_t events, uint64_t tag)
{
	struct epoll_event ev = { .events = events, .data.u64 = tag };
	return epoll_ctl(t->epfd, EPOLL_CTL_ADD, fd, &ev) ? -errno : 0;
}

void tp__arm(struct tp *t, uint64_t at_us)
{
	struct itimerspec its = { 0 };
	if (at_us == 0)
		at_us = 1; /* zero would disarm */
	its.it_value.tv_sec = (time_t)(at_us / 1000000u);
	its.it_value.tv_nsec = (long)(at_us % 1000000u) * 1000;
	timerfd_settime(t->tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

void tp__wake_at(struct tp *t, uint64_t at_us)
{
	if (at_us < t->deadline) {
		t->deadline = at_us;
		tp__arm(t, at_us);
	}
}

void tp__kick(struct tp *t)
{
	uint64_t one = 1;
	if (!t->kicked && write(t->kfd, &one, sizeof one) == sizeof one)
		t->kicked = true;
}

int tp__init(struct tp *t, const struct tp_ops *ops,
             const struct tp_config *cfg, int nevs, char *err, size_t errlen)
{
	int rc;

	t->ops = ops;
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
	t->nevs = nevs;
	t->evs = calloc((size_t)nevs, sizeof *t->evs);
	if (!t->p || !t->evs)
		return tp__fail(err, errlen, -ENOMEM, "out of memory");
	for (uint32_t i = 0; i < cfg->npeers; i++) {
		const struct tp_peer_cfg *pc = &cfg->peers[i];
		struct tp__peer *p = &t->p[pc->id];
		memcpy(p->address, pc->address, sizeof p->address);
		p->address[sizeof p->address - 1] = 0;
		if (!cfg->plaintext)
			tp__decode_key(pc->public_key, p->key);
	}
	if (!cfg->plaintext) {
		tp__decode_key(cfg->secret_key, t->secret);
		memcpy(t->public, t->p[t->self].key, 32);
	}

	t->epfd = epoll_create1(EPOLL_CLOEXEC);
	t->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	t->kfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (t->epfd < 0 || t->tfd < 0 || t->kfd < 0)
		return tp__fail(err, errlen, -errno, "epoll/timerfd/eventfd: %s",
		                strerror(errno));
	if ((rc = tp__ep_add(t, t->tfd, EPOLLIN, tp__tag(TP__K_TIMER, 0, 0))) ||
	    (rc = tp__ep_add(t, t->kfd, EPOLLIN, tp__tag(TP__K_KICK, 0, 0))))
		return tp__fail(err, errlen, rc, "epoll: %s", strerror(-rc));
	return 0;
}

void tp__start(struct tp *t)
{
	t->rx_more = true;
	t->next_hb = t->deadline = tp__now_us();
	tp__arm(t, t->deadline);
}

void tp__fini(struct tp *t)
{
	if (t->epfd >= 0)
		close(t->epfd);
	if (t->tfd >= 0)
		close(t->tfd);
	if (t->kfd >= 0)
		close(t->kfd);
	t->epfd = t->tfd = t->kfd = -1;
	free(t->evs);
	free(t->p);
	t->evs = NULL;
	t->p = NULL;
	sodium_memzero(t->secret, sizeof t->secret);
}

/* ---- reporting ---- */

/* Counts a refusal, keeps its text, and calls on_auth_fail unless the same
 * text was reported less than a second ago (a refused client retries every
 * 100 ms or so). Returns the number of callbacks made (0 or 1). */
int tp__auth_fail(struct tp *t, const struct tp_handlers *h, void *ctx,
                  const char *fmt, ...)
{
	char buf[sizeof t->st.last_auth_failure];
	struct tp__auth_slot *slot = &t->auth[0];
	uint64_t now = tp__now_us(), hash;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	t->st.auth_failures++;
	memcpy(t->st.last_auth_failure, buf, sizeof buf);

	hash = fnv1a(buf);
	for (int i = 0; i < TP__AUTH_SLOTS; i++) {
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

/* ---- the failure detector ---- */

static int peer_up(struct tp *t, const struct tp_handlers *h, void *ctx,
                   uint32_t id, uint64_t inc, uint64_t now)
{
	struct tp__peer *p = &t->p[id];
	p->state = TP_PEER_UP;
	p->inc = inc;
	p->send_seq = p->recv_seq = 0;
	p->sent = p->received = 0;
	p->last_us = now;
	p->want_writable = false;
	t->st.peers_up++;
	/* Our heartbeat naming it goes first, before anything the callback
	 * sends, so the peer comes UP without waiting for hb_ms. */
	tp__send_hb(t, id);
	if (h && h->on_peer) {
		h->on_peer(ctx, id, true, inc, TP_DOWN_NONE);
		return 1;
	}
	return 0;
}

int tp__peer_down(struct tp *t, const struct tp_handlers *h, void *ctx,
                  uint32_t id, enum tp_down_reason why)
{
	struct tp__peer *p = &t->p[id];
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

void tp__send_hb(struct tp *t, uint32_t id)
{
	struct tp__peer *p = &t->p[id];
	uint8_t b[W_LEN];
	struct tp__wire w = { .version = W_VERSION, .type = W_HB,
		              .src = t->self, .src_inc = t->inc };
	int rc;

	if (p->state == TP_PEER_UP) {
		w.dst_inc = p->inc;
		w.seq = p->send_seq;
	} else if (p->state == TP_PEER_DOWN) {
		w.dst_inc = p->inc;
		w.flags = W_HB_DEAD;
	} else {
		w.dst_inc = p->cand; /* 0 until we have heard of one */
	}
	tp__wire_put(b, &w);
	rc = t->ops->send_hb(t, id, b);
	if (rc == 0)
		t->st.hb_sent++;
	else if (rc == -EAGAIN && p->state == TP_PEER_UP)
		t->st.hb_dropped++; /* only the queue-full case matters */
}

enum seen { SEEN_CURRENT, SEEN_JOINING, SEEN_STALE };

/* Applies the incarnation rules to a valid message from `id` carrying its
 * incarnation `inc` and its idea `dst` of ours (T3). A newer incarnation
 * ends the current one (TP_DOWN_RESTARTED) and starts JOINING; it becomes
 * UP only once a message of it names our incarnation, which proves both
 * directions work (a one-way link — traffic filtered one way, or our
 * connection to it refused — never comes UP). Returns SEEN_CURRENT for a
 * message of the UP incarnation, SEEN_JOINING for one of an incarnation
 * still joining, SEEN_STALE for one of an older or dead incarnation. */
static enum seen peer_seen(struct tp *t, const struct tp_handlers *h,
                           void *ctx, uint32_t id, uint64_t inc, uint64_t dst,
                           uint64_t now, int *events)
{
	struct tp__peer *p = &t->p[id];

	if (p->state == TP_PEER_UP) {
		if (inc == p->inc) {
			p->last_us = now;
			return SEEN_CURRENT;
		}
		if (inc < p->inc)
			return SEEN_STALE;
		*events += tp__peer_down(t, h, ctx, id, TP_DOWN_RESTARTED);
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
		tp__send_hb(t, id); /* tell it our incarnation now, not in hb_ms */
	}
	if (dst != t->inc)
		return SEEN_JOINING;
	*events += peer_up(t, h, ctx, id, inc, now);
	return SEEN_CURRENT;
}

static void handle_hb(struct tp *t, const struct tp_handlers *h, void *ctx,
                      const struct tp__wire *w, int *events)
{
	struct tp__peer *p = &t->p[w->src];

	t->st.hb_recv++;
	if (w->dst_inc != t->inc)
		return; /* it does not know us yet, or knew a former us */
	if (w->flags & W_HB_DEAD)
		*events += tp__peer_down(t, h, ctx, w->src, TP_DOWN_EVICTED);
	else if (w->seq != p->recv_seq)
		*events += tp__peer_down(t, h, ctx, w->src,
		                         TP_DOWN_BROKEN); /* F1 */
}

static enum tp__rx handle_data(struct tp *t, const struct tp_handlers *h,
                               void *ctx, const struct tp__wire *w,
                               const uint8_t *hdr, size_t hdrlen,
                               const void *payload, size_t plen, int *events)
{
	struct tp__peer *p = &t->p[w->src];

	if (w->dst_inc != t->inc) {
		t->st.drop_stale++; /* F2: meant for a former incarnation */
		return TP__RX_STALE;
	}
	if (w->seq != p->recv_seq) {
		*events += tp__peer_down(t, h, ctx, w->src,
		                         TP_DOWN_BROKEN); /* F1 */
		return TP__RX_OK;
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
	return TP__RX_OK;
}

enum tp__rx tp__receive(struct tp *t, const struct tp_handlers *h, void *ctx,
                        const uint8_t *b, const uint8_t *hdr, size_t hdrlen,
                        const void *payload, size_t plen, bool has_payload,
                        uint32_t origin, uint64_t now, int *events)
{
	struct tp__wire w;

	/* Decode and check everything, then act. */
	tp__wire_get(b, &w);
	if (w.version != W_VERSION || w.reserved ||
	    (w.type != W_DATA && w.type != W_HB) || w.src >= t->n ||
	    w.src == t->self || w.src_inc == 0)
		goto malformed;
	if (w.type == W_HB && (has_payload || hdrlen ||
	                       (w.flags & ~W_HB_DEAD)))
		goto malformed;
	if (w.type == W_DATA && w.flags)
		goto malformed;
	if (origin != TP__ANYONE && origin != w.src) {
		t->st.drop_spoofed++; /* T2 */
		return TP__RX_SPOOFED;
	}
	if (hdrlen > TP_MAX_HDR || plen > t->max_payload) {
		t->st.drop_oversize++;
		return TP__RX_OVERSIZE;
	}
	switch (peer_seen(t, h, ctx, w.src, w.src_inc, w.dst_inc, now,
	                  events)) {
	case SEEN_STALE:
		t->st.drop_stale++;
		return TP__RX_STALE;
	case SEEN_JOINING: /* its data cannot name us: stale; a heartbeat
	                      has done its work in peer_seen */
		if (w.type == W_HB) {
			t->st.hb_recv++;
			return TP__RX_OK;
		}
		t->st.drop_stale++;
		return TP__RX_STALE;
	case SEEN_CURRENT:
		break;
	}
	if (w.type == W_HB) {
		handle_hb(t, h, ctx, &w, events);
		return TP__RX_OK;
	}
	return handle_data(t, h, ctx, &w, hdr, hdrlen, payload, plen, events);
malformed:
	t->st.drop_malformed++;
	return TP__RX_MALFORMED;
}

/* Heartbeats when due; the implementation's timed work; DOWN for every UP
 * peer silent for dead_after (skipped while messages may wait unread:
 * they may be the proof of life); rearms the timer (F3). Returns
 * callbacks made. */
static int timer_work(struct tp *t, const struct tp_handlers *h, void *ctx,
                      uint64_t now)
{
	int events = 0;
	uint64_t dl;

	if (now >= t->next_hb) {
		for (uint32_t i = 0; i < t->n; i++)
			if (i != t->self)
				tp__send_hb(t, i);
		t->next_hb = now + t->hb_us;
	}
	dl = t->next_hb;
	events += t->ops->timer(t, h, ctx, now, &dl);
	for (uint32_t i = 0; i < t->n; i++) {
		struct tp__peer *p = &t->p[i];
		uint64_t d = p->last_us + t->dead_us;
		if (p->state != TP_PEER_UP)
			continue;
		if (now >= d && !t->rx_more) {
			events += tp__peer_down(t, h, ctx, i, TP_DOWN_TIMEOUT);
			continue;
		}
		if (d < dl)
			dl = d;
	}
	t->deadline = dl;
	tp__arm(t, dl);
	return events;
}

/* ---- sending ---- */

int tp__send_check(struct tp *t, uint32_t peer, const void *hdr,
                   size_t hdrlen, const void *payload, size_t plen)
{
	if (peer >= t->n || peer == t->self || (plen && !payload) ||
	    (hdrlen && !hdr))
		return -EINVAL;
	if (hdrlen > TP_MAX_HDR || plen > t->max_payload)
		return -EMSGSIZE;
	if (t->p[peer].state == TP_PEER_DOWN)
		return -EHOSTDOWN;
	if (t->p[peer].state == TP_PEER_JOINING)
		return -ENOTCONN;
	return 0;
}

void tp__sent(struct tp *t, uint32_t peer, size_t bytes)
{
	struct tp__peer *p = &t->p[peer];
	p->send_seq++;
	p->sent++;
	p->want_writable = false;
	t->st.msgs_sent++;
	t->st.bytes_sent += bytes;
}

void tp__send_full(struct tp *t, uint32_t peer)
{
	t->p[peer].want_writable = true;
	t->st.send_full++;
}

void tp__notify_down(struct tp *t, uint32_t peer, enum tp_down_reason why)
{
	struct tp__peer *p = &t->p[peer];
	p->state = TP_PEER_DOWN;
	p->notify = why;
	t->notify_pending = true;
	tp__kick(t);
}

/* ---- polling ---- */

int tp__poll_begin(struct tp *t, uint64_t now)
{
	/* F4: after our own stall (SIGSTOP, swapping, a blocked loop) the
	 * backlog may not even be read yet: we cannot judge anyone's
	 * silence, so every UP peer gets a fresh window. If they judged us
	 * dead meanwhile, their heartbeats say so (EVICTED). */
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
	return 0;
}

int tp__clear(struct tp *t, uint32_t kind)
{
	uint64_t v;
	int fd = kind == TP__K_TIMER ? t->tfd : t->kfd;
	if (read(fd, &v, sizeof v) < 0 && errno != EAGAIN)
		return -errno;
	return 0;
}

int tp__poll_end(struct tp *t, const struct tp_handlers *h, void *ctx,
                 uint64_t now)
{
	int events = 0;

	if (t->notify_pending) {
		t->notify_pending = false;
		for (uint32_t i = 0; i < t->n; i++) {
			struct tp__peer *p = &t->p[i];
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
		struct tp__peer *p = &t->p[i];
		if (!p->want_writable || !t->ops->writable(t, i))
			continue;
		p->want_writable = false;
		if (h && h->on_writable) {
			h->on_writable(ctx, i);
			events++;
		}
	}

	if (now >= t->deadline)
		events += timer_work(t, h, ctx, now);
	return events;
}
