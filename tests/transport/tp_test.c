/* tp_test.c — the harness of tp_test.h. The raw tp_tcp.c peer follows the
 * handshake and record format described at the top of node/tp_tcp.c; it is
 * a second, independent reading of that text, so a test that passes with
 * it checks the comment as much as the code. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <zmq.h>

#include "tp_test.h"

enum tp_kind tp_test_kind = TP_KIND_ZMQ;

uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

size_t fifo_len(uint64_t counter, size_t max)
{
	return (size_t)((counter * 2654435761u) % (max + 1));
}

uint8_t fifo_byte(uint64_t counter, size_t i)
{
	return (uint8_t)(counter * 31 + i);
}

/* ---- callbacks ---- */

static void on_msg(void *ctx, uint32_t from, const void *hdr, size_t hdrlen,
                   const void *payload, size_t plen)
{
	struct rec *r = ctx;

	assert_true(from < MAXN);
	assert_true((plen == 0) == (payload == NULL));
	r->msgs++;
	r->bytes += hdrlen + plen;
	r->from[from]++;
	r->last_from = from;
	r->last_hdrlen = hdrlen;
	r->last_plen = plen;
	if (hdrlen)
		memcpy(r->last_hdr, hdr, hdrlen);
	if (r->last_payload && plen && plen <= r->payload_cap)
		memcpy(r->last_payload, payload, plen);
	if (r->fifo) {
		uint64_t c;
		const uint8_t *p = payload;
		assert_int_equal(hdrlen, 16);
		memcpy(&c, hdr, 8);
		if (c != r->next[from])
			r->fifo_broken = true;
		r->next[from] = c + 1;
		if (plen != fifo_len(c, 4096))
			r->fifo_broken = true;
		for (size_t i = 0; i < plen; i++)
			if (p[i] != fifo_byte(c, i)) {
				r->fifo_broken = true;
				break;
			}
	}
	if (r->echo)
		tp_send(r->tp, from, hdr, hdrlen, payload, plen);
}

static void on_peer(void *ctx, uint32_t peer, bool up, uint64_t inc,
                    enum tp_down_reason why)
{
	struct rec *r = ctx;
	assert_true(peer < MAXN);
	r->up[peer] = up;
	r->inc[peer] = inc;
	if (up) {
		r->ups[peer]++;
	} else {
		r->downs[peer]++;
		r->why[peer] = why;
	}
}

static void on_auth_fail(void *ctx, const char *reason)
{
	struct rec *r = ctx;
	r->auth++;
	snprintf(r->auth_reason, sizeof r->auth_reason, "%s", reason);
	size_t l = strlen(r->all_reasons);
	snprintf(r->all_reasons + l, sizeof r->all_reasons - l, "%s\n", reason);
}

static void on_writable(void *ctx, uint32_t peer)
{
	struct rec *r = ctx;
	r->writable[peer]++;
}

const struct tp_handlers H = {
	.on_msg = on_msg,
	.on_peer = on_peer,
	.on_auth_fail = on_auth_fail,
	.on_writable = on_writable,
};

/* ---- a cluster on loopback ---- */

/* Free ports, all picked while every probe socket is still bound so none
 * is handed out twice. */
