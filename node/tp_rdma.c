/* tp_rdma.c — the verbs data path of TP_KIND_RDMA (see tp_rdma.h): RC
 * queue pairs, registered frame rings, RDMA WRITE WITH IMMEDIATE, credits.
 * Written against libibverbs as rdma-core documents it (ibv_create_qp,
 * ibv_modify_qp's RESET -> INIT -> RTR -> RTS, ibv_post_send,
 * ibv_poll_cq, completion channels with ibv_req_notify_cq); tested with
 * soft-RoCE (rdma_rxe) in tests/vm.
 *
 * Invariants:
 *  V1. A frame of peer p's receive ring holds at most one unconsumed
 *      message: the sender writes message m into frame m % slots only
 *      when the receiver has returned credit for m - slots (credits are
 *      counts of consumed messages, and consumption is in order).
 *  V2. The sender's own frames (tx_slots >= slots per peer) are its send
 *      queue: a message is gathered into one at tp_send and posted as soon
 *      as a credit allows, so tp_send says -EAGAIN only when tx_slots
 *      messages wait (T4), not when the receiver is merely a little
 *      behind. A send frame is reused only after the write that used it
 *      has completed locally (send completions arrive in order on an RC
 *      QP, so accepted - done < tx_slots is enough).
 *  V3. A completion is acted on only if its work request names the
 *      connection's current generation and queue pair: completions of a
 *      destroyed QP (flushes) are dropped.
 *  V4. No receive queue runs dry: an in QP has one receive per frame
 *      (and no more than slots writes can be in flight, V1); an out QP
 *      has VX_CREDIT_RECVS, and the receiver sends at most
 *      VX_CREDIT_INFLIGHT < VX_CREDIT_RECVS credits before their send
 *      completions (which follow the peer's acknowledgement). rnr_retry
 *      is nonetheless "infinite" so a slow reposter is a delay, not an
 *      error.
 *  V6. Credits ride on reverse traffic: each frame i sends to p carries
 *      how many of p's messages i consumed, for p's current outgoing QP
 *      (by number), so request/response traffic needs no credit SEND at
 *      all. A credit SEND goes only when a quarter of the ring's worth is
 *      unreported: a sender that is out of credits has every one of its
 *      frames unreported, so it is always freed. Piggybacks and SENDs
 *      travel on different QPs and may arrive out of order: a count lower
 *      than one already applied is stale and ignored; one higher than
 *      what was sent is malformed. A piggyback lost with a broken
 *      outgoing connection rolls `reported` back to what SENDs reported.
 *  V5. A peer can write only its own ring: each peer's ring is
 *      registered in a protection domain of its own, where the only
 *      queue pairs are those of connections that peer's key proved (an
 *      rkey is good for any queue pair of its domain, so one domain for
 *      all would let one member write into another's frames). The send
 *      frames allow no remote access at all.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <infiniband/verbs.h>
#include <sodium.h>

#include "tp_internal.h"
#include "tp_rdma.h"

#define PORT 1
#define BODY_FIX (W_LEN + 4)
/* Every frame starts with a piggybacked credit (V6): the queue pair
 * number of the receiver's own outgoing QP to us, and how many of its
 * messages we consumed (mod 2^32). The immediate counts these bytes. */
#define PIGGY 8
#define POLL_BATCH 32

struct vx_out {
	struct ibv_qp *qp;
	uint16_t gen;
	bool up;
	uint64_t accepted;    /* messages gathered into send frames */
	uint64_t posted;      /* of those, posted as writes */
	uint64_t acked;       /* messages the receiver consumed */
	uint64_t sq_done;     /* send completions */
	uint32_t rslots, rslot_size;
	uint64_t raddr;
	uint32_t rkey;
	uint32_t psn;         /* ours, from begin to connect */
};

struct vx_in {
	struct ibv_qp *qp;
	uint16_t gen;
	bool up;
	uint32_t peer;
	uint64_t recvd;       /* messages consumed */
	uint64_t reported;    /* the count last returned as credit */
	uint64_t sure;        /* the count last returned by a credit SEND */
	uint32_t rqpn;        /* the sender's out QP (piggybacks name it) */
	uint32_t inflight;    /* credit sends not completed */
	uint32_t psn;         /* ours, from begin to connect */
};

struct vx {
	struct ibv_context *ctx;
	struct ibv_pd *pd;
	struct ibv_comp_channel *ch;
	struct ibv_cq *scq, *rcq;
	struct ibv_mr *mr_tx;     /* the send frames, in pd: local access only */
	struct ibv_pd **ppd;      /* npeers: peer p's receive ring and the */
	struct ibv_mr **pmr;      /* queue pairs it writes through (V5) */
	uint8_t *rx, *tx;     /* npeers * slots (tx_slots) * slot_size */
	size_t ring_bytes, tx_bytes;
	uint32_t *txlen;      /* npeers * tx_slots: each send frame's length */
	uint32_t npeers, nin, slots, tx_slots, slot_size;
	int gid_index;
	union ibv_gid gid;
	enum ibv_mtu mtu;
	bool armed;           /* both CQs armed, no event taken since */
	struct vx_out *out;
	struct vx_in *in;
	int32_t *in_of;       /* npeers: the connected in slot of each, or -1 */
	char desc[96];
};

