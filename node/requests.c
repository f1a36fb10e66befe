/* requests.c — decoding, checking and performing client requests.
 *
 * Each request is decoded (protobuf-c, into the session's fixed arena),
 * checked in full — capability, rights, ranges, quotas, pool space — and
 * only then performed, so a rejected request changes nothing (the seL4
 * decode/invoke split). Every request gets exactly one reply with its id;
 * a lock that must wait and a capdsm_recv with an empty inbox get theirs
 * later, from the grant or the send that ends the wait. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "capdsm.pb-c.h"
#include "node.h"

#define PAGE 4096u
#define ANY_SLOT UINT32_MAX /* "the session's bank" */

/* ---- replies ---- */

int node_send_reply(struct node *n, struct session *s, void *reply,
                    const void *payload, uint32_t payload_len, int fd)
{
	Capdsm__Reply *r = reply;
	size_t len;
	int rc;

	/* Replies are bounded by construction — numbers, one reference, an
	 * error line of at most 256 bytes, at most 40 counters — well below
	 * WIRE_MSG_MAX, so they are packed without a sizing pass. */
	len = capdsm__reply__pack(r, n->out + sizeof(struct wire_hdr));
	assert(len > 0 && len <= WIRE_MSG_MAX);
	rc = wire_send_frame(s->fd, n->out, (uint32_t)len, payload, payload_len,
	                     fd);
	if (rc && s->used) {
		/* Not from inside the reader's loop: mark, the loop closes. */
		log_warn("reply not delivered", "session=%u err=\"%s\"",
		         node_sid(n, s), strerror(-rc));
		shutdown(s->fd, SHUT_RDWR);
	}
	return rc;
}

void node_send_error(struct node *n, struct session *s, uint64_t id,
                     int status, const char *fmt, ...)
{
	Capdsm__Reply r = CAPDSM__REPLY__INIT;
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	r.id = id;
	r.status = status;
	r.error = msg;
	n->ct.errors++;
	log_debug("request refused", "session=%u id=%" PRIu64 " status=%d "
	          "reason=\"%s\"", node_sid(n, s), id, status, msg);
	node_send_reply(n, s, &r, NULL, 0, -1);
}

static void send_ok(struct node *n, struct session *s, Capdsm__Reply *r)
{
	node_send_reply(n, s, r, NULL, 0, -1);
}

/* A reason for the common capability errors. */
/* Which pool of the node ran out, for -ENOSPC from caps: the one at its
 * size (pools.* in the README names the setting). */
static const char *full_pool(struct node *n)
{
	struct cap_stats st;

	cap_space_stats(n->cs, &st);
	if (st.objects_used >= st.objects_max)
		return "node pool full: objects (pools.objects)";
	if (st.caps_used >= st.caps_max)
		return "node pool full: capability records (pools.caps)";
	if (st.sturdy_used >= st.sturdy_max)
		return "node pool full: sturdy references (pools.sturdy)";
	if (st.clists_used >= st.clists_max)
		return "node pool full: c-lists (pools.clients)";
	return "c-list full: no free slot (pools.slots_per_client)";
}

static const char *cap_reason(struct node *n, int rc)
{
	switch (rc) {
	case -EBADF: return "no capability in that slot";
	case -EKEYREVOKED: return "capability revoked";
	case -EPERM: return "capability lacks a needed right";
	case -ENOTTY: return "capability names the wrong kind of object";
	case -EDQUOT: return "space bank quota exceeded";
	case -ENOSPC: return full_pool(n);
	case -EACCES: return "no such sturdy reference";
	case -EINVAL: return "malformed argument";
	default: return strerror(-rc);
	}
}

/* Bytes of data per request: explicit access under coherence goes
 * through the session's staging buffer. */
static uint32_t max_payload(const struct node *n)
{
	return n->clustered && n->cfg.max_payload > NODE_STAGE ? NODE_STAGE
	                                                       : n->cfg.max_payload;
}

void node__reply_data(struct node *n, struct session *s, uint64_t id,
                      const void *payload, uint32_t len)
{
	Capdsm__Reply r = CAPDSM__REPLY__INIT;

	r.id = id;
	node_send_reply(n, s, &r, payload, len, -1);
}

void node__reply_slot(struct node *n, struct session *s, uint64_t id,
                      uint32_t slot)
{
	Capdsm__Reply r = CAPDSM__REPLY__INIT;

	r.id = id;
	r.slot = slot;
	node_send_reply(n, s, &r, NULL, 0, -1);
}

/* ---- objects ---- */

/* Gives an object its memory: a memfd of `pages` pages, a read-only
 * reopening of it for read-only mappings, and the daemon's own mapping.
 * Returns 0, or a negative errno with nothing left open. */
static int dobj_memory(struct dobj *d, uint64_t pages, const char *name)
{
	char path[32];
	int rc;

	d->rofd = -1;
	d->memfd = memfd_create(name, MFD_CLOEXEC);
	if (d->memfd < 0 || ftruncate(d->memfd, (off_t)(pages * PAGE)) != 0)
		goto fail;
	snprintf(path, sizeof path, "/proc/self/fd/%d", d->memfd);
	d->rofd = open(path, O_RDONLY | O_CLOEXEC);
	if (d->rofd < 0)
		goto fail;
	d->base = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED,
	               d->memfd, 0);
	if (d->base == MAP_FAILED)
		goto fail;
	return 0;
fail:
	rc = -errno;
	if (d->memfd >= 0)
		close(d->memfd);
	if (d->rofd >= 0)
		close(d->rofd);
	d->memfd = d->rofd = -1;
	return rc;
}

static struct dobj *dobj_of(struct node *n, uint64_t oid)
{
	enum cap_kind k;
	void *priv;

	if (cap_obj_get(n->cs, oid, &k, &priv) != 0 || k != CAP_KIND_DATA)
		return NULL;
	return priv;
}

/* A capability for another node's object (a proxy here) cannot be made
 * into a sturdy reference here, nor its object destroyed from here: a
 * reference names the object's home, and the home alone ends an object.
 * Returns the home's id, or -1 for an object homed on this node (or not
 * a data object). */
static int remote_home(struct node *n, struct session *s, uint32_t slot)
{
	struct cap_info ci;
	struct dobj *d;

	if (cap_check(n->cs, s->clist, slot, CAP_KIND_NONE, 0, &ci) != 0 ||
	    !(d = dobj_of(n, ci.oid)) || d->home == n->cfg.node_id)
		return -1;
	return (int)d->home;
}

