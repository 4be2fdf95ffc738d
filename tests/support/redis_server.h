/*
 * redis_server.h - real redis-server processes for tests and benchmarks: start one on a free
 * loopback port in a fresh temporary directory, kill and restart it, build a cluster of
 * masters, and talk to a node in raw RESP or through redis-cli. Part of the static library
 * shadow_testsupport (tests/support), which links neither cmocka nor libshadow.
 *
 * DESIGN
 *
 * Each server is a child process running `redis-server DIR/redis.conf`, where DIR is a fresh
 * mkdtemp() directory that holds its config, its log (DIR/redis.log: stdout and stderr) and,
 * for a cluster node, nodes.conf. Persistence is off (save "", appendonly no), so a restart
 * starts empty, except that a cluster node keeps its identity and slots through nodes.conf.
 *
 * Ports: the kernel picks a free one (bind to port 0, read it back, close); another process
 * may take it before redis-server binds, so a start whose server exits with "Address already
 * in use" is retried with a new port. A server counts as up once it answers PING and its INFO
 * names our child's pid (so a stranger on the port is never mistaken for it).
 *
 * No leaks: the child asks for SIGKILL when its parent dies (PR_SET_PDEATHSIG), so a test
 * that crashes or is killed by its CTest timeout leaves no server behind; an atexit() handler
 * kills what is still running and removes the directories when a test exits without stopping
 * them (a failed cmocka assertion). Only a SIGKILLed test (a CTest timeout) leaves its
 * directories in $TMPDIR; each holds an `owner` file with the pid of the process that made
 * it, and the first start in a later process removes those whose owner is gone.
 * The child closes every descriptor it inherited beyond stdio, so a server never holds a
 * test's sockets open.
 *
 * Binaries: redis-server is $SHADOW_REDIS_SERVER, else the first on PATH, else
 * /usr/bin/redis-server; redis-cli is $SHADOW_REDIS_CLI, else beside that redis-server, else
 * on PATH, else /usr/bin/redis-cli.
 *
 * Threads: not thread-safe. Call everything from one thread, and from the thread that will
 * outlive the servers: PR_SET_PDEATHSIG fires when the thread that forked the child exits,
 * not only the process (the main thread of a test is the natural choice).
 *
 * Errors are 0 or -errno; a function that fails prints why on stderr (with the tail of the
 * server's log where it has one), so a test only has to assert on the code.
 */
#ifndef SHADOW_TEST_REDIS_SERVER_H
#define SHADOW_TEST_REDIS_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* What a test prints before exiting 77 when shadow_test_redis_find() fails. */
#define SHADOW_TEST_REDIS_MISSING "redis-server not found; scripts/deps.sh installs it"
#define SHADOW_TEST_REDIS_CLI_MISSING "redis-cli not found; scripts/deps.sh installs it"

/* The 16384 hash slots of Redis Cluster. */
#define SHADOW_TEST_CLUSTER_SLOTS 16384u

struct shadow_test_redis_options {
	const char *password;       /* requirepass of the default user; NULL: no password */
	const char *user;           /* an extra ACL user allowed everything; NULL: none */
	const char *user_password;  /* that user's password (required with `user`) */
	bool cluster;               /* cluster-enabled yes (shadow_test_cluster_start sets it) */
	const char *const *config;  /* extra redis.conf lines ("maxmemory 64mb"), NULL-ended;
				       they come last, so they override the defaults above */
	uint32_t start_timeout_ms;  /* how long to wait for PING; 0: 10000 */
	const char *malloc_conf;    /* MALLOC_CONF (jemalloc) of the server; NULL: inherited.
				       For chunk-sized values use SHADOW_TEST_REDIS_MALLOC_CONF */
};

/*
 * jemalloc settings that keep freed pages for reuse: without them a server building large
 * replies page-faults on every one (docs/stores.md, "Running Redis for large values").
 */
#define SHADOW_TEST_REDIS_MALLOC_CONF "dirty_decay_ms:-1,muzzy_decay_ms:-1"

struct shadow_test_redis;

/*
 * Where redis-server (redis-cli) is: the path into path_ret[0..nbytes). Returns 0 or -ENOENT
 * (none executable), -ENAMETOOLONG.
 */
int shadow_test_redis_find(char *path_ret, size_t nbytes);
int shadow_test_redis_cli_find(char *path_ret, size_t nbytes);

