/* verbs.c — the verbs of the capdsm tool that talk to one daemon: objects,
 * capabilities, bytes, banks and counters.
 *
 * Each verb opens one session with the node's daemon, works through
 * libcapdsm alone, prints its result on stdout and closes the session; the
 * daemon then drops the session's slots, so a sturdy reference printed here
 * is the only thing that outlives the command.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tool.h"

typedef int (*session_fn)(const struct tool_args *a, struct capdsm *c);

/* Connects to the node `a` names, runs fn, closes. Returns an exit status. */
static int with_node(const struct tool_args *a, session_fn fn)
{
	char path[PATH_MAX];
	struct capdsm *c = NULL;
	int rc, status;

	rc = tool_socket_path(a, path, sizeof(path));
	if (rc)
		return tool_fail_rc(a, NULL, rc, "socket of node %" PRIu32,
		                    a->node);
	rc = capdsm_connect(path, NULL, &c);
	if (rc == -ENOENT || rc == -ECONNREFUSED)
		return tool_fail_rc(a, NULL, rc, "node %" PRIu32 " is not "
		                    "running (socket %s)", a->node, path);
	if (rc) /* the daemon may have refused the session: say why */
		return tool_fail(a, "node %" PRIu32 ": %s", a->node,
		                 capdsm_strerror(NULL)[0] ? capdsm_strerror(NULL)
		                                          : strerror(-rc));
	status = fn(a, c);
	capdsm_close(c);
	return status;
}

/* Imports the sturdy reference ref; `what` names it in an error. */
static int import_ref(const struct tool_args *a, struct capdsm *c,
                      const char *ref, const char *what, uint32_t *slot)
{
	int rc = capdsm_import(c, ref, slot);

	if (rc)
		return tool_fail_rc(a, c, rc, "%s", what);
	return TOOL_EXIT_OK;
}

/* Imports ref if given, else yields the session's bank. */
static int bank_slot(const struct tool_args *a, struct capdsm *c,
                     const char *ref, const char *what, uint32_t *slot)
{
	*slot = CAPDSM_SESSION_BANK;
	return ref ? import_ref(a, c, ref, what, slot) : TOOL_EXIT_OK;
}

/* Exports the capability in slot and prints its reference on one line. */
static int print_ref(const struct tool_args *a, struct capdsm *c,
                     uint32_t slot)
{
	char ref[CAPDSM_REF_MAX];
	int rc = capdsm_export(c, slot, ref, sizeof(ref));

	if (rc)
		return tool_fail_reason(a, c, rc);
	printf("%s\n", ref);
	return TOOL_EXIT_OK;
}

/* ---- objects and capabilities ---- */

static int object_create(const struct tool_args *a, struct capdsm *c)
{
	uint32_t bank, slot;
	int rc, status;

	status = bank_slot(a, c, a->bank, "--bank REF", &bank);
	if (status)
		return status;
	rc = capdsm_object_create(c, bank, a->size, &slot);
	if (rc)
		return tool_fail_rc(a, c, rc, "--size %" PRIu64, a->size);
	return print_ref(a, c, slot);
}

static int cap_restrict(const struct tool_args *a, struct capdsm *c)
{
	char ref[CAPDSM_REF_MAX];
	uint32_t slot;
	int rc, status;

	status = import_ref(a, c, a->ref, "the reference", &slot);
	if (status)
		return status;
	/* One step in the daemon: the reference may lack grant itself (a
	 * read-only reference its holder cannot pass on), as long as REF
	 * has it. */
	rc = capdsm_restrict_export(c, slot, a->rights, ref, sizeof(ref));
	if (rc)
		return tool_fail_reason(a, c, rc);
	printf("%s\n", ref);
	return TOOL_EXIT_OK;
}

static int cap_revoke(const struct tool_args *a, struct capdsm *c)
{
	int rc = capdsm_revoke_ref(c, a->ref);

	if (rc)
		return tool_fail_reason(a, c, rc);
	return TOOL_EXIT_OK;
}

static const char *kind_name(uint32_t kind)
{
	switch (kind) {
	case 1: return "data";
	case 2: return "process";
	case 3: return "bank";
	default: return "unknown";
	}
}

