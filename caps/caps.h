/* caps.h — capabilities, c-lists, sturdy references and space banks of one
 * capdsm node.
 *
 * The node's whole authority state lives in one `struct cap_space`, allocated
 * once by cap_space_init() with pools sized by `struct cap_config` and never
 * grown (the design's "fixed resource" claim, after KeyKOS/EROS and seL4's
 * untyped memory). A client never holds a capability itself: it holds an
 * index (a slot) into its c-list, as a Unix process holds file descriptors.
 *
 * Invariants (cited by asserts in caps.c):
 *  C1. Rights only shrink along a derivation: a child's rights are a subset
 *      of its parent's.
 *  C2. Revoking a capability invalidates it and every capability derived from
 *      it (children, imports of its sturdy references, transfers), at once.
 *  C3. Every pool record in use is charged to exactly one bank, and every
 *      charge is also counted against each ancestor of that bank.
 *  C4. A call that fails changes nothing (decode and check, then act).
 *
 * All functions return 0 or a negative errno-style code, never print, never
 * exit. Error codes used throughout:
 *   -EBADF        slot index out of range or empty (e.g. a forged index)
 *   -EKEYREVOKED  the capability (or sturdy reference) was revoked
 *   -EPERM        the capability lacks a right the operation needs, or a
 *                 restrict asked for rights the capability does not have
 *   -ENOTTY       the capability names an object of the wrong kind
 *   -EDQUOT       a bank (or one of its ancestors) is over its limit
 *   -ENOSPC       a fixed pool (objects, caps, slots, banks, sturdy refs) is
 *                 full
 *   -EACCES       a sturdy reference does not exist or its secret is wrong
 *                 (the two are indistinguishable on purpose)
 *   -EINVAL       malformed argument (bad rights string, bad reference text)
 */
#ifndef CAPDSM_CAPS_H
#define CAPDSM_CAPS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Kinds of object a capability can name. */
enum cap_kind {
	CAP_KIND_NONE = 0,
	CAP_KIND_DATA = 1,    /* a lockable data object: read, write, lock, map */
	CAP_KIND_PROCESS = 2, /* a client process: its `map` operation */
	CAP_KIND_BANK = 3,    /* a space bank */
};

/* Rights. A capability's rights are a bit set of these. */
enum cap_right {
	CAP_R_READ = 1u << 0,  /* data: read bytes, map readable; bank: show */
	CAP_R_WRITE = 1u << 1, /* data: write bytes, map writable; bank: spend,
	                        * create sub-banks, destroy */
	CAP_R_LOCK = 1u << 2,  /* data: lock byte ranges */
	CAP_R_MAP = 1u << 3,   /* data: may be mapped; process: map into it */
	CAP_R_GRANT = 1u << 4, /* may be transferred to another process and
	                        * exported as a sturdy reference */
	CAP_R_ALL = 0x1f,
};

/* Charges, in bytes, of one record of each pool (C3). Page frames are
 * charged at CAP_PAGE_SIZE each by the caller through bank_charge(). */
#define CAP_PAGE_SIZE 4096u
#define CAP_CHARGE_SLOT 64u    /* one c-list slot */
#define CAP_CHARGE_OBJECT 256u /* one object record (plus 1 object) */
#define CAP_CHARGE_STURDY 64u  /* one sturdy reference */
#define CAP_CHARGE_MAPPING 128u /* one mapping record (charged by dsm) */

#define CAP_SECRET_LEN 16 /* 128-bit sturdy secret */
#define CAP_NONE UINT32_MAX

/* Pool sizes, fixed at cap_space_init(). */
struct cap_config {
	uint32_t node_id;         /* written into sturdy references */
	uint32_t max_objects;     /* data + process + bank objects */
	uint32_t max_caps;        /* capability records (in slots or sturdy) */
	uint32_t max_clists;      /* c-lists (one per client session) */
	uint32_t slots_per_clist; /* slots in each c-list */
	uint32_t max_sturdy;      /* sturdy references */
	uint64_t root_limit_bytes;   /* limits of the root bank */
	uint64_t root_limit_objects;
	/* Called when an object is destroyed (explicitly or by a bank
	 * destruction), after its capabilities are revoked and before its
	 * record is reused; lets the owner of `priv` release it. May be NULL. */
	void (*on_destroy)(void *ctx, uint64_t oid, enum cap_kind kind,
	                   void *priv);
	void *ctx;
};

struct cap_space;

