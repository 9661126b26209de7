/* The delaying TCP proxy in C: the same program as bench/latency/delay_proxy.py, with the
 * same command line, ready line and behaviour; it adds a third of the time to a request.
 *
 * Each chunk is released L ms after it arrived, in order; a closed connection (FIN) is
 * passed on L ms late as well; what a client sends first is held until 2 d_up + d_down
 * after the proxy accepted its connection (the handshake netem would have delayed, which
 * the kernel completes before accept(): delay_proxy.py's docstring says why). One process,
 * one thread, epoll; the earliest due chunk of every connection in one binary heap.
 *
 *   delay_relay --listen 127.0.0.1:0 --upstream 127.0.0.1:5432 --delay-ms 100 \
 *       --delay-direction downstream --realtime-priority 10
 *
 * prints `listening HOST:PORT loop=epoll sched=POLICY` once it accepts connections and runs
 * until SIGTERM. bench/latency/relay.py builds it with the machine's C compiler and
 * bench/latency/proxy.py runs it, or delay_proxy.py where there is no compiler.
 *
 * Why C, and why our own: every message of a cell crosses the proxy, and on these 2-core
 * machines the proxy's time per message is the cell's loss. Request by request
 * (benchmarks/proxy_overhead.py --requests, sync_gunicorn io_create/ at 0 ms), the Python
 * proxy (uvloop) added 6-9% to the time of a request, HAProxy in its place about 5% (a
 * relay in C, but it cannot delay), this relay 2-2.5%. No packaged program delays each
 * chunk: netem is missing from this kernel, Toxiproxy is not packaged for Debian or PyPI,
 * HAProxy and socat only relay.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_SIZE 65536
/* Stop reading a side while this much of what it sent waits in the proxy, resume below
 * the low mark (asyncio's transports pause at 64 KiB written but unsent; the delay queue
 * of the Python proxy has no bound, this one holds up to 16 MiB a direction). */
#define HIGH_WATER (16u << 20)
#define LOW_WATER (4u << 20)

struct chunk {
    struct chunk *next;
    double due;
    size_t len; /* 0: the FIN */
    char data[];
};

struct conn;

/* One direction of a connection: what is read from one side is written to side `to`. */
struct dir {
    struct conn *conn;
    int to;                      /* written to: 0, the client's socket; 1, the upstream's */
    double delay, not_before;
    struct chunk *head, *tail;   /* waiting for their due time */
    size_t waiting;              /* bytes in head..tail */
    char *out;                   /* released, not yet accepted by the socket */
    size_t out_len, out_off, out_cap;
    int eof_read;                /* `from` sent its FIN (or failed) */
    int eof_released;            /* the FIN is due: shut `to` down once `out` is empty */
    int eof_sent;
    int in_heap;
};

struct side {
    struct conn *conn;
    int which;
    int fd;
    unsigned mask;               /* the epoll events it waits for (0: not in the set) */
    int lost;                    /* a read or write failed: the socket is closed */
};

struct conn {
    struct side sides[2];
    struct dir to_upstream, to_client;
    int connecting;
    int closed, heap_refs, in_dead;
    struct conn *next_dead;
};

struct entry { double due; uint64_t seq; struct dir *dir; };

static int ep;
static struct entry *heap;
static size_t heap_len, heap_cap;
static uint64_t heap_seq;
static struct conn *dead;
static struct sockaddr_storage upstream_addr;
static socklen_t upstream_len;
static double to_client_delay, to_upstream_delay;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *xmalloc(size_t n) {
    void *p = malloc(n);
    if (p == NULL) {
        fputs("delay_relay: out of memory\n", stderr);
        _exit(1);
    }
    return p;
}

/* -- the heap of due times ------------------------------------------------------------ */

