/* keys.c — CURVE keys for the capdsm tool: `capdsm keygen`, and the key
 * files `cluster up` writes for its nodes.
 *
 * A secret key file is 40 Z85 characters and a newline, mode 0600 from the
 * moment it exists (created with O_EXCL, never chmod-ed afterwards), so no
 * other user can read it even briefly. Secret keys in memory are wiped once
 * written.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "tool.h"
#include "transport.h"

_Static_assert(TOOL_KEY_LEN == TP_KEY_LEN, "one key length");

int tool_keypair(char pub[TOOL_KEY_LEN + 1], char sec[TOOL_KEY_LEN + 1])
{
	return tp_keypair(pub, sec);
}

int tool_write_secret(const char *path, const char sec[TOOL_KEY_LEN + 1])
{
	char line[TOOL_KEY_LEN + 1];
	int fd, rc;

	if (strnlen(sec, TOOL_KEY_LEN + 1) != TOOL_KEY_LEN)
		return -EINVAL;
	if (unlink(path) < 0 && errno != ENOENT)
		return -errno;
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
	          0600);
	if (fd < 0)
		return -errno;
	memcpy(line, sec, TOOL_KEY_LEN);
	line[TOOL_KEY_LEN] = '\n';
	rc = tool_write_full(fd, line, sizeof(line));
	explicit_bzero(line, sizeof(line));
	if (rc == 0 && fsync(fd) < 0)
		rc = -errno;
	if (close(fd) < 0 && rc == 0)
		rc = -errno;
	if (rc)
		unlink(path);
	return rc;
}

int tool_keygen(const struct tool_args *a)
{
	char pub[TOOL_KEY_LEN + 1], sec[TOOL_KEY_LEN + 1];
	int rc = tool_keypair(pub, sec);

	if (rc == -ENOTSUP)
		return tool_fail(a, "this libzmq has no CURVE support");
	if (rc)
		return tool_fail_rc(a, NULL, rc, "zmq_curve_keypair");
	printf("public_key = %s\nsecret_key = %s\n", pub, sec);
	explicit_bzero(sec, sizeof(sec));
	return TOOL_EXIT_OK;
}
