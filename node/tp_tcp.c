/* tp_tcp.c — the transport of transport.h over plain TCP sockets, driven
 * from the caller's loop (TP_KIND_TCP): no thread, every byte moves inside
 * tp_send and tp_poll, so a round trip wakes two threads where ZeroMQ wakes
 * six. Encrypted and authenticated with libsodium; the wire header,
 * incarnations and the failure detector are tp_common.c's.
 *
 * Topology, as tp_zmq.c's: each node listens on its own address and dials
 * every other node; it sends only on the connection it dialled and
 * receives only on connections it accepted. One TCP connection per ordered
 * pair, so each channel is FIFO (T1). A broken connection is closed and
 * redialled REDIAL_US later; what sat in it is lost, which F1 turns into
 * TP_DOWN_BROKEN at the receiver once our next heartbeat arrives.
 *
 * Handshake (keyed; integers little-endian). Every node's static key is its
 * CURVE key, an X25519 pair: s secret, S public, from the membership.
 *
 *   msg1  I -> R  header(24) e_i(32)
 *   msg2  R -> I  header(24) e_r(32) ss-header R->I(24) hello-record(R)
 *   msg3  I -> R  ss-header I->R(24) hello-record(I); data records follow
 *
 *   header: off 0 magic "capdsmtp" (8), 8 version (1), 9 mode (1: keyed,
 *           2: plaintext), 10 status (msg2: 0 accepted, else why refused;
 *           msg1: 0), 11 zero, 12 from: sender's id (4), 16 to: the id the
 *           sender believes it talks to (4), 20 zero (4)
 *
 *   dh1 = X25519(e_i, e_r)  dh2 = X25519(e_i, S_r)
 *   dh3 = X25519(s_i, e_r)  dh4 = X25519(s_i, S_r)   (R computes the same
 *                                        values from its own secrets)
 *   master = BLAKE2b-256(label, msg1, msg2's header and e_r, S_i, S_r,
 *                        dh1, dh2, dh3, dh4)
 *   k_ir, k_ri = crypto_kdf(master, 1 and 2, "capdsmtp")
 *
 * This is the shape of Noise's KK pattern (both static keys known in
 * advance, both sides contribute an ephemeral), built from libsodium
 * primitives only. R looks up S_i for the id msg1 claims; the keys come
 * out equal only if I holds s_i and R holds s_r, so each hello record
 * (16 bytes: "capdsmOK", from, to) proves its sender's key, and an
 * accepted connection carries data only after I's hello authenticated.
 * The keys need all four results: dh4 needs s_i or s_r, so no one
 * without a member's secret key computes them. Replay: a recorded msg1 +
 * msg3 replayed to R meets a fresh e_r, so the keys differ and the
 * recorded hello and records fail to authenticate; a replayed msg2 meets a
 * fresh e_i likewise. dh1 needs an ephemeral secret, wiped once the keys
 * are made, so recorded traffic stays sealed even if static keys leak
 * later (forward secrecy). msg2's status is not authenticated: a forged
 * refusal only delays a connection, which anyone on the path can do.
 *
 * Records, on a connection past its handshake: length (4) then that many
 * bytes: keyed, a crypto_secretstream_xchacha20poly1305 message (17 bytes
 * more than its plaintext, one stream per direction, its header sent in
 * msg2 / msg3); plaintext, the bytes themselves. The plaintext of a record
 * is the body:
 *
 *   transport header (32, tp_internal.h) | caller header length (4) |
 *   caller header | payload
 *
 * A secretstream numbers its messages, so a record dropped, replayed or
 * reordered inside a connection fails to decrypt, as does a changed byte.
 *
 * Plaintext mode (both ends must set it): msg1 and msg2 are the 24-byte
 * headers alone, no msg3, records unencrypted. A keyed and a plaintext
 * node refuse each other (status "mode mismatch") and never connect.
 *
 * Invariants (besides T1-T5 of transport.h and F1-F4 of tp_common.c):
 *  C1. An accepted connection delivers only after its handshake, and only
 *      messages whose header names the node the handshake proved (else
 *      drop_spoofed); a newer proven connection of a node replaces the
 *      older (one data connection per ordered pair).
 *  C2. A record longer than the largest legal message, one that fails to
 *      decrypt or to parse, closes its connection: after one bad record a
 *      stream has no trustworthy boundary left. Never a skip.
 *  C3. A record is sealed only after room for it is certain, so every
 *      record of a secretstream reaches the socket or dies with the
 *      connection: the receiver's stream never falls out of step.
 *  C4. All memory is allocated by tp_open: a ring per peer for records
 *      the socket did not take, a receive buffer per peer for its proven
 *      connection, a fixed set of connection slots. When every slot is
 *      taken, the oldest connection still in its handshake is dropped.
 *  C5. Every descriptor reported readable is serviced in that tp_poll, or
 *      (at poll_budget) the kick eventfd is raised; so tp_fd is level-
 *      triggered for the caller (T5).
 *  C6. Records sent from tp_poll's callbacks, or between tp_cork(on) and
 *      tp_cork(off), are corked: they wait in the ring until the outermost
 *      cork is released and then leave together, one write per peer (a
 *      cork that would overflow the ring is written out first). Other
 *      sends are written at once.
 */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <sodium.h>

#include "tp_internal.h"
#include "tp_rdma.h"

#define SS_TAG crypto_secretstream_xchacha20poly1305_TAG_MESSAGE

enum {
	HS_FIX = 24,     /* the handshake header */
	HS_KEY = 32,     /* an X25519 public key */
	HS_VERSION = 1,
	MODE_KEYED = 1,
	MODE_PLAIN = 2,
	MODE_RDMA_KEYED = 3, /* TP_KIND_RDMA: the same handshake, an endpoint */
	MODE_RDMA_PLAIN = 4, /* in each hello, data over queue pairs */
	SS_HDR = crypto_secretstream_xchacha20poly1305_HEADERBYTES,
	SS_AB = crypto_secretstream_xchacha20poly1305_ABYTES,
	HELLO_LEN = 16,
	HELLO_MAX = HELLO_LEN + VX_EP_LEN, /* with an RDMA endpoint */
	MSG1_KEYED = HS_FIX + HS_KEY,
	MSG2_MAX = HS_FIX + HS_KEY + SS_HDR + 4 + SS_AB + HELLO_MAX,
	MSG3_MAX = SS_HDR + 4 + SS_AB + HELLO_MAX,
	HS_BUF = 128,    /* the larger of msg1 and msg3 */
	BODY_FIX = W_LEN + 4,
	READY = 'R',     /* RDMA: the acceptor's queue pair is ready */
};
_Static_assert(MSG1_KEYED <= HS_BUF && MSG3_MAX <= HS_BUF, "HS_BUF too small");
_Static_assert(SS_HDR == 24 && SS_AB == 17, "secretstream sizes changed");

/* Whether the first bytes of a handshake are ZMTP 3's signature (0xFF,
 * eight bytes, 0x7F): a node configured with transport = zmq. Each side
 * of ZMTP sends those 10 bytes and waits for the other's, so they are all
 * that ever arrives; saying what they are beats a handshake timeout. */
static bool zmtp(const uint8_t *b, size_t have)
{
	return have >= 10 && b[0] == 0xFF && b[9] == 0x7F;
}

/* msg2's status: why a responder refused. */
enum { ST_OK = 0, ST_MODE, ST_MEMBER, ST_NODE, ST_VERSION };

static const char MAGIC[8] = { 'c', 'a', 'p', 'd', 's', 'm', 't', 'p' };
static const char HELLO[8] = { 'c', 'a', 'p', 'd', 's', 'm', 'O', 'K' };
static const char KDF_CTX[crypto_kdf_CONTEXTBYTES] = { 'c', 'a', 'p', 'd',
	                                               's', 'm', 't', 'p' };
#define LABEL "capdsm tp_tcp KK 1"

#define REDIAL_US 100000u   /* after a failed or lost connection */
#define REFUSED_US 500000u  /* after a refused handshake */
#define SPARE_SLOTS 8u      /* connection slots beyond one per peer */
#define ACCEPTS_PER_POLL 16
#define RDMA_TX_BYTES (32ull << 20) /* send frames per peer, at most */

/* What an inner-epoll event is; the index is a peer id (K_OUT) or a slot
 * (K_IN), the generation that of the descriptor. */
enum tag_kind { K_LISTEN = TP__K_IMPL, K_OUT, K_IN, K_CQ };

enum ostate {
	O_IDLE,       /* no socket; dial at `at` */
	O_CONNECTING, /* connect in progress; give up at `at` */
	O_HANDSHAKE,  /* msg1 sent, reading msg2; give up at `at` */
	O_RDMA_WAIT,  /* msg3 sent, awaiting READY; give up at `at` */
	O_READY,      /* sends records (RDMA: writes into the peer's ring) */
};