static void lock_dropped(void *ctx, const struct coh_lock_req *r)
{
	struct node *n = ctx;
	struct session *s = &n->sessions[r->owner];

	if (s->used && s->lock_waiting) {
		s->lock_waiting = false;
		node_send_error(n, s, r->tag, -EKEYREVOKED,
		                "object destroyed while waiting for its lock");
	}
}

/* Called by caps for every destroyed object (cap_obj_destroy and
 * bank_destroy): releases what the node keeps for it. */
void node_on_destroy(void *ctx, uint64_t oid, enum cap_kind kind, void *priv)
{
	struct node *n = ctx;

	if (kind == CAP_KIND_DATA && priv) {
		struct dobj *d = priv;
		coh_lock_drop_object(n->locks, oid, lock_dropped, n);
		/* A write streaming into it now goes nowhere. */
		for (uint32_t i = 0; i < n->cfg.clients; i++) {
			struct session *s = &n->sessions[i];
			if (s->used && s->rd == RD_PAYLOAD && s->pl_oid == oid) {
				s->rd = RD_DRAIN;
				s->pl_status = -EKEYREVOKED;
				snprintf(s->pl_err, sizeof s->pl_err,
				         "object destroyed during the write");
			}
		}
		node_cluster_forget(n, d);
		/* Its memory goes from every mapping, and the file is emptied,
		 * so even a descriptor kept by a client reaches nothing. */
		fallocate(d->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
		          (off_t)d->pages * PAGE);
		if (ftruncate(d->memfd, 0) != 0)
			log_warn("object file not emptied", "oid=0x%" PRIx64 " err=\"%s\"",
			         oid, strerror(errno));
		munmap(d->base, (size_t)d->pages * PAGE);
		close(d->memfd);
		close(d->rofd);
		if (d->home == n->cfg.node_id)
			n->frames_used -= d->pages;
		n->nobjs_used--;
		for (uint32_t i = d->maps; i != NODE_NIL; i = n->maps[i].next_obj)
			n->maps[i].dobj = NODE_NIL;
		d->maps = NODE_NIL;
		d->used = false;
		d->memfd = d->rofd = -1;
	}
}

/* ---- mappings ---- */

static struct mapping *mapping_get(struct node *n, struct session *s,
                                   uint64_t id)
{
	uint32_t i = (uint32_t)id;

	if (i >= n->cfg.mappings)
		return NULL;
	struct mapping *m = &n->maps[i];
	if (!m->used || m->id != id || m->session != node_sid(n, s))
		return NULL;
	return m;
}

static void mapping_free(struct node *n, struct session *s, struct mapping *m)
{
	uint32_t idx = (uint32_t)(m - n->maps);

	for (uint32_t *p = &s->maps; *p != NODE_NIL; p = &n->maps[*p].next)
		if (*p == idx) {
			*p = m->next;
			break;
		}
	if (m->dobj != NODE_NIL)
		for (uint32_t *p = &n->dobjs[m->dobj].maps; *p != NODE_NIL;
		     p = &n->maps[*p].next_obj)
			if (*p == idx) {
				*p = m->next_obj;
				break;
			}
	if (n->clustered)
		node_cluster_mapping_freed(n, m);
	if (m->uffd >= 0) {
		node_unwatch(n, m->uffd);
		close(m->uffd);
		m->uffd = -1;
	}
	cap_drop(n->cs, s->clist, m->slot);
	bank_uncharge(n->cs, m->bank, CAP_CHARGE_MAPPING, 0);
	m->used = false;
	n->nmaps_used--;
}

static void send_event(struct node *n, struct session *s, int kind,
                       uint64_t mapping)
{
	Capdsm__Reply r = CAPDSM__REPLY__INIT;
	Capdsm__Event ev = CAPDSM__EVENT__INIT;

	ev.kind = kind;
	ev.mapping = mapping;
	r.event = &ev;
	node_send_reply(n, s, &r, NULL, 0, -1);
}

/* After anything that may revoke: every mapping whose capability is gone
 * is write-protected at once and its holder told to unmap (C2 reaching the
 * mapped path). */
void node_check_mappings(struct node *n)
{
	node_cluster_check_exports(n);
	for (uint32_t i = 0; i < n->cfg.mappings; i++) {
		struct mapping *m = &n->maps[i];
		struct session *s;

		if (!m->used || m->revoked)
			continue;
		s = &n->sessions[m->session];
		if (cap_check(n->cs, s->clist, m->slot, CAP_KIND_DATA, m->rights,
		              NULL) == 0)
			continue;
		m->revoked = true;
		n->ct.mappings_revoked++;
		log_info("mapping revoked", "session=%u pid=%d mapping=0x%" PRIx64,
		         m->session, (int)s->pid, m->id);
		if (m->committed)
			node_pager_revoke(n, s, m);
		send_event(n, s, CAPDSM__EVENT__KIND__MAPPING_REVOKED, m->id);
	}
}

/* ---- session life ---- */

void node_lock_granted(void *ctx, const struct coh_lock_req *r)
{
	struct node *n = ctx;
	struct session *s;
	Capdsm__Reply rep = CAPDSM__REPLY__INIT;

	if (r->owner & NODE_REMOTE_OWNER)
		return node__remote_granted(n, r);
	s = &n->sessions[r->owner];

	if (!s->used)
		return;
	s->lock_waiting = false;
	if (n->stopping) {
		/* Holders are being released only because the node stops; the
		 * waiter must not think it got the lock. */
		node_send_error(n, s, r->tag, -ESHUTDOWN, "node is shutting down");
		return;
	}
	n->ct.locks_granted++;
	rep.id = r->tag;
	send_ok(n, s, &rep);
}

void node_session_release(struct node *n, struct session *s)
{
	node_cluster_session_closed(n, s);
	coh_lock_release_owner(n->locks, node_sid(n, s), node_lock_granted, n);
	while (s->maps != NODE_NIL)
		mapping_free(n, s, &n->maps[s->maps]);
	if (s->proc_oid)
		cap_obj_destroy(n->cs, s->proc_oid);
	if (s->clist != CAP_NONE)
		cap_clist_destroy(n->cs, s->clist);
	s->clist = CAP_NONE;
	s->proc_oid = 0;
	node_cluster_release_imports(n);
}

/* ---- the requests ---- */

