/*
 * fake_resp.h - an in-process fake RESP server for deterministic fault tests: a thread that
 * listens on a loopback port, reads the commands clients send (RESP arrays of bulk strings,
 * or inline commands) and answers each one as a script says: with any bytes (valid RESP or
 * garbage), with half a value and then a closed connection (a server killed mid-value), with
 * silence (a hung server), with a close, after a delay, or a value in two parts with a pause
 * between them (for cancelling a GET that is being streamed).
 *
 * DESIGN
 *
 * One thread runs a poll() loop over the listening socket, every accepted connection and a
 * wake-up pipe. The script is an ordered list of rules; each command received is answered by
 * the first rule whose command name matches (case-insensitive; NULL matches any) and that has
 * uses left. Commands no rule matches get a built-in answer so that a client's handshake works
 * without scripting it: PING -> +PONG; AUTH, SELECT, CLIENT, READONLY, ASKING -> +OK;
 * anything else (HELLO included, so a client falls back to RESP2) -> -ERR.
 *
 * Replies of one connection leave in command order, as from a real server: an answer due
 * later (delay_ms, tail_delay_ms) holds back the answers behind it. A SILENT rule stalls its
 * connection: everything that arrives afterwards is read and dropped, nothing more is sent.
 *
 * Rules, the accept mode and the counters are behind one mutex, so a test may change the
 * script while clients are connected; every function is thread-safe. The server's sockets are
 * close-on-exec and it writes with MSG_NOSIGNAL (it never raises SIGPIPE).
 */
#ifndef SHADOW_TEST_FAKE_RESP_H
#define SHADOW_TEST_FAKE_RESP_H

#include <stddef.h>
#include <stdint.h>

enum shadow_fake_action {
	SHADOW_FAKE_REPLY = 0,   /* send `bytes`, then `tail` after tail_delay_ms if any */
	SHADOW_FAKE_REPLY_CLOSE, /* send `bytes`, then close the connection (killed mid-reply) */
	SHADOW_FAKE_SILENT,      /* never answer; the connection stays open and mute */
	SHADOW_FAKE_CLOSE        /* close the connection without answering */
};

struct shadow_fake_rule {
	const char *command;          /* command name to match, any case; NULL: every command */
	uint32_t times;               /* commands it answers before it is used up; 0: no limit */
	enum shadow_fake_action action;
	const void *bytes;            /* the answer (copied); NULL with nbytes 0: nothing */
	size_t nbytes;                /* its length; 0 with bytes set: strlen(bytes) */
	uint32_t delay_ms;            /* wait this long before acting */
	const void *tail;             /* REPLY only: more bytes after tail_delay_ms (copied) */
	size_t tail_nbytes;           /* 0 with tail set: strlen(tail) */
	uint32_t tail_delay_ms;
};

enum shadow_fake_accept {
	SHADOW_FAKE_ACCEPT_SERVE = 0, /* accept and serve (the default) */
	SHADOW_FAKE_ACCEPT_CLOSE      /* accept and close at once: a server that is going down */
};

struct shadow_fake_resp;

/*
 * Start a fake server on 127.0.0.1 with a kernel-chosen port and an empty script. Returns 0;
 * -errno from socket, bind, pthread_create; -ENOMEM.
 */
int shadow_fake_resp_start(struct shadow_fake_resp **fake_ret);

/* Stop the thread, close every socket, free. NULL is accepted. */
void shadow_fake_resp_stop(struct shadow_fake_resp *fake);

uint16_t shadow_fake_resp_port(const struct shadow_fake_resp *fake);

/* "redis://127.0.0.1:PORT"; valid until stop. */
const char *shadow_fake_resp_url(const struct shadow_fake_resp *fake);

/* Append a rule to the script (its bytes are copied). Returns 0, -EINVAL or -ENOMEM. */
int shadow_fake_resp_add(struct shadow_fake_resp *fake, const struct shadow_fake_rule *rule);

/* Shorthand: answer the next `times` commands named `command` with the C string `reply`. */
int shadow_fake_resp_reply(struct shadow_fake_resp *fake, const char *command, uint32_t times,
			   const char *reply);

/* Remove every rule (connections stay). */
void shadow_fake_resp_clear(struct shadow_fake_resp *fake);

/* How new connections are treated from now on. */
void shadow_fake_resp_set_accept(struct shadow_fake_resp *fake, enum shadow_fake_accept mode);

/* Close every connection now (the server crashed; it keeps listening). */
void shadow_fake_resp_drop_connections(struct shadow_fake_resp *fake);

/* Commands received so far whose name is `command` (any case); NULL: all commands. */
uint32_t shadow_fake_resp_commands(struct shadow_fake_resp *fake, const char *command);

/* Connections accepted so far, and connections open now. */
uint32_t shadow_fake_resp_accepted(struct shadow_fake_resp *fake);
uint32_t shadow_fake_resp_open_connections(struct shadow_fake_resp *fake);

/*
 * The last command received, its arguments joined by single spaces (binary bytes as they
 * are), into buf[0..nbytes), truncated, NUL-terminated. Returns its full length, 0 if none.
 */
size_t shadow_fake_resp_last_command(struct shadow_fake_resp *fake, char *buf, size_t nbytes);

#endif /* SHADOW_TEST_FAKE_RESP_H */