/*
 * Start a redis-server on 127.0.0.1 and wait until it answers. opts may be NULL (no auth, no
 * cluster). The options' strings are copied. Returns 0 and the handle, which
 * shadow_test_redis_stop() frees; -ENOENT (no redis-server), -EADDRINUSE (no free port after
 * several tries), -ETIMEDOUT (no answer within start_timeout_ms), -ECHILD (the server exited:
 * bad config?), -EINVAL (user without user_password), -errno of mkdtemp, fork, ....
 */
int shadow_test_redis_start(const struct shadow_test_redis_options *opts,
			    struct shadow_test_redis **redis_ret);

/* SIGTERM, wait (SIGKILL after 5 s), remove the directory, free. NULL is accepted. */
void shadow_test_redis_stop(struct shadow_test_redis *redis);

/*
 * SIGKILL the server and reap it (a crash: nothing is flushed, clients see their connections
 * reset). The directory and the port stay for shadow_test_redis_restart(). Returns 0, or
 * -ESRCH if it was not running.
 */
int shadow_test_redis_kill(struct shadow_test_redis *redis);

/*
 * Start the server again on the same port, directory and config (killing it first if it
 * runs) and wait until it answers. Returns 0; -EADDRINUSE if the port was taken meanwhile;
 * otherwise as shadow_test_redis_start().
 */
int shadow_test_redis_restart(struct shadow_test_redis *redis);

/* Whether the server process is alive (reaps it if it exited on its own). */
bool shadow_test_redis_running(struct shadow_test_redis *redis);

/* Its TCP port; stays the same across restarts. */
uint16_t shadow_test_redis_port(const struct shadow_test_redis *redis);

/* "redis://127.0.0.1:PORT", without credentials or database; valid until stop. */
const char *shadow_test_redis_url(const struct shadow_test_redis *redis);

/* "127.0.0.1:PORT"; valid until stop. */
const char *shadow_test_redis_addr(const struct shadow_test_redis *redis);

/* Its temporary directory (config, redis.log, nodes.conf); valid until stop. */
const char *shadow_test_redis_dir(const struct shadow_test_redis *redis);

/* The server's pid, or -1 while it is not running. */
pid_t shadow_test_redis_pid(const struct shadow_test_redis *redis);

/*
 * Send one command over a fresh connection and read its whole reply, authenticating first
 * with the server's credentials (its ACL user if it has one, else its password). The
 * arguments are C strings ending with a NULL. The raw reply ("+OK\r\n", ":3\r\n",
 * "$5\r\nhello\r\n", "-ERR ...\r\n") is copied into reply_ret[0..nbytes), truncated and
 * always NUL-terminated when nbytes > 0; reply_ret may be NULL with nbytes 0. Returns the
 * reply's full length (> 0); -ECONNREFUSED / -ECONNRESET / -ETIMEDOUT (10 s without an
 * answer), -EPROTO (not RESP), -EACCES (AUTH refused), -ENOMEM.
 */
ssize_t shadow_test_redis_command(struct shadow_test_redis *redis, char *reply_ret,
				  size_t nbytes, const char *arg0, ...)
	__attribute__((sentinel));

/* As shadow_test_redis_command() with binary-safe arguments (lens NULL: C strings). */
ssize_t shadow_test_redis_commandv(struct shadow_test_redis *redis, int argc,
				   const char *const *argv, const size_t *lens, char *reply_ret,
				   size_t nbytes);

/*
 * A command whose reply is an integer (EXISTS, TTL, DBSIZE, CLUSTER KEYSLOT...): its value
 * into *value_ret. Returns 0; -EREMOTEIO for an error reply (printed), -EPROTO for another
 * type, or shadow_test_redis_command()'s errors.
 */
int shadow_test_redis_command_int(struct shadow_test_redis *redis, long long *value_ret,
				  const char *arg0, ...) __attribute__((sentinel));

/*
 * Run `redis-cli -h 127.0.0.1 -p PORT [credentials] arg0 ...` (NULL-ended) and capture its
 * stdout and stderr into out_ret[0..nbytes) (truncated, NUL-terminated when nbytes > 0; may be
 * NULL with nbytes 0). Returns redis-cli's exit status (>= 0; note that redis-cli exits 0
 * even for an error reply, which it prints as "(error) ..." or "ERR ..."); -ENOENT (no
 * redis-cli), -ETIMEDOUT (still running after 60 s: killed), -errno.
 */