static void do_hello(struct node *n, struct session *s, uint64_t id,
                     const Capdsm__Hello *h, Capdsm__Reply *r)
{
	uint64_t bank = cap_space_root_bank(n->cs);
	struct cap_sturdy ref;
	struct cap_info ci;
	uint32_t slot = CAP_NONE;
	int rc;

	if (s->hello)
		return node_send_error(n, s, id, -EPROTO, "hello sent twice");
	if (h->version != 1)
		return node_send_error(n, s, id, -EPROTONOSUPPORT,
		                       "protocol version %u not supported (1 is)",
		                       h->version);
	rc = cap_clist_create(n->cs, bank, &s->clist);
	if (rc)
		return node_send_error(n, s, id, rc, "c-list: %s", cap_reason(n, rc));
	if (h->bank_ref && h->bank_ref[0]) {
		rc = cap_sturdy_parse(h->bank_ref, &ref);
		if (!rc)
			rc = cap_import(n->cs, s->clist, &ref, &slot);
		if (!rc)
			rc = cap_check(n->cs, s->clist, slot, CAP_KIND_BANK,
			               CAP_R_WRITE, &ci);
		if (rc)
			goto fail;
		bank = ci.oid;
		cap_clist_set_bank(n->cs, s->clist, bank);
	}
	rc = cap_obj_create(n->cs, CAP_KIND_PROCESS, bank, 0, s, &s->proc_oid);
	if (rc)
		goto fail;
	rc = cap_mint(n->cs, s->clist, s->proc_oid, CAP_R_MAP | CAP_R_GRANT,
	              &s->proc_slot);
	if (rc)
		goto fail;
	s->bank = bank;
	s->hello = true;
	r->process_slot = s->proc_slot;
	r->slot = slot;
	r->size = max_payload(n); /* the client sizes its frames by it */
	return send_ok(n, s, r);
fail:
	if (s->proc_oid)
		cap_obj_destroy(n->cs, s->proc_oid);
	s->proc_oid = 0;
	cap_clist_destroy(n->cs, s->clist);
	s->clist = CAP_NONE;
	node_send_error(n, s, id, rc, "hello: bank reference: %s",
	                cap_reason(n, rc));
}

/* The bank named by a slot (bank capability with write) or the session's. */
static int bank_of_slot(struct node *n, struct session *s, uint32_t slot,
                        uint64_t *bank)
{
	struct cap_info ci;
	int rc;

	if (slot == ANY_SLOT) {
		*bank = s->bank;
		return 0;
	}
	rc = cap_check(n->cs, s->clist, slot, CAP_KIND_BANK, CAP_R_WRITE, &ci);
	if (!rc)
		*bank = ci.oid;
	return rc;
}

static void do_object_create(struct node *n, struct session *s, uint64_t id,
                             const Capdsm__ObjectCreate *oc, Capdsm__Reply *r)
{
	uint64_t bank, oid;
	uint64_t pages;
	struct dobj *d = NULL;
	char name[32];
	int rc;

	rc = bank_of_slot(n, s, oc->bank, &bank);
	if (rc)
		return node_send_error(n, s, id, rc, "bank: %s", cap_reason(n, rc));
	if (oc->size == 0 || oc->size > (uint64_t)n->cfg.frames * PAGE)
		return node_send_error(n, s, id, -EINVAL,
		                       "size must be 1..%" PRIu64 " bytes",
		                       (uint64_t)n->cfg.frames * PAGE);
	pages = (oc->size + PAGE - 1) / PAGE;
	if (n->frames_used + pages > n->cfg.frames)
		return node_send_error(n, s, id, -ENOSPC,
		                       "page frame pool full: %u of %u frames in use, "
		                       "%" PRIu64 " more needed", n->frames_used,
		                       n->cfg.frames, pages);
	for (uint32_t i = 0; i < n->cfg.objects; i++)
		if (!n->dobjs[i].used) {
			d = &n->dobjs[i];
			break;
		}
	if (!d)
		return node_send_error(n, s, id, -ENOSPC, "object pool full");
	/* Charge first: over quota must leave everything as it was. */
	rc = cap_obj_create(n->cs, CAP_KIND_DATA, bank, pages * PAGE, d, &oid);
	if (rc)
		return node_send_error(n, s, id, rc, "object create: %s",
		                       cap_reason(n, rc));
	snprintf(name, sizeof name, "capdsm-obj-%" PRIx64, oid);
	rc = dobj_memory(d, pages, name);
	if (rc) {
		cap_obj_destroy(n->cs, oid); /* d is not in use: on_destroy skips */
		return node_send_error(n, s, id, rc, "object memory: %s",
		                       strerror(-rc));
	}
	d->used = true;
	d->maps = NODE_NIL;
	d->size = oc->size;
	d->pages = (uint32_t)pages;
	d->oid = oid;
	d->home = n->cfg.node_id;
	d->home_oid = oid;
	d->coherent = false;
	n->frames_used += d->pages;
	n->nobjs_used++;
	rc = node_cluster_object(n, d);
	if (rc) {
		cap_obj_destroy(n->cs, oid);
		return node_send_error(n, s, id, rc, "object create: coherence "
		                       "page pool full");
	}
	rc = cap_mint(n->cs, s->clist, oid, CAP_R_ALL, &r->slot);
	if (rc) {
		cap_obj_destroy(n->cs, oid); /* frees d through on_destroy */
		return node_send_error(n, s, id, rc, "object create: %s",
		                       cap_reason(n, rc));
	}
	log_debug("object created", "oid=0x%" PRIx64 " size=%" PRIu64 " bank=0x%"
	          PRIx64, oid, oc->size, bank);
	return send_ok(n, s, r);
}

/* Destroying an object takes a capability with every right: only its
 * creator's, or one passed on unattenuated, may end it for everyone. Every
 * capability to it is revoked, every mapping loses it, its file is emptied
 * and its charge returns to the bank that paid. */
static void do_object_destroy(struct node *n, struct session *s, uint64_t id,
                              const Capdsm__CapSlot *cs_, Capdsm__Reply *r)
{
	struct cap_info ci;
	int rc = cap_check(n->cs, s->clist, cs_->slot, CAP_KIND_DATA, CAP_R_ALL,
	                   &ci);

	if (rc == -EPERM)
		return node_send_error(n, s, id, rc, "object destroy: needs a "
		                       "capability with every right");
	if (rc)
		return node_send_error(n, s, id, rc, "object destroy: %s",
		                       cap_reason(n, rc));
	int home = remote_home(n, s, cs_->slot);
	if (home >= 0)
		return node_send_error(n, s, id, -EREMOTE, "object destroy: the "
		                       "object lives on node %d; destroy it there",
		                       home);
	rc = cap_obj_destroy(n->cs, ci.oid);
	if (rc)
		return node_send_error(n, s, id, rc, "object destroy: %s",
		                       cap_reason(n, rc));
	node_check_mappings(n);
	send_ok(n, s, r);
}