/* A sturdy reference: names a capability across processes and restarts of
 * the client. Text form: "cdsm1:NODE:OID:SID:SECRET" with OID and SID in
 * 16 hex digits and SECRET in 32 hex digits. */
struct cap_sturdy {
	uint32_t node;
	uint64_t oid; /* object the capability names */
	uint64_t sid; /* sturdy record id (index and generation) */
	uint8_t secret[CAP_SECRET_LEN];
};
#define CAP_STURDY_TEXT_MAX 96

struct cap_info {
	uint64_t oid;
	enum cap_kind kind;
	uint32_t rights;
	uint32_t depth; /* 0 for a capability minted with the object */
};

struct bank_info {
	uint64_t oid;
	uint64_t parent; /* 0 for the root bank */
	uint64_t limit_bytes, limit_objects;
	uint64_t used_bytes, used_objects; /* includes descendants' charges */
	uint32_t children;
};

struct cap_stats {
	uint32_t objects_used, objects_max;
	uint32_t caps_used, caps_max;
	uint32_t clists_used, clists_max;
	uint32_t sturdy_used, sturdy_max;
	uint64_t revocations; /* capability records invalidated by revoke */
};

/* ---- the space ---- */

/* Allocates every pool at once (the only allocation caps/ ever makes).
 * Creates the root bank. Returns 0, -EINVAL (a zero pool size) or -ENOMEM.
 * The caller frees with cap_space_free(). */
int cap_space_init(struct cap_space **out, const struct cap_config *cfg);
void cap_space_free(struct cap_space *cs);
uint64_t cap_space_root_bank(const struct cap_space *cs);
void cap_space_stats(const struct cap_space *cs, struct cap_stats *st);

/* ---- rights ---- */

/* Parses "read,write,lock,map,grant" (any order, comma separated, or "all").
 * Returns 0 or -EINVAL. */
int cap_rights_parse(const char *s, uint32_t *rights);
/* Writes the comma-separated form into buf; returns 0 or -ENOSPC. */
int cap_rights_format(uint32_t rights, char *buf, size_t len);
const char *cap_kind_name(enum cap_kind kind);

/* ---- banks (KeyKOS space banks) ---- */

/* Creates a bank below `parent`; the new bank's own record is charged to
 * `parent` (C3). limit 0 means "no limit of its own" (the ancestors' still
 * apply). Returns 0, -ENOTTY, -EKEYREVOKED, -EDQUOT or -ENOSPC. */
int bank_create(struct cap_space *cs, uint64_t parent, uint64_t limit_bytes,
                uint64_t limit_objects, uint64_t *bank);
/* Destroys a bank, its sub-banks and every object they paid for; every
 * capability to any of them is revoked and every slot and sturdy reference
 * they paid for is freed. The root bank cannot be destroyed (-EPERM). */
int bank_destroy(struct cap_space *cs, uint64_t bank);
/* Charges `bytes` and `objects` to a bank and all its ancestors, or, if any
 * of them would go over its limit, nothing at all (-EDQUOT, C4). */
int bank_charge(struct cap_space *cs, uint64_t bank, uint64_t bytes,
                uint64_t objects);
/* Undoes a charge. Cannot fail; an unknown bank is ignored. */
void bank_uncharge(struct cap_space *cs, uint64_t bank, uint64_t bytes,
                   uint64_t objects);
int bank_info(const struct cap_space *cs, uint64_t bank, struct bank_info *bi);

/* ---- objects ---- */

/* Creates an object of `kind` paid for by `bank`: CAP_CHARGE_OBJECT bytes
 * plus `extra_bytes`, and one object. For CAP_KIND_BANK use bank_create().
 * Returns 0, -EDQUOT, -ENOSPC, -ENOTTY, -EKEYREVOKED. */
int cap_obj_create(struct cap_space *cs, enum cap_kind kind, uint64_t bank,
                   uint64_t extra_bytes, void *priv, uint64_t *oid);
/* Destroys an object: revokes every capability to it, calls on_destroy,
 * uncharges its bank. Returns 0 or -ENOENT. */
int cap_obj_destroy(struct cap_space *cs, uint64_t oid);
/* Returns 0 and the object's private pointer, -ENOENT if it is gone. */
int cap_obj_get(const struct cap_space *cs, uint64_t oid, enum cap_kind *kind,
                void **priv);
/* The bank that pays for an object, or 0 if it is gone. */
uint64_t cap_obj_bank(const struct cap_space *cs, uint64_t oid);

/* ---- c-lists ---- */