static int before(const struct entry *a, const struct entry *b) {
    return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void heap_push(struct dir *d) {
    if (heap_len == heap_cap) {
        heap_cap = heap_cap ? heap_cap * 2 : 256;
        struct entry *grown = realloc(heap, heap_cap * sizeof *heap);
        if (grown == NULL) {
            fputs("delay_relay: out of memory\n", stderr);
            _exit(1);
        }
        heap = grown;
    }
    size_t i = heap_len++;
    heap[i] = (struct entry){d->head->due, heap_seq++, d};
    while (i > 0 && before(&heap[i], &heap[(i - 1) / 2])) {
        struct entry t = heap[i];
        heap[i] = heap[(i - 1) / 2];
        heap[(i - 1) / 2] = t;
        i = (i - 1) / 2;
    }
    d->in_heap = 1;
    d->conn->heap_refs++;
}

static struct entry heap_pop(void) {
    struct entry top = heap[0];
    heap[0] = heap[--heap_len];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < heap_len && before(&heap[l], &heap[m])) m = l;
        if (r < heap_len && before(&heap[r], &heap[m])) m = r;
        if (m == i) break;
        struct entry t = heap[i];
        heap[i] = heap[m];
        heap[m] = t;
        i = m;
    }
    return top;
}

/* -- connections ---------------------------------------------------------------------- */

static void conn_close(struct conn *c);
static void dir_release(struct dir *d, double now);

/* Register `s` for what it should wait for now (one epoll_ctl, only when that changed). A
 * side with nothing to wait for leaves the epoll set: epoll reports a hang-up whatever the
 * mask, and a side that has sent and received its FIN, while the other's is still delayed,
 * would wake the loop until then. */
static void side_watch(struct side *s) {
    struct conn *c = s->conn;
    if (c->closed || s->lost) return;
    unsigned mask = 0;
    struct dir *reading = s->which == 0 ? &c->to_upstream : &c->to_client;
    struct dir *writing = s->which == 0 ? &c->to_client : &c->to_upstream;
    if (s->which == 1 && c->connecting) {
        mask = EPOLLOUT;
    } else {
        /* Back-pressure: a peer that cannot keep up stops us reading from this side. */
        size_t held = reading->waiting + (reading->out_len - reading->out_off);
        int paused = (s->mask & EPOLLIN) ? held >= HIGH_WATER : held >= LOW_WATER;
        if (!c->connecting && !reading->eof_read && !paused) mask |= EPOLLIN;
        if (writing->out_len > writing->out_off) mask |= EPOLLOUT;
    }
    if (mask != s->mask) {
        struct epoll_event ev = {.events = mask, .data.ptr = s};
        int op = mask == 0 ? EPOLL_CTL_DEL : s->mask == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
        epoll_ctl(ep, op, s->fd, &ev);
        s->mask = mask;
    }
}

static void conn_watch(struct conn *c) {
    side_watch(&c->sides[0]);
    side_watch(&c->sides[1]);
}

/* Both FINs passed on, or both sockets gone: the connection is over. */
static void conn_check_done(struct conn *c) {
    int sent = c->to_upstream.eof_sent && c->to_client.eof_sent;
    if (sent || (c->sides[0].lost && c->sides[1].lost)) conn_close(c);
}

static void side_lost(struct side *s);

/* Write what `d` has released; shut its socket down after the released FIN. */
static void dir_flush(struct dir *d) {
    struct conn *c = d->conn;
    struct side *to = &c->sides[d->to];
    while (d->out_len > d->out_off && !to->lost) {
        ssize_t n = send(to->fd, d->out + d->out_off, d->out_len - d->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            side_lost(to);
            return;
        }
        d->out_off += (size_t)n;
    }
    d->out_len = d->out_off = 0;
    if (d->eof_released && !d->eof_sent) {
        if (!to->lost) shutdown(to->fd, SHUT_WR); /* fails only if the peer is gone */
        d->eof_sent = 1;
        conn_check_done(c);
    }
}

static void dir_emit(struct dir *d, const char *data, size_t len) {
    struct side *to = &d->conn->sides[d->to];
    if (to->lost) return;
    size_t done = 0;
    if (d->out_len == d->out_off) { /* nothing ahead of it: straight to the socket */
        ssize_t n = send(to->fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            side_lost(to);
            return;
        }
        done = n > 0 ? (size_t)n : 0;
        if (done == len) return;
    }
    size_t rest = len - done;
    if (d->out_off > 0 && d->out_off == d->out_len) d->out_len = d->out_off = 0;
    if (d->out_len + rest > d->out_cap) {
        size_t cap = d->out_cap ? d->out_cap : READ_SIZE;
        while (cap < d->out_len + rest) cap *= 2;
        char *grown = realloc(d->out, cap);
        if (grown == NULL) {
            fputs("delay_relay: out of memory\n", stderr);
            _exit(1);
        }
        d->out = grown;
        d->out_cap = cap;
    }
    memcpy(d->out + d->out_len, data + done, rest);
    d->out_len += rest;
}

