/* cluster.c — the daemon as a member of a cluster: the transport to its
 * peers, the driver of its coherence node, capabilities imported from other
 * nodes, and locks granted by an object's home.
 *
 * Only a node configured with cluster.nodes > 1 runs any of this; a lone
 * node keeps the direct paths of requests.c and pager.c.
 *
 * The coherence node (coherence/coh.h) is a pure state machine. Its
 * actions are carried out here, in the order given (PROTOCOL.md, "Driving
 * it"): SEND goes to the transport with the page frame beside it, INSTALL
 * copies a received page into the frame, ACCESS changes every local
 * mapping of the page (write-protect, or take it away), and DONE is queued
 * and handled once the coherence call returns — it resumes the faults and
 * explicit requests that waited for that page.
 *
 * Invariants:
 *  K1. A page is copied to or from a frame only while the node holds it in
 *      the needed mode, and in the same handler step that saw it held
 *      (no input is processed in between).
 *  K2. Every parked fault and every waiting request is resumed by a DONE
 *      for its page, by any DONE (when it waited for room), or failed when
 *      its home dies; none waits without one of those coming.
 *  K3. A capability imported from another node is a child of a root in
 *      the daemon's own c-list, one per remote slot; the home's Revoked
 *      message revokes that root, hence everything derived from it.
 *  K4. A coherence message leaves only after every action of the call
 *      that made it is done: a node that gives a page away has unmapped it
 *      before any peer can act on the reply (else the old owner could
 *      still load the old page after the new owner stored to it — Ivy's
 *      "every other copy is gone before a write is granted").
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "node.h"
#include "peer.pb-c.h"

#define PAGE 4096u
#define ANY_PAGE UINT64_MAX

/* ---- global object ids ---- */

static uint64_t gid_of(uint32_t home, uint64_t home_oid)
{
	/* The home in the top 16 bits; the rest of the home's oid (its index
	 * and the low bits of its generation) below. */
	return ((uint64_t)home << 48) | (home_oid & 0xffffffffffffull);
}

static struct dobj *dobj_at(struct node *n, uint64_t cookie)
{
	if (cookie >= n->cfg.objects || !n->dobjs[cookie].used)
		return NULL;
	return &n->dobjs[cookie];
}

/* What a client is told when coherence refuses it a page. */
static const char *coh_err_text(int err)
{
	switch (err) {
	case -EHOSTDOWN:
		return "the object's home is down";
	case -ESTALE:
		return "the object's home declared this node dead (membership is "
		       "crash-stop: a restarted node is not taken back; restart "
		       "the cluster)";
	case -ENOENT:
		return "the object is gone at its home";
	}
	return "coherence refused the page";
}

/* ---- sending to peers ---- */

static void peer_send(struct node *n, uint32_t to, const Capdsm__Peer__PeerMsg *m,
                      const void *payload, size_t plen)
{
	size_t len = capdsm__peer__peer_msg__pack(m, n->peer_out);
	int rc = tp_send(n->tp, to, n->peer_out, len, payload, plen);

	n->peer_ct_out++;
	if (rc == 0)
		return;
	/* A queue that stays full means the peer stopped reading: treat it as
	 * failed rather than drop a protocol message (T4 gives no loss). */
	log_warn("peer send failed", "peer=%u err=\"%s\"", to, strerror(-rc));
	if (rc == -EAGAIN || rc == -ENOBUFS) {
		coh_peer_down(n->coh, to);
		node__flush(n);
	}
}

/* Sends the coherence messages queued by the last coherence call, in
 * order (K4). */
void node__flush(struct node *n)
{
	for (uint32_t i = 0; i < n->noutq; i++) {
		struct node_outmsg *o = &n->outq[i];
		int rc = tp_send(n->tp, o->dst, o->hdr, o->hdrlen,
		                 o->payload ? o->page : NULL,
		                 o->payload ? PAGE : 0);
		n->peer_ct_out++;
		if (rc) {
			log_warn("peer send failed", "peer=%u err=\"%s\"", o->dst,
			         strerror(-rc));
			if (rc == -EAGAIN || rc == -ENOBUFS) {
				n->noutq = 0;
				coh_peer_down(n->coh, o->dst);
				return; /* the remaining ones are re-queued by it */
			}
		}
	}
	n->noutq = 0;
}

/* ---- the coherence driver ---- */

/* Counts a frame of another home's page as held, and remembers it for
 * make_room (oldest first; the ring is twice the pool, so a page held,
 * dropped and held again only leaves a stale entry behind). */
static void frame_held(struct node *n, struct dobj *d, uint64_t pgno)
{
	uint32_t at = (n->ring_head + n->ring_count) % n->ring_max;

	n->remote_frames++;
	n->ring[at].dobj = (uint32_t)(d - n->dobjs);
	n->ring[at].pgno = pgno;
	if (n->ring_count < n->ring_max)
		n->ring_count++;
	else
		n->ring_head = (n->ring_head + 1) % n->ring_max;
}

static void on_action(void *ctx, const struct coh_action *a)
{
	struct node *n = ctx;
	struct dobj *d = dobj_at(n, a->cookie);

	log_debug("coherence action", "type=%d mode=%s pg=0x%" PRIx64 ":%" PRIu64
	          " msg=%s dst=%u err=%d", (int)a->type, coh_mode_name(a->mode),
	          a->page.oid, a->page.pgno,
	          a->type == COH_ACT_SEND ? coh_msg_name(a->msg.type) : "-",
	          a->msg.dst, a->err);
	switch (a->type) {
	case COH_ACT_SEND: {
		Capdsm__Peer__PeerMsg pm = CAPDSM__PEER__PEER_MSG__INIT;
		Capdsm__Peer__Coh c = CAPDSM__PEER__COH__INIT;
		const void *pl = NULL;
		size_t plen = 0;

		c.type = a->msg.type;
		c.mode = a->msg.mode;
		c.flags = a->msg.flags;
		c.err = a->msg.err;
		c.seq = a->msg.seq;
		c.oid = a->msg.oid;
		c.pgno = a->msg.pgno;
		pm.body_case = CAPDSM__PEER__PEER_MSG__BODY_COH;
		pm.coh = &c;
		if ((a->msg.flags & COH_F_PAYLOAD) && d) {
			pl = d->base + a->page.pgno * PAGE;
			plen = PAGE;
		}
		if (n->noutq == n->outq_max)
			node__flush(n); /* cannot happen with the sizing; stay safe */
		struct node_outmsg *o = &n->outq[n->noutq++];
		o->dst = a->msg.dst;
		o->hdrlen = (uint32_t)capdsm__peer__peer_msg__pack(&pm, o->hdr);
		o->payload = plen != 0;
		if (plen)
			memcpy(o->page, pl, PAGE); /* the frame as it is now */
		break;
	}
	case COH_ACT_INSTALL:
		if (d && n->rx_payload && n->rx_plen == PAGE) {
			uint8_t *frame = d->base + a->page.pgno * PAGE;
			/* Away from the home a page is installed only from INVALID
			 * (DATA, coh.c), whose frame was punched out or never
			 * filled: one more frame in use. */
			if (!a->at_home)
				frame_held(n, d, a->page.pgno);
			memcpy(frame, n->rx_payload, PAGE);
		}
		break;
	case COH_ACT_ACCESS:
		if (!d)
			break;
		if (a->mode == COH_INVALID) {
			/* Away from the home a page held (READ or WRITE) has its
			 * frame filled (INSTALL): one frame fewer in use. */
			if (!a->at_home && a->prev != COH_INVALID && n->remote_frames)
				n->remote_frames--;
			node_pager_zap_page(n, d, a->page.pgno, a->at_home);
		} else if (a->mode == COH_READ && a->prev == COH_WRITE) {
			/* A downgrade. From INVALID (a read miss) no mapping has
			 * the page (invalidation punched it out of all of them):
			 * the fault that maps it maps it write-protected. */
			node_pager_protect_page(n, d, a->page.pgno);
		}
		break;
	case COH_ACT_DONE:
		if (n->ndone < n->doneq_max) {
			n->doneq[n->ndone].pg = a->page;
			n->doneq[n->ndone].err = a->err;
			n->doneq[n->ndone].cookie = a->cookie;
			n->ndone++;
		} else {
			/* Cannot happen: the queue holds max_outstanding + local
			 * requests; say so loudly rather than lose a wake-up. */
			log_error("DONE queue overflow", "cap=%u", n->doneq_max);
		}
		break;
	}
}