/* ---- the endpoint on the wire ---- */

static void put64(uint8_t *b, uint64_t v)
{
	tp__put32(b, (uint32_t)v);
	tp__put32(b + 4, (uint32_t)(v >> 32));
}

static uint64_t get64(const uint8_t *b)
{
	return tp__get32(b) | (uint64_t)tp__get32(b + 4) << 32;
}

void vx_ep_put(uint8_t *b, const struct vx_ep *e)
{
	tp__put32(b, e->qpn);
	tp__put32(b + 4, e->psn);
	memcpy(b + 8, e->gid, 16);
	put64(b + 24, e->addr);
	tp__put32(b + 32, e->rkey);
	tp__put32(b + 36, e->slots);
	tp__put32(b + 40, e->slot_size);
	tp__put32(b + 44, e->mtu);
}

void vx_ep_get(const uint8_t *b, struct vx_ep *e)
{
	e->qpn = tp__get32(b);
	e->psn = tp__get32(b + 4);
	memcpy(e->gid, b + 8, 16);
	e->addr = get64(b + 24);
	e->rkey = tp__get32(b + 32);
	e->slots = tp__get32(b + 36);
	e->slot_size = tp__get32(b + 40);
	e->mtu = tp__get32(b + 44);
}

/* ---- work request ids: out/in, generation, index (V3) ---- */

static uint64_t wr_id(bool out, uint16_t gen, uint32_t idx)
{
	return (uint64_t)out << 63 | (uint64_t)gen << 32 | idx;
}

/* ---- opening ---- */

static bool ipv4_mapped(const union ibv_gid *g)
{
	static const uint8_t pfx[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
		                         0xff, 0xff };
	return memcmp(g->raw, pfx, sizeof pfx) == 0;
}

static bool zero_gid(const union ibv_gid *g)
{
	static const uint8_t z[16];
	return memcmp(g->raw, z, sizeof z) == 0;
}

/* Picks the GID: the configured index, or the first RoCE v2 IPv4-mapped
 * one, or the first IPv4-mapped, or the first valid. */
static int pick_gid(struct vx *v, int want, int tbl_len, char *err,
                    size_t errlen)
{
	int best = -1, rank = 0;

	if (want >= 0) {
		if (want >= tbl_len ||
		    ibv_query_gid(v->ctx, PORT, want, &v->gid) ||
		    zero_gid(&v->gid))
			return tp__fail(err, errlen, -EINVAL,
			                "rdma: GID index %d of %s port %d is "
			                "not valid (the table has %d entries)",
			                want, ibv_get_device_name(v->ctx->device),
			                PORT, tbl_len);
		v->gid_index = want;
		return 0;
	}
	for (int i = 0; i < tbl_len; i++) {
		struct ibv_gid_entry e;
		union ibv_gid g;
		int r;
		if (ibv_query_gid(v->ctx, PORT, i, &g) || zero_gid(&g))
			continue;
		r = 1;
		if (ipv4_mapped(&g)) {
			r = 2;
			if (!ibv_query_gid_ex(v->ctx, PORT, (uint32_t)i, &e, 0) &&
			    e.gid_type == IBV_GID_TYPE_ROCE_V2)
				r = 3;
		}
		if (r > rank) {
			rank = r;
			best = i;
			v->gid = g;
		}
	}
	if (best < 0)
		return tp__fail(err, errlen, -ENODEV,
		                "rdma: %s port %d has no valid GID (is its "
		                "network interface up with an address?)",
		                ibv_get_device_name(v->ctx->device), PORT);
	v->gid_index = best;
	return 0;
}