/* The connection this node dialled to one peer. */
struct out {
	int fd;
	enum ostate st;
	uint16_t gen;
	bool pollout;            /* EPOLLOUT is watched: the ring is not empty */
	bool corked;             /* records appended inside tcp_poll (C6) */
	uint64_t at;
	struct sockaddr_storage sa;
	unsigned salen;
	uint8_t esk[32];         /* ephemeral secret, during the handshake */
	uint8_t msg1[MSG1_KEYED];
	uint8_t hs[MSG2_MAX];    /* msg2 as it arrives */
	size_t have;
	crypto_secretstream_xchacha20poly1305_state tx;
	/* Records the socket has not taken yet, in a ring of `cap` bytes;
	 * head and tail count bytes written and appended since it was last
	 * empty, ends[] the tail after each of nrec records (<= qlimit). */
	uint8_t *ring;
	size_t cap;
	uint64_t head, tail;
	uint64_t *ends;
	uint32_t nrec, first;
};

enum istate {
	I_FREE,
	I_HELLO,   /* reading msg1 */
	I_CONFIRM, /* msg2 sent, reading msg3 */
	I_READY,   /* proven: receives records into buf */
};

/* A connection this node accepted. */
struct in {
	int fd;
	enum istate st;
	uint16_t gen;
	bool pending;            /* records may wait in buf (poll_budget) */
	bool eof;                /* the peer closed: no more to read */
	uint32_t peer;           /* the id msg1 claims; proven once I_READY */
	uint64_t at;             /* handshake deadline */
	uint64_t since;          /* accepted then */
	uint8_t hs[HS_BUF];
	size_t have, need;
	uint8_t key[32];         /* k_ir, from msg2 until msg3 */
	crypto_secretstream_xchacha20poly1305_state rx;
	uint8_t *buf;            /* I_READY: rbuf[peer] */
	size_t len;              /* bytes in buf */
	char from[INET6_ADDRSTRLEN];
};

struct tp_tcp {
	struct tp b;             /* first: the common head */
	int lfd;
	uint8_t mode;
	struct out *out;         /* b.n entries, by peer id */
	struct in *in;           /* nin slots */
	uint32_t nin;
	uint8_t **rbuf;          /* b.n: receive buffer for node i's records */
	size_t maxct;            /* largest record after its length field */
	size_t minct;            /* smallest */
	uint8_t *plain;          /* a decrypted body */
	uint8_t *txp;            /* a body being sealed */
	uint8_t *txb;            /* a sealed record, length included */
	uint64_t hs_us;          /* a handshake must end within this */
	uint32_t in_poll;        /* corks held: inside tcp_poll, tp_cork (C6) */
	/* TP_KIND_RDMA: the verbs data path (tp_rdma.h), and the bytes of
	 * endpoint each hello carries (0 without RDMA). */
	struct vx *vx;
	size_t ep_len;
	/* Handshake sizes of this mode (keyed or plaintext, with or
	 * without an endpoint): msg2 after its header, msg3, hello body. */
	size_t msg2_len, msg3_len, hello_len;
};

static const struct tp_ops tcp_ops;

/* ---- small helpers ---- */

static void hs_header(uint8_t *b, uint8_t mode, uint8_t status, uint32_t from,
                      uint32_t to)
{
	memset(b, 0, HS_FIX);
	memcpy(b, MAGIC, sizeof MAGIC);
	b[8] = HS_VERSION;
	b[9] = mode;
	b[10] = status;
	tp__put32(b + 12, from);
	tp__put32(b + 16, to);
}

/* Writes a handshake message whole: a fresh socket's buffer takes these
 * few bytes at once, so a short write means the connection is gone. */
static bool send_all(int fd, const void *b, size_t len)
{
	return send(fd, b, len, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)len;
}

static void set_nodelay(int fd)
{
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static int watch(struct tp_tcp *c, int fd, uint32_t events, uint64_t tag)
{
	struct epoll_event ev = { .events = events, .data.u64 = tag };
	return epoll_ctl(c->b.epfd, EPOLL_CTL_MOD, fd, &ev) ? -errno : 0;
}

/* Takes a connection's descriptor out of the epoll and closes it. */
static void drop_fd(struct tp_tcp *c, int *fd)
{
	if (*fd >= 0) {
		epoll_ctl(c->b.epfd, EPOLL_CTL_DEL, *fd, NULL);
		close(*fd);
	}
	*fd = -1;
}

static const char *refusal(uint8_t status)
{
	switch (status) {
	case ST_MODE:
		return "mode mismatch (plaintext on one side and keys on the "
		       "other, or cluster.transport tcp on one side and rdma "
		       "on the other)";
	case ST_MEMBER:
		return "this node's id is not a cluster member there";
	case ST_NODE:
		return "it is not the node this address names in our "
		       "membership";
	case ST_VERSION:
		return "handshake version mismatch";
	}
	return "refused";
}

/* ---- keys ---- */

/* The session keys of one connection, equal on both sides iff each holds
 * its static secret (see the top of the file). msg1 is the initiator's
 * MSG1_KEYED bytes, msg2 the responder's header and e_r. Returns 0, or
 * -1 if a public key is of low order (an X25519 result of zeros). */
static int session_keys(const struct tp *t, bool initiator,
                        const uint8_t *msg1, const uint8_t *msg2,
                        const uint8_t *esk, const uint8_t *peer_pub,
                        uint8_t k_ir[32], uint8_t k_ri[32])
{
	const uint8_t *e_i = msg1 + HS_FIX, *e_r = msg2 + HS_FIX;
	const uint8_t *s_i = initiator ? t->public : peer_pub;
	const uint8_t *s_r = initiator ? peer_pub : t->public;
	uint8_t dh[4][32], master[32];
	crypto_generichash_state st;
	int bad;

	if (initiator)
		bad = crypto_scalarmult(dh[0], esk, e_r) |
		      crypto_scalarmult(dh[1], esk, s_r) |
		      crypto_scalarmult(dh[2], t->secret, e_r) |
		      crypto_scalarmult(dh[3], t->secret, s_r);
	else
		bad = crypto_scalarmult(dh[0], esk, e_i) |
		      crypto_scalarmult(dh[1], t->secret, e_i) |
		      crypto_scalarmult(dh[2], esk, s_i) |
		      crypto_scalarmult(dh[3], t->secret, s_i);
	crypto_generichash_init(&st, NULL, 0, sizeof master);
	crypto_generichash_update(&st, (const uint8_t *)LABEL, strlen(LABEL));
	crypto_generichash_update(&st, msg1, MSG1_KEYED);
	crypto_generichash_update(&st, msg2, HS_FIX + HS_KEY);
	crypto_generichash_update(&st, s_i, 32);
	crypto_generichash_update(&st, s_r, 32);
	crypto_generichash_update(&st, &dh[0][0], sizeof dh);
	crypto_generichash_final(&st, master, sizeof master);
	crypto_kdf_derive_from_key(k_ir, 32, 1, KDF_CTX, master);
	crypto_kdf_derive_from_key(k_ri, 32, 2, KDF_CTX, master);
	sodium_memzero(dh, sizeof dh);
	sodium_memzero(master, sizeof master);
	sodium_memzero(&st, sizeof st);
	return bad ? -1 : 0;
}

/* A hello record: "capdsmOK", from, to, and with RDMA the sender's
 * queue pair endpoint (ep, c->ep_len bytes), so the endpoint is as
 * authentic as the hello itself. */
static void hello_seal(const struct tp_tcp *c,
                       crypto_secretstream_xchacha20poly1305_state *ss,
                       uint8_t *rec, uint32_t from, uint32_t to,
                       const uint8_t *ep)
{
	uint8_t m[HELLO_MAX];
	memcpy(m, HELLO, sizeof HELLO);
	tp__put32(m + 8, from);
	tp__put32(m + 12, to);
	if (c->ep_len)
		memcpy(m + HELLO_LEN, ep, c->ep_len);
	tp__put32(rec, (uint32_t)(SS_AB + c->hello_len));
	crypto_secretstream_xchacha20poly1305_push(ss, rec + 4, NULL, m,
	                                           c->hello_len, NULL, 0,
	                                           SS_TAG);
	sodium_memzero(m, sizeof m);
}

static bool hello_open(const struct tp_tcp *c,
                       crypto_secretstream_xchacha20poly1305_state *ss,
                       const uint8_t *rec, uint32_t from, uint32_t to,
                       uint8_t *ep)
{
	uint8_t m[HELLO_MAX], want[HELLO_LEN];
	unsigned long long mlen = 0;
	unsigned char tag = 0xff;

	if (tp__get32(rec) != SS_AB + c->hello_len ||
	    crypto_secretstream_xchacha20poly1305_pull(
	            ss, m, &mlen, &tag, rec + 4, SS_AB + c->hello_len, NULL,
	            0))
		return false;
	memcpy(want, HELLO, sizeof HELLO);
	tp__put32(want + 8, from);
	tp__put32(want + 12, to);
	if (mlen != c->hello_len || tag != SS_TAG ||
	    sodium_memcmp(m, want, HELLO_LEN) != 0)
		return false;
	if (c->ep_len)
		memcpy(ep, m + HELLO_LEN, c->ep_len);
	return true;
}

/* ---- the outgoing ring ---- */

static bool room(const struct tp_tcp *c, const struct out *o, size_t len)
{
	if (c->vx)
		return o->st == O_READY &&
		       vx_out_room(c->vx, (uint32_t)(o - c->out));
	return o->st == O_READY && o->nrec < c->b.qlimit &&
	       o->cap - (size_t)(o->tail - o->head) >= len;
}

/* The length of the record seal() makes of a body of blen bytes. */
static size_t rec_len(const struct tp_tcp *c, size_t blen)
{
	return 4 + (c->b.plaintext ? 0 : SS_AB) + blen;
}

/* Frames one message as a record in c->txb; returns its length. Advances
 * o's secretstream: call only with room for the record (C3). */
static size_t seal(struct tp_tcp *c, struct out *o, const uint8_t *wire,
                   const void *hdr, size_t hdrlen, const void *payload,
                   size_t plen)
{
	size_t blen = BODY_FIX + hdrlen + plen;
	uint8_t *body = c->b.plaintext ? c->txb + 4 : c->txp;

	memcpy(body, wire, W_LEN);
	tp__put32(body + W_LEN, (uint32_t)hdrlen);
	if (hdrlen)
		memcpy(body + BODY_FIX, hdr, hdrlen);
	if (plen)
		memcpy(body + BODY_FIX + hdrlen, payload, plen);
	if (c->b.plaintext) {
		tp__put32(c->txb, (uint32_t)blen);
		return 4 + blen;
	}
	crypto_secretstream_xchacha20poly1305_push(&o->tx, c->txb + 4, NULL,
	                                           body, blen, NULL, 0, SS_TAG);
	tp__put32(c->txb, (uint32_t)(blen + SS_AB));
	return 4 + SS_AB + blen;
}

static void out_close(struct tp_tcp *c, uint32_t i, uint64_t delay_us);

/* Writes the ring to the socket until it is empty or the socket full. */
static void out_flush(struct tp_tcp *c, uint32_t i)
{
	struct out *o = &c->out[i];

	while (o->head < o->tail) {
		size_t h = (size_t)(o->head % o->cap);
		size_t len = (size_t)(o->tail - o->head);
		struct iovec iov[2] = { { o->ring + h, len } };
		struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 1 };
		if (len > o->cap - h) {
			iov[0].iov_len = o->cap - h;
			iov[1] = (struct iovec){ o->ring, len - (o->cap - h) };
			mh.msg_iovlen = 2;
		}
		ssize_t w = sendmsg(o->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0) {
			if (errno == EAGAIN || errno == EINTR)
				break;
			out_close(c, i, REDIAL_US);
			return;
		}
		o->head += (uint64_t)w;
		while (o->nrec && o->ends[o->first] <= o->head) {
			o->first = (o->first + 1) % c->b.qlimit;
			o->nrec--;
		}
	}
	if (o->head == o->tail) {
		o->head = o->tail = 0;
		o->first = 0;
		if (o->pollout &&
		    !watch(c, o->fd, EPOLLIN | EPOLLRDHUP,
		           tp__tag(K_OUT, o->gen, i)))
			o->pollout = false;
	}
}