/* Makes room for one more remote page: evicts the oldest held ones until
 * the count is under the pool size (write-back of a WRITE copy included). */
static void make_room(struct node *n)
{
	uint32_t tries = n->ring_count;

	while (n->remote_frames >= n->cfg.remote_frames && tries-- &&
	       n->ring_count) {
		uint32_t dobj = n->ring[n->ring_head].dobj;
		uint64_t pgno = n->ring[n->ring_head].pgno;
		struct dobj *d = dobj_at(n, dobj);

		n->ring_head = (n->ring_head + 1) % n->ring_max;
		n->ring_count--;
		if (!d || !d->coherent)
			continue;
		int rc = coh_evict(n->coh, (struct coh_page_id){ d->gid, pgno });
		node__flush(n);
		if (rc == -EBUSY) { /* in use now: keep it, try an older one */
			n->ring[(n->ring_head + n->ring_count) % n->ring_max].dobj = dobj;
			n->ring[(n->ring_head + n->ring_count) % n->ring_max].pgno = pgno;
			n->ring_count++;
		}
	}
}

/* Asks for a page in a mode. Returns 0 when held now (K1: the caller acts
 * at once), 1 when it must wait for the page's DONE, 2 when it must wait
 * for any DONE (no room for another request), or a negative errno. */
static int acquire(struct node *n, struct dobj *d, uint64_t pgno,
                   enum coh_mode mode)
{
	struct coh_page_id pg = { d->gid, pgno };
	int rc;

	if (d->home != n->cfg.node_id && n->remote_frames >= n->cfg.remote_frames)
		make_room(n);
	rc = coh_acquire(n->coh, pg, mode);
	node__flush(n);
	if (rc == 1 || rc == -EBUSY)
		return 1;
	if (rc == -EAGAIN || rc == -ENOBUFS)
		return 2;
	return rc;
}

static bool page_read_only(struct node *n, struct dobj *d, uint64_t pgno)
{
	struct coh_page_info pi;

	if (coh_page_info(n->coh, (struct coh_page_id){ d->gid, pgno }, &pi) != 0)
		return true;
	return pi.local != COH_WRITE;
}

/* ---- faults ---- */

static void park(struct node *n, struct mapping *m, struct dobj *d,
                 uint64_t pgno, uint64_t addr, uint64_t flags, uint32_t tid)
{
	for (uint32_t i = 0; i < n->nparked; i++) {
		struct parked *p = &n->parked[i];
		if (p->used)
			continue;
		if (i >= n->parked_hi)
			n->parked_hi = i + 1;
		*p = (struct parked){
			.used = true,
			.map = (uint32_t)(m - n->maps),
			.map_id = m->id,
			.dobj = (uint32_t)(d - n->dobjs),
			.pgno = pgno,
			.addr = addr,
			.flags = flags,
			.tid = tid,
		};
		return;
	}
	node_refuse_fault(n, &n->sessions[m->session], tid, addr,
	                  "too many faults waiting for other nodes");
}

/* ---- read-ahead ----
 *
 * A reader that faults on consecutive pages of a mapping gets the next
 * pages asked for at once (a window that grows to prefetch_pages), so
 * their round trips overlap,
 * and each is mapped into it as soon as it arrives (node_pager_premap),
 * so it does not even fault on them — except on one page, the mark, left
 * unmapped in the middle of the window: the fault on it says the reader
 * got there, and moves the window on. This is the scheme of Linux's
 * file readahead (a window, and a marker page that triggers the next one
 * asynchronously), over coherence requests instead of disk reads. Every
 * page is asked for in READ mode through the same protocol as a fault,
 * so read-ahead changes no coherence state a fault would not; a page
 * taken away before the reader touches it just faults again. Read-ahead
 * never takes more than half of max_outstanding, so demand faults always
 * find room. */

/* Asks for pages [from, to) of d in `mode` ahead of a reader; returns the
 * first page not asked for (to, or where room ran out). */
static uint64_t ask_ahead(struct node *n, struct dobj *d, uint64_t from,
                          uint64_t to, enum coh_mode mode)
{
	uint64_t p;

	tp_cork(n->tp, true); /* the window's requests leave together */
	for (p = from; p < to && p < d->pages; p++) {
		if (coh_outstanding(n->coh) >= n->outstanding_max / 2)
			break;
		int rc = acquire(n, d, p, mode);
		if (rc == 1)
			n->ct.prefetch_asked++;
		else if (rc != 0)
			break;
	}
	tp_cork(n->tp, false);
	return p;
}

/* Whether mapping m read ahead page pgno and should get it mapped now. */
static bool wants_premap(const struct mapping *m, uint64_t pgno)
{
	uint64_t addr_pg;

	if (!m->used || !m->committed || m->revoked || m->uffd < 0 ||
	    m->pf_end == 0 || pgno < m->seq_next || pgno >= m->pf_end ||
	    pgno == m->pf_mark)
		return false;
	addr_pg = pgno * PAGE;
	return addr_pg >= m->offset && addr_pg < m->offset + m->length;
}

/* The mode this node holds a page in (COH_INVALID if not tracked). */
static enum coh_mode held(struct node *n, struct dobj *d, uint64_t pgno)
{
	struct coh_page_info pi;

	if (coh_page_info(n->coh, (struct coh_page_id){ d->gid, pgno }, &pi) != 0)
		return COH_INVALID;
	return pi.local;
}

/* Maps the read-ahead pages queued since the last call, a run of
 * neighbouring pages of one mapping in one ioctl (two when they are
 * write-protected). Called at the end of each round of the event loop
 * (node_cluster_idle) and when the queue is full. K1: each page is mapped
 * only if it is held now, checked here, with no input in between. */