static int open_device(struct vx *v, const char *name, char *err,
                       size_t errlen)
{
	int num = 0, rc = 0;
	struct ibv_device **list = ibv_get_device_list(&num);
	struct ibv_device *dev = NULL;
	char names[128] = "";

	if (!list)
		return tp__fail(err, errlen, -ENODEV,
		                "rdma: no RDMA device (ibv_get_device_list: %s); "
		                "load rdma_rxe and add a device, or use "
		                "cluster.transport = tcp", strerror(errno));
	for (int i = 0; i < num; i++) {
		const char *dn = ibv_get_device_name(list[i]);
		size_t used = strlen(names);
		snprintf(names + used, sizeof names - used, "%s%s",
		         used ? ", " : "", dn);
		if (!dev && (!name || !name[0] || !strcmp(name, dn)))
			dev = list[i];
	}
	if (!dev) {
		rc = num ? tp__fail(err, errlen, -ENODEV,
		                    "rdma: no RDMA device named \"%s\" (found: "
		                    "%s)", name, names)
		         : tp__fail(err, errlen, -ENODEV,
		                    "rdma: no RDMA device found; load rdma_rxe "
		                    "and add a device (rdma link add), or use "
		                    "cluster.transport = tcp");
	} else {
		v->ctx = ibv_open_device(dev);
		if (!v->ctx)
			rc = tp__fail(err, errlen, -errno ? -errno : -ENODEV,
			              "rdma: cannot open %s: %s",
			              ibv_get_device_name(dev), strerror(errno));
	}
	ibv_free_device_list(list);
	return rc;
}