/* Sends the record in c->txb (len bytes) to peer i: at once if nothing
 * waits before it, else (and whatever the socket did not take) into the
 * ring, which room() has checked. */
static void out_push(struct tp_tcp *c, uint32_t i, size_t len)
{
	struct out *o = &c->out[i];
	const uint8_t *rec = c->txb;
	size_t off = 0;

	if (o->head == o->tail && !c->in_poll) {
		ssize_t w = send(o->fd, rec, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0 && errno != EAGAIN && errno != EINTR) {
			out_close(c, i, REDIAL_US); /* lost: F1 will tell */
			return;
		}
		if (w > 0)
			off = (size_t)w;
		if (off == len)
			return;
	}
	len -= off;
	rec += off;
	size_t t = (size_t)(o->tail % o->cap);
	size_t first = len < o->cap - t ? len : o->cap - t;
	memcpy(o->ring + t, rec, first);
	memcpy(o->ring, rec + first, len - first);
	o->tail += len;
	o->ends[(o->first + o->nrec) % c->b.qlimit] = o->tail;
	o->nrec++;
	if (c->in_poll) {
		o->corked = true; /* uncork() writes it, or watches EPOLLOUT */
		return;
	}
	if (!o->pollout &&
	    !watch(c, o->fd, EPOLLIN | EPOLLRDHUP | EPOLLOUT,
	           tp__tag(K_OUT, o->gen, i)))
		o->pollout = true;
}

/* ---- the outgoing connection ---- */

/* Closes peer i's outgoing connection, dropping what its ring held (F1
 * makes the loss known), and dials again delay_us later. */
static void out_close(struct tp_tcp *c, uint32_t i, uint64_t delay_us)
{
	struct out *o = &c->out[i];

	drop_fd(c, &o->fd);
	if (c->vx)
		vx_out_end(c->vx, i);
	o->st = O_IDLE;
	o->gen++;
	o->pollout = false;
	o->head = o->tail = 0;
	o->nrec = o->first = 0;
	o->have = 0;
	sodium_memzero(o->esk, sizeof o->esk);
	sodium_memzero(&o->tx, sizeof o->tx);
	c->b.p[i].connected = false;
	o->at = tp__now_us() + delay_us;
	tp__wake_at(&c->b, o->at);
}

/* The connection is up: send msg1 and read msg2. */
static void out_hello(struct tp_tcp *c, uint32_t i)
{
	struct out *o = &c->out[i];
	size_t len = HS_FIX;

	hs_header(o->msg1, c->mode, ST_OK, c->b.self, i);
	if (!c->b.plaintext) {
		randombytes_buf(o->esk, sizeof o->esk);
		crypto_scalarmult_base(o->msg1 + HS_FIX, o->esk);
		len = MSG1_KEYED;
	}
	if (!send_all(o->fd, o->msg1, len) ||
	    watch(c, o->fd, EPOLLIN | EPOLLRDHUP, tp__tag(K_OUT, o->gen, i))) {
		out_close(c, i, REDIAL_US);
		return;
	}
	o->st = O_HANDSHAKE;
	o->have = 0;
}

static void dial(struct tp_tcp *c, uint32_t i)
{
	struct out *o = &c->out[i];
	int fd = socket(o->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK |
	                                         SOCK_CLOEXEC, 0);

	if (fd < 0) {
		out_close(c, i, REDIAL_US);
		return;
	}
	set_nodelay(fd);
	o->fd = fd;
	o->gen++;
	o->at = tp__now_us() + c->hs_us;
	tp__wake_at(&c->b, o->at);
	if (tp__ep_add(&c->b, fd, EPOLLOUT, tp__tag(K_OUT, o->gen, i))) {
		out_close(c, i, REDIAL_US);
		return;
	}
	if (connect(fd, (struct sockaddr *)&o->sa, o->salen) == 0) {
		out_hello(c, i);
		return;
	}
	if (errno != EINPROGRESS) {
		out_close(c, i, REDIAL_US);
		return;
	}
	o->st = O_CONNECTING;
}

/* Outgoing handshake done: heartbeat first, so the peer hears our
 * incarnation now rather than in heartbeat_ms. */
static void out_ready(struct tp_tcp *c, uint32_t i)
{
	c->out[i].st = O_READY;
	c->b.p[i].connected = true;
	tp__send_hb(&c->b, i);
}

/* RDMA: the outgoing queue pair for peer i, connected to the endpoint
 * the peer's hello carried (theirs); *mine is what our msg3 tells it.
 * Returns 0, or -errno with the connection closed. */
static int out_qp(struct tp_tcp *c, uint32_t i, const uint8_t *theirs,
                  uint8_t *mine, char *why, size_t whylen)
{
	struct vx_ep me, them;
	uint8_t ours[16];
	char a[INET6_ADDRSTRLEN] = "?", b[INET6_ADDRSTRLEN] = "?";
	int rc, idx;

	vx_ep_get(theirs, &them);
	rc = vx_out_begin(c->vx, i, c->out[i].gen, &me);
	if (rc) {
		snprintf(why, whylen, "creating it: %s", strerror(-rc));
	} else if ((rc = vx_out_connect(c->vx, i, &them)) != 0) {
		/* Most often the two nodes' GIDs are of different kinds
		 * (cluster.rdma_gid_index: RoCE v1 or v2, IPv6 link-local or
		 * IPv4-mapped): name both. */
		vx_local_gid(c->vx, ours, &idx);
		inet_ntop(AF_INET6, them.gid, a, sizeof a);
		inet_ntop(AF_INET6, ours, b, sizeof b);
		snprintf(why, whylen, "RTR/RTS toward its GID %s from ours %s "
		         "(index %d): %s", a, b, idx, strerror(-rc));
	}
	if (rc) {
		out_close(c, i, REFUSED_US);
		return rc;
	}
	vx_ep_put(mine, &me);
	return 0;
}