static void premap_flush(struct node *n)
{
	for (uint32_t i = 0; i < n->npmq;) {
		const struct premap_req *r = &n->pmq[i];
		struct mapping *m = &n->maps[r->map];
		struct dobj *d = dobj_at(n, r->dobj);
		enum coh_mode mode = COH_INVALID;
		uint32_t k = 1;

		if (m->used && m->id == r->map_id && d && d->coherent &&
		    wants_premap(m, r->pgno))
			mode = held(n, d, r->pgno);
		if (mode != COH_INVALID)
			while (i + k < n->npmq && n->pmq[i + k].map == r->map &&
			       n->pmq[i + k].map_id == r->map_id &&
			       n->pmq[i + k].pgno == r->pgno + k &&
			       wants_premap(m, r->pgno + k) &&
			       held(n, d, r->pgno + k) == mode)
				k++;
		if (mode != COH_INVALID) {
			int rc = node_pager_premap(n, m,
			                           m->addr + (r->pgno * PAGE - m->offset),
			                           k, mode != COH_WRITE);
			if (rc && rc != -ENOENT && rc != -ESRCH)
				log_debug("read-ahead pages not mapped", "mapping=0x%" PRIx64
				          " pg=%" PRIu64 " n=%u err=\"%s\"", m->id, r->pgno,
				          k, strerror(-rc));
		}
		i += k;
	}
	n->npmq = 0;
}

/* Queues a page that arrived (or was held) for the mappings that read it
 * ahead; premap_flush maps it. */
static void premap(struct node *n, struct dobj *d, uint64_t pgno)
{
	for (uint32_t i = d->maps; i != NODE_NIL; i = n->maps[i].next_obj) {
		struct mapping *m = &n->maps[i];
		if (!wants_premap(m, pgno))
			continue;
		if (n->npmq == NODE_PREMAP_Q)
			premap_flush(n);
		n->pmq[n->npmq++] = (struct premap_req){
			.map = i, .map_id = m->id, .dobj = (uint32_t)(d - n->dobjs),
			.pgno = pgno,
		};
	}
}

void node_cluster_idle(struct node *n)
{
	if (n->clustered && n->npmq)
		premap_flush(n);
	if (n->clustered && n->release_deferred && coh_outstanding(n->coh) == 0)
		node_cluster_release_imports(n);
}

/* After a read fault on pgno through m: detect a sequential reader and
 * keep its window ahead of it. */
static void read_ahead(struct node *n, struct mapping *m, struct dobj *d,
                       uint64_t pgno)
{
	uint32_t max = n->cfg.prefetch_pages;
	/* Sequential: the page after the last fault, the mark, or any page
	 * of the window still on its way (the reader caught up with it). */
	bool seq = pgno == m->seq_next || pgno == m->pf_mark ||
	           (m->seq_next != UINT64_MAX && pgno >= m->seq_next &&
	            pgno < m->pf_end);
	uint64_t last = (m->offset + m->length) / PAGE; /* past the mapping */

	m->seq_next = pgno + 1;
	if (!seq) {
		/* A jump: the window is forgotten (a new run may go back over
		 * pages read ahead before) and starts small again. */
		m->pf_win = 0;
		m->pf_end = 0;
		m->pf_mark = UINT64_MAX;
	}
	if (!max || !seq || d->home == n->cfg.node_id)
		return;
	/* The window starts at NODE_RA_START pages and doubles with each
	 * window the reader reaches, up to prefetch_pages (Linux's readahead
	 * ramps up the same way): a short sequential run costs little, a long
	 * scan soon has many pages in flight. */
	uint32_t w = m->pf_win ? m->pf_win : NODE_RA_START;
	if (w > max)
		w = max;
	m->pf_win = 2 * w < max ? 2 * w : max;
	uint64_t from = m->pf_end > pgno + 1 ? m->pf_end : pgno + 1;
	uint64_t to = pgno + 1 + w < last ? pgno + 1 + w : last;
	m->pf_mark = pgno + 1 + w / 2 < to ? pgno + 1 + w / 2 : UINT64_MAX;
	uint64_t got = ask_ahead(n, d, from, to, COH_READ);
	if (got > m->pf_end)
		m->pf_end = got;
	/* Pages held already are mapped now; the others as they arrive
	 * (their DONE queues them). */
	for (uint64_t p = from; p < got; p++)
		if (held(n, d, p) != COH_INVALID)
			premap(n, d, p);
}

/* Lowers parked_hi past the unused records at its end. */
static void parked_trim(struct node *n)
{
	while (n->parked_hi && !n->parked[n->parked_hi - 1].used)
		n->parked_hi--;
}

void node_cluster_fault(struct node *n, struct mapping *m, uint64_t addr,
                        uint64_t flags, uint32_t tid)
{
	enum cap_kind kind;
	void *priv;
	struct dobj *d;
	uint64_t pgno;
	int rc;

	if (cap_obj_get(n->cs, m->oid, &kind, &priv) != 0 || !priv)
		return node_refuse_fault(n, &n->sessions[m->session], tid, addr,
		                         "object is gone");
	d = priv;
	pgno = (m->offset + (addr - m->addr)) / PAGE;
	bool write = flags & (UFFD_PAGEFAULT_FLAG_WRITE | UFFD_PAGEFAULT_FLAG_WP);
	rc = acquire(n, d, pgno, write ? COH_WRITE : COH_READ);
	log_debug("fault", "mapping=0x%" PRIx64 " pg=%" PRIu64 " flags=0x%" PRIx64
	          " acquire=%d", m->id, pgno, flags, rc);
	if (!write && rc >= 0)
		read_ahead(n, m, d, pgno);
	if (rc == 1 || rc == 2)
		return park(n, m, d, rc == 2 ? ANY_PAGE : pgno, addr, flags, tid);
	if (rc < 0)
		return node_refuse_fault(n, &n->sessions[m->session], tid, addr,
		                         coh_err_text(rc));
	/* Away from its home a page this node holds is in the proxy's file
	 * (INSTALL put it there, perhaps after the fault was raised as
	 * MISSING): map it as a minor fault, one UFFDIO_CONTINUE, instead of
	 * trying to fill it first. */
	if (d->home != n->cfg.node_id && !(flags & UFFD_PAGEFAULT_FLAG_WP))
		flags |= UFFD_PAGEFAULT_FLAG_MINOR;
	rc = node_pager_resolve(n, m, addr, flags, page_read_only(n, d, pgno));
	log_debug("fault resolved", "mapping=0x%" PRIx64 " pg=%" PRIu64
	          " flags=0x%" PRIx64 " ro=%d rc=%d", m->id, pgno, flags,
	          page_read_only(n, d, pgno), rc);
	if (rc && rc != -ENOENT && rc != -ESRCH)
		log_warn("fault not resolved", "mapping=0x%" PRIx64 " addr=0x%" PRIx64
		         " err=\"%s\"", m->id, addr, strerror(-rc));
}

void node_cluster_mapping_freed(struct node *n, struct mapping *m)
{
	for (uint32_t i = 0; i < n->parked_hi; i++)
		if (n->parked[i].used && n->parked[i].map_id == m->id)
			n->parked[i].used = false;
	parked_trim(n);
}

/* ---- explicit read and write, page by page ---- */

static void op_finish(struct node *n, struct session *s, int err,
                      const char *why)
{
	s->op.active = false;
	if (!s->op.write) {
		s->op.ra_dobj = s->op.dobj;
		s->op.ra_next = err ? UINT64_MAX : s->op.off + s->op.len;
	}
	if (err)
		return node_send_error(n, s, s->op.id, err, "%s", why);
	/* The reply: for a read, the staged bytes. */
	node__reply_data(n, s, s->op.id, s->op.write ? NULL : s->stage,
	               s->op.write ? 0 : (uint32_t)s->op.len);
}