static int cap_show(const struct tool_args *a, struct capdsm *c)
{
	struct capdsm_cap_info info;
	char rights[64];
	uint32_t slot;
	int rc, status;

	status = import_ref(a, c, a->ref, "the reference", &slot);
	if (status)
		return status;
	rc = capdsm_cap_info(c, slot, &info);
	if (rc)
		return tool_fail_reason(a, c, rc);
	rc = capdsm_rights_format(info.rights, rights, sizeof(rights));
	if (rc)
		return tool_fail_rc(a, c, rc, "format rights 0x%" PRIx32,
		                    info.rights);
	printf("oid=0x%" PRIx64 " kind=%s rights=%s size=%" PRIu64
	       " depth=%" PRIu32 "\n",
	       info.oid, kind_name(info.kind), rights, info.size, info.depth);
	return TOOL_EXIT_OK;
}

/* ---- bytes ---- */

/* Streams stdin into the object from a->offset, TOOL_CHUNK at a time. */
static int write_stream(const struct tool_args *a, struct capdsm *c,
                        uint32_t slot, char *buf)
{
	uint64_t off = a->offset;

	for (;;) {
		ssize_t n = tool_read_full(STDIN_FILENO, buf, TOOL_CHUNK);
		int rc;

		if (n < 0)
			return tool_fail_rc(a, NULL, (int)n, "stdin");
		if (n == 0)
			return TOOL_EXIT_OK;
		if (off > UINT64_MAX - (uint64_t)n)
			return tool_fail_rc(a, NULL, -ERANGE, "offset");
		rc = capdsm_write(c, slot, off, buf, (size_t)n);
		if (rc)
			return tool_fail_rc(a, c, rc, "offset %" PRIu64
			                    " length %zd", off, n);
		off += (uint64_t)n;
		if ((size_t)n < TOOL_CHUNK) /* end of input: do not read again */
			return TOOL_EXIT_OK;
	}
}

/* The byte count to read: --length, else up to the object's end. */
static int read_length(const struct tool_args *a, struct capdsm *c,
                       uint32_t slot, uint64_t *len)
{
	struct capdsm_cap_info info;
	int rc;

	if (a->seen & TOOL_O_LENGTH) {
		*len = a->length;
		return TOOL_EXIT_OK;
	}
	rc = capdsm_cap_info(c, slot, &info);
	if (rc)
		return tool_fail_reason(a, c, rc);
	if (a->offset > info.size)
		return tool_fail(a, "offset %" PRIu64 " is past the end of "
		                 "the object (%" PRIu64 " bytes)",
		                 a->offset, info.size);
	*len = info.size - a->offset;
	return TOOL_EXIT_OK;
}

/* Streams len bytes from a->offset to stdout, TOOL_CHUNK at a time. */
static int read_stream(const struct tool_args *a, struct capdsm *c,
                       uint32_t slot, uint64_t len, char *buf)
{
	uint64_t off = a->offset;

	if (off > UINT64_MAX - len)
		return tool_fail_rc(a, NULL, -ERANGE, "offset + length");
	while (len > 0) {
		size_t n = len < TOOL_CHUNK ? (size_t)len : TOOL_CHUNK;
		int rc = capdsm_read(c, slot, off, buf, n);

		if (rc)
			return tool_fail_rc(a, c, rc, "offset %" PRIu64
			                    " length %zu", off, n);
		rc = tool_write_full(STDOUT_FILENO, buf, n);
		if (rc)
			return tool_fail_rc(a, NULL, rc, "stdout");
		off += n;
		len -= n;
	}
	return TOOL_EXIT_OK;
}

static int write_verb(const struct tool_args *a, struct capdsm *c)
{
	uint32_t slot;
	char *buf;
	int status;

	status = import_ref(a, c, a->ref, "the reference", &slot);
	if (status)
		return status;
	buf = malloc(TOOL_CHUNK);
	if (!buf)
		return tool_fail_rc(a, NULL, -ENOMEM, "buffer");
	status = write_stream(a, c, slot, buf);
	free(buf);
	return status;
}