/* msg3 sent: with RDMA, wait for the acceptor's READY (its queue pair can
 * take writes); else the connection is ready. */
static void out_sent_msg3(struct tp_tcp *c, uint32_t i)
{
	if (c->vx)
		c->out[i].st = O_RDMA_WAIT; /* within the handshake's deadline */
	else
		out_ready(c, i);
}

/* msg2 is complete: derive the keys (keyed), send msg3, check R's hello.
 * Returns callbacks made. */
static int out_confirm(struct tp_tcp *c, const struct tp_handlers *h,
                       void *ctx, uint32_t i)
{
	struct tp *t = &c->b;
	struct out *o = &c->out[i];
	crypto_secretstream_xchacha20poly1305_state rs;
	uint8_t k_ir[32], k_ri[32], m3[MSG3_MAX], theirs[VX_EP_LEN] = { 0 },
	        mine[VX_EP_LEN] = { 0 };
	char why[160] = "";
	bool ok;
	int rc;

	if (t->plaintext) { /* RDMA only: msg2 ends with R's endpoint */
		rc = out_qp(c, i, o->hs + HS_FIX, m3, why, sizeof why);
		if (rc)
			return tp__auth_fail(t, h, ctx, "node %u (%s): cannot "
			                     "connect an RDMA queue pair: %s", i,
			                     t->p[i].address, why);
		if (!send_all(o->fd, m3, c->msg3_len)) {
			out_close(c, i, REDIAL_US);
			return 0;
		}
		out_sent_msg3(c, i);
		return 0;
	}
	ok = session_keys(t, true, o->msg1, o->hs, o->esk, t->p[i].key, k_ir,
	                  k_ri) == 0;
	sodium_memzero(o->esk, sizeof o->esk);
	ok = ok && crypto_secretstream_xchacha20poly1305_init_pull(
	                   &rs, o->hs + HS_FIX + HS_KEY, k_ri) == 0 &&
	     hello_open(c, &rs, o->hs + HS_FIX + HS_KEY + SS_HDR, i, t->self,
	                theirs);
	sodium_memzero(&rs, sizeof rs);
	sodium_memzero(k_ri, sizeof k_ri);
	rc = 0;
	if (ok && c->vx)
		rc = out_qp(c, i, theirs, mine, why, sizeof why);
	crypto_secretstream_xchacha20poly1305_init_push(&o->tx, m3, k_ir);
	hello_seal(c, &o->tx, m3 + SS_HDR, t->self, i, mine);
	sodium_memzero(k_ir, sizeof k_ir);
	if (rc) {
		sodium_memzero(&o->tx, sizeof o->tx);
		return tp__auth_fail(t, h, ctx, "node %u (%s): cannot connect "
		                     "an RDMA queue pair: %s", i,
		                     t->p[i].address, why);
	}
	if (!ok) {
		/* msg3 still goes first, so R can say why too. */
		send_all(o->fd, m3, c->msg3_len);
		out_close(c, i, REFUSED_US);
		return tp__auth_fail(t, h, ctx,
		                     "node %u (%s) failed authentication: its "
		                     "handshake does not decrypt (it does not "
		                     "hold the key our membership names, or "
		                     "holds a wrong key for this node)",
		                     i, t->p[i].address);
	}
	if (!send_all(o->fd, m3, c->msg3_len)) {
		out_close(c, i, REDIAL_US);
		return 0;
	}
	out_sent_msg3(c, i);
	return 0;
}

/* Reads msg2. Returns callbacks made. */
static int out_handshake(struct tp_tcp *c, const struct tp_handlers *h,
                         void *ctx, uint32_t i)
{
	struct tp *t = &c->b;
	struct out *o = &c->out[i];
	const char *addr = t->p[i].address;

	for (;;) {
		size_t need = o->have < HS_FIX ? HS_FIX : c->msg2_len;
		ssize_t n = recv(o->fd, o->hs + o->have, need - o->have, 0);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return 0;
		if (n <= 0) {
			out_close(c, i, REDIAL_US);
			return tp__auth_fail(t, h, ctx,
			                     "node %u (%s) closed the connection "
			                     "during the handshake", i, addr);
		}
		o->have += (size_t)n;
		if (need == HS_FIX && zmtp(o->hs, o->have)) {
			out_close(c, i, REFUSED_US);
			return tp__auth_fail(t, h, ctx, "node %u (%s) speaks ZeroMQ "
			                     "(ZMTP): every node of a cluster must "
			                     "use the same cluster.transport (this one: "
			                     "tcp)", i, addr);
		}
		if (o->have < need)
			continue;
		if (need == HS_FIX) {
			const uint8_t *b = o->hs;
			uint8_t status = b[10];
			if (memcmp(b, MAGIC, sizeof MAGIC) != 0 ||
			    b[8] != HS_VERSION) {
				out_close(c, i, REFUSED_US);
				return tp__auth_fail(t, h, ctx,
				                     "node %u (%s) does not answer "
				                     "with a capdsm tcp handshake",
				                     i, addr);
			}
			if (status == ST_OK &&
			    (b[9] != c->mode || tp__get32(b + 12) != i ||
			     tp__get32(b + 16) != t->self))
				status = b[9] != c->mode ? ST_MODE : ST_NODE;
			if (status != ST_OK) {
				out_close(c, i, REFUSED_US);
				return tp__auth_fail(t, h, ctx,
				                     "node %u (%s) refused this "
				                     "node: %s", i, addr,
				                     refusal(status));
			}
			if (c->msg2_len == HS_FIX) { /* plaintext TCP */
				out_ready(c, i);
				return 0;
			}
			continue;
		}
		return out_confirm(c, h, ctx, i);
	}
}

/* One epoll event of peer i's outgoing connection. */
static int out_event(struct tp_tcp *c, const struct tp_handlers *h, void *ctx,
                     uint32_t i, uint32_t ev)
{
	struct out *o = &c->out[i];
	int err = 0;
	socklen_t el = sizeof err;

	switch (o->st) {
	case O_IDLE:
		return 0;
	case O_CONNECTING:
		if (getsockopt(o->fd, SOL_SOCKET, SO_ERROR, &err, &el) || err ||
		    (ev & (EPOLLERR | EPOLLHUP)))
			out_close(c, i, REDIAL_US); /* refused: not up yet */
		else if (ev & EPOLLOUT)
			out_hello(c, i);
		return 0;
	case O_HANDSHAKE:
		return out_handshake(c, h, ctx, i);
	case O_RDMA_WAIT: {
		uint8_t r = 0;
		ssize_t n = recv(o->fd, &r, 1, 0);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return 0;
		if (n == 1 && r == READY) {
			out_ready(c, i);
			return 0;
		}
		out_close(c, i, REDIAL_US);
		return tp__auth_fail(&c->b, h, ctx, "node %u (%s) closed the "
		                     "connection before its RDMA queue pair "
		                     "was ready", i, c->b.p[i].address);
	}
	case O_READY:
		if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) {
			/* The peer never speaks after msg2: this is its close,
			 * or a protocol error. */
			uint8_t x[64];
			ssize_t n = recv(o->fd, x, sizeof x, 0);
			if (n > 0)
				c->b.st.drop_malformed++;
			if (n >= 0 || (errno != EAGAIN && errno != EINTR)) {
				out_close(c, i, REDIAL_US);
				return 0;
			}
		}
		if (ev & EPOLLOUT)
			out_flush(c, i);
		return 0;
	}
	return 0;
}

/* ---- accepted connections ---- */

static void in_close(struct tp_tcp *c, uint32_t k)
{
	struct in *in = &c->in[k];

	drop_fd(c, &in->fd);
	if (c->vx)
		vx_in_end(c->vx, k);
	in->st = I_FREE;
	in->gen++;
	in->buf = NULL;
	in->len = in->have = 0;
	in->pending = in->eof = false;
	sodium_memzero(in->hs, sizeof in->hs);
	sodium_memzero(in->key, sizeof in->key);
	sodium_memzero(&in->rx, sizeof in->rx);
}

/* Handshake done: this connection is node in->peer's, and replaces any
 * older one of that node (C1). */
static void in_ready(struct tp_tcp *c, uint32_t k)
{
	struct in *in = &c->in[k];

	for (uint32_t j = 0; j < c->nin; j++)
		if (j != k && c->in[j].st == I_READY &&
		    c->in[j].peer == in->peer)
			in_close(c, j);
	in->st = I_READY;
	in->buf = c->rbuf[in->peer];
	in->len = 0;
}