/* The local stand-in for another node's object: its file caches the pages
 * this node holds (frames from the remote_frames pool, taken as pages
 * arrive), and coherence knows its pages under their global id. One proxy
 * serves every import of the object; it is charged to the root bank. */
struct dobj *node__proxy(struct node *n, uint32_t home, uint64_t home_oid,
                         uint64_t size, int *rc)
{
	struct dobj *d = NULL;
	uint64_t oid, pages = (size + PAGE - 1) / PAGE;
	char name[48];

	for (uint32_t i = 0; i < n->cfg.objects; i++) {
		struct dobj *x = &n->dobjs[i];
		if (x->used && x->home == home && x->home_oid == home_oid)
			return x;
		if (!x->used && !d)
			d = x;
	}
	*rc = 0;
	if (!d || size == 0 || pages > UINT32_MAX) {
		*rc = d ? -EINVAL : -ENOSPC;
		return NULL;
	}
	*rc = cap_obj_create(n->cs, CAP_KIND_DATA, cap_space_root_bank(n->cs), 0,
	                     d, &oid);
	if (*rc)
		return NULL;
	snprintf(name, sizeof name, "capdsm-proxy-%u-%" PRIx64, home, home_oid);
	*rc = dobj_memory(d, pages, name);
	if (*rc) {
		cap_obj_destroy(n->cs, oid);
		return NULL;
	}
	d->used = true;
	d->maps = NODE_NIL;
	d->size = size;
	d->pages = (uint32_t)pages;
	d->oid = oid;
	d->home = home;
	d->home_oid = home_oid;
	d->coherent = false;
	n->nobjs_used++;
	/* A proxy reserves no frames of this node's pool: remote pages count
	 * against pools.remote_frames as they arrive. */
	*rc = node_cluster_object(n, d);
	if (*rc) {
		cap_obj_destroy(n->cs, oid);
		return NULL;
	}
	return d;
}

/* A data object capability with `need`, and [off, off+len) inside it. */
static int check_range(struct node *n, struct session *s, uint32_t slot,
                       uint32_t need, uint64_t off, uint64_t len,
                       struct dobj **out, const char **why)
{
	struct cap_info ci;
	struct dobj *d;
	int rc = cap_check(n->cs, s->clist, slot, CAP_KIND_DATA, need, &ci);

	if (rc) {
		*why = cap_reason(n, rc);
		return rc;
	}
	d = dobj_of(n, ci.oid);
	if (!d) {
		*why = "object is gone";
		return -EKEYREVOKED;
	}
	if (off > d->size || len > d->size - off) {
		*why = "range outside the object";
		return -ERANGE;
	}
	*out = d;
	return 0;
}

static void do_read(struct node *n, struct session *s, uint64_t id,
                    const Capdsm__Rw *rw, Capdsm__Reply *r)
{
	struct dobj *d;
	const char *why;
	int rc = check_range(n, s, rw->slot, CAP_R_READ, rw->offset, rw->length,
	                     &d, &why);

	if (rc)
		return node_send_error(n, s, id, rc, "read: %s", why);
	if (rw->length > max_payload(n))
		return node_send_error(n, s, id, -EMSGSIZE,
		                       "read: at most %u bytes per request",
		                       max_payload(n));
	n->ct.bytes_read += rw->length;
	if (d->coherent) {
		s->op.active = true;
		s->op.write = false;
		s->op.id = id;
		s->op.dobj = (uint32_t)(d - n->dobjs);
		s->op.off = rw->offset;
		s->op.len = rw->length;
		return node_cluster_rw(n, s);
	}
	node_send_reply(n, s, r, d->base + rw->offset, (uint32_t)rw->length, -1);
}

/* A write's message has arrived; its payload follows in the stream. Check
 * everything now, then either stream the payload straight into the
 * object's memory or drain it and answer with the error. */
static void begin_write(struct node *n, struct session *s, uint64_t id,
                        const Capdsm__Rw *rw)
{
	struct dobj *d;
	const char *why = "";
	int rc;

	s->pl_id = id;
	s->pl_left = s->hdr.payload_len;
	s->pl_status = 0;
	s->op.write = false;
	if (rw->length != s->hdr.payload_len) {
		rc = -EPROTO;
		why = "length differs from the payload";
	} else {
		rc = check_range(n, s, rw->slot, CAP_R_WRITE, rw->offset,
		                 rw->length, &d, &why);
	}
	if (rc) {
		s->pl_status = rc;
		snprintf(s->pl_err, sizeof s->pl_err, "write: %s", why);
		s->rd = RD_DRAIN;
	} else if (d->coherent && rw->length > max_payload(n)) {
		s->pl_status = -EMSGSIZE;
		snprintf(s->pl_err, sizeof s->pl_err,
		         "write: at most %u bytes per request", max_payload(n));
		s->rd = RD_DRAIN;
	} else if (d->coherent) {
		/* Staged, then written page by page as each is held. */
		s->op.active = false;
		s->op.write = true;
		s->op.id = id;
		s->op.dobj = (uint32_t)(d - n->dobjs);
		s->op.off = rw->offset;
		s->op.len = rw->length;
		s->pl_oid = d->oid;
		s->pl_dst = s->stage;
		s->rd = RD_PAYLOAD;
	} else {
		s->pl_oid = d->oid;
		s->pl_dst = d->base + rw->offset;
		s->rd = RD_PAYLOAD;
	}
	if (s->pl_left == 0) {
		s->rd = RD_HDR;
		node_on_payload_done(n, s);
	}
}

void node_on_payload_done(struct node *n, struct session *s)
{
	Capdsm__Reply r = CAPDSM__REPLY__INIT;

	if (s->pl_status)
		return node_send_error(n, s, s->pl_id, s->pl_status, "%s",
		                       s->pl_err);
	if (n->clustered && s->op.write && s->op.id == s->pl_id &&
	    s->pl_dst == s->stage + s->op.len) {
		s->op.active = true;
		return node_cluster_rw(n, s);
	}
	r.id = s->pl_id;
	send_ok(n, s, &r);
}

