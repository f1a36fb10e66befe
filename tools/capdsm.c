/* capdsm.c — the capdsm command-line tool: command line and dispatch.
 *
 * Options may stand before or after the verb's words; the words left are the
 * verb and its REF. Option values are parsed only once the verb is known, so
 * every error line names the verb, and an option the verb does not take is a
 * usage error (exit 2) rather than silently ignored. The verb table below is
 * also the source of the usage text, so the two cannot disagree.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tool.h"

/* Options every verb that talks to one daemon takes. */
#define NODE_OPTS (TOOL_O_DIR | TOOL_O_NODE)

struct verb {
	const char *name; /* its words, "object create" */
	int nref;         /* REF words after the verb: 0 or 1 */
	unsigned allowed, required;
	int (*run)(const struct tool_args *a);
	const char *synopsis; /* after "capdsm " in the usage text */
};

static const struct verb verbs[] = {
	{ "cluster up", 0,
	  TOOL_O_DIR | TOOL_O_NODES | TOOL_O_FRAMES | TOOL_O_OBJECTS |
		  TOOL_O_CLIENTS | TOOL_O_CONFIG_EXTRA | TOOL_O_TRANSPORT |
		  TOOL_O_PLAINTEXT | TOOL_O_NETNS | TOOL_O_BASE_PORT,
	  TOOL_O_DIR | TOOL_O_NODES, tool_cluster_up,
	  "cluster up --nodes N --dir DIR [--frames F] [--objects O]\n"
	  "                    [--clients C] [--config-extra FILE]\n"
	  "                    [--transport zmq|tcp|rdma] [--plaintext] [--netns]\n"
	  "                    [--base-port P]\n"
	  "          N > 1: a CURVE key per node, every node a peer of each\n"
	  "          (127.0.0.1 on free ports, or P..P+N-1); --netns: each\n"
	  "          node in its own network namespace (root)" },
	{ "cluster status", 0, TOOL_O_DIR, TOOL_O_DIR, tool_cluster_status,
	  "cluster status --dir DIR             (with transport addresses)" },
	{ "cluster down", 0, TOOL_O_DIR, TOOL_O_DIR, tool_cluster_down,
	  "cluster down --dir DIR" },
	{ "object create", 0, NODE_OPTS | TOOL_O_SIZE | TOOL_O_BANK,
	  TOOL_O_DIR | TOOL_O_SIZE, tool_object_create,
	  "object create --size BYTES [--bank REF]" },
	{ "object destroy", 1, NODE_OPTS, TOOL_O_DIR, tool_object_destroy,
	  "object destroy REF   (needs a reference with every right)" },
	{ "cap restrict", 1, NODE_OPTS | TOOL_O_RIGHTS,
	  TOOL_O_DIR | TOOL_O_RIGHTS, tool_cap_restrict,
	  "cap restrict REF --rights LIST" },
	{ "cap revoke", 1, NODE_OPTS, TOOL_O_DIR, tool_cap_revoke,
	  "cap revoke REF" },
	{ "cap show", 1, NODE_OPTS, TOOL_O_DIR, tool_cap_show, "cap show REF" },
	{ "write", 1, NODE_OPTS | TOOL_O_OFFSET, TOOL_O_DIR, tool_write,
	  "write REF [--offset O]              (the bytes come from stdin)" },
	{ "read", 1, NODE_OPTS | TOOL_O_OFFSET | TOOL_O_LENGTH, TOOL_O_DIR,
	  tool_read,
	  "read REF [--offset O] [--length L] (default: to the end)" },
	{ "bank create", 0,
	  NODE_OPTS | TOOL_O_PARENT | TOOL_O_LIMIT_BYTES | TOOL_O_LIMIT_OBJECTS,
	  TOOL_O_DIR, tool_bank_create,
	  "bank create [--parent REF] [--limit-bytes B] [--limit-objects N]" },
	{ "bank show", 1, NODE_OPTS, TOOL_O_DIR, tool_bank_show,
	  "bank show REF" },
	{ "bank destroy", 1, NODE_OPTS, TOOL_O_DIR, tool_bank_destroy,
	  "bank destroy REF" },
	{ "stats", 0, NODE_OPTS | TOOL_O_JSON, TOOL_O_DIR, tool_stats,
	  "stats [--json]" },
	{ "map", 1,
	  NODE_OPTS | TOOL_O_RIGHTS | TOOL_O_OFFSET | TOOL_O_LENGTH | TOOL_O_PUT |
		  TOOL_O_AT | TOOL_O_PRINT | TOOL_O_WAIT | TOOL_O_TIMEOUT,
	  TOOL_O_DIR, tool_map,
	  "map REF [--rights read|read,write] [--offset O] [--length L]\n"
	  "                    [--at X] [--put TEXT] [--print N]\n"
	  "                    [--wait-change N [--timeout S]]\n"
	  "          maps the object into this process and uses it as memory" },
	{ "keygen", 0, 0, 0, tool_keygen,
	  "keygen                             (a fresh CURVE key pair, Z85)" },
};
#define NVERBS (sizeof(verbs) / sizeof(verbs[0]))