/* A chunk read from d's source (len 0: its FIN). */
static void dir_push(struct dir *d, const char *data, size_t len, double now) {
    if (d->conn->closed) return;
    double due = now + d->delay;
    if (due < d->not_before) due = d->not_before;
    if (due <= now && d->head == NULL) { /* due now, nothing queued: pass it on */
        if (len > 0) {
            dir_emit(d, data, len);
        } else {
            d->eof_released = 1;
            dir_flush(d);
        }
        return;
    }
    struct chunk *ch = xmalloc(sizeof *ch + len);
    ch->next = NULL;
    ch->due = due;
    ch->len = len;
    memcpy(ch->data, data, len);
    if (d->tail) d->tail->next = ch; else d->head = ch;
    d->tail = ch;
    d->waiting += len;
    if (!d->in_heap) heap_push(d);
}

/* Release every chunk of `d` that is due (in order), then wait for the next. */
static void dir_release(struct dir *d, double now) {
    struct conn *c = d->conn;
    while (d->head && d->head->due <= now && !c->closed) {
        struct chunk *ch = d->head;
        d->head = ch->next;
        if (d->head == NULL) d->tail = NULL;
        d->waiting -= ch->len;
        if (ch->len > 0) {
            dir_emit(d, ch->data, ch->len);
        } else {
            d->eof_released = 1;
            dir_flush(d);
        }
        free(ch);
    }
    if (!c->closed && d->head && !d->in_heap) heap_push(d);
}

static void dir_free(struct dir *d) {
    while (d->head) {
        struct chunk *ch = d->head;
        d->head = ch->next;
        free(ch);
    }
    d->tail = NULL;
    free(d->out);
    d->out = NULL;
}

static void conn_close(struct conn *c) {
    if (c->closed) return;
    c->closed = 1;
    for (int i = 0; i < 2; i++)
        if (c->sides[i].fd >= 0) close(c->sides[i].fd); /* leaves the epoll set too */
    dir_free(&c->to_upstream);
    dir_free(&c->to_client);
    if (!c->in_dead) {
        c->in_dead = 1;
        c->next_dead = dead;
        dead = c;
    }
}

/* A socket failed (reset, or its peer is gone): what it would have sent ends here. */
static void side_lost(struct side *s) {
    if (s->lost) return;
    s->lost = 1;
    close(s->fd); /* leaves the epoll set too */
    s->fd = -1;
    s->mask = 0;
    struct conn *c = s->conn;
    struct dir *reading = s->which == 0 ? &c->to_upstream : &c->to_client;
    if (!reading->eof_read) {
        reading->eof_read = 1;
        dir_push(reading, NULL, 0, now_s());
    }
    if (!c->closed) conn_check_done(c);
}

static void side_readable(struct side *s) {
    struct conn *c = s->conn;
    struct dir *d = s->which == 0 ? &c->to_upstream : &c->to_client;
    static char buf[READ_SIZE];
    while (!c->closed && !d->eof_read && !s->lost) {
        ssize_t n = recv(s->fd, buf, sizeof buf, 0);
        if (n > 0) {
            dir_push(d, buf, (size_t)n, now_s());
            if ((size_t)n < sizeof buf) return;
            if (d->waiting + (d->out_len - d->out_off) >= HIGH_WATER) return;
        } else if (n == 0) {
            d->eof_read = 1;
            dir_push(d, NULL, 0, now_s());
        } else if (errno == EAGAIN || errno == EINTR) {
            return;
        } else {
            side_lost(s);
        }
    }
}

