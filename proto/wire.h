/* wire.h — the frame around every client–daemon message.
 *
 * A frame is a fixed 16-byte header, `msg_len` bytes of an encoded protobuf
 * message (capdsm.proto), then `payload_len` raw bytes: the data of a write
 * or a read travels beside the message, so it is never copied into or out of
 * protobuf. At most one file descriptor rides along with a frame (SCM_RIGHTS
 * on its first byte): a memfd in a Map reply, a userfaultfd in PagerAttach.
 * Both limits are checked before a byte of the body is read.
 */
#ifndef CAPDSM_WIRE_H
#define CAPDSM_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define WIRE_MAGIC 0x4d534443u    /* "CDSM", little-endian */
#define WIRE_MSG_MAX 16384u       /* bytes of protobuf in one frame */
#define WIRE_PAYLOAD_MAX (64u << 20) /* hard ceiling; the daemon's own is
                                      * set by config, at most this */

struct wire_hdr {
	uint32_t magic;
	uint32_t msg_len;     /* bytes */
	uint32_t payload_len; /* bytes */
	uint32_t flags;       /* must be 0 */
};
_Static_assert(sizeof(struct wire_hdr) == 16, "wire header is 16 bytes");

/* Checks a received header. Returns 0, -EPROTO (bad magic or flags, empty
 * message) or -EMSGSIZE (a length over WIRE_MSG_MAX or payload_max). */
int wire_hdr_check(const struct wire_hdr *h, uint32_t payload_max);

/* Sends one frame, blocking until all of it is written; `fd` >= 0 is passed
 * with SCM_RIGHTS. Retries on EINTR. Returns 0 or a negative errno
 * (-EPIPE when the peer is gone). */
int wire_send(int sock, const void *msg, uint32_t msg_len,
              const void *payload, uint32_t payload_len, int fd);

/* As wire_send, for a message packed at buf + sizeof(struct wire_hdr): the
 * header is written in front of it, so a frame without payload or
 * descriptor goes out in one plain send(). buf must hold the header and
 * msg_len bytes. */
int wire_send_frame(int sock, void *buf, uint32_t msg_len, const void *payload,
                    uint32_t payload_len, int fd);

/* Reads exactly `n` bytes, blocking. A descriptor that arrives is stored in
 * *fd if fd != NULL and *fd < 0, else closed. Returns 0, -ECONNRESET on end
 * of stream, or a negative errno. */
int wire_recv_all(int sock, void *buf, size_t n, int *fd);

/* Reads one frame's header and message into msg (capacity WIRE_MSG_MAX),
 * blocking; the payload is left in the socket for the caller. Returns 0 and
 * fills *h, or a negative errno. */
int wire_recv_msg(int sock, struct wire_hdr *h, uint8_t *msg, int *fd,
                  uint32_t payload_max);

/* recvmsg() of at most `n` bytes that also collects one descriptor as
 * wire_recv_all() does; `flags` as for recvmsg (e.g. MSG_DONTWAIT).
 * Returns bytes read (0 at end of stream) or a negative errno. */
ssize_t wire_recv_some(int sock, void *buf, size_t n, int *fd, int flags);

#ifdef __cplusplus
}
#endif
#endif /* CAPDSM_WIRE_H */