/* How an option's value is read. */
enum opt_kind { K_FLAG, K_STR, K_SIZE, K_COUNT, K_RIGHTS };

struct opt_desc {
	const char *name;
	unsigned bit;
	enum opt_kind kind;
};

/* Indexed by option number (the getopt `val` less OPT_BASE). */
static const struct opt_desc opt_descs[] = {
	{ "dir", TOOL_O_DIR, K_STR },
	{ "node", TOOL_O_NODE, K_COUNT },
	{ "nodes", TOOL_O_NODES, K_COUNT },
	{ "frames", TOOL_O_FRAMES, K_COUNT },
	{ "objects", TOOL_O_OBJECTS, K_COUNT },
	{ "clients", TOOL_O_CLIENTS, K_COUNT },
	{ "config-extra", TOOL_O_CONFIG_EXTRA, K_STR },
	{ "size", TOOL_O_SIZE, K_SIZE },
	{ "bank", TOOL_O_BANK, K_STR },
	{ "rights", TOOL_O_RIGHTS, K_RIGHTS },
	{ "offset", TOOL_O_OFFSET, K_SIZE },
	{ "length", TOOL_O_LENGTH, K_SIZE },
	{ "parent", TOOL_O_PARENT, K_STR },
	{ "limit-bytes", TOOL_O_LIMIT_BYTES, K_SIZE },
	{ "limit-objects", TOOL_O_LIMIT_OBJECTS, K_COUNT },
	{ "json", TOOL_O_JSON, K_FLAG },
	{ "put", TOOL_O_PUT, K_STR },
	{ "at", TOOL_O_AT, K_SIZE },
	{ "print", TOOL_O_PRINT, K_SIZE },
	{ "wait-change", TOOL_O_WAIT, K_SIZE },
	{ "timeout", TOOL_O_TIMEOUT, K_COUNT },
	{ "transport", TOOL_O_TRANSPORT, K_STR },
	{ "plaintext", TOOL_O_PLAINTEXT, K_FLAG },
	{ "netns", TOOL_O_NETNS, K_FLAG },
	{ "base-port", TOOL_O_BASE_PORT, K_COUNT },
};
#define NOPTS (sizeof(opt_descs) / sizeof(opt_descs[0]))
#define OPT_BASE 256

/* The command line before the verb is known: words and raw option values. */
struct raw_args {
	const char *words[3]; /* verb words and REF; more is an error */
	int nwords;
	bool extra_words;     /* more than fit in words[] */
	const char *val[NOPTS];
	unsigned seen;
	bool help;
	char error[128];      /* the first option error, reported with the verb */
};

/* ---- reporting ---- */

static void vreport(const char *verb, const char *fmt, va_list ap,
                    const char *reason)
{
	char msg[512];

	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (reason)
		fprintf(stderr, "capdsm: %s: %s: %s\n", verb, msg, reason);
	else
		fprintf(stderr, "capdsm: %s: %s\n", verb, msg);
}

int tool_fail(const struct tool_args *a, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreport(a->verb, fmt, ap, NULL);
	va_end(ap);
	return TOOL_EXIT_FAIL;
}

int tool_fail_rc(const struct tool_args *a, const struct capdsm *c, int rc,
                 const char *fmt, ...)
{
	const char *reason = c ? capdsm_strerror(c) : NULL;
	va_list ap;

	if (!reason || !reason[0])
		reason = strerror(rc < 0 ? -rc : rc);
	va_start(ap, fmt);
	vreport(a->verb, fmt, ap, reason);
	va_end(ap);
	return TOOL_EXIT_FAIL;
}