/* Copies as many pages as are held; waits for the first that is not. */
static void op_advance(struct node *n, struct session *s)
{
	struct dobj *d = dobj_at(n, s->op.dobj);

	while (s->op.active && s->op.done < s->op.len) {
		uint64_t at = s->op.off + s->op.done;
		uint64_t pgno = at / PAGE, in = at % PAGE;
		uint64_t k = PAGE - in;

		if (!d || !d->coherent)
			return op_finish(n, s, -EKEYREVOKED, "object is gone");
		if (k > s->op.len - s->op.done)
			k = s->op.len - s->op.done;
		enum coh_mode mode = s->op.write ? COH_WRITE : COH_READ;
		int rc = acquire(n, d, pgno, mode);
		if (rc == 1 || rc == 2) {
			s->op.wait_pg = rc == 2 ? ANY_PAGE : pgno;
			/* While it waits, the request's next pages travel too, and
			 * for a sequential reader the next request's as well. */
			uint64_t end = (s->op.off + s->op.len + PAGE - 1) / PAGE;
			if (!s->op.write && s->op.ra_dobj == s->op.dobj &&
			    s->op.ra_next == s->op.off)
				end = d->pages;
			uint64_t from = s->op.pf_end > pgno + 1 ? s->op.pf_end : pgno + 1;
			uint64_t to = pgno + 1 + n->cfg.prefetch_pages;
			if (rc == 1 && d->home != n->cfg.node_id && from < to)
				s->op.pf_end = ask_ahead(n, d, from, to < end ? to : end,
				                         mode);
			return;
		}
		if (rc < 0)
			return op_finish(n, s, rc, coh_err_text(rc));
		/* K1: held now, copy now. */
		if (s->op.write)
			memcpy(d->base + at, s->stage + s->op.done, k);
		else
			memcpy(s->stage + s->op.done, d->base + at, k);
		s->op.done += k;
	}
	if (s->op.active)
		op_finish(n, s, 0, NULL);
}

void node_cluster_rw(struct node *n, struct session *s)
{
	s->op.done = 0;
	s->op.wait_pg = 0;
	s->op.pf_end = 0;
	op_advance(n, s);
	/* A request at the home may finish inside coh_acquire. */
	node__drain(n);
}

/* Resumes everything that waited for these DONEs (K2). Resuming may ask
 * for more pages, whose DONEs land in the queue again: loop until empty. */
void node__drain(struct node *n)
{
	static bool draining; /* resuming may call in again: the outer loop
	                       * picks up whatever the inner call queued */
	if (draining || !n->clustered)
		return;
	draining = true;
	for (int guard = 0; n->ndone && guard < 1000; guard++) {
		uint32_t cnt = n->ndone;
		static struct { struct coh_page_id pg; int err; uint64_t cookie; } q[4096];
		if (cnt > sizeof q / sizeof q[0])
			cnt = sizeof q / sizeof q[0];
		memcpy(q, n->doneq, cnt * sizeof q[0]);
		memmove(n->doneq, n->doneq + cnt, (n->ndone - cnt) * sizeof q[0]);
		n->ndone -= cnt;

		for (uint32_t j = 0; j < cnt; j++) {
			struct dobj *d = dobj_at(n, q[j].cookie);
			uint32_t di = d ? (uint32_t)(d - n->dobjs) : UINT32_MAX;

			if (d && !q[j].err)
				premap(n, d, q[j].pg.pgno);
			/* Resuming may park again, at or below parked_hi. */
			for (uint32_t i = 0, hi = n->parked_hi; i < hi; i++) {
				struct parked *p = &n->parked[i];
				if (!p->used || (p->pgno != ANY_PAGE &&
				                 (p->dobj != di || p->pgno != q[j].pg.pgno)))
					continue;
				struct mapping *m = &n->maps[p->map];
				p->used = false;
				if (!m->used || m->id != p->map_id)
					continue;
				if (q[j].err && p->pgno != ANY_PAGE) {
					node_refuse_fault(n, &n->sessions[m->session], p->tid,
					                  p->addr, "the page's home is down");
					continue;
				}
				node_cluster_fault(n, m, p->addr, p->flags, p->tid);
			}
			parked_trim(n);
			for (uint32_t i = 0; i < n->cfg.clients; i++) {
				struct session *s = &n->sessions[i];
				if (!s->used || !s->op.active)
					continue;
				if (s->op.wait_pg != ANY_PAGE &&
				    (s->op.dobj != di ||
				     s->op.wait_pg != q[j].pg.pgno))
					continue;
				if (q[j].err && s->op.wait_pg != ANY_PAGE) {
					op_finish(n, s, q[j].err, coh_err_text(q[j].err));
					continue;
				}
				op_advance(n, s);
			}
		}
	}
	draining = false;
}

/* ---- objects ---- */

int node_cluster_object(struct node *n, struct dobj *d)
{
	if (!n->clustered)
		return 0;
	d->gid = gid_of(d->home, d->home_oid);
	for (uint64_t p = 0; p < d->pages; p++) {
		int rc = coh_page_add(n->coh, (struct coh_page_id){ d->gid, p },
		                      d->home, (uint64_t)(d - n->dobjs));
		if (rc) {
			while (p--)
				coh_page_remove(n->coh, (struct coh_page_id){ d->gid, p });
			return rc;
		}
	}
	d->coherent = true;
	return 0;
}

void node_cluster_forget(struct node *n, struct dobj *d)
{
	if (!n->clustered || !d->coherent)
		return;
	for (uint64_t p = 0; p < d->pages; p++) {
		struct coh_page_id pg = { d->gid, p };
		/* A proxy gives its copies back first (a WRITE copy is written
		 * back to the home, which may still have the object); then the
		 * page is forgotten whatever its state: at the home, requests
		 * for it are answered ENOENT, so nobody waits on a dead object. */
		if (d->home != n->cfg.node_id)
			coh_evict(n->coh, pg);
		coh_page_forget(n->coh, pg);
		node__flush(n);
	}
	d->coherent = false;
	node__drain(n);
}

/* ---- imports ---- */

/* A session starts or stops waiting for another node's answer. */
static void remote_wait(struct node *n, struct session *s, bool on)
{
	if (on != s->remote_wait)
		n->remote_waits += on ? 1 : (n->remote_waits ? -1 : 0);
	s->remote_wait = on;
}

bool node_cluster_awaiting(const struct node *n)
{
	return n->clustered &&
	       (coh_outstanding(n->coh) > 0 || n->remote_waits > 0);
}

static struct session *session_of_req(struct node *n, uint64_t req)
{
	uint32_t sid = (uint32_t)(req >> 32);

	if (sid >= n->cfg.clients)
		return NULL;
	struct session *s = &n->sessions[sid];
	if (!s->used || s->gen != (uint32_t)req || !s->remote_wait)
		return NULL;
	return s;
}

static uint64_t req_of(struct node *n, struct session *s)
{
	return ((uint64_t)node_sid(n, s) << 32) | s->gen;
}

void node_cluster_import(struct node *n, struct session *s, uint64_t id,
                         const char *ref, uint32_t home)
{
	Capdsm__Peer__PeerMsg pm = CAPDSM__PEER__PEER_MSG__INIT;
	Capdsm__Peer__Import im = CAPDSM__PEER__IMPORT__INIT;

	if (!n->clustered || home >= n->cfg.nodes)
		return node_send_error(n, s, id, -EREMOTE, "import: reference names "
		                       "node %u, which is not in this cluster", home);
	if (!tp_peer_alive(n->tp, home))
		return node_send_error(n, s, id, -EHOSTDOWN, "import: node %u is not "
		                       "reachable", home);
	im.req = req_of(n, s);
	im.ref = (char *)ref;
	pm.body_case = CAPDSM__PEER__PEER_MSG__BODY_IMPORT;
	pm.import = &im;
	remote_wait(n, s, true);
	s->remote_id = id;
	s->remote_node = home;
	peer_send(n, home, &pm, NULL, 0);
}