static void side_event(struct side *s, unsigned events) {
    struct conn *c = s->conn;
    if (c->closed || s->lost) return; /* an event of this batch from before it was lost */
    if (s->which == 1 && c->connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0 || (events & (EPOLLERR | EPOLLHUP))) {
            /* The client sees its connection closed, as with a refused port: with a FIN,
             * once what it sent is read (a socket closed with unread data sends a reset). */
            static char sink[READ_SIZE];
            while (recv(c->sides[0].fd, sink, sizeof sink, 0) > 0) {}
            conn_close(c);
            return;
        }
        c->connecting = 0;
        conn_watch(c);
        return;
    }
    if (events & EPOLLOUT) {
        struct dir *writing = s->which == 0 ? &c->to_client : &c->to_upstream;
        dir_flush(writing);
    }
    if (!c->closed && (events & (EPOLLIN | EPOLLHUP | EPOLLERR))) side_readable(s);
    if (!c->closed) conn_watch(c);
}

static int nonblocking_nodelay(int fd) {
    int one = 1;
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return -1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* as asyncio's transports */
    return 0;
}

static void accept_all(int listener) {
    for (;;) {
        int cfd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) return; /* EAGAIN, or out of descriptors: the rest wait */
        double now = now_s();
        int ufd = socket(upstream_addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (ufd < 0 || nonblocking_nodelay(ufd) < 0 || nonblocking_nodelay(cfd) < 0) {
            if (ufd >= 0) close(ufd);
            close(cfd);
            continue;
        }
        int r = connect(ufd, (struct sockaddr *)&upstream_addr, upstream_len);
        if (r < 0 && errno != EINPROGRESS) {
            close(ufd);
            close(cfd); /* the client sees its connection closed, as with a refused port */
            continue;
        }
        struct conn *c = calloc(1, sizeof *c);
        if (c == NULL) {
            fputs("delay_relay: out of memory\n", stderr);
            _exit(1);
        }
        c->connecting = r < 0;
        for (int i = 0; i < 2; i++)
            c->sides[i] = (struct side){.conn = c, .which = i, .fd = i == 0 ? cfd : ufd};
        c->to_upstream = (struct dir){.conn = c, .to = 1, .delay = to_upstream_delay,
                                      .not_before = now + 2 * to_upstream_delay + to_client_delay};
        c->to_client = (struct dir){.conn = c, .to = 0, .delay = to_client_delay};
        conn_watch(c);
    }
}

static void reap(void) {
    struct conn **p = &dead;
    while (*p) {
        struct conn *c = *p;
        if (c->heap_refs == 0) {
            *p = c->next_dead;
            free(c);
        } else {
            p = &c->next_dead;
        }
    }
}

/* -- the command line ----------------------------------------------------------------- */

static void usage_error(const char *message, const char *value) {
    fprintf(stderr, "usage: delay_relay --listen HOST:PORT --upstream HOST:PORT --delay-ms L "
                    "[--delay-direction upstream|downstream|both] [--realtime-priority N]\n"
                    "delay_relay: error: %s%s%s\n", message, value ? ": " : "",
            value ? value : "");
    exit(2);
}

/* HOST:PORT (the last colon splits: "::1:80" is ::1 port 80) into an address. */
static int resolve(const char *text, int passive, struct sockaddr_storage *out, socklen_t *len) {
    const char *colon = strrchr(text, ':');
    if (colon == NULL || colon == text || colon[1] == '\0') return -1;
    char host[256];
    size_t hl = (size_t)(colon - text);
    if (hl >= sizeof host) return -1;
    memcpy(host, text, hl);
    host[hl] = '\0';
    if (hl > 2 && host[0] == '[' && host[hl - 1] == ']') { /* [::1]:80 */
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port < 0 || port > 65535) return -1;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = passive ? AI_PASSIVE : 0};
    struct addrinfo *found;
    char service[8];
    snprintf(service, sizeof service, "%ld", port);
    if (getaddrinfo(host, service, &hints, &found) != 0) return -1;
    memcpy(out, found->ai_addr, found->ai_addrlen);
    *len = found->ai_addrlen;
    freeaddrinfo(found);
    return 0;
}