static void *ring_alloc(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
	               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

int vx_open(struct vx **out, const struct vx_config *cfg, char *err,
            size_t errlen)
{
	struct ibv_port_attr pa;
	struct ibv_device_attr da;
	struct vx *v;
	int rc, flags;
	uint32_t scqe, rcqe;

	*out = NULL;
	v = calloc(1, sizeof *v);
	if (!v)
		return tp__fail(err, errlen, -ENOMEM, "out of memory");
	v->npeers = cfg->npeers;
	v->nin = cfg->nin;
	v->slot_size = (uint32_t)((cfg->max_body + PIGGY + 63) & ~(size_t)63);
	v->slots = cfg->slots < 2 ? 2 : cfg->slots;
	v->tx_slots = cfg->tx_slots < v->slots ? v->slots : cfg->tx_slots;
	rc = open_device(v, cfg->device, err, errlen);
	if (rc)
		goto fail;
	if (ibv_query_port(v->ctx, PORT, &pa) ||
	    ibv_query_device(v->ctx, &da)) {
		rc = tp__fail(err, errlen, -EIO, "rdma: cannot query %s",
		              ibv_get_device_name(v->ctx->device));
		goto fail;
	}
	if (pa.state != IBV_PORT_ACTIVE) {
		rc = tp__fail(err, errlen, -ENETDOWN,
		              "rdma: %s port %d is not active (state %d): is "
		              "its network interface up?",
		              ibv_get_device_name(v->ctx->device), PORT,
		              (int)pa.state);
		goto fail;
	}
	v->mtu = pa.active_mtu;
	rc = pick_gid(v, cfg->gid_index, pa.gid_tbl_len, err, errlen);
	if (rc)
		goto fail;
	/* Fit the rings to the device's queue and completion queue sizes:
	 * the send CQ takes every out QP's writes and every in QP's credits,
	 * the receive CQ every in QP's frames and every out QP's credits. */
	if ((int)v->tx_slots > da.max_qp_wr)
		v->tx_slots = (uint32_t)da.max_qp_wr;
	if ((int)v->slots > da.max_qp_wr)
		v->slots = (uint32_t)da.max_qp_wr;
	while (v->tx_slots > 2 &&
	       (uint64_t)v->npeers * v->tx_slots +
	                       (uint64_t)v->nin * VX_CREDIT_INFLIGHT >
	               (uint64_t)da.max_cqe)
		v->tx_slots /= 2;
	while (v->slots > 2 &&
	       (uint64_t)v->nin * v->slots +
	                       (uint64_t)v->npeers * VX_CREDIT_RECVS >
	               (uint64_t)da.max_cqe)
		v->slots /= 2;
	if (v->slots > v->tx_slots)
		v->slots = v->tx_slots;
	scqe = v->npeers * v->tx_slots + v->nin * VX_CREDIT_INFLIGHT;
	rcqe = v->nin * v->slots + v->npeers * VX_CREDIT_RECVS;

	v->out = calloc(v->npeers, sizeof *v->out);
	v->in = calloc(v->nin, sizeof *v->in);
	v->in_of = malloc(v->npeers * sizeof *v->in_of);
	for (uint32_t p = 0; v->in_of && p < v->npeers; p++)
		v->in_of[p] = -1;
	v->ring_bytes = (size_t)v->npeers * v->slots * v->slot_size;
	v->tx_bytes = (size_t)v->npeers * v->tx_slots * v->slot_size;
	v->rx = ring_alloc(v->ring_bytes);
	v->tx = ring_alloc(v->tx_bytes);
	v->txlen = calloc((size_t)v->npeers * v->tx_slots, sizeof *v->txlen);
	if (!v->out || !v->in || !v->in_of || !v->rx || !v->tx || !v->txlen) {
		rc = tp__fail(err, errlen, -ENOMEM,
		              "rdma: out of memory for %zu bytes of rings",
		              v->ring_bytes + v->tx_bytes);
		goto fail;
	}
	v->pd = ibv_alloc_pd(v->ctx);
	v->ch = v->pd ? ibv_create_comp_channel(v->ctx) : NULL;
	v->scq = v->ch ? ibv_create_cq(v->ctx, (int)scqe, NULL, v->ch, 0)
	               : NULL;
	v->rcq = v->scq ? ibv_create_cq(v->ctx, (int)rcqe, NULL, v->ch, 0)
	                : NULL;
	if (!v->rcq) {
		rc = tp__fail(err, errlen, errno ? -errno : -ENOMEM,
		              "rdma: cannot create protection domain, channel "
		              "or completion queues: %s", strerror(errno));
		goto fail;
	}
	/* The frames are registered once, here, for the process's life:
	 * each peer's ring in a domain of its own (V5). */
	v->ppd = calloc(v->npeers, sizeof *v->ppd);
	v->pmr = calloc(v->npeers, sizeof *v->pmr);
	bool regs = v->ppd && v->pmr;
	for (uint32_t p = 0; regs && p < v->npeers; p++) {
		size_t ring = (size_t)v->slots * v->slot_size;
		v->ppd[p] = ibv_alloc_pd(v->ctx);
		v->pmr[p] = v->ppd[p] ? ibv_reg_mr(v->ppd[p], v->rx + p * ring,
		                                   ring, IBV_ACCESS_LOCAL_WRITE |
		                                   IBV_ACCESS_REMOTE_WRITE)
		                      : NULL;
		regs = v->pmr[p] != NULL;
	}
	v->mr_tx = regs ? ibv_reg_mr(v->pd, v->tx, v->tx_bytes,
	                             IBV_ACCESS_LOCAL_WRITE)
	                : NULL;
	if (!v->mr_tx) {
		rc = tp__fail(err, errlen, errno ? -errno : -ENOMEM,
		              "rdma: cannot register %zu bytes of frames: %s "
		              "(RLIMIT_MEMLOCK?)", v->ring_bytes + v->tx_bytes,
		              strerror(errno));
		goto fail;
	}
	flags = fcntl(v->ch->fd, F_GETFL);
	v->armed = true;
	if (flags < 0 || fcntl(v->ch->fd, F_SETFL, flags | O_NONBLOCK) ||
	    ibv_req_notify_cq(v->scq, 0) || ibv_req_notify_cq(v->rcq, 0)) {
		rc = tp__fail(err, errlen, -EIO,
		              "rdma: cannot arm the completion channel");
		goto fail;
	}
	snprintf(v->desc, sizeof v->desc, "%s port %d gid %d mtu %d, frames "
	         "of %u bytes per peer: %u to receive, %u to send",
	         ibv_get_device_name(v->ctx->device), PORT, v->gid_index,
	         128 << v->mtu, v->slot_size, v->slots, v->tx_slots);
	*out = v;
	return 0;
fail:
	vx_close(v);
	return rc;
}

void vx_close(struct vx *v)
{
	if (!v)
		return;
	for (uint32_t i = 0; v->out && i < v->npeers; i++)
		vx_out_end(v, i);
	for (uint32_t k = 0; v->in && k < v->nin; k++)
		vx_in_end(v, k);
	if (v->mr_tx)
		ibv_dereg_mr(v->mr_tx);
	for (uint32_t p = 0; v->pmr && p < v->npeers; p++)
		if (v->pmr[p])
			ibv_dereg_mr(v->pmr[p]);
	for (uint32_t p = 0; v->ppd && p < v->npeers; p++)
		if (v->ppd[p])
			ibv_dealloc_pd(v->ppd[p]);
	free(v->pmr);
	free(v->ppd);
	if (v->rcq)
		ibv_destroy_cq(v->rcq);
	if (v->scq)
		ibv_destroy_cq(v->scq);
	if (v->ch)
		ibv_destroy_comp_channel(v->ch);
	if (v->pd)
		ibv_dealloc_pd(v->pd);
	if (v->ctx)
		ibv_close_device(v->ctx);
	if (v->rx)
		munmap(v->rx, v->ring_bytes);
	if (v->tx)
		munmap(v->tx, v->tx_bytes);
	free(v->txlen);
	free(v->out);
	free(v->in);
	free(v->in_of);
	free(v);
}

int vx_fd(const struct vx *v)
{
	return v->ch->fd;
}

const char *vx_describe(const struct vx *v)
{
	return v->desc;
}

void vx_local_gid(const struct vx *v, uint8_t gid[16], int *index)
{
	memcpy(gid, v->gid.raw, 16);
	*index = v->gid_index;
}

/* ---- queue pairs ---- */

static struct ibv_qp *qp_create(struct vx *v, struct ibv_pd *pd,
                                uint32_t send_wr, uint32_t recv_wr,
                                unsigned access)
{
	struct ibv_qp_init_attr ia = {
		.send_cq = v->scq,
		.recv_cq = v->rcq,
		.cap = { .max_send_wr = send_wr, .max_recv_wr = recv_wr,
		         .max_send_sge = 1, .max_recv_sge = 1 },
		.qp_type = IBV_QPT_RC,
		.sq_sig_all = 1,
	};
	struct ibv_qp_attr a = {
		.qp_state = IBV_QPS_INIT,
		.pkey_index = 0,
		.port_num = PORT,
		.qp_access_flags = access,
	};
	struct ibv_qp *qp = ibv_create_qp(pd, &ia);

	if (!qp)
		return NULL;
	if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX |
	                                  IBV_QP_PORT | IBV_QP_ACCESS_FLAGS)) {
		ibv_destroy_qp(qp);
		return NULL;
	}
	return qp;
}