static void do_lock(struct node *n, struct session *s, uint64_t id,
                    const Capdsm__Lock *l, bool unlock, Capdsm__Reply *r)
{
	struct dobj *d;
	const char *why;
	int rc = check_range(n, s, l->slot, CAP_R_LOCK, l->offset, l->length,
	                     &d, &why);

	if (rc)
		return node_send_error(n, s, id, rc, "%s: %s",
		                       unlock ? "unlock" : "lock", why);
	if (l->length == 0)
		return node_send_error(n, s, id, -EINVAL, "empty lock range");
	if (d->home != n->cfg.node_id)
		return node_cluster_lock(n, s, id, d, l->offset, l->length,
		                         l->exclusive, l->try_only, unlock);
	if (unlock) {
		rc = coh_lock_release(n->locks, node_sid(n, s), d->oid, l->offset,
		                      l->length, node_lock_granted, n);
		if (rc)
			return node_send_error(n, s, id, rc,
			                       "unlock: no lock held on that range");
		return send_ok(n, s, r);
	}
	struct coh_lock_req q = {
		.oid = d->oid,
		.offset = l->offset,
		.length = l->length,
		.exclusive = l->exclusive,
		.owner = node_sid(n, s),
		.tag = id,
	};
	rc = coh_lock_acquire(n->locks, &q, l->try_only);
	if (rc < 0) {
		const char *m = rc == -EAGAIN ? "range is locked"
		              : rc == -EDEADLK ? "caller already holds a conflicting lock"
		              : rc == -ENOSPC ? "lock table full"
		                               : strerror(-rc);
		return node_send_error(n, s, id, rc, "lock: %s", m);
	}
	if (rc == 1) {
		s->lock_waiting = true;
		n->ct.locks_waited++;
		return; /* the reply comes with the grant */
	}
	n->ct.locks_granted++;
	send_ok(n, s, r);
}

static void do_map(struct node *n, struct session *s, uint64_t id,
                   const Capdsm__Map *mp, Capdsm__Reply *r)
{
	struct cap_info pi;
	struct dobj *d;
	struct mapping *m = NULL;
	const char *why;
	uint32_t want = mp->rights;
	int rc;

	rc = cap_check(n->cs, s->clist, mp->process, CAP_KIND_PROCESS, CAP_R_MAP,
	               &pi);
	if (rc)
		return node_send_error(n, s, id, rc, "map: process: %s",
		                       cap_reason(n, rc));
	if (pi.oid != s->proc_oid)
		return node_send_error(n, s, id, -EXDEV,
		                       "map: only the caller's own process can be "
		                       "mapped into");
	if (want != CAP_R_READ && want != (CAP_R_READ | CAP_R_WRITE))
		return node_send_error(n, s, id, -EINVAL,
		                       "map: rights must be read or read,write");
	if (mp->offset % PAGE || mp->length % PAGE || mp->length == 0)
		return node_send_error(n, s, id, -EINVAL,
		                       "map: offset and length must be page aligned");
	rc = check_range(n, s, mp->slot, want | CAP_R_MAP, 0, 0, &d, &why);
	if (rc)
		return node_send_error(n, s, id, rc, "map: %s", why);
	if (mp->offset > (uint64_t)d->pages * PAGE ||
	    mp->length > (uint64_t)d->pages * PAGE - mp->offset)
		return node_send_error(n, s, id, -ERANGE,
		                       "map: range outside the object");
	for (uint32_t i = 0; i < n->cfg.mappings; i++)
		if (!n->maps[i].used) {
			m = &n->maps[i];
			break;
		}
	if (!m)
		return node_send_error(n, s, id, -ENOSPC, "map: mapping pool full");
	rc = bank_charge(n->cs, s->bank, CAP_CHARGE_MAPPING, 0);
	if (rc)
		return node_send_error(n, s, id, rc, "map: %s", cap_reason(n, rc));
	uint32_t slot;
	rc = cap_restrict(n->cs, s->clist, mp->slot, want | CAP_R_MAP, &slot);
	if (rc) {
		bank_uncharge(n->cs, s->bank, CAP_CHARGE_MAPPING, 0);
		return node_send_error(n, s, id, rc, "map: %s", cap_reason(n, rc));
	}
	uint32_t idx = (uint32_t)(m - n->maps);
	uint32_t gen = (uint32_t)(m->id >> 32) + 1;
	*m = (struct mapping){
		.used = true,
		.session = node_sid(n, s),
		.next = s->maps,
		.dobj = (uint32_t)(d - n->dobjs),
		.next_obj = d->maps,
		.seq_next = UINT64_MAX,
		.pf_mark = UINT64_MAX,
		.id = ((uint64_t)gen << 32) | idx,
		.oid = d->oid,
		.slot = slot,
		.rights = want | CAP_R_MAP,
		.offset = mp->offset,
		.length = mp->length,
		.bank = s->bank,
		.uffd = -1,
	};
	s->maps = idx;
	d->maps = idx;
	n->nmaps_used++;
	r->mapping = m->id;
	r->size = d->size;
	r->slot = slot;
	/* A read-only mapping gets a read-only file: the kernel itself then
	 * refuses PROT_WRITE, mprotect and write(2) on it. */
	node_send_reply(n, s, r, NULL, 0, (want & CAP_R_WRITE) ? d->memfd : d->rofd);
}

/* The descriptor must be a userfaultfd: anything else is refused rather
 * than read from. */
static bool is_userfaultfd(int fd)
{
	char path[64], target[64];
	ssize_t k;

	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	k = readlink(path, target, sizeof target - 1);
	if (k <= 0)
		return false;
	target[k] = '\0';
	return strstr(target, "userfaultfd") != NULL;
}

static void do_map_commit(struct node *n, struct session *s, uint64_t id,
                          const Capdsm__MapCommit *mc, Capdsm__Reply *r)
{
	struct mapping *m = mapping_get(n, s, mc->mapping);
	int fd = s->rxfd;

	s->rxfd = -1;
	int rc = 0;
	const char *why = NULL;

	if (!m) {
		rc = -ENOENT;
		why = "no such mapping";
	} else if (fd < 0 || !is_userfaultfd(fd)) {
		rc = -EBADF;
		why = "map commit needs the mapping's userfaultfd";
	} else if (m->committed || mc->address % PAGE || mc->address == 0 ||
	           mc->address + m->length < mc->address) {
		rc = -EINVAL;
		why = "bad mapping address";
	}
	if (rc) {
		if (fd >= 0)
			close(fd);
		return node_send_error(n, s, id, rc, "%s", why);
	}
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	m->uffd = fd;
	if (node_watch_uffd(n, m) != 0) {
		close(fd);
		m->uffd = -1;
		return node_send_error(n, s, id, -EIO, "map commit: epoll failed");
	}
	m->addr = mc->address;
	m->committed = true;
	send_ok(n, s, r);
}

