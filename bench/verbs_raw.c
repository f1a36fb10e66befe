/* verbs_raw.c — the raw RDMA limit: what plain libibverbs does between two
 * processes on one device with nothing of capdsm in the way. The figures of
 * the rdma transport (TP_KIND_RDMA, node/tp_rdma.c) are judged against
 * these, measured in the same run.
 *
 *   verbs_raw [--mode rt|stream|all] [--poll busy|blocking] [--device NAME]
 *             [--gid-index N] [--ops N] [--window W] [--bytes N] [--runs N]
 *             [--client-cpu N] [--server-cpu N]
 *
 * Two processes, the requester (this one, on --client-cpu) and a forked
 * responder (on --server-cpu), each open the device and make their own PD,
 * CQ, memory region and RC queue pair, swap endpoints (QP number, PSN, GID,
 * ring address and rkey) over a socketpair and move their QPs RESET -> INIT
 * -> RTR -> RTS on port 1 with the port's active MTU, timeout 14, retry 7,
 * rnr_retry 7. The sequence is the one rdma-core documents in
 * ibv_create_qp(3), ibv_modify_qp(3), ibv_post_send(3) and ibv_poll_cq(3);
 * nothing here comes from rdma_cm or capdsm.
 *
 * Figures, one JSON line each on stdout (a readable line on stderr):
 *  rt      what the transport does for a page read: a 64 B request
 *          (IBV_WR_SEND) and, back, a 64 B header + 4 KiB payload written
 *          with IBV_WR_RDMA_WRITE_WITH_IMM into the requester's frame ring,
 *          the immediate consuming a receive the requester keeps posted.
 *          Per round trip, in microseconds: median, p10, p90, p99 of --ops
 *          (default 2000) after WARMUP unrecorded ones.
 *  stream  the responder writes 64 B + 4 KiB messages back to back into a
 *          ring of --window frames (default 64); the requester consumes
 *          them in order and returns credits every window / 4, as a flow
 *          controlled channel does. MiB/s of the 4 KiB payloads, median of
 *          --runs timed runs (default 5) sharing --bytes (default 64 MiB).
 * Waiting (--poll): busy spins on ibv_poll_cq (both sides),
 * with sched_yield() between empty polls as capdsm's own spins do
 * (node/transport.h: on 2 cores a spin that never yields keeps helpers
 * off a core; with soft-RoCE that is the kernel's rxe work, run from
 * softirq or ksoftirqd); blocking sleeps in poll(2) on a completion
 * channel armed with ibv_req_notify_cq, the pattern of
 * ibv_get_cq_event(3): take the event, ack it, re-arm, then poll the CQ
 * until it is empty (both sides); mixed is capdsm's own policy — the side
 * that awaits a reply (the requester) spins, the side that serves (the
 * responder) sleeps between requests — so it is the limit of a transport
 * round trip measured the way bench_remote's raw pair measures it.
 *
 * Invariants:
 *  R1. Message m (a reply or a stream message) goes into frame m % window
 *      of the requester's ring, and only after the requester said it had
 *      consumed message m - window. Credits are counts of consumed messages
 *      (consumption is in order); every request carries one, and while a
 *      stream runs a request asking for nothing is sent every window / 4.
 *  R2. A send slot (the memory a post reads) is reused only when the work
 *      request that last used it has completed. Sends are signalled one in
 *      SIGNAL_EVERY, and on an RC QP a completion means every earlier send
 *      is done too, so posted - done < slots is enough; slots >=
 *      2 * SIGNAL_EVERY keeps a signalled send among any full queue.
 *  R3. No receive queue runs dry: the requester keeps one receive per
 *      frame (R1 bounds the writes in flight by the window); the responder
 *      keeps RESP_RECVS > REQ_SLOTS, more than the requester can have
 *      posted and not seen complete. rnr_retry 7 (retry for ever) would
 *      make a slow repost a delay, not an error, anyway.
 *  R4. Blocking: whenever a process sleeps, its CQ is armed, or an event
 *      it has not taken waits on the channel (so the sleep ends).
 *  R5. No wait lasts longer than WAIT_NS: a wait that ends without a
 *      completion is an error, and a process whose peer exits sees it at
 *      once (the peer's end of the socketpair closes).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <infiniband/verbs.h>

#include "bench.h"

#define PORT 1
#define HDR 64u                  /* request, and header of a reply (bytes) */
#define FRAME (HDR + BENCH_PAGE) /* one ring frame: header + 4 KiB page */
#define WAIT_NS (10ull * 1000000000u) /* R5: the longest wait (10 s) */
#define SOCK_CHECK_NS 1000000u   /* busy: look at the socket every 1 ms */
#define WARMUP 100               /* unrecorded round trips before --ops */
#define SIGNAL_EVERY 16          /* R2: one send in 16 is signalled */
#define REQ_SLOTS 64             /* requester's send slots (64 B each) */
#define RESP_RECVS 128           /* responder's receives (64 B each), R3 */
#define POLL_BATCH 32            /* completions taken per ibv_poll_cq */
#define MAX_WINDOW 1024
#define MAX_RUNS 64
#define RECV_BIT (1ull << 63)    /* in wr_id: a receive, else a send index */
#define MAGIC_REQ 0x52455131u    /* "REQ1" */
#define MAGIC_MSG 0x4d534731u    /* "MSG1" */
#define FILL 0xa5                /* every payload byte */

/* A request, requester -> responder, IBV_WR_SEND: "send me `want` more
 * messages; I have consumed `consumed` of them" (R1). want = 0 is a bare
 * credit. */