static void ep_fill(struct vx *v, struct ibv_qp *qp, struct vx_ep *e)
{
	memset(e, 0, sizeof *e);
	e->qpn = qp->qp_num;
	e->psn = randombytes_uniform(1u << 24);
	memcpy(e->gid, v->gid.raw, 16);
	e->slots = v->slots;
	e->slot_size = v->slot_size;
	e->mtu = (uint32_t)v->mtu;
}

/* RESET..INIT done: to RTR against `theirs` (starting at their psn), then
 * RTS starting at our own psn. */
static int qp_connect(struct vx *v, struct ibv_qp *qp, uint32_t my_psn,
                      const struct vx_ep *theirs)
{
	enum ibv_mtu mtu = v->mtu;
	struct ibv_qp_attr a = {
		.qp_state = IBV_QPS_RTR,
		.dest_qp_num = theirs->qpn,
		.rq_psn = theirs->psn & 0xffffff,
		.max_dest_rd_atomic = 1,
		.min_rnr_timer = 1, /* 0.01 ms: receives are reposted at once */
		.ah_attr = {
			.is_global = 1,
			.port_num = PORT,
			.grh = { .sgid_index = (uint8_t)v->gid_index,
			         .hop_limit = 64 },
		},
	};
	if (theirs->mtu >= IBV_MTU_256 && theirs->mtu <= IBV_MTU_4096 &&
	    (enum ibv_mtu)theirs->mtu < mtu)
		mtu = (enum ibv_mtu)theirs->mtu;
	a.path_mtu = mtu;
	memcpy(a.ah_attr.grh.dgid.raw, theirs->gid, 16);
	if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU |
	                                  IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
	                                  IBV_QP_MAX_DEST_RD_ATOMIC |
	                                  IBV_QP_MIN_RNR_TIMER))
		return errno ? -errno : -EIO;
	memset(&a, 0, sizeof a);
	a.qp_state = IBV_QPS_RTS;
	/* 4.096 us * 2^16 = 268 ms per try, 7 tries: a write fails after
	 * about 2 s without an acknowledgement. A peer that died is found
	 * sooner by its closed control connection or the heartbeats; a
	 * shorter timeout only retransmits more where acknowledgements are
	 * slow (soft-RoCE under emulation: tens of ms), and a failed write
	 * breaks the channel (T1). */
	a.timeout = 16;
	a.retry_cnt = 7;
	a.rnr_retry = 7;  /* V4: infinite */
	a.sq_psn = my_psn & 0xffffff;
	a.max_rd_atomic = 1;
	if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT |
	                                  IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
	                                  IBV_QP_SQ_PSN |
	                                  IBV_QP_MAX_QP_RD_ATOMIC))
		return errno ? -errno : -EIO;
	return 0;
}

static int post_recv(struct ibv_qp *qp, uint64_t id)
{
	struct ibv_recv_wr wr = { .wr_id = id, .num_sge = 0 }, *bad = NULL;
	return ibv_post_recv(qp, &wr, &bad) ? -EIO : 0;
}

/* Posts n zero-length receives (an immediate needs no buffer). */
static int post_recvs(struct ibv_qp *qp, uint32_t n, uint64_t id)
{
	for (uint32_t r = 0; r < n; r++)
		if (post_recv(qp, id))
			return -EIO;
	return 0;
}

int vx_out_begin(struct vx *v, uint32_t i, uint16_t gen, struct vx_ep *mine)
{
	struct vx_out *o = &v->out[i];

	vx_out_end(v, i);
	o->qp = qp_create(v, v->pd, v->tx_slots, VX_CREDIT_RECVS, 0);
	if (!o->qp)
		return errno ? -errno : -EIO;
	o->gen = gen;
	if (post_recvs(o->qp, VX_CREDIT_RECVS, wr_id(true, gen, i))) {
		vx_out_end(v, i);
		return -EIO;
	}
	ep_fill(v, o->qp, mine);
	o->accepted = o->posted = o->acked = o->sq_done = 0;
	o->psn = mine->psn;
	return 0;
}