void free_ports(uint16_t *ports, uint32_t n)
{
	int fds[MAXN + 2];
	assert_true(n <= MAXN + 2);
	for (uint32_t i = 0; i < n; i++) {
		struct sockaddr_in a = { .sin_family = AF_INET,
			                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		socklen_t al = sizeof a;
		fds[i] = socket(AF_INET, SOCK_STREAM, 0);
		assert_true(fds[i] >= 0);
		assert_int_equal(bind(fds[i], (struct sockaddr *)&a, sizeof a), 0);
		assert_int_equal(getsockname(fds[i], (struct sockaddr *)&a, &al), 0);
		ports[i] = ntohs(a.sin_port);
	}
	for (uint32_t i = 0; i < n; i++)
		close(fds[i]);
}

void cluster_init(struct cluster *c, uint32_t n, bool plaintext)
{
	uint16_t ports[MAXN];

	memset(c, 0, sizeof *c);
	c->n = n;
	free_ports(ports, n);
	for (uint32_t i = 0; i < n; i++) {
		struct tp_peer_cfg *p = &c->peers[i];
		p->id = i;
		snprintf(p->address, sizeof p->address, "tcp://127.0.0.1:%u",
		         ports[i]);
		if (!plaintext)
			assert_int_equal(tp_keypair(p->public_key, c->sec[i]), 0);
	}
	for (uint32_t i = 0; i < n; i++) {
		c->cfg[i] = (struct tp_config){
			.kind = tp_test_kind,
			.self = i,
			.npeers = n,
			.peers = c->peers,
			.plaintext = plaintext,
			.heartbeat_ms = 50,
			.dead_after_ms = 1000,
		};
		memcpy(c->cfg[i].secret_key, c->sec[i], sizeof c->sec[i]);
	}
}

void node_open(struct cluster *c, uint32_t i)
{
	char err[256];
	struct rec *r = &c->rec[i];
	int rc = tp_open(&r->tp, &c->cfg[i], err, sizeof err);
	if (rc)
		fail_msg("tp_open node %u: %d %s", i, rc, err);
	if (!r->last_payload) {
		r->payload_cap = c->cfg[i].max_payload ? c->cfg[i].max_payload
		                                       : TP_DEFAULT_PAYLOAD;
		r->last_payload = malloc(r->payload_cap);
		assert_non_null(r->last_payload);
	}
}

void cluster_open(struct cluster *c)
{
	for (uint32_t i = 0; i < c->n; i++)
		node_open(c, i);
}

void cluster_close(struct cluster *c)
{
	for (uint32_t i = 0; i < c->n; i++) {
		tp_close(c->rec[i].tp);
		c->rec[i].tp = NULL;
		free(c->rec[i].last_payload);
		c->rec[i].last_payload = NULL;
	}
}

bool pump_mask(struct cluster *c, uint32_t mask, int timeout_ms, cond_fn cond,
               void *arg)
{
	uint64_t end = now_ms() + (uint64_t)timeout_ms;
	for (;;) {
		struct pollfd pfd[MAXN];
		int np = 0;
		for (uint32_t i = 0; i < c->n; i++) {
			struct rec *r = &c->rec[i];
			if (!r->tp || (mask && !(mask & (1u << i))))
				continue;
			int rc = tp_poll(r->tp, &H, r);
			assert_true(rc >= 0);
			pfd[np++] = (struct pollfd){ .fd = tp_fd(r->tp),
				                     .events = POLLIN };
		}
		if (cond && cond(c, arg))
			return true;
		if (now_ms() >= end)
			return false;
		poll(pfd, (nfds_t)np, 1);
	}
}

bool pump(struct cluster *c, int timeout_ms, cond_fn cond, void *arg)
{
	return pump_mask(c, 0, timeout_ms, cond, arg);
}

bool all_up(struct cluster *c, void *arg)
{
	(void)arg;
	for (uint32_t i = 0; i < c->n; i++)
		for (uint32_t j = 0; j < c->n; j++)
			if (i != j && c->rec[i].tp && c->rec[j].tp &&
			    !c->rec[i].up[j])
				return false;
	return true;
}

bool never(struct cluster *c, void *arg)
{
	(void)c;
	(void)arg;
	return false;
}

bool got_msgs(struct cluster *c, void *arg)
{
	const struct want *w = arg;
	return c->rec[w->node].msgs >= w->msgs;
}

bool up1(struct cluster *c, void *arg)
{
	int n = *(int *)arg;
	return c->rec[0].up[1] && c->rec[0].ups[1] >= n;
}

bool down1(struct cluster *c, void *arg)
{
	int n = *(int *)arg;
	return c->rec[0].downs[1] >= n;
}

size_t wire(uint8_t *b, uint8_t version, uint8_t type, uint8_t flags,
            uint32_t src, uint64_t src_inc, uint64_t dst_inc, uint64_t seq)
{
	memset(b, 0, 32);
	b[0] = version;
	b[1] = type;
	b[2] = flags;
	for (int i = 0; i < 4; i++)
		b[4 + i] = (uint8_t)(src >> (8 * i));
	for (int i = 0; i < 8; i++) {
		b[8 + i] = (uint8_t)(src_inc >> (8 * i));
		b[16 + i] = (uint8_t)(dst_inc >> (8 * i));
		b[24 + i] = (uint8_t)(seq >> (8 * i));
	}
	return 32;
}

/* ---- forked nodes ---- */

/* Runs node `id` of c in a child until killed (or for 30 s): echoes every
 * message; exits 3 when a peer evicts it. Never returns. */
static void child_node(struct cluster *c, uint32_t id)
{
	struct rec r = { 0 };
	char err[256];

	close_range(3, ~0u, 0); /* none of the parent's sockets */
	alarm(30);
	r.echo = true;
	if (tp_open(&r.tp, &c->cfg[id], err, sizeof err))
		_exit(2);
	for (;;) {
		if (tp_run(r.tp, &H, &r, 100, 0) < 0)
			_exit(4);
		for (uint32_t i = 0; i < c->n; i++)
			if (r.downs[i] && r.why[i] == TP_DOWN_EVICTED) {
				/* run a little longer: the peer must see
				 * (and drop) this incarnation's messages */
				for (int k = 0; k < 20; k++)
					tp_run(r.tp, &H, &r, 10, 0);
				_exit(3);
			}
	}
}

pid_t spawn(struct cluster *c, uint32_t id)
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		child_node(c, id);
	return pid;
}

