/* tp.c — the public face of transport.h: tp_open picks the implementation
 * by tp_config.kind (tp_zmq.c or tp_tcp.c), and every other call either
 * goes through the struct tp_ops at the head of the struct tp, or reads
 * the common head directly (tp_internal.h). Nothing here knows a socket.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <string.h>

#include <zmq.h>

#include "tp_internal.h"

int tp_keypair(char pub[TP_KEY_LEN + 1], char sec[TP_KEY_LEN + 1])
{
	if (!zmq_has("curve"))
		return -ENOTSUP;
	return zmq_curve_keypair(pub, sec) ? -errno : 0;
}

int tp_open(struct tp **out, const struct tp_config *cfg, char *err,
            size_t errlen)
{
	int rc;

	if (err && errlen)
		err[0] = 0;
	if (!out || !cfg)
		return tp__fail(err, errlen, -EINVAL, "no config");
	*out = NULL;
	rc = tp__check_config(cfg, err, errlen);
	if (rc)
		return rc;
	if (cfg->kind == TP_KIND_TCP || cfg->kind == TP_KIND_RDMA)
		return tp__tcp_open(out, cfg, err, errlen);
	return tp__zmq_open(out, cfg, err, errlen);
}

void tp_close(struct tp *t)
{
	if (t)
		t->ops->close(t);
}

int tp_fd(struct tp *t)
{
	return t->epfd;
}

int tp_poll(struct tp *t, const struct tp_handlers *h, void *ctx)
{
	return t->ops->poll(t, h, ctx);
}

int tp_send(struct tp *t, uint32_t peer, const void *hdr, size_t hdrlen,
            const void *payload, size_t plen)
{
	int rc = tp__send_check(t, peer, hdr, hdrlen, payload, plen);
	if (rc)
		return rc;
	return t->ops->send(t, peer, hdr, hdrlen, payload, plen);
}

void tp_cork(struct tp *t, bool on)
{
	if (t->ops->cork)
		t->ops->cork(t, on);
}

int tp_next_timeout_ms(struct tp *t)
{
	uint64_t now = tp__now_us();
	if (t->rx_more || t->kicked || now >= t->deadline)
		return 0;
	uint64_t ms = (t->deadline - now + 999) / 1000;
	return ms > INT_MAX ? INT_MAX : (int)ms;
}

int tp_run(struct tp *t, const struct tp_handlers *h, void *ctx,
           int timeout_ms, uint32_t spin_us)
{
	uint64_t start = tp__now_us();
	uint64_t end = timeout_ms < 0 ? UINT64_MAX
	                              : start + (uint64_t)timeout_ms * 1000u;

	for (;;) {
		int n = tp_poll(t, h, ctx);
		if (n != 0)
			return n;
		uint64_t now = tp__now_us();
		if (now >= end)
			return 0;
		if (now - start < spin_us) {
			/* Z6 of tp_zmq.c: ZeroMQ's I/O thread must run for
			 * anything to arrive; on a machine with few cores a
			 * spin that does not yield delays it (measured: p99 of
			 * milliseconds). For tp_tcp.c it is merely polite. */
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

bool tp_peer_alive(struct tp *t, uint32_t peer)
{
	return peer < t->n && peer != t->self &&
	       t->p[peer].state == TP_PEER_UP;
}

int tp_peer_info(struct tp *t, uint32_t peer, struct tp_peer_info *out)
{
	const struct tp__peer *p;
	if (peer >= t->n || !out)
		return -EINVAL;
	p = &t->p[peer];
	*out = (struct tp_peer_info){
		.state = peer == t->self ? TP_PEER_UP : p->state,
		.incarnation = peer == t->self ? t->inc
		             : p->state == TP_PEER_JOINING ? p->cand
		                                           : p->inc,
		.silent_ms = p->last_us ? (tp__now_us() - p->last_us) / 1000 : 0,
		.connected = p->connected,
		.sent = p->sent,
		.received = p->received,
	};
	return 0;
}

const char *tp_describe(struct tp *t)
{
	return t->desc[0] ? t->desc : t->ops->name;
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

const char *tp_kind_str(enum tp_kind kind)
{
	switch (kind) {
	case TP_KIND_ZMQ:
		return "zmq";
	case TP_KIND_TCP:
		return "tcp";
	case TP_KIND_RDMA:
		return "rdma";
	}
	return "?";
}

int tp_kind_parse(const char *s, enum tp_kind *out)
{
	if (!s || !out)
		return -EINVAL;
	if (!strcmp(s, "zmq"))
		*out = TP_KIND_ZMQ;
	else if (!strcmp(s, "tcp"))
		*out = TP_KIND_TCP;
	else if (!strcmp(s, "rdma"))
		*out = TP_KIND_RDMA;
	else
		return -EINVAL;
	return 0;
}