static void do_unmap(struct node *n, struct session *s, uint64_t id,
                     const Capdsm__Unmap *u, Capdsm__Reply *r)
{
	struct mapping *m = mapping_get(n, s, u->mapping);

	if (!m)
		return node_send_error(n, s, id, -ENOENT, "no such mapping");
	mapping_free(n, s, m);
	send_ok(n, s, r);
}

static void do_stats(struct node *n, struct session *s, Capdsm__Reply *r)
{
	struct cap_stats cst;
	Capdsm__Counter c[64], *cp[64];
	size_t k = 0;

	cap_space_stats(n->cs, &cst);
#define C(nm, v) do { \
		capdsm__counter__init(&c[k]); \
		c[k].name = (char *)(nm); \
		c[k].value = (uint64_t)(v); \
		cp[k] = &c[k]; \
		k++; \
	} while (0)
	C("node_id", n->cfg.node_id);
	C("sessions_used", n->nsessions_used);
	C("sessions_max", n->cfg.clients);
	C("sessions_opened", n->ct.sessions_opened);
	C("sessions_refused", n->ct.sessions_refused);
	C("objects_used", cst.objects_used);
	C("objects_max", cst.objects_max);
	C("data_objects_used", n->nobjs_used);
	C("caps_used", cst.caps_used);
	C("caps_max", cst.caps_max);
	C("sturdy_used", cst.sturdy_used);
	C("sturdy_max", cst.sturdy_max);
	C("revocations", cst.revocations);
	C("mappings_used", n->nmaps_used);
	C("mappings_max", n->cfg.mappings);
	C("mappings_revoked", n->ct.mappings_revoked);
	C("locks_used", coh_lock_used(n->locks));
	C("locks_granted_now", coh_lock_granted(n->locks));
	C("locks_max", n->cfg.locks);
	C("locks_granted", n->ct.locks_granted);
	C("locks_waited", n->ct.locks_waited);
	C("frames_used", n->frames_used);
	C("frames_max", n->cfg.frames);
	C("faults_missing", n->ct.faults_missing);
	C("faults_minor", n->ct.faults_minor);
	C("faults_wp", n->ct.faults_wp);
	C("faults_refused", n->ct.faults_refused);
	C("requests", n->ct.requests);
	C("errors", n->ct.errors);
	C("bytes_read", n->ct.bytes_read);
	C("bytes_written", n->ct.bytes_written);
	if (n->clustered) {
		struct coh_stats co;
		struct tp_stats ts;
		coh_get_stats(n->coh, &co);
		tp_stats(n->tp, &ts);
		uint32_t up = 0;
		for (uint32_t p = 0; p < n->cfg.nodes; p++)
			up += p != n->cfg.node_id && tp_peer_alive(n->tp, p);
		C("cluster_nodes", n->cfg.nodes);
		C("peers_up", up);
		C("remote_frames_used", n->remote_frames);
		C("remote_frames_max", n->cfg.remote_frames);
		C("coh_requests", co.requests);
		C("coh_hits", co.hits);
		C("coh_msgs_in", co.msgs_in);
		C("coh_msgs_out", co.msgs_out);
		C("coh_failed_hostdown", co.failed_hostdown);
		C("prefetch_asked", n->ct.prefetch_asked);
		C("prefetch_mapped", n->ct.prefetch_mapped);
		C("peer_msgs_in", n->peer_ct_in);
		C("peer_msgs_out", n->peer_ct_out);
		C("peer_msgs_bad", n->peer_ct_bad);
		C("peers_down", ts.peers_down);
		C("peer_auth_failures", ts.auth_failures);
	}
#undef C
	r->n_counters = k;
	r->counters = cp;
	send_ok(n, s, r);
}

static void do_cap(struct node *n, struct session *s, uint64_t id,
                   const Capdsm__Request *q, Capdsm__Reply *r)
{
	struct cap_sturdy ref;
	struct cap_info ci;
	char text[CAP_STURDY_TEXT_MAX];
	Capdsm__CapInfo info = CAPDSM__CAP_INFO__INIT;
	const char *what = "capability";
	int rc = 0, home;

	switch (q->body_case) {
	case CAPDSM__REQUEST__BODY_CAP_RESTRICT:
		what = "restrict";
		if (q->cap_restrict->rights == 0 ||
		    q->cap_restrict->rights & ~(uint32_t)CAP_R_ALL) {
			rc = -EINVAL;
		} else if (q->cap_restrict->export &&
		           (home = remote_home(n, s, q->cap_restrict->slot)) >= 0) {
			return node_send_error(n, s, id, -EREMOTE, "restrict: the "
			                       "object lives on node %d: a reference "
			                       "names its home, make it there", home);
		} else if (q->cap_restrict->export) {
			/* Widening is checked first, so it reads as EPERM
			 * whatever the grant right says. */
			rc = cap_check(n->cs, s->clist, q->cap_restrict->slot,
			               CAP_KIND_NONE, q->cap_restrict->rights, NULL);
			if (rc == -EPERM)
				return node_send_error(n, s, id, rc, "restrict: rights "
				                       "can only shrink: the capability "
				                       "lacks some of those asked");
			if (!rc &&
			    cap_check(n->cs, s->clist, q->cap_restrict->slot,
			              CAP_KIND_NONE, CAP_R_GRANT, NULL) == -EPERM)
				return node_send_error(n, s, id, -EPERM, "restrict: a "
				                       "reference can only be made from a "
				                       "capability with grant");
			if (!rc)
				rc = cap_export_rights(n->cs, s->clist,
				                       q->cap_restrict->slot,
				                       q->cap_restrict->rights, &ref);
			if (!rc)
				rc = cap_sturdy_format(&ref, text, sizeof text);
			r->ref = text;
		} else {
			rc = cap_restrict(n->cs, s->clist, q->cap_restrict->slot,
			                  q->cap_restrict->rights, &r->slot);
			if (rc == -EPERM)
				return node_send_error(n, s, id, rc, "restrict: rights "
				                       "can only shrink: the capability "
				                       "lacks some of those asked");
		}
		break;
	case CAPDSM__REQUEST__BODY_CAP_REVOKE:
		what = "revoke";
		rc = cap_revoke(n->cs, s->clist, q->cap_revoke->slot);
		if (!rc)
			node_check_mappings(n);
		break;
	case CAPDSM__REQUEST__BODY_CAP_DROP:
		what = "drop";
		rc = cap_drop(n->cs, s->clist, q->cap_drop->slot);
		if (!rc) {
			node_check_mappings(n);
			node_cluster_release_imports(n);
		}
		break;
	case CAPDSM__REQUEST__BODY_CAP_SHOW:
		what = "show";
		rc = cap_check(n->cs, s->clist, q->cap_show->slot, CAP_KIND_NONE, 0,
		               &ci);
		if (!rc) {
			struct dobj *d = ci.kind == CAP_KIND_DATA ? dobj_of(n, ci.oid)
			                                          : NULL;
			info.oid = ci.oid;
			info.kind = ci.kind;
			info.rights = ci.rights;
			info.depth = ci.depth;
			info.size = d ? d->size : 0;
			r->cap = &info;
		}
		break;
	case CAPDSM__REQUEST__BODY_CAP_EXPORT:
		what = "export";
		if ((home = remote_home(n, s, q->cap_export->slot)) >= 0)
			return node_send_error(n, s, id, -EREMOTE, "export: the object "
			                       "lives on node %d: a reference names its "
			                       "home, make it there", home);
		rc = cap_export(n->cs, s->clist, q->cap_export->slot, &ref);
		if (!rc)
			rc = cap_sturdy_format(&ref, text, sizeof text);
		r->ref = text;
		break;
	case CAPDSM__REQUEST__BODY_CAP_IMPORT:
		what = "import";
		rc = cap_sturdy_parse(q->cap_import->ref, &ref);
		if (!rc && ref.node != n->cfg.node_id && n->clustered)
			return node_cluster_import(n, s, id, q->cap_import->ref,
			                           ref.node);
		if (!rc && ref.node != n->cfg.node_id)
			rc = -EREMOTE;
		if (!rc)
			rc = cap_import(n->cs, s->clist, &ref, &r->slot);
		break;
	case CAPDSM__REQUEST__BODY_CAP_REVOKE_REF:
		what = "revoke";
		rc = cap_sturdy_parse(q->cap_revoke_ref->ref, &ref);
		if (!rc && ref.node != n->cfg.node_id)
			rc = -EREMOTE;
		if (!rc)
			rc = cap_revoke_sturdy(n->cs, &ref);
		if (!rc)
			node_check_mappings(n);
		break;
	default:
		rc = -EPROTO;
	}
	if (rc == -EREMOTE)
		return node_send_error(n, s, id, rc,
		                       "%s: reference names node %u, this is node %u",
		                       what, ref.node, n->cfg.node_id);
	if (rc)
		return node_send_error(n, s, id, rc, "%s: %s", what, cap_reason(n, rc));
	send_ok(n, s, r);
}