/* At the home: another node imports one of our references into the
 * c-list we keep for it. */
static void on_import(struct node *n, uint32_t from, const Capdsm__Peer__Import *im)
{
	Capdsm__Peer__PeerMsg pm = CAPDSM__PEER__PEER_MSG__INIT;
	Capdsm__Peer__ImportReply ir = CAPDSM__PEER__IMPORT_REPLY__INIT;
	struct cap_sturdy ref;
	struct cap_info ci;
	uint32_t slot = CAP_NONE;
	int rc = 0;

	if (n->peer_clist[from] == CAP_NONE)
		rc = cap_clist_create(n->cs, cap_space_root_bank(n->cs),
		                      &n->peer_clist[from]);
	if (!rc)
		rc = cap_sturdy_parse(im->ref, &ref);
	if (!rc && ref.node != n->cfg.node_id)
		rc = -EREMOTE;
	if (!rc)
		rc = cap_import(n->cs, n->peer_clist[from], &ref, &slot);
	if (!rc)
		rc = cap_check(n->cs, n->peer_clist[from], slot, CAP_KIND_NONE, 0,
		               &ci);
	if (!rc && ci.kind != CAP_KIND_DATA) {
		cap_drop(n->cs, n->peer_clist[from], slot);
		rc = -EOPNOTSUPP;
	}
	ir.req = im->req;
	ir.status = rc;
	if (rc) {
		ir.error = (char *)(rc == -EACCES ? "no such sturdy reference"
		                  : rc == -EKEYREVOKED ? "capability revoked"
		                  : rc == -EOPNOTSUPP ? "only data objects can be "
		                                        "used from other nodes"
		                                      : strerror(-rc));
	} else {
		enum cap_kind k;
		void *priv;
		cap_obj_get(n->cs, ci.oid, &k, &priv);
		ir.rslot = slot;
		ir.oid = ci.oid;
		ir.kind = ci.kind;
		ir.rights = ci.rights;
		ir.size = priv ? ((struct dobj *)priv)->size : 0;
	}
	pm.body_case = CAPDSM__PEER__PEER_MSG__BODY_IMPORT_REPLY;
	pm.import_reply = &ir;
	peer_send(n, from, &pm, NULL, 0);
}

/* Gives a remote slot back to its home (the importer does not keep it). */
static void send_drop(struct node *n, uint32_t home, uint32_t rslot)
{
	Capdsm__Peer__PeerMsg pm = CAPDSM__PEER__PEER_MSG__INIT;
	Capdsm__Peer__Drop dr = CAPDSM__PEER__DROP__INIT;

	dr.rslot = rslot;
	pm.body_case = CAPDSM__PEER__PEER_MSG__BODY_DROP;
	pm.drop = &dr;
	peer_send(n, home, &pm, NULL, 0);
}

/* Frees an import record and its root here. The last import of an
 * object takes its proxy along (its pages go back as coh_evict sends them,
 * its frames are freed); otherwise the proxy keeps a live slot at the
 * home for its locks, from another import. */
static void import_free(struct node *n, struct rimport *ri)
{
	struct dobj *d = dobj_at(n, ri->dobj);
	struct rimport *other = NULL;

	cap_drop(n->cs, n->imports_clist, ri->root);
	ri->used = false;
	for (uint32_t j = 0; j < n->cfg.sturdy && !other; j++)
		if (n->imports[j].used && n->imports[j].dobj == ri->dobj)
			other = &n->imports[j];
	if (!d || d->home == n->cfg.node_id || d->home != ri->home)
		return;
	if (other)
		d->rslot = other->rslot;
	else
		cap_obj_destroy(n->cs, d->oid);
}

void node_cluster_release_imports(struct node *n)
{
	if (!n->clustered)
		return;
	/* A proxy's pages are given back (coh_evict) before they are
	 * forgotten; one with a request in flight (read-ahead a reader left
	 * behind) cannot be, and forgetting it anyway would leave this node
	 * in the home's copyset with no copy here, so a later upgrade would
	 * get a GRANT for nothing. So the release waits for quiet
	 * (node_cluster_idle retries it). */
	n->release_deferred = coh_outstanding(n->coh) > 0;
	if (n->release_deferred)
		return;
	for (uint32_t i = 0; i < n->cfg.sturdy; i++) {
		struct rimport *ri = &n->imports[i];
		if (!ri->used || cap_derived(n->cs, n->imports_clist, ri->root) == 1)
			continue;
		if (tp_peer_alive(n->tp, ri->home))
			send_drop(n, ri->home, ri->rslot);
		import_free(n, ri);
	}
}

/* At the importer: the home's answer. */
static void on_import_reply(struct node *n, uint32_t from,
                            const Capdsm__Peer__ImportReply *ir)
{
	struct session *s = session_of_req(n, ir->req);
	struct rimport *ri = NULL;
	struct dobj *d;
	uint32_t root, slot;
	int rc;

	if (!s || s->remote_node != from) {
		/* The session is gone: give the slot back. */
		if (!ir->status)
			send_drop(n, from, ir->rslot);
		return;
	}
	remote_wait(n, s, false);
	if (ir->status)
		return node_send_error(n, s, s->remote_id, ir->status,
		                       "import: node %u: %s", from,
		                       ir->error ? ir->error : "refused");
	for (uint32_t i = 0; i < n->cfg.sturdy; i++)
		if (!n->imports[i].used) {
			ri = &n->imports[i];
			break;
		}
	rc = ri ? 0 : -ENOSPC;
	d = rc ? NULL : node__proxy(n, from, ir->oid, ir->size, &rc);
	if (!rc)
		rc = cap_mint(n->cs, n->imports_clist, d->oid,
		              (ir->rights & CAP_R_ALL) | CAP_R_GRANT, &root);
	if (!rc) {
		rc = cap_transfer(n->cs, n->imports_clist, root, s->clist,
		                  ir->rights & CAP_R_ALL, &slot);
		if (rc)
			cap_drop(n->cs, n->imports_clist, root);
	}
	if (rc) {
		send_drop(n, from, ir->rslot);
		return node_send_error(n, s, s->remote_id, rc, "import: %s",
		                       rc == -ENOSPC ? "node pool full"
		                                     : strerror(-rc));
	}
	*ri = (struct rimport){
		.used = true,
		.home = from,
		.rslot = ir->rslot,
		.root = root,
		.dobj = (uint32_t)(d - n->dobjs),
	};
	d->rslot = ir->rslot;
	node__reply_slot(n, s, s->remote_id, slot);
}

/* At the importer: the home revoked some remote slots (K3). */
static void on_revoked(struct node *n, uint32_t from,
                       const Capdsm__Peer__Revoked *rv)
{
	bool any = false;

	for (size_t k = 0; k < rv->n_rslots; k++)
		for (uint32_t i = 0; i < n->cfg.sturdy; i++) {
			struct rimport *ri = &n->imports[i];
			if (!ri->used || ri->home != from || ri->rslot != rv->rslots[k])
				continue;
			cap_revoke(n->cs, n->imports_clist, ri->root);
			import_free(n, ri);
			any = true;
		}
	if (any)
		node_check_mappings(n);
}

