/*
 * shadowd.h - what shadowd's files share: the control server (server.c) that main.c starts
 * and runs, and the metrics endpoint (metrics.c) that reads the server's counters.
 */
#ifndef SHADOWD_H
#define SHADOWD_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "pipeline/pipeline.h"

struct shadowd_config {
	const char *listen;          /* "unix:PATH" or "tcp:HOST:PORT" */
	uint32_t max_clients;        /* connections that said hello */
	uint64_t drain_timeout_ns;   /* SIGTERM: longest wait for ops in flight, then cancel */
	uint64_t spin_ns;            /* look for work this long before sleeping, while ops run */
	bool cuda;                   /* the pipeline can open CUDA IPC regions */
};

struct shadowd_server;

/*
 * Bind the listen socket and prepare the control thread's epoll set, the completion ring and
 * the signalfd (SIGTERM and SIGINT must already be blocked in every thread). The pipeline
 * must outlive the server's run. Returns 0 or -errno (-EADDRINUSE: another daemon listens
 * there).
 */
int shadowd_server_create(const struct shadowd_config *cfg, struct shadow__pipeline *pl,
			  struct shadowd_server **srv_ret);

/* The endpoint as bound (a TCP port 0 replaced by the kernel's choice). Static until destroy. */
const char *shadowd_server_endpoint(const struct shadowd_server *srv);

/*
 * The control thread: serves clients until SIGTERM or SIGINT, then stops accepting, refuses
 * new requests (-ESHUTDOWN), waits for the ops in flight (bounded by drain_timeout_ns, after
 * which it cancels them) and returns 0. A second signal cancels at once.
 */
int shadowd_server_run(struct shadowd_server *srv);

/*
 * Close every client and free. Call after shadow__pipeline_destroy() (which completes and
 * closes whatever was left), since the pipeline's on_done may still point into the server.
 */
void shadowd_server_destroy(struct shadowd_server *srv);

/* Prometheus text of the server's and the pipeline's counters into `out` (any thread). */
void shadowd_server_metrics(struct shadowd_server *srv, FILE *out);

/* false once draining (SIGTERM): /healthz answers 503. Any thread. */
bool shadowd_server_healthy(struct shadowd_server *srv);

struct shadowd_metrics;

/*
 * Serve GET /metrics and GET /healthz over HTTP/1.0 on HOST:PORT from a thread of its own.
 * *bound_ret receives "HOST:PORT" as bound (port 0 resolved), valid until stop. Returns 0 or
 * -errno.
 */
int shadowd_metrics_start(const char *hostport, struct shadowd_server *srv,
			  struct shadowd_metrics **m_ret, const char **bound_ret);
void shadowd_metrics_stop(struct shadowd_metrics *m); /* NULL accepted */

#endif /* SHADOWD_H */