static void do_send(struct node *n, struct session *s, uint64_t id,
                    const Capdsm__CapSend *cs_, Capdsm__Reply *r)
{
	struct cap_info pi;
	enum cap_kind k;
	void *priv;
	struct session *t;
	uint32_t slot;
	int rc;

	rc = cap_check(n->cs, s->clist, cs_->process, CAP_KIND_PROCESS, 0, &pi);
	if (rc)
		return node_send_error(n, s, id, rc, "send: process: %s",
		                       cap_reason(n, rc));
	if (cap_obj_get(n->cs, pi.oid, &k, &priv) != 0 || !priv)
		return node_send_error(n, s, id, -ESRCH, "send: process is gone");
	t = priv;
	if (t->in_count == NODE_INBOX)
		return node_send_error(n, s, id, -ENOSPC,
		                       "send: receiver's inbox is full");
	rc = cap_transfer(n->cs, s->clist, cs_->slot, t->clist, cs_->rights, &slot);
	if (rc)
		return node_send_error(n, s, id, rc, "send: %s", cap_reason(n, rc));
	if (t->recv_waiting) {
		Capdsm__Reply tr = CAPDSM__REPLY__INIT;
		t->recv_waiting = false;
		tr.id = t->recv_id;
		tr.slot = slot;
		send_ok(n, t, &tr);
	} else {
		t->inbox[(t->in_head + t->in_count++) % NODE_INBOX] = slot;
	}
	send_ok(n, s, r);
}

static void do_recv(struct node *n, struct session *s, uint64_t id,
                    Capdsm__Reply *r)
{
	if (s->in_count == 0) {
		s->recv_waiting = true;
		s->recv_id = id;
		return;
	}
	r->slot = s->inbox[s->in_head];
	s->in_head = (s->in_head + 1) % NODE_INBOX;
	s->in_count--;
	send_ok(n, s, r);
}

static void do_bank(struct node *n, struct session *s, uint64_t id,
                    const Capdsm__Request *q, Capdsm__Reply *r)
{
	struct cap_info ci;
	struct bank_info bi;
	Capdsm__BankInfo info = CAPDSM__BANK_INFO__INIT;
	uint64_t parent, bank;
	int rc;

	switch (q->body_case) {
	case CAPDSM__REQUEST__BODY_BANK_CREATE:
		rc = bank_of_slot(n, s, q->bank_create->parent, &parent);
		if (!rc)
			rc = bank_create(n->cs, parent, q->bank_create->limit_bytes,
			                 q->bank_create->limit_objects, &bank);
		if (!rc) {
			rc = cap_mint(n->cs, s->clist, bank, CAP_R_ALL, &r->slot);
			if (rc)
				bank_destroy(n->cs, bank);
		}
		if (rc)
			return node_send_error(n, s, id, rc, "bank create: %s",
			                       cap_reason(n, rc));
		break;
	case CAPDSM__REQUEST__BODY_BANK_SHOW:
		rc = cap_check(n->cs, s->clist, q->bank_show->slot, CAP_KIND_BANK,
		               CAP_R_READ, &ci);
		if (!rc)
			rc = bank_info(n->cs, ci.oid, &bi);
		if (rc)
			return node_send_error(n, s, id, rc, "bank show: %s",
			                       cap_reason(n, rc));
		info.oid = bi.oid;
		info.parent = bi.parent;
		info.limit_bytes = bi.limit_bytes;
		info.limit_objects = bi.limit_objects;
		info.used_bytes = bi.used_bytes;
		info.used_objects = bi.used_objects;
		info.children = bi.children;
		r->bank = &info;
		break;
	case CAPDSM__REQUEST__BODY_BANK_DESTROY:
		rc = cap_check(n->cs, s->clist, q->bank_destroy->slot, CAP_KIND_BANK,
		               CAP_R_WRITE, &ci);
		if (rc)
			return node_send_error(n, s, id, rc, "bank destroy: %s",
			                       cap_reason(n, rc));
		rc = bank_destroy(n->cs, ci.oid);
		if (rc)
			return node_send_error(n, s, id, rc, "bank destroy: %s",
			                       rc == -EPERM ? "the root bank cannot be "
			                                      "destroyed"
			                                    : cap_reason(n, rc));
		node_check_mappings(n);
		break;
	default:
		return node_send_error(n, s, id, -EPROTO, "bad bank request");
	}
	send_ok(n, s, r);
}