/* ---- a raw peer of tp_tcp.c ---- */

#define HS_FIX 24
#define SS_AB crypto_secretstream_xchacha20poly1305_ABYTES
#define SS_HDR crypto_secretstream_xchacha20poly1305_HEADERBYTES

static void le32(uint8_t *b, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		b[i] = (uint8_t)(v >> (8 * i));
}

static void send_or_not(int fd, const void *b, size_t n)
{
	/* The node may have closed on us already: that is the point of
	 * several tests, so a failed send is no failure here. */
	const uint8_t *p = b;
	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w <= 0)
			return;
		p += w;
		n -= (size_t)w;
	}
}

int rawtcp_connect(const struct cluster *c, uint32_t to)
{
	struct sockaddr_in a = { .sin_family = AF_INET,
		                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	const char *colon = strrchr(c->peers[to].address, ':');
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	assert_true(fd >= 0 && colon);
	a.sin_port = htons((uint16_t)atoi(colon + 1));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
	return fd;
}

/* Reads exactly n bytes, pumping the cluster meanwhile (3 s at most).
 * Returns false if the connection closed or time ran out. */
static bool read_pumping(struct cluster *c, int fd, uint8_t *b, size_t n)
{
	size_t have = 0;
	uint64_t end = now_ms() + 3000;
	while (have < n && now_ms() < end) {
		pump(c, 2, NULL, NULL);
		ssize_t r = recv(fd, b + have, n - have, MSG_DONTWAIT);
		if (r == 0 || (r < 0 && errno != EAGAIN))
			return false;
		if (r > 0)
			have += (size_t)r;
	}
	return have == n;
}

int rawtcp_open(struct rawtcp *r, struct cluster *c, uint32_t as,
                const char *sec, uint32_t to)
{
	uint8_t m1[HS_FIX + 32], m2[HS_FIX + 32 + SS_HDR + 4 + SS_AB + 16];
	uint8_t m3[SS_HDR + 4 + SS_AB + 16];
	uint8_t esk[32], s[32], spub[32], rpub[32], dh[4][32], master[32];
	uint8_t k_ir[32], k_ri[32], hello[16], got[16];
	crypto_secretstream_xchacha20poly1305_state rs;
	crypto_generichash_state hs;
	unsigned long long glen;
	unsigned char tag;
	size_t l1 = HS_FIX;

	memset(r, 0, sizeof *r);
	r->keyed = sec != NULL;
	r->fd = rawtcp_connect(c, to);
	memset(m1, 0, sizeof m1);
	memcpy(m1, "capdsmtp", 8);
	m1[8] = 1;
	m1[9] = r->keyed ? 1 : 2;
	le32(m1 + 12, as);
	le32(m1 + 16, to);
	if (r->keyed) {
		randombytes_buf(esk, sizeof esk);
		crypto_scalarmult_base(m1 + HS_FIX, esk);
		l1 += 32;
	}
	send_or_not(r->fd, m1, l1);
	memcpy(r->sent, m1, l1);
	r->nsent = l1;
	if (!read_pumping(c, r->fd, m2, HS_FIX))
		return -1;
	r->status = m2[10];
	if (r->status)
		return r->status;
	if (!r->keyed)
		return 0;
	if (!read_pumping(c, r->fd, m2 + HS_FIX, sizeof m2 - HS_FIX))
		return -1;

	assert_non_null(zmq_z85_decode(s, sec));
	crypto_scalarmult_base(spub, s);
	assert_non_null(zmq_z85_decode(rpub, c->peers[to].public_key));
	assert_int_equal(crypto_scalarmult(dh[0], esk, m2 + HS_FIX), 0);
	assert_int_equal(crypto_scalarmult(dh[1], esk, rpub), 0);
	assert_int_equal(crypto_scalarmult(dh[2], s, m2 + HS_FIX), 0);
	assert_int_equal(crypto_scalarmult(dh[3], s, rpub), 0);
	crypto_generichash_init(&hs, NULL, 0, 32);
	crypto_generichash_update(&hs, (const uint8_t *)"capdsm tp_tcp KK 1",
	                          18);
	crypto_generichash_update(&hs, m1, sizeof m1);
	crypto_generichash_update(&hs, m2, HS_FIX + 32);
	crypto_generichash_update(&hs, spub, 32);
	crypto_generichash_update(&hs, rpub, 32);
	crypto_generichash_update(&hs, &dh[0][0], sizeof dh);
	crypto_generichash_final(&hs, master, 32);
	crypto_kdf_derive_from_key(k_ir, 32, 1, "capdsmtp", master);
	crypto_kdf_derive_from_key(k_ri, 32, 2, "capdsmtp", master);

	/* The node's hello: it does not authenticate if either side holds
	 * a key the other does not expect. */
	memcpy(hello, "capdsmOK", 8);
	le32(hello + 8, to);
	le32(hello + 12, as);
	const uint8_t *rec = m2 + HS_FIX + 32 + SS_HDR;
	bool ok = crypto_secretstream_xchacha20poly1305_init_pull(
	                  &rs, m2 + HS_FIX + 32, k_ri) == 0 &&
	          crypto_secretstream_xchacha20poly1305_pull(
	                  &rs, got, &glen, &tag, rec + 4, SS_AB + 16, NULL,
	                  0) == 0 &&
	          glen == 16 && memcmp(got, hello, 16) == 0;

	/* msg3 either way, as tp_tcp.c sends it. */
	crypto_secretstream_xchacha20poly1305_init_push(&r->tx, m3, k_ir);
	le32(hello + 8, as);
	le32(hello + 12, to);
	le32(m3 + SS_HDR, SS_AB + 16);
	crypto_secretstream_xchacha20poly1305_push(&r->tx, m3 + SS_HDR + 4,
	                                           NULL, hello, 16, NULL, 0,
	                                           0);
	send_or_not(r->fd, m3, sizeof m3);
	memcpy(r->sent + r->nsent, m3, sizeof m3);
	r->nsent += sizeof m3;
	return ok ? 0 : -2;
}

size_t rawtcp_seal(struct rawtcp *r, uint8_t *out, const void *body,
                   size_t blen)
{
	if (!r->keyed) {
		le32(out, (uint32_t)blen);
		memcpy(out + 4, body, blen);
		return 4 + blen;
	}
	le32(out, (uint32_t)(blen + SS_AB));
	crypto_secretstream_xchacha20poly1305_push(&r->tx, out + 4, NULL, body,
	                                           blen, NULL, 0, 0);
	return 4 + SS_AB + blen;
}

void rawtcp_record(struct rawtcp *r, const void *body, size_t blen)
{
	uint8_t *rec = malloc(4 + SS_AB + blen);
	assert_non_null(rec);
	send_or_not(r->fd, rec, rawtcp_seal(r, rec, body, blen));
	free(rec);
}

void rawtcp_msg(struct rawtcp *r, const uint8_t *w, const void *hdr,
                size_t hdrlen, const void *payload, size_t plen)
{
	uint8_t *body = malloc(36 + hdrlen + plen);
	assert_non_null(body);
	memcpy(body, w, 32);
	le32(body + 32, (uint32_t)hdrlen);
	if (hdrlen)
		memcpy(body + 36, hdr, hdrlen);
	if (plen)
		memcpy(body + 36 + hdrlen, payload, plen);
	rawtcp_record(r, body, 36 + hdrlen + plen);
	free(body);
}

void rawtcp_bytes(struct rawtcp *r, const void *b, size_t n)
{
	send_or_not(r->fd, b, n);
}

bool rawtcp_closed(struct rawtcp *r)
{
	uint8_t x[256];
	for (;;) {
		ssize_t n = recv(r->fd, x, sizeof x, MSG_DONTWAIT);
		if (n == 0 || (n < 0 && errno != EAGAIN))
			return true;
		if (n < 0)
			return false;
	}
}

void rawtcp_close(struct rawtcp *r)
{
	if (r->fd >= 0)
		close(r->fd);
	r->fd = -1;
	sodium_memzero(&r->tx, sizeof r->tx);
}