/* Refuses a connection in its handshake, telling the dialler why. */
static void in_refuse(struct tp_tcp *c, uint32_t k, uint8_t status)
{
	struct in *in = &c->in[k];
	uint8_t b[HS_FIX];
	hs_header(b, c->mode, status, c->b.self, in->peer);
	send_all(in->fd, b, HS_FIX);
	in_close(c, k);
}

/* msg1 is complete: check it, answer msg2. Returns callbacks made. Every
 * refusal is reported before the connection is closed (in->from). */
static int in_answer(struct tp_tcp *c, const struct tp_handlers *h,
                     void *ctx, uint32_t k)
{
	struct tp *t = &c->b;
	struct in *in = &c->in[k];
	uint8_t m2[MSG2_MAX], esk[32], k_ri[32], mine[VX_EP_LEN] = { 0 };
	crypto_secretstream_xchacha20poly1305_state ws;
	uint32_t to = tp__get32(in->hs + 16);
	int events, rc;

	in->peer = tp__get32(in->hs + 12);
	if (in->hs[9] != c->mode) {
		events = tp__auth_fail(t, h, ctx,
		                       "refused a connection from %s claiming "
		                       "node %u: mode mismatch (it: %s%s, this "
		                       "node: %s%s)", in->from, in->peer,
		                       in->hs[9] >= MODE_RDMA_KEYED ? "rdma"
		                                                   : "tcp",
		                       in->hs[9] % 2 ? ", keyed" : ", plaintext",
		                       c->vx ? "rdma" : "tcp",
		                       c->mode % 2 ? ", keyed" : ", plaintext");
		in_refuse(c, k, ST_MODE);
		return events;
	}
	if (in->peer >= t->n || in->peer == t->self) {
		events = tp__auth_fail(t, h, ctx,
		                       "refused a connection from %s claiming "
		                       "node %u: not a cluster member%s",
		                       in->from, in->peer,
		                       in->peer == t->self ? " (it is this "
		                                             "node's own id)"
		                                           : "");
		in_refuse(c, k, ST_MEMBER);
		return events;
	}
	if (to != t->self) {
		events = tp__auth_fail(t, h, ctx,
		                       "refused a connection from %s (node %u): "
		                       "it dialled node %u, this is node %u",
		                       in->from, in->peer, to, t->self);
		in_refuse(c, k, ST_NODE);
		return events;
	}
	hs_header(m2, c->mode, ST_OK, t->self, in->peer);
	if (c->vx) {
		/* The queue pair stays in INIT, where nothing reaches the
		 * ring, until msg3 proves the dialler (vx_in_connect). */
		struct vx_ep me;
		rc = vx_in_begin(c->vx, k, in->gen, in->peer, &me);
		if (rc) {
			events = tp__auth_fail(t, h, ctx, "dropped a connection "
			                       "from %s (node %u): cannot create "
			                       "an RDMA queue pair: %s", in->from,
			                       in->peer, strerror(-rc));
			in_close(c, k);
			return events;
		}
		vx_ep_put(mine, &me);
	}
	if (t->plaintext) {
		memcpy(m2 + HS_FIX, mine, c->ep_len);
		if (!send_all(in->fd, m2, c->msg2_len)) {
			in_close(c, k);
		} else if (c->msg3_len) { /* RDMA: the dialler's endpoint */
			in->st = I_CONFIRM;
			in->have = 0;
			in->need = c->msg3_len;
		} else {
			in_ready(c, k);
		}
		return 0;
	}
	randombytes_buf(esk, sizeof esk);
	crypto_scalarmult_base(m2 + HS_FIX, esk);
	rc = session_keys(t, false, in->hs, m2, esk, t->p[in->peer].key,
	                  in->key, k_ri);
	crypto_secretstream_xchacha20poly1305_init_push(
	        &ws, m2 + HS_FIX + HS_KEY, k_ri);
	hello_seal(c, &ws, m2 + HS_FIX + HS_KEY + SS_HDR, t->self, in->peer,
	           mine);
	sodium_memzero(esk, sizeof esk);
	sodium_memzero(k_ri, sizeof k_ri);
	sodium_memzero(&ws, sizeof ws);
	if (rc) {
		events = tp__auth_fail(t, h, ctx,
		                       "refused a connection from %s claiming "
		                       "node %u: a low-order ephemeral key",
		                       in->from, in->peer);
		in_close(c, k);
		return events;
	}
	if (!send_all(in->fd, m2, c->msg2_len)) {
		in_close(c, k);
		return 0;
	}
	in->st = I_CONFIRM;
	in->have = 0;
	in->need = c->msg3_len;
	return 0;
}

/* msg3 is complete: the dialler's hello must authenticate (keyed); with
 * RDMA, its endpoint connects our queue pair, and READY tells it so. */
static int in_confirm(struct tp_tcp *c, const struct tp_handlers *h,
                      void *ctx, uint32_t k)
{
	struct in *in = &c->in[k];
	uint8_t theirs[VX_EP_LEN] = { 0 };
	bool ok;
	int events, rc;

	if (c->b.plaintext) {
		memcpy(theirs, in->hs, c->ep_len);
		ok = true;
	} else {
		ok = crypto_secretstream_xchacha20poly1305_init_pull(
		             &in->rx, in->hs, in->key) == 0 &&
		     hello_open(c, &in->rx, in->hs + SS_HDR, in->peer,
		                c->b.self, theirs);
		sodium_memzero(in->key, sizeof in->key);
	}
	if (!ok) {
		events = tp__auth_fail(&c->b, h, ctx,
		                       "refused a connection from %s claiming "
		                       "node %u: its first record does not "
		                       "authenticate (it does not hold that "
		                       "node's key, or holds a wrong key for "
		                       "this node)", in->from, in->peer);
		in_close(c, k);
		return events;
	}
	in_ready(c, k); /* C1: an older connection of the node goes first */
	if (c->vx) {
		struct vx_ep them;
		const uint8_t ready = READY;
		vx_ep_get(theirs, &them);
		rc = vx_in_connect(c->vx, k, &them);
		if (rc) {
			events = tp__auth_fail(&c->b, h, ctx, "dropped a "
			                       "connection from %s (node %u): "
			                       "cannot connect its RDMA queue "
			                       "pair: %s", in->from, in->peer,
			                       strerror(-rc));
			in_close(c, k);
			return events;
		}
		if (!send_all(in->fd, &ready, 1))
			in_close(c, k);
	}
	return 0;
}

/* Reads the handshake of accepted connection k, exactly message by
 * message (nothing past msg3 is read here). Returns callbacks made. */
static int in_handshake(struct tp_tcp *c, const struct tp_handlers *h,
                        void *ctx, uint32_t k)
{
	struct in *in = &c->in[k];
	int events;

	while (in->st == I_HELLO || in->st == I_CONFIRM) {
		ssize_t n = recv(in->fd, in->hs + in->have, in->need - in->have,
		                 0);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return 0;
		if (n <= 0) {
			events = tp__auth_fail(&c->b, h, ctx,
			                       "a connection from %s closed "
			                       "during the handshake", in->from);
			in_close(c, k);
			return events;
		}
		in->have += (size_t)n;
		if (in->st != I_CONFIRM && in->need == HS_FIX &&
		    zmtp(in->hs, in->have)) {
			events = tp__auth_fail(&c->b, h, ctx, "refused a connection "
			                       "from %s: it speaks ZeroMQ (ZMTP): every "
			                       "node of a cluster must use the same "
			                       "cluster.transport (this one: tcp)",
			                       in->from);
			in_close(c, k);
			return events;
		}
		if (in->have < in->need)
			continue;
		if (in->st == I_CONFIRM)
			return in_confirm(c, h, ctx, k);
		if (in->need == HS_FIX) {
			const uint8_t *b = in->hs;
			if (memcmp(b, MAGIC, sizeof MAGIC) != 0 ||
			    b[9] < MODE_KEYED || b[9] > MODE_RDMA_PLAIN) {
				events = tp__auth_fail(&c->b, h, ctx,
				                       "refused a connection from "
				                       "%s: not a capdsm tcp "
				                       "handshake", in->from);
				in_close(c, k);
				return events;
			}
			if (b[8] != HS_VERSION) {
				events = tp__auth_fail(&c->b, h, ctx,
				                       "refused a connection from "
				                       "%s: handshake version %u, "
				                       "this node speaks %u",
				                       in->from, b[8], HS_VERSION);
				in->peer = tp__get32(b + 12);
				in_refuse(c, k, ST_VERSION);
				return events;
			}
			/* Read all of msg1 even to refuse it: closing with
			 * unread bytes would reset the connection, and the
			 * refusal with it. */
			if (b[9] == MODE_KEYED || b[9] == MODE_RDMA_KEYED) {
				in->need = MSG1_KEYED;
				continue;
			}
		}
		return in_answer(c, h, ctx, k);
	}
	return 0;
}