static int read_verb(const struct tool_args *a, struct capdsm *c)
{
	uint32_t slot;
	uint64_t len = 0;
	char *buf;
	int status;

	status = import_ref(a, c, a->ref, "the reference", &slot);
	if (status)
		return status;
	status = read_length(a, c, slot, &len);
	if (status)
		return status;
	buf = malloc(TOOL_CHUNK);
	if (!buf)
		return tool_fail_rc(a, NULL, -ENOMEM, "buffer");
	status = read_stream(a, c, slot, len, buf);
	free(buf);
	return status;
}

/* ---- banks ---- */

static int bank_create(const struct tool_args *a, struct capdsm *c)
{
	uint32_t parent, slot;
	int rc, status;

	status = bank_slot(a, c, a->parent, "--parent REF", &parent);
	if (status)
		return status;
	rc = capdsm_bank_create(c, parent, a->limit_bytes, a->limit_objects,
	                        &slot);
	if (rc)
		return tool_fail_reason(a, c, rc);
	return print_ref(a, c, slot);
}

static int bank_show(const struct tool_args *a, struct capdsm *c)
{
	struct capdsm_bank_info b;
	uint32_t slot;
	int rc, status;

	status = import_ref(a, c, a->ref, "the reference", &slot);
	if (status)
		return status;
	rc = capdsm_bank_info(c, slot, &b);
	if (rc)
		return tool_fail_reason(a, c, rc);
	printf("oid=0x%" PRIx64 " parent=0x%" PRIx64 " limit_bytes=%" PRIu64
	       " used_bytes=%" PRIu64 " limit_objects=%" PRIu64
	       " used_objects=%" PRIu64 " children=%" PRIu32 "\n",
	       b.oid, b.parent, b.limit_bytes, b.used_bytes, b.limit_objects,
	       b.used_objects, b.children);
	return TOOL_EXIT_OK;
}

static int bank_destroy(const struct tool_args *a, struct capdsm *c)
{
	uint32_t slot;
	int rc, status;

	status = import_ref(a, c, a->ref, "the reference", &slot);
	if (status)
		return status;
	rc = capdsm_bank_destroy(c, slot);
	if (rc)
		return tool_fail_reason(a, c, rc);
	return TOOL_EXIT_OK;
}

/* ---- counters ---- */

static void print_stat(const char *name, uint64_t value, void *arg)
{
	(void)arg;
	printf("%s %" PRIu64 "\n", name, value);
}

/* Prints s as a JSON string. */
static void print_json_string(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\')
			printf("\\%c", ch);
		else if (ch < 0x20)
			printf("\\u%04x", ch);
		else
			putchar(ch);
	}
	putchar('"');
}

static void print_stat_json(const char *name, uint64_t value, void *arg)
{
	bool *first = arg;

	fputs(*first ? "{" : ",", stdout);
	*first = false;
	print_json_string(name);
	printf(":%" PRIu64, value);
}

static int stats(const struct tool_args *a, struct capdsm *c)
{
	bool first = true;
	int rc;

	if (!a->json)
		rc = capdsm_stats(c, print_stat, NULL);
	else
		rc = capdsm_stats(c, print_stat_json, &first);
	if (rc)
		return tool_fail_reason(a, c, rc);
	if (a->json)
		fputs(first ? "{}\n" : "}\n", stdout);
	return TOOL_EXIT_OK;
}

/* ---- the verbs ---- */

static int object_destroy(const struct tool_args *a, struct capdsm *c)
{
	uint32_t slot;
	int rc, status;

	status = import_ref(a, c, a->ref, "the reference", &slot);
	if (status)
		return status;
	rc = capdsm_object_destroy(c, slot);
	if (rc)
		return tool_fail_reason(a, c, rc);
	return TOOL_EXIT_OK;
}

int tool_object_destroy(const struct tool_args *a)
{
	return with_node(a, object_destroy);
}

int tool_object_create(const struct tool_args *a)
{
	return with_node(a, object_create);
}

int tool_cap_restrict(const struct tool_args *a)
{
	return with_node(a, cap_restrict);
}

int tool_cap_revoke(const struct tool_args *a)
{
	return with_node(a, cap_revoke);
}

int tool_cap_show(const struct tool_args *a)
{
	return with_node(a, cap_show);
}