struct vr_req {
	uint32_t magic;
	uint32_t zero;
	uint64_t want;
	uint64_t consumed;
	uint8_t pad[40];
};
_Static_assert(sizeof(struct vr_req) == HDR, "a request is 64 bytes");

/* The header in front of each 4 KiB payload, responder -> requester. */
struct vr_hdr {
	uint64_t seq; /* message number, from 0; its low 32 bits are the imm */
	uint32_t magic;
	uint32_t len; /* payload bytes */
	uint8_t pad[48];
};
_Static_assert(sizeof(struct vr_hdr) == HDR, "a header is 64 bytes");

/* What each side tells the other over the socketpair before RTR. */
struct vr_endpoint {
	uint8_t gid[16];
	uint64_t addr;   /* requester: its frame ring; responder: 0 */
	uint32_t rkey;   /* of that ring */
	uint32_t qpn;
	uint32_t psn;    /* first packet sequence number, 24 bits */
	uint32_t frames; /* requester: the window */
	uint16_t lid;    /* InfiniBand only; 0 on RoCE */
	uint8_t pad[6];
};
_Static_assert(sizeof(struct vr_endpoint) == 48, "endpoint is 48 bytes");

struct opts {
	const char *device;
	int gid_index; /* < 0: the first IPv4-mapped RoCE v2 GID */
	bool rt, stream, busy, rbusy; /* busy: requester spins; rbusy: responder */
	const char *poll;             /* "busy", "blocking" or "mixed" */
	long ops, window, runs;
	uint64_t bytes;
	int client_cpu, server_cpu;
};

/* One process's verbs objects and counters. Everything is created by
 * side_open and destroyed by side_close, in reverse order. */
struct side {
	bool requester, busy;
	int sock; /* to the other process */
	struct ibv_context *ctx;
	struct ibv_pd *pd;
	struct ibv_comp_channel *chan; /* blocking only */
	struct ibv_cq *cq;
	struct ibv_qp *qp;
	struct ibv_mr *mr;
	uint8_t *buf; /* tx slots, then the ring (requester) or receive slots */
	size_t buf_len;
	uint8_t *tx, *rx;
	uint32_t tx_slots, tx_size; /* send slots and bytes of each */
	uint32_t rx_count;          /* frames (requester) / receives */
	bool inline_ok;             /* requests go inline (IBV_SEND_INLINE) */
	int gid_index;
	union ibv_gid gid;
	uint16_t lid;
	enum ibv_mtu mtu;
	uint32_t psn;
	struct vr_endpoint peer;
	uint64_t posted, done; /* sends posted / known complete (R2) */
	/* requester */
	uint64_t expect;   /* messages asked for */
	uint64_t consumed; /* messages consumed, in order */
	uint64_t credited; /* the last credit sent */
	uint64_t credit_every; /* while streaming; 0 otherwise */
	/* responder */
	uint64_t target; /* messages asked for */
	uint64_t sent;   /* messages posted */
	uint64_t acked;  /* the requester's last credit */
};

static const char *who; /* "requester" or "responder" once forked */

static void die(const char *fmt, ...)
	__attribute__((format(printf, 1, 2), noreturn));

/* Prints "verbs_raw: <side>: <message>" on stderr and exits with 1; the
 * other process sees its socket close and stops too. */