/* Creates a c-list whose slots are charged (CAP_CHARGE_SLOT each, when
 * filled) to `bank`. Returns 0, -ENOSPC, -ENOTTY, -EKEYREVOKED. */
int cap_clist_create(struct cap_space *cs, uint64_t bank, uint32_t *clist);
/* Drops every slot and frees the c-list. Capabilities derived from the
 * dropped ones stay valid (they are re-parented, not revoked). */
void cap_clist_destroy(struct cap_space *cs, uint32_t clist);
/* Changes the bank future slots are charged to. */
int cap_clist_set_bank(struct cap_space *cs, uint32_t clist, uint64_t bank);

/* ---- capabilities ---- */

/* Puts a new capability with `rights` to object `oid` into a free slot of
 * `clist`; only the creator of an object does this (depth 0). */
int cap_mint(struct cap_space *cs, uint32_t clist, uint64_t oid,
             uint32_t rights, uint32_t *slot);
/* Checks a slot: it must be filled (-EBADF), valid (-EKEYREVOKED), name an
 * object of `kind` (-ENOTTY; CAP_KIND_NONE accepts any) and hold every right
 * in `need` (-EPERM). On success fills `info` (may be NULL). */
int cap_check(const struct cap_space *cs, uint32_t clist, uint32_t slot,
              enum cap_kind kind, uint32_t need, struct cap_info *info);
/* 1 if any capability derived from the one in `slot` is still held (in any
 * c-list, a sturdy reference's included), 0 if none; -EBADF for an empty
 * slot. A daemon uses it to let go of a capability it holds only as the
 * root of what it handed out (an import from another node) once nothing
 * hangs under it. O(1). */
int cap_derived(const struct cap_space *cs, uint32_t clist, uint32_t slot);
/* Derives a capability with `rights` (a subset: else -EPERM) into a new
 * slot of the same c-list. */
int cap_restrict(struct cap_space *cs, uint32_t clist, uint32_t slot,
                 uint32_t rights, uint32_t *new_slot);
/* Revokes the capability in `slot` and everything derived from it (C2). The
 * slot stays filled and reports -EKEYREVOKED until dropped. */
int cap_revoke(struct cap_space *cs, uint32_t clist, uint32_t slot);
/* Empties a slot. Derived capabilities stay valid. */
int cap_drop(struct cap_space *cs, uint32_t clist, uint32_t slot);
/* Copies a capability (needs CAP_R_GRANT) into another c-list, as a child
 * of the original, with `rights` (subset). */
int cap_transfer(struct cap_space *cs, uint32_t from, uint32_t slot,
                 uint32_t to, uint32_t rights, uint32_t *to_slot);

/* ---- sturdy references ---- */

/* Exports the capability in `slot` (needs CAP_R_GRANT) as a new sturdy
 * reference with a fresh secret from libsodium's randombytes. The sturdy
 * reference holds its own child capability, charged to the c-list's bank. */
int cap_export(struct cap_space *cs, uint32_t clist, uint32_t slot,
               struct cap_sturdy *ref);
/* As cap_export, but the reference carries only `rights` (a subset of the
 * slot's, else -EPERM; CAP_R_ALL means "as the slot has"). The slot needs
 * CAP_R_GRANT; the reference itself need not have it, so a holder of a
 * read-only reference made this way can use it but not pass it on through
 * the daemon. */
int cap_export_rights(struct cap_space *cs, uint32_t clist, uint32_t slot,
                      uint32_t rights, struct cap_sturdy *ref);
/* Imports a sturdy reference into a new slot (a child of the reference's
 * capability). Returns 0, -EACCES (unknown or wrong secret; compared in
 * constant time), -EKEYREVOKED, -ENOSPC, -EDQUOT. */
int cap_import(struct cap_space *cs, uint32_t clist,
               const struct cap_sturdy *ref, uint32_t *slot);
/* Revokes a sturdy reference's capability and everything derived from it,
 * imports included. Returns 0, -EACCES, -EKEYREVOKED (already revoked). */
int cap_revoke_sturdy(struct cap_space *cs, const struct cap_sturdy *ref);
/* Text form. format returns 0 or -ENOSPC; parse returns 0 or -EINVAL. */
int cap_sturdy_format(const struct cap_sturdy *ref, char *buf, size_t len);
int cap_sturdy_parse(const char *text, struct cap_sturdy *ref);

#ifdef __cplusplus
}
#endif
#endif /* CAPDSM_CAPS_H */