int tool_write(const struct tool_args *a)
{
	return with_node(a, write_verb);
}

int tool_read(const struct tool_args *a)
{
	return with_node(a, read_verb);
}

int tool_bank_create(const struct tool_args *a)
{
	return with_node(a, bank_create);
}

int tool_bank_show(const struct tool_args *a)
{
	return with_node(a, bank_show);
}

int tool_bank_destroy(const struct tool_args *a)
{
	return with_node(a, bank_destroy);
}

int tool_stats(const struct tool_args *a)
{
	return with_node(a, stats);
}

/* ---- map: the object as memory of this process ---- */

/* Maps the object (read-only unless --rights says read,write), then, in this
 * order: waits until --wait-change N bytes at --at change, stores --put
 * with plain stores, prints --print N bytes read with plain loads. Every
 * access is an ordinary load or store; the daemon serves the faults. */
static int map_verb(const struct tool_args *a, struct capdsm *c)
{
	struct capdsm_cap_info ci;
	uint32_t slot;
	uint32_t rights = (a->seen & TOOL_O_RIGHTS) ? a->rights : CAPDSM_R_READ;
	uint64_t len, span;
	void *base;
	int rc, status;

	status = import_ref(a, c, a->ref, "the reference", &slot);
	if (status)
		return status;
	rc = capdsm_cap_info(c, slot, &ci);
	if (rc)
		return tool_fail_reason(a, c, rc);
	len = (a->seen & TOOL_O_LENGTH) ? a->length
	                                : ((ci.size + 4095) & ~4095ull) - a->offset;
	span = a->put ? strlen(a->put) : 0;
	if (a->print > span)
		span = a->print;
	if (a->wait > span)
		span = a->wait;
	if (a->at > len || span > len - a->at)
		return tool_fail(a, "--at and the bytes used go past the mapping "
		                 "(%" PRIu64 " bytes)", len);
	if (a->put && !(rights & CAPDSM_R_WRITE))
		return tool_fail(a, "--put stores through the mapping: it needs "
		                 "--rights read,write");
	rc = capdsm_map(c, capdsm_self(c), slot, a->offset, len, rights, &base);
	if (rc)
		return tool_fail_reason(a, c, rc);
	volatile uint8_t *p = (volatile uint8_t *)base + a->at;

	if (a->wait) {
		uint8_t *was = malloc(a->wait);
		uint64_t waited_ms = 0, limit = (a->seen & TOOL_O_TIMEOUT)
		                                        ? (uint64_t)a->timeout * 1000
		                                        : 30000;
		if (!was)
			return tool_fail_rc(a, NULL, -ENOMEM, "buffer");
		for (uint64_t i = 0; i < a->wait; i++)
			was[i] = p[i];
		for (;;) {
			uint64_t i = 0;
			while (i < a->wait && p[i] == was[i])
				i++;
			if (i < a->wait)
				break;
			if (waited_ms >= limit) {
				free(was);
				return tool_fail(a, "no change within %" PRIu64 " s",
				                 limit / 1000);
			}
			usleep(1000);
			waited_ms++;
		}
		free(was);
		fprintf(stderr, "capdsm: map: the bytes changed\n");
	}
	if (a->put) {
		for (uint64_t i = 0; i < strlen(a->put); i++)
			p[i] = (uint8_t)a->put[i];
		fprintf(stderr, "capdsm: map: stored %zu bytes at %" PRIu64
		        " through the mapping\n", strlen(a->put), a->at);
	}
	if (a->print || a->wait) {
		uint64_t n = a->print ? a->print : a->wait;
		uint8_t *out = malloc(n);
		if (!out)
			return tool_fail_rc(a, NULL, -ENOMEM, "buffer");
		for (uint64_t i = 0; i < n; i++)
			out[i] = p[i];
		rc = tool_write_full(STDOUT_FILENO, out, n);
		free(out);
		if (rc)
			return tool_fail_rc(a, NULL, rc, "stdout");
	}
	rc = capdsm_unmap(c, base);
	if (rc)
		return tool_fail_reason(a, c, rc);
	return TOOL_EXIT_OK;
}

int tool_map(const struct tool_args *a)
{
	return with_node(a, map_verb);
}