int shadow_test_redis_cli(struct shadow_test_redis *redis, char *out_ret, size_t nbytes,
			  const char *arg0, ...) __attribute__((sentinel));

/* ---- Clusters -------------------------------------------------------------------------- */

/*
 * A cluster of masters without replicas, one shadow_test_redis each, built with
 * `redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes`. Nodes run with
 * cluster-require-full-coverage no (a dead master takes only its own slots down, so the
 * others keep serving), cluster-node-timeout 2000 and their own cluster bus port
 * (cluster-port, also picked free). Node i is shadow_test_cluster_node(c, i).
 */
struct shadow_test_cluster;

/*
 * Start n_masters (3 .. 16) nodes with `opts` (cluster forced on; NULL: defaults), create the
 * cluster and wait until every node reports cluster_state:ok. Returns 0; -ENOENT (no
 * redis-server or redis-cli), -EINVAL, -ETIMEDOUT (not ok within 30 s), -EIO (redis-cli
 * --cluster create failed; its output is printed), or shadow_test_redis_start()'s errors.
 */
int shadow_test_cluster_start(uint32_t n_masters, const struct shadow_test_redis_options *opts,
			      struct shadow_test_cluster **cluster_ret);

/* Stop every node and free. NULL is accepted. */
void shadow_test_cluster_stop(struct shadow_test_cluster *cluster);

uint32_t shadow_test_cluster_size(const struct shadow_test_cluster *cluster);

/* Node i (< size); the handle belongs to the cluster. */
struct shadow_test_redis *shadow_test_cluster_node(struct shadow_test_cluster *cluster,
						   uint32_t i);

/* "redis+cluster://127.0.0.1:PORT0": one seed, node 0. Valid until stop. */
const char *shadow_test_cluster_url(const struct shadow_test_cluster *cluster);

/* Node i's 40-character cluster id (CLUSTER MYID, read at start). */
const char *shadow_test_cluster_node_id(const struct shadow_test_cluster *cluster, uint32_t i);

/*
 * Wait until every running node reports cluster_state:ok and agrees on the owner of every
 * slot. Returns 0 or -ETIMEDOUT after timeout_ms.
 */
int shadow_test_cluster_wait_ok(struct shadow_test_cluster *cluster, uint32_t timeout_ms);

/* The hash slot of a key (CRC16 of the key or of its {hash tag}, mod 16384), computed here. */
uint32_t shadow_test_cluster_keyslot(const char *key, size_t key_nbytes);

/*
 * The node index that owns `slot` according to node `via` (CLUSTER NODES; a slot being
 * migrated still belongs to its source). Returns the index; -ENOENT (no owner, or one not of
 * this cluster), or shadow_test_redis_command()'s errors.
 */
int shadow_test_cluster_slot_owner(struct shadow_test_cluster *cluster, uint32_t via,
				   uint32_t slot);

/*
 * Slot migration, in the order of the Redis Cluster spec, for MOVED and ASK tests:
 *
 *   migrate_begin(slot, dst)  dst: CLUSTER SETSLOT slot IMPORTING src;
 *                             src: CLUSTER SETSLOT slot MIGRATING dst
 *                             (now src answers -ASK for keys it no longer has)
 *   migrate_key(slot, key)    MIGRATE one key from src to dst
 *   migrate_end(slot, dst)    MIGRATE the keys left, then CLUSTER SETSLOT slot NODE dst on
 *                             dst, src and every other running node
 *                             (now src answers -MOVED)
 *   migrate_slot(slot, dst)   all of the above at once
 *
 * src is the slot's owner as node 0 (or the first running node) sees it. Each returns 0; -EINVAL
 * (dst already owns the slot, or the key is not in the slot); -EREMOTEIO (a node refused:
 * printed); or shadow_test_redis_command()'s errors.
 */
int shadow_test_cluster_migrate_begin(struct shadow_test_cluster *cluster, uint32_t slot,
				      uint32_t dst);
int shadow_test_cluster_migrate_key(struct shadow_test_cluster *cluster, uint32_t slot,
				    uint32_t dst, const char *key);
int shadow_test_cluster_migrate_end(struct shadow_test_cluster *cluster, uint32_t slot,
				    uint32_t dst);
int shadow_test_cluster_migrate_slot(struct shadow_test_cluster *cluster, uint32_t slot,
				     uint32_t dst);

#endif /* SHADOW_TEST_REDIS_SERVER_H */