static void die(const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fprintf(stderr, "verbs_raw: %s%s", who ? who : "", who ? ": " : "");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static void usage(void)
{
	fprintf(stderr,
	        "usage: verbs_raw [--mode rt|stream|all]\n"
	        "                 [--poll busy|blocking|mixed] [--device NAME]\n"
	        "                 [--gid-index N] [--ops N]\n"
	        "                 [--window W] [--bytes N] [--runs N]\n"
	        "                 [--client-cpu N] [--server-cpu N]\n");
	exit(2);
}

/* ==== the socketpair: endpoints, a barrier, the end ==== */

static void sock_send(int fd, const void *p, size_t n)
{
	const uint8_t *b = p;

	while (n > 0) {
		ssize_t r = send(fd, b, n, MSG_NOSIGNAL);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			die("send to the other process: %s", strerror(errno));
		b += r;
		n -= (size_t)r;
	}
}

/* Receives exactly n bytes within WAIT_NS, or dies. */
static void sock_recv(int fd, void *p, size_t n, const char *what)
{
	uint8_t *b = p;
	uint64_t deadline = bench_now_ns() + WAIT_NS;

	while (n > 0) {
		uint64_t t = bench_now_ns();
		struct pollfd pf = { .fd = fd, .events = POLLIN };
		if (t >= deadline)
			die("no %s from the other process in 10 s", what);
		int r = poll(&pf, 1, (int)((deadline - t) / 1000000u) + 1);
		if (r < 0 && errno != EINTR)
			die("poll: %s", strerror(errno));
		if (r <= 0)
			continue;
		ssize_t k = recv(fd, b, n, 0);
		if (k < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (k < 0)
			die("recv from the other process: %s", strerror(errno));
		if (k == 0)
			die("the other process exited before sending %s", what);
		b += k;
		n -= (size_t)k;
	}
}

static bool sock_readable(int fd)
{
	struct pollfd pf = { .fd = fd, .events = POLLIN };

	return poll(&pf, 1, 0) > 0;
}

/* ==== posting ==== */

static void post_recv(struct side *s, uint32_t slot)
{
	struct ibv_sge sge = {
		.addr = (uintptr_t)(s->rx + (size_t)slot * HDR),
		.length = HDR,
		.lkey = s->mr->lkey,
	};
	/* The requester's receives only take immediates: the data of a
	 * write with immediate goes where the write says, so no SGE. */
	struct ibv_recv_wr wr = {
		.wr_id = RECV_BIT | slot,
		.sg_list = s->requester ? NULL : &sge,
		.num_sge = s->requester ? 0 : 1,
	};
	struct ibv_recv_wr *bad;

	if ((errno = ibv_post_recv(s->qp, &wr, &bad)))
		die("ibv_post_recv: %s", strerror(errno));
}

static bool tx_room(const struct side *s)
{
	return s->posted - s->done < s->tx_slots;
}

/* Posts the next send slot (the caller checked tx_room and filled it):
 * a request (SEND) or, to the ring frame `frame`, a message (WRITE WITH
 * IMM carrying imm). */
static void post_send(struct side *s, uint32_t len, bool write,
                      uint32_t frame, uint32_t imm)
{
	uint64_t i = s->posted;
	struct ibv_sge sge = {
		.addr = (uintptr_t)(s->tx + (i % s->tx_slots) * s->tx_size),
		.length = len,
		.lkey = s->mr->lkey,
	};
	struct ibv_send_wr wr = {
		.wr_id = i,
		.sg_list = &sge,
		.num_sge = 1,
		.opcode = write ? IBV_WR_RDMA_WRITE_WITH_IMM : IBV_WR_SEND,
	};
	struct ibv_send_wr *bad;

	if (i % SIGNAL_EVERY == SIGNAL_EVERY - 1)
		wr.send_flags |= IBV_SEND_SIGNALED;
	if (!write && s->inline_ok)
		wr.send_flags |= IBV_SEND_INLINE;
	if (write) {
		wr.imm_data = htonl(imm);
		wr.wr.rdma.remote_addr = s->peer.addr + (uint64_t)frame * FRAME;
		wr.wr.rdma.rkey = s->peer.rkey;
	}
	if ((errno = ibv_post_send(s->qp, &wr, &bad)))
		die("ibv_post_send: %s", strerror(errno));
	s->posted++;
}

/* ==== opening a side ==== */

static bool zero_gid(const union ibv_gid *g)
{
	static const uint8_t z[16];

	return memcmp(g->raw, z, sizeof z) == 0;
}

/* ::ffff:a.b.c.d, the form RoCE gives a GID made from an IPv4 address. */
static bool ipv4_mapped(const union ibv_gid *g)
{
	static const uint8_t pfx[12] = { [10] = 0xff, [11] = 0xff };

	return memcmp(g->raw, pfx, sizeof pfx) == 0;
}

/* The GID: --gid-index if given, else the first entry that is RoCE v2
 * (routable, UDP) and IPv4-mapped; on InfiniBand, entry 0. */
static void pick_gid(struct side *s, const struct ibv_port_attr *pa, int want)
{
	const char *dev = ibv_get_device_name(s->ctx->device);

	if (want >= 0) {
		if (want >= pa->gid_tbl_len ||
		    ibv_query_gid(s->ctx, PORT, want, &s->gid) ||
		    zero_gid(&s->gid))
			die("GID index %d of %s port %d is not valid (the "
			    "table has %d entries)", want, dev, PORT,
			    pa->gid_tbl_len);
		s->gid_index = want;
		return;
	}
	if (pa->link_layer == IBV_LINK_LAYER_INFINIBAND) {
		if (ibv_query_gid(s->ctx, PORT, 0, &s->gid))
			die("ibv_query_gid(%s, port %d, 0) failed", dev, PORT);
		s->gid_index = 0;
		return;
	}
	for (int i = 0; i < pa->gid_tbl_len; i++) {
		struct ibv_gid_entry e;
		/* Unused entries answer ENODATA. */
		if (ibv_query_gid_ex(s->ctx, PORT, (uint32_t)i, &e, 0))
			continue;
		memcpy(s->gid.raw, e.gid.raw, sizeof s->gid.raw);
		if (e.gid_type == IBV_GID_TYPE_ROCE_V2 &&
		    ipv4_mapped(&s->gid)) {
			s->gid_index = i;
			return;
		}
	}
	die("%s port %d has no IPv4-mapped RoCE v2 GID (is its network "
	    "interface up with an IPv4 address?); name one with --gid-index",
	    dev, PORT);
}

/* Opens the device and makes everything up to an RC QP in INIT with its
 * receives posted (they must be there before the peer can send). */
static void side_open(struct side *s, const struct opts *o)
{
	struct ibv_device **list;
	struct ibv_device_attr da;
	struct ibv_port_attr pa;
	int n, rq, cqe;

	list = ibv_get_device_list(&n);
	if (!list)
		die("ibv_get_device_list: %s", strerror(errno));
	for (int i = 0; i < n && !s->ctx; i++) {
		if (strcmp(ibv_get_device_name(list[i]), o->device))
			continue;
		s->ctx = ibv_open_device(list[i]);
		if (!s->ctx)
			die("ibv_open_device(%s): %s", o->device,
			    strerror(errno));
	}
	ibv_free_device_list(list);
	if (!s->ctx)
		die("RDMA device %s is gone", o->device);
	if (ibv_query_device(s->ctx, &da))
		die("ibv_query_device(%s) failed", o->device);
	if ((errno = ibv_query_port(s->ctx, PORT, &pa)))
		die("ibv_query_port(%s, %d): %s", o->device, PORT,
		    strerror(errno));
	if (pa.state != IBV_PORT_ACTIVE)
		die("port %d of %s is %s, not active (is its network "
		    "interface up?)", PORT, o->device,
		    ibv_port_state_str(pa.state));
	pick_gid(s, &pa, o->gid_index);
	s->mtu = pa.active_mtu;
	s->lid = pa.lid;

	/* Send slots (R2) and the receive side: the requester's tx holds
	 * requests, its rx is the ring of frames the responder writes into;
	 * the responder's tx holds the frames it writes from, its rx the
	 * requests it receives. */
	if (s->requester) {
		s->tx_slots = REQ_SLOTS;
		s->tx_size = HDR;
		s->rx_count = (uint32_t)o->window;
		rq = (int)o->window;
	} else {
		s->tx_slots = (uint32_t)(2 * o->window > 64 ? 2 * o->window
		                                              : 64);
		s->tx_size = FRAME;
		s->rx_count = RESP_RECVS;
		rq = RESP_RECVS;
	}
	cqe = (int)s->tx_slots + rq + 16;
	if ((int)s->tx_slots > da.max_qp_wr || rq > da.max_qp_wr ||
	    cqe > da.max_cqe)
		die("%s allows %d work requests per queue and %d CQ entries; "
		    "this needs %u, %d and %d (a smaller --window?)", o->device,
		    da.max_qp_wr, da.max_cqe, s->tx_slots, rq, cqe);

	s->pd = ibv_alloc_pd(s->ctx);
	if (!s->pd)
		die("ibv_alloc_pd: %s", strerror(errno));
	if (!s->busy) {
		s->chan = ibv_create_comp_channel(s->ctx);
		if (!s->chan)
			die("ibv_create_comp_channel: %s", strerror(errno));
		/* poll(2) says when to take an event; never block in it. */
		int fl = fcntl(s->chan->fd, F_GETFL);
		if (fl < 0 ||
		    fcntl(s->chan->fd, F_SETFL, fl | O_NONBLOCK) != 0)
			die("fcntl(completion channel): %s", strerror(errno));
	}
	s->cq = ibv_create_cq(s->ctx, cqe, NULL, s->chan, 0);
	if (!s->cq)
		die("ibv_create_cq(%d): %s", cqe, strerror(errno));
	if (s->chan && (errno = ibv_req_notify_cq(s->cq, 0)))
		die("ibv_req_notify_cq: %s", strerror(errno));

	size_t rx_len = (size_t)s->rx_count * (s->requester ? FRAME : HDR);
	s->buf_len = (size_t)s->tx_slots * s->tx_size + rx_len;
	s->buf = mmap(NULL, s->buf_len, PROT_READ | PROT_WRITE,
	              MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (s->buf == MAP_FAILED)
		die("mmap(%zu): %s", s->buf_len, strerror(errno));
	s->tx = s->buf;
	s->rx = s->buf + (size_t)s->tx_slots * s->tx_size;
	if (!s->requester) /* payloads never change; headers are per post */
		memset(s->tx, FILL, (size_t)s->tx_slots * s->tx_size);
	s->mr = ibv_reg_mr(s->pd, s->buf, s->buf_len,
	                   IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
	if (!s->mr)
		die("ibv_reg_mr(%zu bytes): %s", s->buf_len, strerror(errno));

	/* Requests go inline when the device allows 64 bytes of it (the
	 * usual way to send small messages); else from the send slots. */
	struct ibv_qp_init_attr ia = {
		.send_cq = s->cq,
		.recv_cq = s->cq,
		.qp_type = IBV_QPT_RC,
		.sq_sig_all = 0,
		.cap = {
			.max_send_wr = s->tx_slots,
			.max_recv_wr = (uint32_t)rq,
			.max_send_sge = 1,
			.max_recv_sge = 1,
			.max_inline_data = s->requester ? HDR : 0,
		},
	};
	s->qp = ibv_create_qp(s->pd, &ia);
	if (!s->qp && s->requester) {
		ia.cap.max_inline_data = 0;
		s->qp = ibv_create_qp(s->pd, &ia);
	}
	if (!s->qp)
		die("ibv_create_qp(RC): %s", strerror(errno));
	s->inline_ok = ia.cap.max_inline_data >= HDR;

	struct ibv_qp_attr a = {
		.qp_state = IBV_QPS_INIT,
		.pkey_index = 0,
		.port_num = PORT,
		.qp_access_flags = IBV_ACCESS_REMOTE_WRITE,
	};
	if ((errno = ibv_modify_qp(s->qp, &a,
	                           IBV_QP_STATE | IBV_QP_PKEY_INDEX |
	                                   IBV_QP_PORT |
	                                   IBV_QP_ACCESS_FLAGS)))
		die("QP transition RESET -> INIT failed: %s", strerror(errno));
	s->psn = (uint32_t)(bench_now_ns() ^ ((uint64_t)getpid() << 16)) &
	         0xffffff;
	for (uint32_t i = 0; i < s->rx_count; i++)
		post_recv(s, s->requester ? 0 : i); /* R3 */
}

/* ==== connecting ==== */

/* Swaps endpoints, then INIT -> RTR -> RTS, then a barrier: after it,
 * both QPs can take traffic and both sides' receives are posted. */
static void side_connect(struct side *s)
{
	struct vr_endpoint me;
	char ready = 'R', peer_ready;

	memset(&me, 0, sizeof me); /* padding crosses the socket too */
	memcpy(me.gid, s->gid.raw, sizeof me.gid);
	me.qpn = s->qp->qp_num;
	me.psn = s->psn;
	me.lid = s->lid;
	if (s->requester) {
		me.addr = (uintptr_t)s->rx;
		me.rkey = s->mr->rkey;
		me.frames = s->rx_count;
	}
	sock_send(s->sock, &me, sizeof me);
	sock_recv(s->sock, &s->peer, sizeof s->peer, "its endpoint");

	struct ibv_qp_attr rtr = {
		.qp_state = IBV_QPS_RTR,
		.path_mtu = s->mtu,
		.dest_qp_num = s->peer.qpn,
		.rq_psn = s->peer.psn,
		.max_dest_rd_atomic = 1,
		.min_rnr_timer = 12, /* 0.64 ms */
		.ah_attr = {
			.is_global = 1,
			.dlid = s->peer.lid,
			.sl = 0,
			.port_num = PORT,
			.grh = {
				.sgid_index = (uint8_t)s->gid_index,
				.hop_limit = 64,
			},
		},
	};
	memcpy(rtr.ah_attr.grh.dgid.raw, s->peer.gid, 16);
	if ((errno = ibv_modify_qp(s->qp, &rtr,
	                           IBV_QP_STATE | IBV_QP_AV |
	                                   IBV_QP_PATH_MTU |
	                                   IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
	                                   IBV_QP_MAX_DEST_RD_ATOMIC |
	                                   IBV_QP_MIN_RNR_TIMER)))
		die("QP transition INIT -> RTR failed: %s", strerror(errno));

	struct ibv_qp_attr rts = {
		.qp_state = IBV_QPS_RTS,
		.sq_psn = s->psn,
		.timeout = 14, /* 4.096 us * 2^14 = 67 ms per retry */
		.retry_cnt = 7,
		.rnr_retry = 7, /* for ever */
		.max_rd_atomic = 1,
	};
	if ((errno = ibv_modify_qp(s->qp, &rts,
	                           IBV_QP_STATE | IBV_QP_SQ_PSN |
	                                   IBV_QP_TIMEOUT |
	                                   IBV_QP_RETRY_CNT |
	                                   IBV_QP_RNR_RETRY |
	                                   IBV_QP_MAX_QP_RD_ATOMIC)))
		die("QP transition RTR -> RTS failed: %s", strerror(errno));

	sock_send(s->sock, &ready, 1);
	sock_recv(s->sock, &peer_ready, 1, "the ready signal");
}

static void side_close(struct side *s)
{
	if ((errno = ibv_destroy_qp(s->qp)))
		die("ibv_destroy_qp: %s", strerror(errno));
	if ((errno = ibv_dereg_mr(s->mr)))
		die("ibv_dereg_mr: %s", strerror(errno));
	munmap(s->buf, s->buf_len);
	/* Every event was acked as it was taken, so this does not wait. */
	if ((errno = ibv_destroy_cq(s->cq)))
		die("ibv_destroy_cq: %s", strerror(errno));
	if (s->chan && (errno = ibv_destroy_comp_channel(s->chan)))
		die("ibv_destroy_comp_channel: %s", strerror(errno));
	if ((errno = ibv_dealloc_pd(s->pd)))
		die("ibv_dealloc_pd: %s", strerror(errno));
	if (ibv_close_device(s->ctx))
		die("ibv_close_device failed");
}

/* ==== waiting ==== */

/* Blocking: takes the channel's event, acks it and re-arms the CQ (R4);
 * the caller then polls the CQ until it is empty. */
static void take_event(struct side *s)
{
	struct ibv_cq *cq;
	void *cq_ctx;

	if (ibv_get_cq_event(s->chan, &cq, &cq_ctx)) {
		if (errno == EAGAIN)
			return; /* woken for nothing */
		die("ibv_get_cq_event: %s", strerror(errno));
	}
	ibv_ack_cq_events(cq, 1);
	if ((errno = ibv_req_notify_cq(cq, 0)))
		die("ibv_req_notify_cq: %s", strerror(errno));
}

/* Waits up to WAIT_NS for completions and returns how many it put in wc
 * (1..n), or 0 when the socket to the other process became readable
 * first (a byte, or the other end closed: R5). `what` names the wait in
 * the timeout message. */
static int cq_wait(struct side *s, struct ibv_wc *wc, int n,
                   const char *what)
{
	uint64_t t0 = bench_now_ns(), next_sock = t0 + SOCK_CHECK_NS;

	for (unsigned spin = 1;; spin++) {
		int k = ibv_poll_cq(s->cq, n, wc);
		if (k < 0)
			die("ibv_poll_cq failed (%d)", k);
		if (k > 0)
			return k;
		if (s->busy) {
			sched_yield(); /* see the file's head */
			if (spin % 256) /* the clock only now and then */
				continue;
			uint64_t t = bench_now_ns();
			if (t >= next_sock) {
				if (sock_readable(s->sock))
					return 0;
				next_sock = t + SOCK_CHECK_NS;
			}
			if (t - t0 > WAIT_NS)
				die("no completion in 10 s while waiting "
				    "for %s", what);
			continue;
		}
		uint64_t t = bench_now_ns();
		if (t - t0 > WAIT_NS)
			die("no completion in 10 s while waiting for %s", what);
		struct pollfd pf[2] = {
			{ .fd = s->chan->fd, .events = POLLIN },
			{ .fd = s->sock, .events = POLLIN },
		};
		int r = poll(pf, 2, (int)((WAIT_NS - (t - t0)) / 1000000u) + 1);
		if (r < 0 && errno != EINTR)
			die("poll: %s", strerror(errno));
		if (r <= 0)
			continue;
		if (pf[1].revents)
			return 0;
		if (pf[0].revents)
			take_event(s);
	}
}

static void check_status(const struct side *s, const struct ibv_wc *wc)
{
	if (wc->status == IBV_WC_SUCCESS)
		return;
	die("completion error on a %s: %s (status %d, vendor error 0x%x)%s",
	    wc->wr_id & RECV_BIT ? "receive"
	    : s->requester       ? "request (SEND)"
	                         : "message (RDMA WRITE WITH IMM)",
	    ibv_wc_status_str(wc->status), (int)wc->status, wc->vendor_err,
	    wc->status == IBV_WC_WR_FLUSH_ERR
	            ? "; the QP is in the error state, after an error that "
	              "the other side may report"
	            : "");
}

/* ==== the requester ==== */

/* Asks for `want` more messages (0: a bare credit), carrying the count of
 * consumed ones (R1). */
static void req_send(struct side *s, uint64_t want);

/* Takes one batch of completions: consumes messages in order (checking
 * each frame), reposts their receives, notes finished sends, and in a
 * stream returns credits every credit_every messages. */
static void req_progress(struct side *s, const char *what)
{
	struct ibv_wc wc[POLL_BATCH];
	int k = cq_wait(s, wc, POLL_BATCH, what);

	if (k == 0)
		die("the responder exited (its message is above)");
	for (int i = 0; i < k; i++) {
		check_status(s, &wc[i]);
		if (!(wc[i].wr_id & RECV_BIT)) {
			s->done = wc[i].wr_id + 1; /* and all before it, R2 */
			continue;
		}
		if (wc[i].opcode != IBV_WC_RECV_RDMA_WITH_IMM)
			die("a receive completed with opcode %d, not an "
			    "immediate", (int)wc[i].opcode);
		uint64_t m = s->consumed;
		const uint8_t *f = s->rx + (m % s->rx_count) * FRAME;
		const struct vr_hdr *h = (const void *)f;
		if (ntohl(wc[i].imm_data) != (uint32_t)m || h->seq != m ||
		    h->magic != MAGIC_MSG || h->len != BENCH_PAGE ||
		    f[HDR] != FILL || f[FRAME - 1] != FILL)
			die("message %llu arrived wrong (immediate %u, header "
			    "seq %llu)", (unsigned long long)m,
			    ntohl(wc[i].imm_data), (unsigned long long)h->seq);
		s->consumed++;
		post_recv(s, 0);
	}
	if (s->credit_every && s->consumed - s->credited >= s->credit_every &&
	    tx_room(s))
		req_send(s, 0);
}

static void req_send(struct side *s, uint64_t want)
{
	while (!tx_room(s))
		req_progress(s, "a send slot");
	struct vr_req *r = (void *)(s->tx + (s->posted % s->tx_slots) * HDR);
	*r = (struct vr_req){
		.magic = MAGIC_REQ,
		.want = want,
		.consumed = s->consumed,
	};
	s->credited = s->consumed;
	s->expect += want;
	post_send(s, HDR, false, 0, 0);
}

/* One round trip, in nanoseconds: a request for one message, until it is
 * consumed. */
static uint64_t req_round_trip(struct side *s)
{
	uint64_t t0 = bench_now_ns();

	req_send(s, 1);
	while (s->consumed < s->expect)
		req_progress(s, "a reply");
	return bench_now_ns() - t0;
}

/* One stream of n messages, in nanoseconds from the request to the last
 * one consumed. */
static uint64_t req_stream(struct side *s, uint64_t n)
{
	uint64_t t0 = bench_now_ns();

	s->credit_every = s->rx_count / 4 ? s->rx_count / 4 : 1;
	req_send(s, n);
	while (s->consumed < s->expect)
		req_progress(s, "a stream message");
	s->credit_every = 0;
	return bench_now_ns() - t0;
}

/* ==== the responder ==== */

/* Serves requests until the requester writes 'Q' on the socket: posts
 * every message it may (asked for, credit for its frame, a free send
 * slot), then waits. */
static void responder(struct side *s)
{
	struct ibv_wc wc[POLL_BATCH];
	uint64_t window = s->peer.frames;

	for (;;) {
		while (s->sent < s->target && s->sent < s->acked + window &&
		       tx_room(s)) {
			uint64_t m = s->sent++;
			struct vr_hdr *h = (void *)(s->tx + (s->posted %
			                                     s->tx_slots) *
			                                            FRAME);
			*h = (struct vr_hdr){
				.seq = m,
				.magic = MAGIC_MSG,
				.len = BENCH_PAGE,
			};
			post_send(s, FRAME, true, (uint32_t)(m % window),
			          (uint32_t)m);
		}
		int k = cq_wait(s, wc, POLL_BATCH, "a request");
		if (k == 0) {
			char c;
			if (recv(s->sock, &c, 1, 0) == 1 && c == 'Q')
				return;
			die("the requester exited");
		}
		for (int i = 0; i < k; i++) {
			check_status(s, &wc[i]);
			if (!(wc[i].wr_id & RECV_BIT)) {
				s->done = wc[i].wr_id + 1;
				continue;
			}
			uint32_t slot = (uint32_t)(wc[i].wr_id & ~RECV_BIT);
			struct vr_req r;
			memcpy(&r, s->rx + (size_t)slot * HDR, sizeof r);
			if (wc[i].opcode != IBV_WC_RECV ||
			    wc[i].byte_len != HDR || r.magic != MAGIC_REQ)
				die("a malformed request (opcode %d, %u bytes)",
				    (int)wc[i].opcode, wc[i].byte_len);
			post_recv(s, slot);
			s->target += r.want;
			if (r.consumed > s->acked)
				s->acked = r.consumed;
		}
	}
}

/* ==== figures ==== */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted v[0..n). */
static double pct(const double *v, size_t n, double p)
{
	size_t r = (size_t)ceil(p / 100.0 * (double)n);

	return v[r ? r - 1 : 0];
}

static double median_sorted(const double *v, size_t n)
{
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Device names go into JSON as they are; anything odd becomes '_'. */
static void json_safe(char *dst, size_t len, const char *src)
{
	size_t i = 0;

	for (; src[i] && i + 1 < len; i++)
		dst[i] = (src[i] == '"' || src[i] == '\\' ||
		          (unsigned char)src[i] < 0x20)
		                 ? '_'
		                 : src[i];
	dst[i] = '\0';
}

struct ctx_info {
	const char *poll;      /* "busy" or "blocking" */
	const char *suffix;    /* bench_placement's */
	char placement[96];
	char device[64];
	const struct side *s;
};

static void json_tail(const struct ctx_info *c)
{
	printf(",\"mode\":\"%s\",\"placement\":\"%s\",\"device\":\"%s\","
	       "\"port\":%d,\"gid_index\":%d,\"mtu\":%d,\"inline\":%s}\n",
	       c->poll, c->placement, c->device, PORT, c->s->gid_index,
	       128 << c->s->mtu, c->s->inline_ok ? "true" : "false");
	fflush(stdout);
}

static void figure_rt(struct side *s, const struct opts *o,
                      const struct ctx_info *c)
{
	double *us = malloc((size_t)o->ops * sizeof *us);

	if (!us)
		die("out of memory");
	for (int i = 0; i < WARMUP; i++)
		req_round_trip(s);
	for (long i = 0; i < o->ops; i++)
		us[i] = (double)req_round_trip(s) / 1e3;
	qsort(us, (size_t)o->ops, sizeof *us, cmp_double);

	size_t n = (size_t)o->ops;
	double med = median_sorted(us, n), p10 = pct(us, n, 10),
	       p90 = pct(us, n, 90), p99 = pct(us, n, 99);
	printf("{\"bench\":\"verbs_rt4k_%s%s\",\"unit\":\"us\",\"value\":%.6g,"
	       "\"p10\":%.6g,\"p90\":%.6g,\"p99\":%.6g,\"ops\":%ld,"
	       "\"median_of\":\"round trips: 64 B SEND, 64 B + 4 KiB RDMA "
	       "WRITE WITH IMM back\"",
	       c->poll, c->suffix, med, p10, p90, p99, o->ops);
	json_tail(c);
	fprintf(stderr, "verbs_rt4k_%s%s: %.1f us median (p10 %.1f, p90 %.1f, "
	        "p99 %.1f) over %ld round trips; %s, %s\n", c->poll,
	        c->suffix, med, p10, p90, p99, o->ops, c->device,
	        c->placement);
	free(us);
}

static void figure_stream(struct side *s, const struct opts *o,
                          const struct ctx_info *c)
{
	uint64_t per_run = o->bytes / BENCH_PAGE / (uint64_t)o->runs;
	uint64_t warm = 4 * (uint64_t)o->window;
	double mibs[MAX_RUNS], sorted[MAX_RUNS];

	req_stream(s, warm < per_run ? warm : per_run);
	for (long r = 0; r < o->runs; r++) {
		double sec = (double)req_stream(s, per_run) / 1e9;
		mibs[r] = (double)(per_run * BENCH_PAGE) / (1 << 20) / sec;
	}
	memcpy(sorted, mibs, (size_t)o->runs * sizeof *mibs);
	qsort(sorted, (size_t)o->runs, sizeof *sorted, cmp_double);
	double med = median_sorted(sorted, (size_t)o->runs);

	printf("{\"bench\":\"verbs_stream_%s%s\",\"unit\":\"MiB/s\","
	       "\"value\":%.6g,\"runs\":%ld,\"values\":[",
	       c->poll, c->suffix, med, o->runs);
	for (long r = 0; r < o->runs; r++)
		printf("%s%.6g", r ? "," : "", mibs[r]);
	printf("],\"median_of\":\"runs of %llu messages of 64 B + 4 KiB, "
	       "RDMA WRITE WITH IMM into a ring with credits (4 KiB payloads "
	       "counted)\",\"bytes\":%llu,\"window\":%ld",
	       (unsigned long long)per_run,
	       (unsigned long long)(per_run * BENCH_PAGE * (uint64_t)o->runs),
	       o->window);
	json_tail(c);
	fprintf(stderr, "verbs_stream_%s%s: %.1f MiB/s median of %ld runs of "
	        "%.1f MiB (%.1f..%.1f); window %ld, credits every %ld; "
	        "%s, %s\n",
	        c->poll, c->suffix, med, o->runs,
	        (double)(per_run * BENCH_PAGE) / (1 << 20), sorted[0],
	        sorted[o->runs - 1], o->window,
	        o->window / 4 ? o->window / 4 : 1, c->device, c->placement);
}

/* ==== main ==== */

/* The device to use: --device if it exists, else the first. Dies with the
 * advice for a host without one. */
static const char *find_device(const char *want, char *name, size_t len)
{
	struct ibv_device **list;
	int n;

	list = ibv_get_device_list(&n);
	if (!list && errno != ENOSYS)
		die("ibv_get_device_list: %s", strerror(errno));
	if (!list || n == 0)
		die("no RDMA device: load rdma_rxe and add a soft-RoCE link "
		    "(modprobe rdma_rxe; rdma link add rxe0 type rxe netdev "
		    "eth0), or run inside tests/vm/run.sh");
	name[0] = '\0';
	for (int i = 0; i < n; i++) {
		const char *d = ibv_get_device_name(list[i]);
		if (!want || !strcmp(d, want)) {
			snprintf(name, len, "%s", d);
			break;
		}
	}
	ibv_free_device_list(list);
	if (!name[0])
		die("no RDMA device named %s (ibv_devices lists them)", want);
	return name;
}

/* Reaps the responder within WAIT_NS; returns its exit status (or 1). */
static int reap(pid_t pid)
{
	uint64_t t0 = bench_now_ns();
	int st;

	for (;;) {
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid)
			break;
		if (r < 0 && errno != EINTR)
			die("waitpid: %s", strerror(errno));
		if (bench_now_ns() - t0 > WAIT_NS) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			fprintf(stderr, "verbs_raw: the responder did not exit "
			        "in 10 s; killed\n");
			return 1;
		}
		nanosleep(&(struct timespec){ .tv_nsec = 1000000 }, NULL);
	}
	if (WIFEXITED(st))
		return WEXITSTATUS(st);
	fprintf(stderr, "verbs_raw: the responder died of signal %d\n",
	        WTERMSIG(st));
	return 1;
}

int main(int argc, char **argv)
{
	static const struct option lopts[] = {
		{ "mode", required_argument, NULL, 'm' },
		{ "poll", required_argument, NULL, 'p' },
		{ "device", required_argument, NULL, 'd' },
		{ "gid-index", required_argument, NULL, 'g' },
		{ "ops", required_argument, NULL, 'o' },
		{ "window", required_argument, NULL, 'w' },
		{ "bytes", required_argument, NULL, 'b' },
		{ "runs", required_argument, NULL, 'r' },
		{ "client-cpu", required_argument, NULL, 'C' },
		{ "server-cpu", required_argument, NULL, 'S' },
		{ 0 },
	};
	struct opts o = {
		.gid_index = -1,
		.rt = true,
		.stream = true,
		.busy = true,
		.rbusy = true,
		.poll = "busy",
		.ops = 2000,
		.window = 64,
		.runs = 5,
		.bytes = 64ull << 20,
		.client_cpu = -1,
		.server_cpu = -1,
	};
	char devname[64];
	int opt, sv[2];

	while ((opt = getopt_long(argc, argv, "m:p:d:g:o:w:b:r:C:S:", lopts,
	                          NULL)) != -1) {
		switch (opt) {
		case 'm':
			o.rt = !strcmp(optarg, "rt") || !strcmp(optarg, "all");
			o.stream = !strcmp(optarg, "stream") ||
			           !strcmp(optarg, "all");
			if (!o.rt && !o.stream)
				usage();
			break;
		case 'p':
			o.busy = !strcmp(optarg, "busy") ||
			         !strcmp(optarg, "mixed");
			o.rbusy = !strcmp(optarg, "busy");
			o.poll = optarg;
			if (!o.busy && strcmp(optarg, "blocking"))
				usage();
			break;
		case 'd': o.device = optarg; break;
		case 'g':
			o.gid_index = (int)bench_arg_long("--gid-index", optarg,
			                                  0, 65535);
			break;
		case 'o':
			o.ops = bench_arg_long("--ops", optarg, 1, 1 << 24);
			break;
		case 'w':
			o.window = bench_arg_long("--window", optarg, 1,
			                          MAX_WINDOW);
			break;
		case 'b':
			o.bytes = (uint64_t)bench_arg_long(
				"--bytes", optarg, BENCH_PAGE, 1l << 40);
			break;
		case 'r':
			o.runs = bench_arg_long("--runs", optarg, 1, MAX_RUNS);
			break;
		case 'C':
			o.client_cpu = (int)bench_arg_long(
				"--client-cpu", optarg, 0, CPU_SETSIZE - 1);
			break;
		case 'S':
			o.server_cpu = (int)bench_arg_long(
				"--server-cpu", optarg, 0, CPU_SETSIZE - 1);
			break;
		default: usage();
		}
	}
	if (optind != argc)
		usage();
	if (o.stream && o.bytes / BENCH_PAGE < (uint64_t)o.runs)
		die("--bytes %llu is less than a page per run",
		    (unsigned long long)o.bytes);
	o.device = find_device(o.device, devname, sizeof devname);

	/* The socket, not SIGPIPE, tells a side that the other is gone. */
	signal(SIGPIPE, SIG_IGN);
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
		die("socketpair: %s", strerror(errno));
	fflush(NULL);
	/* Fork before any verbs object exists: each process opens its own
	 * context, and no registered memory is shared copy-on-write. */
	pid_t pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		struct side s = { .requester = false, .busy = o.rbusy,
		                  .sock = sv[1] };
		who = "responder";
		close(sv[0]);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() == 1)
			_exit(1);
		bench_pin(o.server_cpu);
		side_open(&s, &o);
		side_connect(&s);
		responder(&s);
		side_close(&s);
		exit(0);
	}

	struct side s = { .requester = true, .busy = o.busy, .sock = sv[0] };
	struct ctx_info c = { .poll = o.poll, .s = &s };
	who = "requester";
	close(sv[1]);
	bench_pin(o.client_cpu);
	c.suffix = bench_placement(o.client_cpu, o.server_cpu, c.placement,
	                           sizeof c.placement);
	json_safe(c.device, sizeof c.device, o.device);
	side_open(&s, &o);
	side_connect(&s);
	if (o.rt)
		figure_rt(&s, &o, &c);
	if (o.stream)
		figure_stream(&s, &o, &c);
	sock_send(s.sock, "Q", 1);
	int st = reap(pid);
	side_close(&s);
	if (st != 0)
		die("the responder failed (status %d)", st);
	return 0;
}