static void send_revoked(struct node *n, uint32_t to, uint32_t *rslots,
                         size_t count)
{
	Capdsm__Peer__PeerMsg pm = CAPDSM__PEER__PEER_MSG__INIT;
	Capdsm__Peer__Revoked rv = CAPDSM__PEER__REVOKED__INIT;

	rv.n_rslots = count;
	rv.rslots = rslots;
	pm.body_case = CAPDSM__PEER__PEER_MSG__BODY_REVOKED;
	pm.revoked = &rv;
	if (tp_peer_alive(n->tp, to))
		peer_send(n, to, &pm, NULL, 0);
}

/* At the home: after anything that may revoke, find the remote slots that
 * lost their capability and tell their nodes. */
void node_cluster_check_exports(struct node *n)
{
	if (!n->clustered)
		return;
	for (uint32_t p = 0; p < n->cfg.nodes; p++) {
		uint32_t cl = n->peer_clist[p];
		uint32_t dead[64];
		size_t nd = 0;

		if (cl == CAP_NONE)
			continue;
		for (uint32_t slot = 0; slot < n->cfg.slots_per_client; slot++) {
			int rc = cap_check(n->cs, cl, slot, CAP_KIND_NONE, 0, NULL);
			if (rc != -EKEYREVOKED)
				continue;
			cap_drop(n->cs, cl, slot);
			dead[nd++] = slot;
			if (nd == 64 || slot + 1 == n->cfg.slots_per_client) {
				send_revoked(n, p, dead, nd);
				nd = 0;
			}
		}
		if (nd)
			send_revoked(n, p, dead, nd);
	}
}

/* ---- locks at the home ---- */

void node_cluster_lock(struct node *n, struct session *s, uint64_t id,
                       struct dobj *d, uint64_t off, uint64_t len,
                       bool excl, bool try_only, bool unlock)
{
	Capdsm__Peer__PeerMsg pm = CAPDSM__PEER__PEER_MSG__INIT;
	Capdsm__Peer__Lock lk = CAPDSM__PEER__LOCK__INIT;

	if (!tp_peer_alive(n->tp, d->home))
		return node_send_error(n, s, id, -EHOSTDOWN, "%s: the object's home "
		                       "(node %u) is down", unlock ? "unlock" : "lock",
		                       d->home);
	lk.req = req_of(n, s);
	lk.rslot = d->rslot;
	lk.session = node_sid(n, s);
	lk.offset = off;
	lk.length = len;
	lk.exclusive = excl;
	lk.try_only = try_only;
	lk.unlock = unlock;
	pm.body_case = CAPDSM__PEER__PEER_MSG__BODY_LOCK;
	pm.lock = &lk;
	remote_wait(n, s, true);
	s->remote_id = id;
	s->remote_node = d->home;
	s->lock_nodes[d->home / 64] |= 1ull << (d->home % 64);
	peer_send(n, d->home, &pm, NULL, 0);
}

static void send_lock_reply(struct node *n, uint32_t to, uint64_t req,
                            uint32_t session, int status, const char *why)
{
	Capdsm__Peer__PeerMsg pm = CAPDSM__PEER__PEER_MSG__INIT;
	Capdsm__Peer__LockReply lr = CAPDSM__PEER__LOCK_REPLY__INIT;

	lr.req = req;
	lr.session = session;
	lr.status = status;
	lr.error = (char *)(why ? why : "");
	pm.body_case = CAPDSM__PEER__PEER_MSG__BODY_LOCK_REPLY;
	pm.lock_reply = &lr;
	peer_send(n, to, &pm, NULL, 0);
}

/* The remote request ids of waiting lock requests: a grant names its
 * owner and tag; the tag of a remote owner is its node's request id. */
static void on_lock(struct node *n, uint32_t from, const Capdsm__Peer__Lock *lk)
{
	struct cap_info ci;
	enum cap_kind k;
	void *priv;
	struct dobj *d;
	uint32_t cl = n->peer_clist[from];
	int rc;

	if (lk->session >= 0x10000)
		return send_lock_reply(n, from, lk->req, lk->session, -EINVAL,
		                       "bad session");
	rc = cl == CAP_NONE ? -EBADF
	                    : cap_check(n->cs, cl, lk->rslot, CAP_KIND_DATA,
	                                CAP_R_LOCK, &ci);
	if (rc)
		return send_lock_reply(n, from, lk->req, lk->session, rc,
		                       rc == -EKEYREVOKED ? "capability revoked"
		                                          : "capability lacks lock");
	if (cap_obj_get(n->cs, ci.oid, &k, &priv) != 0 || !priv)
		return send_lock_reply(n, from, lk->req, lk->session, -EKEYREVOKED,
		                       "object is gone");
	d = priv;
	if (lk->length == 0 || lk->offset > d->size ||
	    lk->length > d->size - lk->offset)
		return send_lock_reply(n, from, lk->req, lk->session, -ERANGE,
		                       "range outside the object");
	uint32_t owner = NODE_REMOTE_OWNER | (from << 16) | lk->session;
	if (lk->unlock) {
		rc = coh_lock_release(n->locks, owner, d->oid, lk->offset,
		                      lk->length, node_lock_granted, n);
		return send_lock_reply(n, from, lk->req, lk->session, rc,
		                       rc ? "no lock held on that range" : NULL);
	}
	struct coh_lock_req q = {
		.oid = d->oid,
		.offset = lk->offset,
		.length = lk->length,
		.exclusive = lk->exclusive,
		.owner = owner,
		.tag = lk->req,
	};
	rc = coh_lock_acquire(n->locks, &q, lk->try_only);
	if (rc == 1)
		return; /* granted later, through node_lock_granted */
	send_lock_reply(n, from, lk->req, lk->session, rc < 0 ? rc : 0,
	                rc == -EAGAIN ? "range is locked"
	                : rc == -EDEADLK ? "caller already holds a conflicting lock"
	                : rc == -ENOSPC ? "lock table full"
	                : NULL);
}

/* A grant for a remote owner (called by requests.c's grant callback). */
void node__remote_granted(struct node *n, const struct coh_lock_req *r)
{
	uint32_t node = (r->owner >> 16) & 0x7fff;

	if (n->clustered && node < n->cfg.nodes)
		send_lock_reply(n, node, r->tag, r->owner & 0xffff,
		                n->stopping ? -ESHUTDOWN : 0,
		                n->stopping ? "node is shutting down" : NULL);
}

static void on_lock_reply(struct node *n, uint32_t from,
                          const Capdsm__Peer__LockReply *lr)
{
	struct session *s = session_of_req(n, lr->req);

	if (!s || s->remote_node != from)
		return;
	remote_wait(n, s, false);
	if (lr->status)
		return node_send_error(n, s, s->remote_id, lr->status,
		                       "lock: node %u: %s", from,
		                       lr->error && lr->error[0] ? lr->error
		                                                 : strerror(-lr->status));
	node__reply_slot(n, s, s->remote_id, 0);
}