/* Handles the body of one message of a proven connection (its checks,
 * tp__receive). Returns false if the connection was closed (C2). */
static bool in_body(struct tp_tcp *c, const struct tp_handlers *h, void *ctx,
                    uint32_t k, const uint8_t *body, size_t blen,
                    uint64_t now, int *events)
{
	struct tp *t = &c->b;
	size_t hdrlen, plen;
	enum tp__rx r;

	hdrlen = blen < BODY_FIX ? 0 : tp__get32(body + W_LEN);
	if (blen < BODY_FIX || hdrlen > blen - BODY_FIX) {
		t->st.drop_malformed++;
		in_close(c, k);
		return false;
	}
	plen = blen - BODY_FIX - hdrlen;
	r = tp__receive(t, h, ctx, body, body + BODY_FIX, hdrlen,
	                plen ? body + BODY_FIX + hdrlen : NULL, plen, plen > 0,
	                c->in[k].peer, now, events);
	if (r == TP__RX_MALFORMED || r == TP__RX_SPOOFED ||
	    r == TP__RX_OVERSIZE) {
		in_close(c, k);
		return false;
	}
	return true;
}

/* Handles one record of a proven connection (body checks, decryption,
 * tp__receive). Returns false if the connection was closed (C2). */
static bool in_record(struct tp_tcp *c, const struct tp_handlers *h,
                      void *ctx, uint32_t k, const uint8_t *rec, size_t n,
                      uint64_t now, int *events)
{
	struct tp *t = &c->b;
	struct in *in = &c->in[k];
	const uint8_t *body = rec;
	size_t blen = n;

	if (!t->plaintext) {
		unsigned long long mlen = 0;
		unsigned char tag = 0xff;
		if (crypto_secretstream_xchacha20poly1305_pull(
		            &in->rx, c->plain, &mlen, &tag, rec, n, NULL, 0) ||
		    tag != SS_TAG) {
			t->st.drop_malformed++;
			in_close(c, k);
			return false;
		}
		body = c->plain;
		blen = (size_t)mlen;
	}
	return in_body(c, h, ctx, k, body, blen, now, events);
}

/* Handles the complete records in connection k's buffer, up to *budget;
 * sets pending if some are left. Returns callbacks made. */
static int in_records(struct tp_tcp *c, const struct tp_handlers *h,
                      void *ctx, uint32_t k, uint32_t *budget, uint64_t now)
{
	struct in *in = &c->in[k];
	size_t off = 0;
	int events = 0;

	in->pending = false;
	while (in->len - off >= 4) {
		uint32_t n = tp__get32(in->buf + off);
		if (n > c->maxct || n < c->minct) {
			if (n > c->maxct)
				c->b.st.drop_oversize++;
			else
				c->b.st.drop_malformed++;
			in_close(c, k);
			return events;
		}
		if (in->len - off - 4 < n)
			break;
		if (*budget == 0) {
			in->pending = true;
			break;
		}
		(*budget)--;
		if (!in_record(c, h, ctx, k, in->buf + off + 4, n, now, &events))
			return events;
		off += 4 + n;
	}
	if (off) {
		memmove(in->buf, in->buf + off, in->len - off);
		in->len -= off;
	}
	if (in->eof && !in->pending)
		in_close(c, k); /* a partial record left is lost: F1 */
	return events;
}

/* One epoll event of accepted connection k. Returns callbacks made. */
static int in_event(struct tp_tcp *c, const struct tp_handlers *h, void *ctx,
                    uint32_t k, uint32_t *budget, uint64_t now)
{
	struct in *in = &c->in[k];
	size_t cap = 4 + c->maxct;
	int events = 0;

	if (in->st != I_READY) {
		events += in_handshake(c, h, ctx, k);
		if (in->st != I_READY)
			return events;
	}
	if (c->vx) {
		/* RDMA: messages come through the queue pair; the socket
		 * only tells when the dialler is gone. */
		uint8_t x[64];
		ssize_t n = recv(in->fd, x, sizeof x, 0);
		if (n > 0)
			c->b.st.drop_malformed++;
		if (n >= 0 || (errno != EAGAIN && errno != EINTR))
			in_close(c, k);
		return events;
	}
	for (;;) {
		if (*budget == 0) {
			in->pending = true; /* the socket is read next time */
			return events;
		}
		size_t room = cap - in->len;
		ssize_t n = 0;
		if (!in->eof && room) {
			n = recv(in->fd, in->buf + in->len, room, 0);
			if (n > 0)
				in->len += (size_t)n;
			else if (n == 0 || (errno != EAGAIN && errno != EINTR))
				in->eof = true;
		}
		events += in_records(c, h, ctx, k, budget, now);
		/* A read that filled the buffer may have left more behind;
		 * otherwise the socket is drained (no second recv for
		 * EAGAIN: a syscall less per message). */
		if (in->st != I_READY || n <= 0 || (size_t)n < room)
			return events;
	}
}

/* A slot for a new connection: a free one, or the oldest still in its
 * handshake (C4; proven ones are at most one per peer, fewer than the
 * slots). */
static uint32_t in_slot(struct tp_tcp *c, const struct tp_handlers *h,
                        void *ctx, int *events)
{
	uint32_t best = UINT32_MAX;

	for (uint32_t k = 0; k < c->nin; k++) {
		if (c->in[k].st == I_FREE)
			return k;
		if (c->in[k].st != I_READY &&
		    (best == UINT32_MAX || c->in[k].since < c->in[best].since))
			best = k;
	}
	assert(best != UINT32_MAX); /* C4: proven ones are fewer */
	*events += tp__auth_fail(&c->b, h, ctx,
	                         "dropped the handshake of a connection from "
	                         "%s: more than %u connections at once",
	                         c->in[best].from, c->nin);
	in_close(c, best);
	return best;
}

static int in_accept(struct tp_tcp *c, const struct tp_handlers *h, void *ctx,
                     uint64_t now)
{
	int events = 0;

	for (int a = 0; a < ACCEPTS_PER_POLL; a++) {
		struct sockaddr_storage sa = { 0 };
		socklen_t sl = sizeof sa;
		int fd = accept4(c->lfd, (struct sockaddr *)&sa, &sl,
		                 SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == ECONNABORTED || errno == EINTR)
				continue;
			break; /* EAGAIN; EMFILE and the like: retried later */
		}
		uint32_t k = in_slot(c, h, ctx, &events);
		struct in *in = &c->in[k];
		set_nodelay(fd);
		in->fd = fd;
		in->st = I_HELLO;
		in->gen++;
		in->have = 0;
		in->need = HS_FIX;
		in->peer = UINT32_MAX;
		in->since = now;
		in->at = now + c->hs_us;
		if (sa.ss_family == AF_INET6)
			inet_ntop(AF_INET6,
			          &((struct sockaddr_in6 *)&sa)->sin6_addr,
			          in->from, sizeof in->from);
		else
			inet_ntop(AF_INET, &((struct sockaddr_in *)&sa)->sin_addr,
			          in->from, sizeof in->from);
		if (tp__ep_add(&c->b, fd, EPOLLIN | EPOLLRDHUP,
		               tp__tag(K_IN, in->gen, k))) {
			in_close(c, k);
			continue;
		}
		tp__wake_at(&c->b, in->at);
	}
	return events;
}

/* ---- the operations ---- */

/* The transport header of the next data message to peer. */
static void data_wire(const struct tp *t, uint32_t peer, uint8_t *wire)
{
	const struct tp__peer *p = &t->p[peer];
	tp__wire_put(wire, &(struct tp__wire){ .version = W_VERSION,
	                                       .type = W_DATA,
	                                       .src = t->self,
	                                       .src_inc = t->inc,
	                                       .dst_inc = p->inc,
	                                       .seq = p->send_seq });
}

/* RDMA: one message, one write into the peer's ring. A failed post
 * breaks the connection: what it held is lost, as F1 will tell. */
static int rdma_send(struct tp_tcp *c, uint32_t peer, const void *hdr,
                     size_t hdrlen, const void *payload, size_t plen)
{
	struct tp *t = &c->b;
	uint8_t wire[W_LEN];
	int rc;

	if (!room(c, &c->out[peer], 0)) {
		tp__send_full(t, peer);
		return -EAGAIN;
	}
	data_wire(t, peer, wire);
	rc = vx_out_send(c->vx, peer, wire, hdr, hdrlen, payload, plen);
	if (rc == -EIO)
		out_close(c, peer, REDIAL_US);
	else if (rc)
		return rc;
	tp__sent(t, peer, hdrlen + plen);
	return 0;
}