int main(int argc, char **argv) {
    const char *listen_text = NULL, *upstream_text = NULL, *delay_text = NULL;
    const char *direction = "upstream", *priority_text = "0";
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char **slot = !strcmp(arg, "--listen") ? &listen_text
                            : !strcmp(arg, "--upstream") ? &upstream_text
                            : !strcmp(arg, "--delay-ms") ? &delay_text
                            : !strcmp(arg, "--delay-direction") ? &direction
                            : !strcmp(arg, "--realtime-priority") ? &priority_text : NULL;
        if (slot == NULL) usage_error("unrecognized argument", arg);
        if (i + 1 >= argc) usage_error("expected one argument after", arg);
        *slot = argv[++i];
    }
    if (!listen_text || !upstream_text || !delay_text)
        usage_error("the following arguments are required: --listen, --upstream, --delay-ms",
                    NULL);
    char *end;
    double delay_ms = strtod(delay_text, &end);
    if (*delay_text == '\0' || *end != '\0' || !(delay_ms >= 0) || !isfinite(delay_ms))
        usage_error("--delay-ms: expected milliseconds >= 0, got", delay_text);
    long priority = strtol(priority_text, &end, 10);
    if (*priority_text == '\0' || *end != '\0' || priority < 0 || priority > 99)
        usage_error("--realtime-priority: expected 0 (off) or a priority 1-99, got",
                    priority_text);
    int up = !strcmp(direction, "upstream"), down = !strcmp(direction, "downstream");
    int both = !strcmp(direction, "both");
    if (!up && !down && !both)
        usage_error("--delay-direction: must be one of upstream, downstream, both, got",
                    direction);
    to_client_delay = (up || both) ? delay_ms / 1000 : 0;
    to_upstream_delay = (down || both) ? delay_ms / 1000 : 0;
    struct sockaddr_storage listen_addr;
    socklen_t listen_len;
    if (resolve(listen_text, 1, &listen_addr, &listen_len) < 0)
        usage_error("--listen: expected HOST:PORT, got", listen_text);
    if (resolve(upstream_text, 0, &upstream_addr, &upstream_len) < 0)
        usage_error("--upstream: expected HOST:PORT, got", upstream_text);

    const char *sched = "other";
    if (priority > 0) {
        struct sched_param param = {.sched_priority = (int)priority};
        if (sched_setscheduler(0, SCHED_FIFO, &param) == 0) sched = "fifo";
    }
    struct rlimit files;
    if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
        files.rlim_cur = files.rlim_max; /* two descriptors a connection */
        setrlimit(RLIMIT_NOFILE, &files);
    }
    signal(SIGPIPE, SIG_IGN);

    int listener = socket(listen_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (listener < 0 || bind(listener, (struct sockaddr *)&listen_addr, listen_len) < 0 ||
        listen(listener, 4096) < 0) {
        fprintf(stderr, "error: cannot listen on %s: %s\n", listen_text, strerror(errno));
        return 2;
    }
    struct sockaddr_storage bound;
    socklen_t bound_len = sizeof bound;
    getsockname(listener, (struct sockaddr *)&bound, &bound_len);
    char host[NI_MAXHOST], port[NI_MAXSERV];
    getnameinfo((struct sockaddr *)&bound, bound_len, host, sizeof host, port, sizeof port,
                NI_NUMERICHOST | NI_NUMERICSERV);

    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, listener, &lev);
    printf("listening %s:%s loop=epoll sched=%s\n", host, port, sched);
    fflush(stdout);

    struct epoll_event events[256];
    for (;;) {
        int timeout = -1;
        if (heap_len > 0) { /* round up: a chunk is never released early */
            double wait_ms = (heap[0].due - now_s()) * 1000;
            /* at most a minute at a time: an int, whatever --delay-ms was */
            timeout = wait_ms <= 0 ? 0 : wait_ms > 60000 ? 60000 : (int)ceil(wait_ms);
        }
        int n = epoll_wait(ep, events, 256, timeout);
        if (n < 0 && errno != EINTR) {
            perror("delay_relay: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr == NULL) accept_all(listener);
            else side_event(events[i].data.ptr, events[i].events);
        }
        double now = now_s();
        while (heap_len > 0 && heap[0].due <= now) {
            struct entry e = heap_pop();
            struct conn *c = e.dir->conn;
            e.dir->in_heap = 0;
            c->heap_refs--;
            if (!c->closed) {
                dir_release(e.dir, now);
                if (!c->closed) conn_watch(c);
            }
        }
        reap();
    }
}