/* The protobuf-c allocator over the session's arena: decoding a hostile
 * message can use at most NODE_ARENA bytes, then fails cleanly. */
static void *arena_alloc(void *data, size_t size)
{
	struct session *s = data;
	size_t at = (s->arena_used + 15) & ~(size_t)15;

	if (size > NODE_ARENA || at > NODE_ARENA - size)
		return NULL;
	s->arena_used = at + size;
	return s->arena + at;
}

static void arena_free(void *data, void *p)
{
	(void)data;
	(void)p;
}

void node_on_frame(struct node *n, struct session *s)
{
	ProtobufCAllocator al = {
		.alloc = arena_alloc,
		.free = arena_free,
		.allocator_data = s,
	};
	Capdsm__Request *q;
	Capdsm__Reply r = CAPDSM__REPLY__INIT;
	uint64_t id;

	n->ct.requests++;
	s->arena_used = 0;
	q = capdsm__request__unpack(&al, s->hdr.msg_len, s->msg);
	if (!q) {
		/* The frame was whole, so the stream is still in step: answer
		 * and carry on after draining any payload. */
		s->pl_id = 0;
		s->pl_left = s->hdr.payload_len;
		s->pl_status = -EBADMSG;
		snprintf(s->pl_err, sizeof s->pl_err, "malformed request message");
		s->rd = RD_DRAIN;
		if (s->pl_left == 0) {
			s->rd = RD_HDR;
			node_on_payload_done(n, s);
		}
		goto out;
	}
	id = q->id;
	r.id = id;
	if (s->op.active || s->remote_wait) {
		/* One request at a time: the one in progress answers first. */
		s->pl_id = id;
		s->pl_left = s->hdr.payload_len;
		s->pl_status = -EBUSY;
		snprintf(s->pl_err, sizeof s->pl_err,
		         "a request of this connection is still in progress");
		s->rd = RD_DRAIN;
		if (s->pl_left == 0) {
			s->rd = RD_HDR;
			node_on_payload_done(n, s);
		}
		goto out;
	}
	if (s->rxfd >= 0 && q->body_case != CAPDSM__REQUEST__BODY_MAP_COMMIT) {
		close(s->rxfd); /* a descriptor nobody asked for */
		s->rxfd = -1;
		s->pl_id = id;
		s->pl_left = s->hdr.payload_len;
		s->pl_status = -EBADF;
		snprintf(s->pl_err, sizeof s->pl_err,
		         "a descriptor came with a request that takes none");
		s->rd = RD_DRAIN;
		if (s->pl_left == 0) {
			s->rd = RD_HDR;
			node_on_payload_done(n, s);
		}
		goto out;
	}
	if (q->body_case == CAPDSM__REQUEST__BODY_WRITE && s->hello) {
		begin_write(n, s, id, q->write);
		goto out;
	}
	if (s->hdr.payload_len) {
		s->pl_id = id;
		s->pl_left = s->hdr.payload_len;
		s->pl_status = -EPROTO;
		snprintf(s->pl_err, sizeof s->pl_err,
		         "payload not expected with this request");
		s->rd = RD_DRAIN;
		goto out;
	}
	if (!s->hello && q->body_case != CAPDSM__REQUEST__BODY_HELLO) {
		node_send_error(n, s, id, -EPROTO, "hello must come first");
		goto out;
	}
	switch (q->body_case) {
	case CAPDSM__REQUEST__BODY_HELLO:
		do_hello(n, s, id, q->hello, &r);
		break;
	case CAPDSM__REQUEST__BODY_OBJECT_CREATE:
		do_object_create(n, s, id, q->object_create, &r);
		break;
	case CAPDSM__REQUEST__BODY_OBJECT_DESTROY:
		do_object_destroy(n, s, id, q->object_destroy, &r);
		break;
	case CAPDSM__REQUEST__BODY_CAP_RESTRICT:
	case CAPDSM__REQUEST__BODY_CAP_REVOKE:
	case CAPDSM__REQUEST__BODY_CAP_SHOW:
	case CAPDSM__REQUEST__BODY_CAP_DROP:
	case CAPDSM__REQUEST__BODY_CAP_EXPORT:
	case CAPDSM__REQUEST__BODY_CAP_IMPORT:
	case CAPDSM__REQUEST__BODY_CAP_REVOKE_REF:
		do_cap(n, s, id, q, &r);
		break;
	case CAPDSM__REQUEST__BODY_CAP_SEND:
		do_send(n, s, id, q->cap_send, &r);
		break;
	case CAPDSM__REQUEST__BODY_CAP_RECV:
		do_recv(n, s, id, &r);
		break;
	case CAPDSM__REQUEST__BODY_READ:
		do_read(n, s, id, q->read, &r);
		break;
	case CAPDSM__REQUEST__BODY_LOCK:
		do_lock(n, s, id, q->lock, false, &r);
		break;
	case CAPDSM__REQUEST__BODY_UNLOCK:
		do_lock(n, s, id, q->unlock, true, &r);
		break;
	case CAPDSM__REQUEST__BODY_MAP:
		do_map(n, s, id, q->map, &r);
		break;
	case CAPDSM__REQUEST__BODY_MAP_COMMIT:
		do_map_commit(n, s, id, q->map_commit, &r);
		break;
	case CAPDSM__REQUEST__BODY_UNMAP_MAPPING:
		do_unmap(n, s, id, q->unmap_mapping, &r);
		break;
	case CAPDSM__REQUEST__BODY_BANK_CREATE:
	case CAPDSM__REQUEST__BODY_BANK_SHOW:
	case CAPDSM__REQUEST__BODY_BANK_DESTROY:
		do_bank(n, s, id, q, &r);
		break;
	case CAPDSM__REQUEST__BODY_STATS:
		do_stats(n, s, &r);
		break;
	default:
		node_send_error(n, s, id, -EOPNOTSUPP, "unknown request");
		break;
	}
out:
	if (s->rxfd >= 0) {
		close(s->rxfd);
		s->rxfd = -1;
	}
	/* Nothing to free: the arena is reset with the next frame. */
}