int tool_fail_reason(const struct tool_args *a, const struct capdsm *c,
                     int rc)
{
	const char *reason = c ? capdsm_strerror(c) : NULL;

	if (!reason || !reason[0])
		reason = strerror(rc < 0 ? -rc : rc);
	fprintf(stderr, "capdsm: %s: %s\n", a->verb, reason);
	return TOOL_EXIT_FAIL;
}

/* A usage error: one line, then exit status 2. */
static int usage_fail(const char *verb, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static int usage_fail(const char *verb, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "capdsm: %s: %s (try 'capdsm --help')\n", verb, msg);
	return TOOL_EXIT_USAGE;
}

static void print_usage(FILE *f)
{
	fputs("usage: capdsm VERB [ARGS] [OPTIONS]\n\nverbs:\n", f);
	for (size_t i = 0; i < NVERBS; i++)
		fprintf(f, "  capdsm %s\n", verbs[i].synopsis);
	fputs("  capdsm help                        (this text; also --help)\n"
	      "\n"
	      "Every verb but 'cluster' and 'keygen' talks to one node of the\n"
	      "cluster in DIR (--dir DIR, or $CAPDSM_DIR), node 0 unless\n"
	      "--node K.\n"
	      "REF is a sturdy reference as printed by 'object create' and\n"
	      "'bank create'. Sizes, offsets and lengths take the suffixes\n"
	      "K, M, G (powers of 1024). Rights: read,write,lock,map,grant or\n"
	      "all. The daemon binary is $CAPDSMD, else capdsmd beside this\n"
	      "program, else capdsmd in PATH.\n",
	      f);
}

/* ---- paths and I/O ---- */

int tool_node_path(char *buf, size_t len, const char *dir, uint32_t k,
                   const char *leaf)
{
	int n;

	if (leaf)
		n = snprintf(buf, len, "%s/node%" PRIu32 "/%s", dir, k, leaf);
	else
		n = snprintf(buf, len, "%s/node%" PRIu32, dir, k);
	if (n < 0 || (size_t)n >= len)
		return -ENAMETOOLONG;
	return 0;
}

int tool_socket_path(const struct tool_args *a, char *buf, size_t len)
{
	return tool_node_path(buf, len, a->dir, a->node, "capdsm.sock");
}

ssize_t tool_read_full(int fd, void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = read(fd, (char *)buf + done, len - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return (ssize_t)done;
}

int tool_write_full(int fd, const void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = write(fd, (const char *)buf + done, len - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		done += (size_t)n;
	}
	return 0;
}

/* ---- option values ---- */

/* A decimal count or size; with `suffixes`, a trailing K, M or G (any
 * case) multiplies by a power of 1024. Returns 0, -EINVAL or -ERANGE. */
static int parse_u64(const char *s, bool suffixes, uint64_t *out)
{
	unsigned shift = 0;
	unsigned long long v;
	char *end;

	if (!s[0] || s[0] < '0' || s[0] > '9') /* strtoull takes "-1" */
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno == ERANGE)
		return -ERANGE;
	if (suffixes && end[0] && !end[1]) {
		switch (end[0]) {
		case 'K': case 'k': shift = 10; end++; break;
		case 'M': case 'm': shift = 20; end++; break;
		case 'G': case 'g': shift = 30; end++; break;
		default: break;
		}
	}
	if (end[0])
		return -EINVAL;
	if (shift && v > (UINT64_MAX >> shift))
		return -ERANGE;
	*out = (uint64_t)v << shift;
	return 0;
}