static int tcp_send(struct tp *t, uint32_t peer, const void *hdr,
                    size_t hdrlen, const void *payload, size_t plen)
{
	struct tp_tcp *c = (struct tp_tcp *)t;
	struct out *o = &c->out[peer];
	uint8_t wire[W_LEN];

	if (c->vx)
		return rdma_send(c, peer, hdr, hdrlen, payload, plen);
	size_t need = rec_len(c, BODY_FIX + hdrlen + plen);
	if (!room(c, o, need) && o->corked && o->st == O_READY)
		out_flush(c, peer); /* C6: a full cork goes out first */
	if (!room(c, o, need)) {
		tp__send_full(t, peer);
		return -EAGAIN;
	}
	data_wire(t, peer, wire);
	out_push(c, peer, seal(c, o, wire, hdr, hdrlen, payload, plen));
	tp__sent(t, peer, hdrlen + plen);
	return 0;
}

static int tcp_send_hb(struct tp *t, uint32_t peer, const uint8_t *hb)
{
	struct tp_tcp *c = (struct tp_tcp *)t;
	struct out *o = &c->out[peer];

	if (o->st != O_READY)
		return -ENOTCONN;
	if (!room(c, o, rec_len(c, BODY_FIX)))
		return -EAGAIN;
	if (c->vx) {
		if (vx_out_send(c->vx, peer, hb, NULL, 0, NULL, 0))
			out_close(c, peer, REDIAL_US);
		return 0;
	}
	out_push(c, peer, seal(c, o, hb, NULL, 0, NULL, 0));
	return 0;
}

static bool tcp_writable(struct tp *t, uint32_t peer)
{
	struct tp_tcp *c = (struct tp_tcp *)t;
	return room(c, &c->out[peer], 4 + c->maxct);
}

/* Dials, gives up on handshakes that take too long. */
static int tcp_timer(struct tp *t, const struct tp_handlers *h, void *ctx,
                     uint64_t now, uint64_t *next)
{
	struct tp_tcp *c = (struct tp_tcp *)t;
	unsigned ms = (unsigned)(c->hs_us / 1000);
	int events = 0;

	for (uint32_t i = 0; i < t->n; i++) {
		struct out *o = &c->out[i];
		if (i == t->self)
			continue;
		if (o->st == O_IDLE && now >= o->at) {
			dial(c, i);
		} else if ((o->st == O_CONNECTING || o->st == O_HANDSHAKE ||
		            o->st == O_RDMA_WAIT) &&
		           now >= o->at) {
			if (o->st != O_CONNECTING)
				events += tp__auth_fail(
				        t, h, ctx,
				        "node %u (%s) did not complete the "
				        "handshake within %u ms", i,
				        t->p[i].address, ms);
			out_close(c, i, REDIAL_US);
		}
		if (o->st != O_READY && o->at < *next)
			*next = o->at;
	}
	for (uint32_t k = 0; k < c->nin; k++) {
		struct in *in = &c->in[k];
		if (in->st != I_HELLO && in->st != I_CONFIRM)
			continue;
		if (now < in->at) {
			if (in->at < *next)
				*next = in->at;
			continue;
		}
		events += tp__auth_fail(t, h, ctx,
		                        "a connection from %s did not complete "
		                        "its handshake within %u ms", in->from,
		                        ms);
		in_close(c, k);
	}
	return events;
}

/* C6: what tcp_poll's callbacks sent waits in the rings until the poll
 * ends, then leaves in one write per peer (a home that answers a burst of
 * requests, a reader that asks for its next pages, send them together).
 * Sends outside tcp_poll still go at once: a fault's request waits for
 * nothing. Whatever a socket does not take is then watched for EPOLLOUT. */
static void uncork(struct tp_tcp *c)
{
	if (c->in_poll && --c->in_poll)
		return; /* an outer cork still holds */
	for (uint32_t i = 0; i < c->b.n; i++) {
		struct out *o = &c->out[i];
		if (!o->corked)
			continue;
		o->corked = false;
		if (o->fd < 0 || o->st != O_READY)
			continue;
		out_flush(c, i);
		if (o->fd >= 0 && o->head != o->tail && !o->pollout &&
		    !watch(c, o->fd, EPOLLIN | EPOLLRDHUP | EPOLLOUT,
		           tp__tag(K_OUT, o->gen, i)))
			o->pollout = true;
	}
}

static int tcp_poll_corked(struct tp *t, const struct tp_handlers *h,
                           void *ctx);

static int tcp_poll(struct tp *t, const struct tp_handlers *h, void *ctx)
{
	struct tp_tcp *c = (struct tp_tcp *)t;

	c->in_poll++;
	int rc = tcp_poll_corked(t, h, ctx);
	uncork(c);
	if (c->vx)
		vx_credit_flush(c->vx); /* what this poll consumed */
	return rc;
}

/* ---- RDMA completions (tp_rdma.h's sink) ---- */

struct rdma_rx {
	struct tp_tcp *c;
	const struct tp_handlers *h;
	void *ctx;
	uint64_t now;
	int events;
};

static bool rdma_on_body(void *ctx, uint32_t k, const uint8_t *body,
                         size_t len)
{
	struct rdma_rx *x = ctx;
	if (x->c->in[k].st != I_READY)
		return false;
	return in_body(x->c, x->h, x->ctx, k, body, len, x->now, &x->events);
}

/* A queue pair failed (a completion error) or a message was malformed:
 * its connection closes, what it held is lost (F1 turns that into the
 * peer's failure, with errors to whoever waits on it), and the reason is
 * reported through on_auth_fail, the transport's one line for the log. */
static void rdma_on_fail(void *ctx, bool out, uint32_t i, const char *why)
{
	struct rdma_rx *x = ctx;
	uint32_t peer = out ? i : x->c->in[i].peer;

	if (strstr(why, "malformed"))
		x->c->b.st.drop_malformed++;
	if (out)
		out_close(x->c, i, REDIAL_US);
	else
		in_close(x->c, i);
	x->events += tp__auth_fail(&x->c->b, x->h, x->ctx,
	                           "node %u: RDMA queue pair of the %s "
	                           "connection failed (%s): closed",
	                           peer, out ? "outgoing" : "incoming", why);
}

/* Reaps the queue pairs' completions; sets rx_more if the budget left
 * messages behind. Returns callbacks made, or -errno. */
static int rdma_poll(struct tp_tcp *c, const struct tp_handlers *h,
                     void *ctx, uint32_t *budget, bool event, uint64_t now)
{
	struct rdma_rx x = { .c = c, .h = h, .ctx = ctx, .now = now };
	const struct vx_sink sink = { .ctx = &x,
		                      .on_body = rdma_on_body,
		                      .on_fail = rdma_on_fail };
	bool more = false;
	int rc = vx_poll(c->vx, &sink, budget, event, &more);
	if (rc)
		return rc;
	if (more)
		c->b.rx_more = true;
	return x.events;
}

static int tcp_poll_corked(struct tp *t, const struct tp_handlers *h,
                           void *ctx)
{
	struct tp_tcp *c = (struct tp_tcp *)t;
	uint64_t now = tp__now_us();
	uint32_t budget = t->budget;
	int events = 0, rc, k;
	bool cq_event = false;

	rc = tp__poll_begin(t, now);
	if (rc)
		return rc;
	/* Records left by the last call's budget go first (per connection
	 * FIFO; each connection's records stay in order anyway). */
	if (t->rx_more)
		for (uint32_t j = 0; j < c->nin; j++)
			if (c->in[j].st == I_READY && c->in[j].pending)
				events += in_records(c, h, ctx, j, &budget, now);

	k = epoll_wait(t->epfd, t->evs, t->nevs, 0);
	if (k < 0 && errno != EINTR)
		return -errno;
	for (int e = 0; e < k; e++) { /* C5 */
		struct tp__event ev = tp__event(&t->evs[e]);
		uint32_t idx = ev.idx;

		switch (ev.kind) {
		case K_LISTEN:
			events += in_accept(c, h, ctx, now);
			break;
		case K_OUT:
			if (c->out[idx].gen == ev.gen && c->out[idx].fd >= 0)
				events += out_event(c, h, ctx, idx, ev.events);
			break;
		case K_IN:
			if (c->in[idx].gen == ev.gen && c->in[idx].st != I_FREE)
				events += in_event(c, h, ctx, idx, &budget, now);
			break;
		case K_CQ: /* rdma_poll below takes the channel's events */
			cq_event = true;
			break;
		case TP__K_TIMER:
		case TP__K_KICK:
			rc = tp__clear(t, ev.kind);
			if (rc)
				return rc;
			break;
		}
	}

	t->rx_more = false;
	if (c->vx) {
		rc = rdma_poll(c, h, ctx, &budget, cq_event, now);
		if (rc < 0)
			return rc;
		events += rc;
	}
	for (uint32_t j = 0; j < c->nin; j++)
		if (c->in[j].st == I_READY && c->in[j].pending)
			t->rx_more = true;
	if (t->rx_more)
		tp__kick(t); /* C5: stay readable while records wait */
	return events + tp__poll_end(t, h, ctx, now);
}