int vx_out_connect(struct vx *v, uint32_t i, const struct vx_ep *theirs)
{
	struct vx_out *o = &v->out[i];
	int rc;

	if (!o->qp)
		return -ENOTCONN;
	if (theirs->slot_size < v->slot_size || theirs->slots < 2 ||
	    theirs->slots > 65536 || theirs->addr == 0)
		return -EPROTO; /* its frames cannot hold our largest message */
	rc = qp_connect(v, o->qp, o->psn, theirs);
	if (rc)
		return rc;
	o->rslots = theirs->slots; /* its ring: frame m % rslots (V1) */
	o->rslot_size = theirs->slot_size;
	o->raddr = theirs->addr;
	o->rkey = theirs->rkey;
	o->up = true;
	return 0;
}

void vx_out_end(struct vx *v, uint32_t i)
{
	struct vx_out *o = &v->out[i];

	if (o->qp)
		ibv_destroy_qp(o->qp);
	o->qp = NULL;
	o->up = false;
	o->gen++; /* V3: whatever completes from now on is stale */
	if (v->in_of && v->in_of[i] >= 0) /* V6: piggybacks may be lost */
		v->in[v->in_of[i]].reported = v->in[v->in_of[i]].sure;
}

bool vx_out_room(const struct vx *v, uint32_t i)
{
	const struct vx_out *o = &v->out[i];
	return o->up && o->accepted - o->sq_done < v->tx_slots;
}

/* Posts what waits in i's send frames, as far as credits go (V1).
 * Returns 0, or -EIO if a post failed. */
static int out_post(struct vx *v, uint32_t i)
{
	struct vx_out *o = &v->out[i];

	while (o->posted < o->accepted && o->posted - o->acked < o->rslots) {
		size_t f = (size_t)i * v->tx_slots + o->posted % v->tx_slots;
		uint8_t *b = v->tx + f * v->slot_size;
		int32_t k = v->in_of[i];
		if (k >= 0) { /* V6: what we consumed of i's messages */
			struct vx_in *in = &v->in[k];
			tp__put32(b, in->rqpn);
			tp__put32(b + 4, (uint32_t)in->recvd);
			in->reported = in->recvd;
		} else {
			memset(b, 0, PIGGY);
		}
		struct ibv_sge sge = { .addr = (uintptr_t)(v->tx +
		                                           f * v->slot_size),
			               .length = v->txlen[f],
			               .lkey = v->mr_tx->lkey };
		struct ibv_send_wr wr = {
			.wr_id = wr_id(true, o->gen, i),
			.sg_list = &sge,
			.num_sge = 1,
			.opcode = IBV_WR_RDMA_WRITE_WITH_IMM,
			.send_flags = IBV_SEND_SIGNALED,
			.imm_data = htonl(v->txlen[f]),
			.wr.rdma = { .remote_addr = o->raddr +
			                            (o->posted % o->rslots) *
			                                    o->rslot_size,
			             .rkey = o->rkey },
		}, *bad = NULL;
		if (ibv_post_send(o->qp, &wr, &bad))
			return -EIO;
		o->posted++;
	}
	return 0;
}

int vx_out_send(struct vx *v, uint32_t i, const uint8_t *wire,
                const void *hdr, size_t hdrlen, const void *payload,
                size_t plen)
{
	struct vx_out *o = &v->out[i];
	size_t len = BODY_FIX + hdrlen + plen, f;
	uint8_t *b;

	if (!vx_out_room(v, i))
		return -EAGAIN;
	if (PIGGY + len > v->slot_size)
		return -EMSGSIZE;
	f = (size_t)i * v->tx_slots + o->accepted % v->tx_slots;
	b = v->tx + f * v->slot_size + PIGGY; /* out_post fills the credit */
	memcpy(b, wire, W_LEN);
	tp__put32(b + W_LEN, (uint32_t)hdrlen);
	if (hdrlen)
		memcpy(b + BODY_FIX, hdr, hdrlen);
	if (plen)
		memcpy(b + BODY_FIX + hdrlen, payload, plen);
	v->txlen[f] = (uint32_t)(PIGGY + len);
	o->accepted++;
	return out_post(v, i);
}

int vx_in_begin(struct vx *v, uint32_t k, uint16_t gen, uint32_t peer,
                struct vx_ep *mine)
{
	struct vx_in *in = &v->in[k];