/* Stores the value of option i (given as s) in a. Returns 0 or exit 2. */
static int store_opt(struct tool_args *a, size_t i, const char *s)
{
	const struct opt_desc *d = &opt_descs[i];
	uint64_t v = 0;
	int rc = 0;

	if (d->kind == K_SIZE || d->kind == K_COUNT)
		rc = parse_u64(s, d->kind == K_SIZE, &v);
	if (rc == 0 && d->kind == K_COUNT && d->bit != TOOL_O_LIMIT_OBJECTS &&
	    v > UINT32_MAX)
		rc = -ERANGE;
	if (rc == 0 && d->kind == K_RIGHTS)
		rc = capdsm_rights_parse(s, &a->rights);
	if (rc)
		return usage_fail(a->verb, "--%s: bad value '%s': %s", d->name,
		                  s, strerror(-rc));
	switch (d->bit) {
	case TOOL_O_DIR: a->dir = s; break;
	case TOOL_O_NODE: a->node = (uint32_t)v; break;
	case TOOL_O_NODES: a->nodes = (uint32_t)v; break;
	case TOOL_O_FRAMES: a->frames = (uint32_t)v; break;
	case TOOL_O_OBJECTS: a->objects = (uint32_t)v; break;
	case TOOL_O_CLIENTS: a->clients = (uint32_t)v; break;
	case TOOL_O_CONFIG_EXTRA: a->config_extra = s; break;
	case TOOL_O_SIZE: a->size = v; break;
	case TOOL_O_BANK: a->bank = s; break;
	case TOOL_O_OFFSET: a->offset = v; break;
	case TOOL_O_LENGTH: a->length = v; break;
	case TOOL_O_PARENT: a->parent = s; break;
	case TOOL_O_LIMIT_BYTES: a->limit_bytes = v; break;
	case TOOL_O_LIMIT_OBJECTS: a->limit_objects = v; break;
	case TOOL_O_JSON: a->json = true; break;
	case TOOL_O_PUT: a->put = s; break;
	case TOOL_O_AT: a->at = v; break;
	case TOOL_O_PRINT: a->print = v; break;
	case TOOL_O_WAIT: a->wait = v; break;
	case TOOL_O_TIMEOUT: a->timeout = (uint32_t)v; break;
	case TOOL_O_TRANSPORT: a->transport = s; break;
	case TOOL_O_PLAINTEXT: a->plaintext = true; break;
	case TOOL_O_NETNS: a->netns = true; break;
	case TOOL_O_BASE_PORT: a->base_port = (uint32_t)v; break;
	default: break;
	}
	return 0;
}

/* ---- the command line ---- */

static void raw_error(struct raw_args *r, const char *fmt, const char *what)
{
	if (!r->error[0])
		snprintf(r->error, sizeof(r->error), fmt, what);
}

/* Collects words and raw option values; errors wait in r->error until the
 * verb is known. */
static void scan_argv(int argc, char **argv, struct raw_args *r)
{
	struct option longopts[NOPTS + 2];
	char shortopt[3] = { 0 };
	int c;

	for (size_t i = 0; i < NOPTS; i++)
		longopts[i] = (struct option){
			.name = opt_descs[i].name,
			.has_arg = opt_descs[i].kind == K_FLAG ? no_argument
			                                       : required_argument,
			.val = OPT_BASE + (int)i,
		};
	longopts[NOPTS] = (struct option){ .name = "help", .val = 'h' };
	longopts[NOPTS + 1] = (struct option){ 0 };
	opterr = 0;
	/* "-": words come back in order as option 1, whatever POSIXLY_CORRECT
	 * says; ":": a missing value is ':' rather than '?'. */
	while ((c = getopt_long(argc, argv, "-:h", longopts, NULL)) != -1) {
		if (c == 1) {
			if (r->nwords < 3)
				r->words[r->nwords++] = optarg;
			else
				r->extra_words = true;
		} else if (c == 'h') {
			r->help = true;
		} else if (c >= OPT_BASE) {
			r->val[c - OPT_BASE] = optarg;
			r->seen |= opt_descs[c - OPT_BASE].bit;
		} else if (c == ':' && optopt >= OPT_BASE) {
			raw_error(r, "--%s: needs a value",
			          opt_descs[optopt - OPT_BASE].name);
		} else if (optopt >= OPT_BASE) {
			raw_error(r, "--%s: takes no value",
			          opt_descs[optopt - OPT_BASE].name);
		} else if (optopt > 0) {
			shortopt[0] = '-';
			shortopt[1] = (char)optopt;
			raw_error(r, "%s: unknown option", shortopt);
		} else {
			raw_error(r, "%s: unknown option", argv[optind - 1]);
		}
	}
}

/* The verb named by the leading words, or NULL. */
static const struct verb *find_verb(const struct raw_args *r, int *nwords)
{
	for (size_t i = 0; i < NVERBS; i++) {
		const char *name = verbs[i].name;
		const char *sp = strchr(name, ' ');
		size_t len1 = sp ? (size_t)(sp - name) : strlen(name);

		if (r->nwords < 1 || strlen(r->words[0]) != len1 ||
		    strncmp(r->words[0], name, len1) != 0)
			continue;
		if (!sp) {
			*nwords = 1;
			return &verbs[i];
		}
		if (r->nwords >= 2 && strcmp(r->words[1], sp + 1) == 0) {
			*nwords = 2;
			return &verbs[i];
		}
	}
	return NULL;
}