void node_cluster_session_closed(struct node *n, struct session *s)
{
	if (!n->clustered)
		return;
	for (uint32_t p = 0; p < n->cfg.nodes; p++) {
		if (!(s->lock_nodes[p / 64] & (1ull << (p % 64))))
			continue;
		Capdsm__Peer__PeerMsg pm = CAPDSM__PEER__PEER_MSG__INIT;
		Capdsm__Peer__Release rl = CAPDSM__PEER__RELEASE__INIT;
		rl.session = node_sid(n, s);
		pm.body_case = CAPDSM__PEER__PEER_MSG__BODY_RELEASE;
		pm.release = &rl;
		if (tp_peer_alive(n->tp, p))
			peer_send(n, p, &pm, NULL, 0);
	}
	memset(s->lock_nodes, 0, sizeof s->lock_nodes);
	remote_wait(n, s, false);
	s->op.active = false;
}

/* ---- the transport's callbacks ---- */

/* Peer messages are decoded one at a time into this arena. */
static uint8_t peer_arena[64 * 1024];
static size_t peer_arena_used;

static void *peer_alloc(void *data, size_t size)
{
	size_t at = (peer_arena_used + 15) & ~(size_t)15;

	(void)data;
	if (size > sizeof peer_arena || at > sizeof peer_arena - size)
		return NULL;
	peer_arena_used = at + size;
	return peer_arena + at;
}

static void peer_free(void *data, void *p)
{
	(void)data;
	(void)p;
}

static void on_msg(void *ctx, uint32_t from, const void *hdr, size_t hdrlen,
                   const void *payload, size_t plen)
{
	struct node *n = ctx;
	ProtobufCAllocator al = { .alloc = peer_alloc, .free = peer_free,
	                          .allocator_data = n };
	Capdsm__Peer__PeerMsg *pm;

	peer_arena_used = 0;
	n->peer_ct_in++;
	if (from >= n->cfg.nodes || from == n->cfg.node_id) {
		n->peer_ct_bad++;
		return;
	}
	pm = capdsm__peer__peer_msg__unpack(&al, hdrlen, hdr);
	if (!pm) {
		n->peer_ct_bad++;
		log_warn("malformed peer message", "peer=%u len=%zu", from, hdrlen);
		return;
	}
	switch (pm->body_case) {
	case CAPDSM__PEER__PEER_MSG__BODY_COH: {
		const Capdsm__Peer__Coh *c = pm->coh;
		struct coh_msg m = {
			.type = (uint8_t)c->type,
			.mode = (uint8_t)c->mode,
			.flags = (uint8_t)c->flags,
			.err = c->err,
			.src = from,
			.dst = n->cfg.node_id,
			.seq = c->seq,
			.oid = c->oid,
			.pgno = c->pgno,
		};
		if (c->type > 255 || c->mode > 255 || c->flags > 255 ||
		    ((c->flags & COH_F_PAYLOAD) ? plen != PAGE : plen != 0)) {
			n->peer_ct_bad++;
			log_warn("bad coherence message", "peer=%u type=%u plen=%zu",
			         from, c->type, plen);
			break;
		}
		if (coh_peer_is_down(n->coh, from) &&
		    (m.type == COH_M_READ_REQ || m.type == COH_M_WRITE_REQ)) {
			/* A node this one declared dead speaks again: a new
			 * incarnation (a restarted daemon). Membership is
			 * crash-stop, so it stays dead here, but its requests
			 * are refused rather than ignored, so its clients get
			 * an error, not a hang. */
			Capdsm__Peer__PeerMsg rm = CAPDSM__PEER__PEER_MSG__INIT;
			Capdsm__Peer__Coh rc_ = CAPDSM__PEER__COH__INIT;
			rc_.type = COH_M_NACK;
			rc_.mode = COH_INVALID;
			rc_.err = -ESTALE;
			rc_.seq = c->seq;
			rc_.oid = c->oid;
			rc_.pgno = c->pgno;
			rm.body_case = CAPDSM__PEER__PEER_MSG__BODY_COH;
			rm.coh = &rc_;
			n->peer_ct_bad++; /* on_peer logged why, once */
			peer_send(n, from, &rm, NULL, 0);
			break;
		}
		n->rx_payload = payload;
		n->rx_plen = plen;
		int rc = coh_recv(n->coh, &m);
		n->rx_payload = NULL;
		n->rx_plen = 0;
		node__flush(n);
		if (rc && rc != -ENOENT) {
			n->peer_ct_bad++;
			log_warn("coherence message refused", "peer=%u type=%s err=\"%s\"",
			         from, coh_msg_name(m.type), strerror(-rc));
		}
		break;
	}
	case CAPDSM__PEER__PEER_MSG__BODY_IMPORT:
		on_import(n, from, pm->import);
		break;
	case CAPDSM__PEER__PEER_MSG__BODY_IMPORT_REPLY:
		on_import_reply(n, from, pm->import_reply);
		break;
	case CAPDSM__PEER__PEER_MSG__BODY_REVOKED:
		on_revoked(n, from, pm->revoked);
		break;
	case CAPDSM__PEER__PEER_MSG__BODY_DROP:
		if (n->peer_clist[from] != CAP_NONE)
			cap_drop(n->cs, n->peer_clist[from], pm->drop->rslot);
		break;
	case CAPDSM__PEER__PEER_MSG__BODY_LOCK:
		on_lock(n, from, pm->lock);
		break;
	case CAPDSM__PEER__PEER_MSG__BODY_LOCK_REPLY:
		on_lock_reply(n, from, pm->lock_reply);
		break;
	case CAPDSM__PEER__PEER_MSG__BODY_RELEASE:
		if (pm->release->session < 0x10000)
			coh_lock_release_owner(n->locks,
			                       NODE_REMOTE_OWNER | (from << 16) |
			                               pm->release->session,
			                       node_lock_granted, n);
		break;
	default:
		n->peer_ct_bad++;
		break;
	}
	node__drain(n);
}

static void on_peer(void *ctx, uint32_t peer, bool up, uint64_t inc,
                    enum tp_down_reason why)
{
	struct node *n = ctx;

	if (up) {
		log_info("peer up", "peer=%u incarnation=%" PRIu64, peer, inc);
		if (coh_peer_is_down(n->coh, peer))
			log_warn("a node declared dead restarted", "peer=%u "
			         "incarnation=%" PRIu64 " note=\"membership is "
			         "crash-stop: it stays dead to this node and its "
			         "page requests are refused (ESTALE); restart the "
			         "cluster to bring it back\"", peer, inc);
		return;
	}
	log_warn("peer down", "peer=%u incarnation=%" PRIu64 " why=\"%s\"", peer,
	         inc, tp_down_reason_str(why));
	coh_peer_down(n->coh, peer);
	node__flush(n);
	/* Its sessions' locks here go; the next waiters get them. */
	coh_lock_release_owners(n->locks, 0xffff0000u,
	                        NODE_REMOTE_OWNER | (peer << 16), node_lock_granted,
	                        n);
	/* Our sessions waiting for it get a clear error, not a hang. */
	for (uint32_t i = 0; i < n->cfg.clients; i++) {
		struct session *s = &n->sessions[i];
		if (s->used && s->remote_wait && s->remote_node == peer) {
			remote_wait(n, s, false);
			node_send_error(n, s, s->remote_id, -EHOSTDOWN,
			                "node %u went down", peer);
		}
	}
	node__drain(n);
}

static void on_auth_fail(void *ctx, const char *reason)
{
	(void)ctx;
	log_warn("peer refused", "reason=\"%s\"", reason);
}