	vx_in_end(v, k);
	if (peer >= v->npeers)
		return -EINVAL;
	in->qp = qp_create(v, v->ppd[peer], VX_CREDIT_INFLIGHT, v->slots,
	                   IBV_ACCESS_REMOTE_WRITE);
	if (!in->qp)
		return errno ? -errno : -EIO;
	in->gen = gen;
	in->peer = peer;
	if (post_recvs(in->qp, v->slots, wr_id(false, gen, k))) {
		vx_in_end(v, k);
		return -EIO;
	}
	ep_fill(v, in->qp, mine);
	mine->addr = (uintptr_t)(v->rx + (size_t)peer * v->slots * v->slot_size);
	mine->rkey = v->pmr[peer]->rkey;
	in->psn = mine->psn;
	return 0;
}

int vx_in_connect(struct vx *v, uint32_t k, const struct vx_ep *theirs)
{
	struct vx_in *in = &v->in[k];
	int rc;

	if (!in->qp)
		return -ENOTCONN;
	rc = qp_connect(v, in->qp, in->psn, theirs);
	if (rc)
		return rc;
	in->recvd = in->reported = in->sure = 0;
	in->inflight = 0;
	in->rqpn = theirs->qpn;
	in->up = true;
	if (v->in_of[in->peer] >= 0 && v->in_of[in->peer] != (int32_t)k)
		vx_in_end(v, (uint32_t)v->in_of[in->peer]);
	v->in_of[in->peer] = (int32_t)k;
	return 0;
}

void vx_in_end(struct vx *v, uint32_t k)
{
	struct vx_in *in = &v->in[k];

	if (in->qp)
		ibv_destroy_qp(in->qp);
	in->qp = NULL;
	if (in->up && v->in_of && v->in_of[in->peer] == (int32_t)k)
		v->in_of[in->peer] = -1;
	in->up = false;
	in->gen++;
}

/* ---- completions ---- */

static const char *wc_why(const struct ibv_wc *wc)
{
	return ibv_wc_status_str(wc->status);
}

/* Applies a credit count (mod 2^32) to peer i's outgoing connection:
 * returns false if it is malformed (more than was ever posted); a stale
 * one (lower than applied already, V6) changes nothing. */
static bool credit(struct vx *v, uint32_t i, uint32_t c)
{
	struct vx_out *o = &v->out[i];
	uint64_t back = (uint32_t)((uint32_t)o->posted - c);

	if (back > o->posted)
		return false;
	if (o->posted - back > o->acked)
		o->acked = o->posted - back;
	return true;
}

/* A receive completion: a message on an in QP, a credit on an out QP. */
static int on_recv(struct vx *v, const struct vx_sink *s,
                   const struct ibv_wc *wc, uint32_t *budget)
{
	bool out = wc->wr_id >> 63;
	uint16_t gen = (uint16_t)(wc->wr_id >> 32);
	uint32_t idx = (uint32_t)wc->wr_id;
	char why[96];

	if (out) {
		struct vx_out *o = idx < v->npeers ? &v->out[idx] : NULL;
		if (!o || !o->qp || o->gen != gen || wc->qp_num != o->qp->qp_num)
			return 0; /* V3 */
		if (wc->status != IBV_WC_SUCCESS) {
			snprintf(why, sizeof why, "credit receive: %s", wc_why(wc));
			s->on_fail(s->ctx, true, idx, why);
			return 0;
		}
		if (!(wc->wc_flags & IBV_WC_WITH_IMM) ||
		    !credit(v, idx, ntohl(wc->imm_data))) {
			s->on_fail(s->ctx, true, idx, "a malformed credit");
			return 0;
		}
		if (post_recv(o->qp, wr_id(true, gen, idx)) || out_post(v, idx))
			s->on_fail(s->ctx, true, idx, "cannot post");
		return 0;
	}

	struct vx_in *in = idx < v->nin ? &v->in[idx] : NULL;
	if (!in || !in->qp || in->gen != gen || wc->qp_num != in->qp->qp_num)
		return 0;
	if (wc->status != IBV_WC_SUCCESS) {
		snprintf(why, sizeof why, "receive: %s", wc_why(wc));
		s->on_fail(s->ctx, false, idx, why);
		return 0;
	}
	uint32_t len = ntohl(wc->imm_data);
	if (wc->opcode != IBV_WC_RECV_RDMA_WITH_IMM ||
	    !(wc->wc_flags & IBV_WC_WITH_IMM) || len < PIGGY + BODY_FIX ||
	    len > v->slot_size) {
		s->on_fail(s->ctx, false, idx, "a malformed write");
		return 0;
	}
	const uint8_t *f = v->rx + ((size_t)in->peer * v->slots +
	                            in->recvd % v->slots) * v->slot_size;
	if (post_recv(in->qp, wr_id(false, gen, idx))) {
		s->on_fail(s->ctx, false, idx, "cannot repost a receive");
		return 0;
	}
	/* V6: the piggybacked credit, for our current QP to that peer. */
	uint32_t peer = in->peer, qpn = tp__get32(f);
	struct vx_out *o = &v->out[peer];
	if (qpn && o->up && o->qp && qpn == o->qp->qp_num) {
		if (!credit(v, peer, tp__get32(f + 4))) {
			s->on_fail(s->ctx, false, idx, "a malformed credit");
			return 0;
		}
		if (out_post(v, peer)) /* that connection breaks, not this */
			s->on_fail(s->ctx, true, peer, "cannot post");
	}
	if (*budget)
		(*budget)--;
	if (s->on_body(s->ctx, idx, f + PIGGY, len - PIGGY) && in->gen == gen)
		in->recvd++; /* V1: its frame is free once this returns */
	return 0;
}