/* ---- set-up and tear-down ---- */

static void tcp_close(struct tp *t)
{
	struct tp_tcp *c = (struct tp_tcp *)t;
	size_t body = BODY_FIX + TP_MAX_HDR + (size_t)t->max_payload;

	if (c->out) {
		for (uint32_t i = 0; i < t->n; i++) {
			struct out *o = &c->out[i];
			if (o->fd >= 0)
				close(o->fd);
			sodium_memzero(o->esk, sizeof o->esk);
			sodium_memzero(&o->tx, sizeof o->tx);
			free(o->ring);
			free(o->ends);
		}
	}
	if (c->in) {
		for (uint32_t k = 0; k < c->nin; k++) {
			if (c->in[k].fd >= 0)
				close(c->in[k].fd);
			sodium_memzero(c->in[k].key, sizeof c->in[k].key);
			sodium_memzero(&c->in[k].rx, sizeof c->in[k].rx);
		}
	}
	if (c->rbuf)
		for (uint32_t i = 0; i < t->n; i++)
			free(c->rbuf[i]);
	if (c->plain)
		sodium_memzero(c->plain, body);
	if (c->txp)
		sodium_memzero(c->txp, body);
	if (c->lfd >= 0)
		close(c->lfd);
	vx_close(c->vx);
	free(c->plain);
	free(c->txp);
	free(c->txb);
	free(c->rbuf);
	free(c->in);
	free(c->out);
	tp__fini(t);
	free(c);
}

/* Binds and listens on this node's own address. */
static int tcp_listen(struct tp_tcp *c, char *err, size_t errlen)
{
	const char *addr = c->b.p[c->b.self].address;
	struct sockaddr_storage sa;
	unsigned salen = 0;
	bool v6 = false;
	int one = 1, rc;

	tp__parse_address(addr, &v6, &sa, &salen);
	c->lfd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	                0);
	if (c->lfd < 0)
		return tp__fail(err, errlen, -errno, "socket: %s",
		                strerror(errno));
	/* REUSEADDR: a restarted node rebinds despite TIME_WAIT; a second
	 * listener on the address is still refused. */
	setsockopt(c->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (v6)
		setsockopt(c->lfd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
	if (bind(c->lfd, (struct sockaddr *)&sa, salen) ||
	    listen(c->lfd, (int)(2 * c->b.n + 16)))
		return tp__fail(err, errlen, -errno, "bind %s: %s", addr,
		                strerror(errno));
	rc = tp__ep_add(&c->b, c->lfd, EPOLLIN, tp__tag(K_LISTEN, 0, 0));
	if (rc)
		return tp__fail(err, errlen, rc, "epoll: %s", strerror(-rc));
	return 0;
}

int tp__tcp_open(struct tp **out, const struct tp_config *cfg, char *err,
                 size_t errlen)
{
	struct tp_tcp *c;
	struct tp *t;
	size_t body, maxrec;
	uint64_t ring;
	uint32_t n = cfg->npeers;
	int rc;

	c = calloc(1, sizeof *c);
	if (!c)
		return tp__fail(err, errlen, -ENOMEM, "out of memory");
	t = &c->b;
	c->lfd = -1;
	c->nin = n - 1 + SPARE_SLOTS;
	rc = tp__init(t, &tcp_ops, cfg, (int)(2 * n + c->nin + 8), err, errlen);
	if (rc)
		goto err;
	c->mode = t->plaintext ? MODE_PLAIN : MODE_KEYED;
	if (cfg->kind == TP_KIND_RDMA) {
		c->mode = t->plaintext ? MODE_RDMA_PLAIN : MODE_RDMA_KEYED;
		c->ep_len = VX_EP_LEN;
	}
	c->hello_len = HELLO_LEN + c->ep_len;
	if (t->plaintext) {
		c->msg2_len = HS_FIX + c->ep_len;
		c->msg3_len = c->ep_len;
	} else {
		c->msg2_len = HS_FIX + HS_KEY + SS_HDR + 4 + SS_AB + c->hello_len;
		c->msg3_len = SS_HDR + 4 + SS_AB + c->hello_len;
	}
	c->hs_us = t->dead_us > 1000000u ? t->dead_us : 1000000u;
	body = BODY_FIX + TP_MAX_HDR + (size_t)t->max_payload;
	c->maxct = (t->plaintext ? 0 : SS_AB) + body;
	c->minct = (t->plaintext ? 0 : SS_AB) + BODY_FIX;
	maxrec = 4 + c->maxct;
	/* C4: the ring holds queue_limit largest records, at most
	 * send_buffer bytes, at least one largest record. */
	ring = (uint64_t)t->qlimit * maxrec;
	if (ring > (cfg->send_buffer ? cfg->send_buffer : 1u << 20))
		ring = cfg->send_buffer ? cfg->send_buffer : 1u << 20;
	if (ring < maxrec)
		ring = maxrec;

	c->out = calloc(n, sizeof *c->out);
	c->in = calloc(c->nin, sizeof *c->in);
	c->rbuf = calloc(n, sizeof *c->rbuf);
	c->plain = malloc(body);
	c->txp = malloc(body);
	c->txb = malloc(maxrec);
	if (!c->out || !c->in || !c->rbuf || !c->plain || !c->txp || !c->txb)
		goto nomem;
	for (uint32_t i = 0; i < n; i++)
		c->out[i].fd = -1;
	for (uint32_t k = 0; k < c->nin; k++)
		c->in[k].fd = -1;
	for (uint32_t i = 0; i < n; i++) {
		struct out *o = &c->out[i];
		bool v6;
		if (i == t->self)
			continue;
		o->cap = (size_t)ring;
		o->ring = malloc(o->cap);
		o->ends = calloc(t->qlimit, sizeof *o->ends);
		c->rbuf[i] = malloc(maxrec);
		if (!o->ring || !o->ends || !c->rbuf[i])
			goto nomem;
		tp__parse_address(t->p[i].address, &v6, &o->sa, &o->salen);
	}

	if (cfg->kind == TP_KIND_RDMA) {
		/* Receive frames per peer: as many largest messages as
		 * send_buffer holds, within 16..1024 and queue_limit; send
		 * frames (the send queue, T4): queue_limit, as many as the
		 * other kinds let wait (where TCP has the kernel's socket
		 * buffers besides, which a daemon behind a busy peer needs:
		 * measured, over a thousand messages under emulation), but
		 * at most RDMA_TX_BYTES of them. */
		uint64_t sb = cfg->send_buffer ? cfg->send_buffer : 1u << 20;
		uint64_t slots = sb / body, tx;
		if (slots < 16)
			slots = 16;
		if (slots > 1024)
			slots = 1024;
		if (slots > t->qlimit)
			slots = t->qlimit;
		tx = t->qlimit;
		if (tx > RDMA_TX_BYTES / body)
			tx = RDMA_TX_BYTES / body;
		if (tx < slots)
			tx = slots;
		const struct vx_config vc = {
			.device = cfg->rdma_device,
			.gid_index = cfg->rdma_gid_set ? (int)cfg->rdma_gid_index
			                               : -1,
			.npeers = n,
			.nin = c->nin,
			.slots = (uint32_t)slots,
			.tx_slots = (uint32_t)tx,
			.max_body = body,
		};
		rc = vx_open(&c->vx, &vc, err, errlen);
		if (rc)
			goto err;
		snprintf(t->desc, sizeof t->desc, "rdma: %s",
		         vx_describe(c->vx));
		rc = tp__ep_add(t, vx_fd(c->vx), EPOLLIN, tp__tag(K_CQ, 0, 0));
		if (rc) {
			rc = tp__fail(err, errlen, rc, "epoll: %s", strerror(-rc));
			goto err;
		}
	}
	rc = tcp_listen(c, err, errlen);
	if (rc)
		goto err;
	for (uint32_t i = 0; i < n; i++)
		if (i != t->self)
			dial(c, i);
	tp__start(t);
	*out = t;
	return 0;
nomem:
	rc = tp__fail(err, errlen, -ENOMEM, "out of memory");
err:
	tcp_close(t);
	return rc;
}

static void tcp_cork(struct tp *t, bool on)
{
	struct tp_tcp *c = (struct tp_tcp *)t;

	if (on)
		c->in_poll++;
	else
		uncork(c);
}

static const struct tp_ops tcp_ops = {
	.name = "tcp",
	.close = tcp_close,
	.poll = tcp_poll,
	.send = tcp_send,
	.send_hb = tcp_send_hb,
	.timer = tcp_timer,
	.writable = tcp_writable,
	.cork = tcp_cork,
};