static const struct tp_handlers handlers = {
	.on_msg = on_msg,
	.on_peer = on_peer,
	.on_auth_fail = on_auth_fail,
};

void node_cluster_events(struct node *n)
{
	int rc = tp_poll(n->tp, &handlers, n);
	if (rc < 0)
		log_error("transport failed", "err=\"%s\"", strerror(-rc));
}

/* ---- set-up ---- */

static int read_key(const char *path, char key[TP_KEY_LEN + 1], char *err,
                    size_t errlen)
{
	char buf[128];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t k;

	if (fd < 0) {
		snprintf(err, errlen, "no cluster key: %s: %s (a node without the "
		         "cluster key is refused)", path[0] ? path : "(secret_key_file "
		         "not set)", strerror(errno));
		return -EACCES;
	}
	struct stat st;
	if (fstat(fd, &st) == 0 && (st.st_mode & 077)) {
		close(fd);
		snprintf(err, errlen, "cluster key %s: mode %03o lets others read "
		         "or change it; it must be 0600 (or 0400)", path,
		         (unsigned)(st.st_mode & 0777));
		return -EACCES;
	}
	k = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (k < 0)
		k = 0;
	while (k > 0 && (buf[k - 1] == '\n' || buf[k - 1] == ' '))
		k--;
	if (k != TP_KEY_LEN) {
		snprintf(err, errlen, "cluster key %s: expected %u characters of "
		         "Z85", path, TP_KEY_LEN);
		return -EINVAL;
	}
	memcpy(key, buf, TP_KEY_LEN);
	key[TP_KEY_LEN] = '\0';
	return 0;
}

int node_cluster_init(struct node *n, char *err, size_t errlen)
{
	const struct node_config *c = &n->cfg;
	struct tp_peer_cfg *peers;
	struct tp_config tc = {
		.self = c->node_id,
		.npeers = c->nodes,
		.plaintext = c->plaintext,
		.heartbeat_ms = c->heartbeat_ms,
		.dead_after_ms = c->dead_after_ms,
		.max_payload = PAGE,
		.queue_limit = 4096,
	};
	struct coh_config cc = {
		.self = c->node_id,
		.max_nodes = c->nodes,
		.max_pages = c->frames + c->remote_frames,
		.max_home_pages = c->frames,
		.max_outstanding = 256,
		.act = on_action,
		.act_ctx = n,
	};
	int rc;

	if (c->nodes <= 1)
		return 0;
	rc = tp_kind_parse(c->transport, &tc.kind);
	if (rc) {
		snprintf(err, errlen, "cluster.transport = %s: zmq, tcp or rdma",
		         c->transport);
		return rc;
	}
	snprintf(tc.rdma_device, sizeof tc.rdma_device, "%s", c->rdma_device);
	if (tc.kind != TP_KIND_RDMA && (c->rdma_device[0] || c->rdma_gid_index >= 0))
		log_warn("rdma settings ignored", "transport=%s rdma_device=\"%s\" "
		         "rdma_gid_index=%d", c->transport, c->rdma_device,
		         c->rdma_gid_index);
	tc.rdma_gid_set = c->rdma_gid_index >= 0;
	tc.rdma_gid_index = c->rdma_gid_index >= 0 ? (uint32_t)c->rdma_gid_index
	                                           : 0;
	n->clustered = true;
	n->outstanding_max = cc.max_outstanding;
	if (c->prefetch_pages > c->remote_frames / 4) {
		log_info("read-ahead window limited by the frame pool",
		         "prefetch_pages=%u remote_frames=%u now=%u",
		         c->prefetch_pages, c->remote_frames, c->remote_frames / 4);
		n->cfg.prefetch_pages = c->remote_frames / 4;
	}
	if (!c->plaintext) {
		rc = read_key(c->secret_key_file, tc.secret_key, err, errlen);
		if (rc)
			return rc;
	}
	peers = calloc(c->nodes, sizeof *peers);
	n->peer_clist = malloc(c->nodes * sizeof *n->peer_clist);
	n->imports = calloc(c->sturdy, sizeof *n->imports);
	n->nparked = c->mappings * 4;
	n->parked = calloc(n->nparked, sizeof *n->parked);
	n->doneq_max = cc.max_outstanding + c->clients + n->nparked;
	n->doneq = calloc(n->doneq_max, sizeof *n->doneq);
	n->ring_max = c->remote_frames * 2;
	n->ring = calloc(n->ring_max, sizeof *n->ring);
	n->peer_out = malloc(TP_MAX_HDR);
	/* One coherence call emits at most an invalidation per node and a
	 * few replies; room for twice the nodes and then some. */
	n->outq_max = 2 * c->nodes + 64;
	n->outq = calloc(n->outq_max, sizeof *n->outq);
	if (!peers || !n->peer_clist || !n->imports || !n->parked || !n->doneq ||
	    !n->ring || !n->peer_out || !n->outq) {
		free(peers);
		snprintf(err, errlen, "out of memory sizing the cluster pools");
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < c->nodes; i++) {
		n->peer_clist[i] = CAP_NONE;
		peers[i].id = i;
		snprintf(peers[i].address, sizeof peers[i].address, "%s",
		         c->peers[i].address);
		snprintf(peers[i].public_key, sizeof peers[i].public_key, "%s",
		         c->peers[i].public_key);
	}
	for (uint32_t i = 0; i < c->clients; i++) {
		n->sessions[i].stage = malloc(NODE_STAGE);
		if (!n->sessions[i].stage) {
			free(peers);
			snprintf(err, errlen, "out of memory sizing the staging buffers");
			return -ENOMEM;
		}
	}
	tc.peers = peers;
	rc = cap_clist_create(n->cs, cap_space_root_bank(n->cs), &n->imports_clist);
	if (!rc)
		rc = coh_init(&n->coh, &cc);
	if (rc) {
		free(peers);
		snprintf(err, errlen, "coherence pools: %s", strerror(-rc));
		return rc;
	}
	rc = tp_open(&n->tp, &tc, err, errlen);
	free(peers);
	if (rc)
		return rc;
	struct epoll_event ev = { .events = EPOLLIN,
	                          .data.u64 = (uint64_t)EV_PEER << 32 };
	if (epoll_ctl(n->epfd, EPOLL_CTL_ADD, tp_fd(n->tp), &ev) != 0) {
		snprintf(err, errlen, "epoll: %s", strerror(errno));
		return -errno;
	}
	log_info("cluster member", "nodes=%u address=%s transport=%s "
	         "encrypted=%s prefetch_pages=%u remote_frames=%u detail=\"%s\"",
	         c->nodes, c->peers[c->node_id].address, c->transport,
	         !c->plaintext && strcmp(c->transport, "rdma") != 0 ? "yes"
	         : c->plaintext ? "no" : "handshake only",
	         c->prefetch_pages, c->remote_frames, tp_describe(n->tp));
	return 0;
}

void node_cluster_fini(struct node *n)
{
	if (!n->clustered)
		return;
	tp_close(n->tp);
	coh_free(n->coh);
	for (uint32_t i = 0; i < n->cfg.clients; i++)
		free(n->sessions[i].stage);
	free(n->peer_clist);
	free(n->imports);
	free(n->parked);
	free(n->doneq);
	free(n->ring);
	free(n->peer_out);
	free(n->outq);
}