static void on_send(struct vx *v, const struct vx_sink *s,
                    const struct ibv_wc *wc)
{
	bool out = wc->wr_id >> 63;
	uint16_t gen = (uint16_t)(wc->wr_id >> 32);
	uint32_t idx = (uint32_t)wc->wr_id;
	char why[96];

	if (out) {
		struct vx_out *o = idx < v->npeers ? &v->out[idx] : NULL;
		if (!o || !o->qp || o->gen != gen)
			return;
		if (wc->status != IBV_WC_SUCCESS) {
			snprintf(why, sizeof why, "write: %s", wc_why(wc));
			s->on_fail(s->ctx, true, idx, why);
			return;
		}
		o->sq_done++; /* a send frame came free (V2) */
		return;
	}
	struct vx_in *in = idx < v->nin ? &v->in[idx] : NULL;
	if (!in || !in->qp || in->gen != gen)
		return;
	if (wc->status != IBV_WC_SUCCESS) {
		snprintf(why, sizeof why, "credit send: %s", wc_why(wc));
		s->on_fail(s->ctx, false, idx, why);
		return;
	}
	if (in->inflight)
		in->inflight--;
}

/* Drains the completion channel's events (non-blocking). */
static void drain_channel(struct vx *v)
{
	struct ibv_cq *cq;
	void *cctx;
	while (ibv_get_cq_event(v->ch, &cq, &cctx) == 0)
		ibv_ack_cq_events(cq, 1);
}

int vx_poll(struct vx *v, const struct vx_sink *s, uint32_t *budget,
            bool event, bool *more)
{
	struct ibv_wc wc[POLL_BATCH];
	int n;

	*more = false;
	if (event) { /* the channel fired: the CQs are no longer armed */
		drain_channel(v);
		v->armed = false;
	}
	for (;;) {
		bool any = false;
		/* Sends first: they free frames and credits for what the
		 * receives' callbacks may send. */
		while ((n = ibv_poll_cq(v->scq, POLL_BATCH, wc)) > 0) {
			any = true;
			for (int j = 0; j < n; j++)
				on_send(v, s, &wc[j]);
		}
		if (n < 0)
			return -EIO;
		while (*budget) {
			int want = *budget < POLL_BATCH ? (int)*budget : POLL_BATCH;
			n = ibv_poll_cq(v->rcq, want, wc);
			if (n < 0)
				return -EIO;
			if (n == 0)
				break;
			any = true;
			for (int j = 0; j < n; j++)
				on_recv(v, s, &wc[j], budget);
		}
		if (!*budget) {
			/* Credits and sends are always reaped; messages may
			 * remain. The caller keeps tp_fd readable. */
			*more = true;
			return 0;
		}
		if (!any && v->armed)
			return 0;
		if (!any) {
			/* Re-arm (once per event: an armed CQ stays armed, so
			 * a spinning caller makes no system call here), then
			 * look once more: a completion between the last poll
			 * and the arming raises no event. */
			if (ibv_req_notify_cq(v->scq, 0) ||
			    ibv_req_notify_cq(v->rcq, 0))
				return -EIO;
			v->armed = true;
		}
	}
}

void vx_credit_flush(struct vx *v)
{
	for (uint32_t k = 0; k < v->nin; k++) {
		struct vx_in *in = &v->in[k];
		uint64_t quarter = v->slots / 4 ? v->slots / 4 : 1;
		if (!in->up || in->recvd - in->reported < quarter ||
		    in->inflight >= VX_CREDIT_INFLIGHT)
			continue; /* V6: a sender out of credits has slots */
		struct ibv_send_wr wr = {
			.wr_id = wr_id(false, in->gen, k),
			.num_sge = 0,
			.opcode = IBV_WR_SEND_WITH_IMM,
			.send_flags = IBV_SEND_SIGNALED,
			.imm_data = htonl((uint32_t)in->recvd),
		}, *bad = NULL;
		if (ibv_post_send(in->qp, &wr, &bad))
			continue; /* retried at the next flush */
		in->reported = in->sure = in->recvd;
		in->inflight++;
	}
}