/* Reports words that name no verb; for a group of verbs ("cluster"),
 * lists the group's verbs. Returns exit status 2. */
static int unknown_verb(const struct raw_args *r)
{
	size_t len0 = strlen(r->words[0]);
	char subs[128] = "";
	size_t used = 0;

	for (size_t i = 0; i < NVERBS; i++) {
		const char *name = verbs[i].name;
		int n;

		if (strncmp(name, r->words[0], len0) != 0 || name[len0] != ' ')
			continue;
		n = snprintf(subs + used, sizeof(subs) - used, "%s%s",
		             used ? ", " : "", name + len0 + 1);
		if (n > 0 && (size_t)n < sizeof(subs) - used)
			used += (size_t)n;
	}
	if (!used)
		return usage_fail(r->words[0], "unknown verb");
	if (r->nwords < 2)
		return usage_fail(r->words[0], "needs one of: %s", subs);
	return usage_fail(r->words[0], "unknown verb '%s'; one of: %s",
	                  r->words[1], subs);
}

/* $CAPDSM_DIR, or NULL when unset or empty. */
static const char *env_dir(void)
{
	const char *dir = getenv("CAPDSM_DIR");

	return dir && dir[0] ? dir : NULL;
}

/* Checks the words and options against verb v and fills a. Returns 0 or
 * an exit status. */
static int check_args(const struct verb *v, int nverb,
                      const struct raw_args *r, struct tool_args *a)
{
	unsigned missing = v->required & ~r->seen;
	unsigned extra = r->seen & ~v->allowed;

	a->verb = v->name;
	if (r->error[0])
		return usage_fail(v->name, "%s", r->error);
	if (r->extra_words || r->nwords - nverb > v->nref)
		return usage_fail(v->name, "too many arguments");
	if (r->nwords - nverb < v->nref)
		return usage_fail(v->name, "needs a REF argument");
	if (v->nref)
		a->ref = r->words[nverb];
	for (size_t i = 0; i < NOPTS; i++) {
		unsigned bit = opt_descs[i].bit;

		if (extra & bit)
			return usage_fail(v->name, "--%s: not an option of "
			                  "this verb", opt_descs[i].name);
		if (bit == TOOL_O_DIR && (missing & bit) && env_dir())
			continue; /* --dir defaults to $CAPDSM_DIR */
		if (missing & bit)
			return usage_fail(v->name, "--%s is required",
			                  opt_descs[i].name);
	}
	a->seen = r->seen;
	a->dir = env_dir();
	for (size_t i = 0; i < NOPTS; i++) {
		int rc = (r->seen & opt_descs[i].bit)
		                 ? store_opt(a, i, r->val[i])
		                 : 0;

		if (rc)
			return rc;
	}
	if ((v->allowed & TOOL_O_DIR) && (!a->dir || !a->dir[0]))
		return usage_fail(v->name, "--dir must name a directory");
	return 0;
}

/* Flushes stdout; a verb whose output was lost has failed. */
static int finish_stdout(const struct tool_args *a, int status)
{
	errno = 0;
	if ((fflush(stdout) != 0 || ferror(stdout)) && status == TOOL_EXIT_OK)
		return tool_fail_rc(a, NULL, errno ? -errno : -EIO, "stdout");
	return status;
}

int main(int argc, char **argv)
{
	struct raw_args raw = { .nwords = 0 };
	struct tool_args args = { .node = 0 };
	const struct verb *v;
	int nverb = 0;
	int rc;

	scan_argv(argc, argv, &raw);
	if (raw.help || (raw.nwords >= 1 && strcmp(raw.words[0], "help") == 0)) {
		print_usage(stdout);
		return finish_stdout(&(struct tool_args){ .verb = "help" },
		                     TOOL_EXIT_OK);
	}
	if (raw.nwords == 0) {
		if (raw.error[0])
			return usage_fail("capdsm", "%s", raw.error);
		print_usage(stderr);
		return TOOL_EXIT_USAGE;
	}
	v = find_verb(&raw, &nverb);
	if (!v)
		return unknown_verb(&raw);
	rc = check_args(v, nverb, &raw, &args);
	if (rc)
		return rc;
	return finish_stdout(&args, v->run(&args));
}
