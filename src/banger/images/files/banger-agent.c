/*
 * banger-agent: the daemon's fast channel into a guest (exec, clock, RNG), one static binary.
 *
 * Written in C and linked statically so it runs in any image, whatever it lacks (no libc version, shell
 * or interpreter is assumed); built in the golden image's own tree (gcc -static) and copied into others.
 *
 * Link: the virtio-serial port named "org.banger.agent" (QEMU; found through /sys/class/virtio-ports,
 * so no udev is needed), else AF_VSOCK port 52 (Firecracker). One host connection at a time; when the
 * host goes away every command it started still running is killed (with its process group).
 *
 * Frames, both ways: u32 payload length (big-endian), u32 channel, u8 kind, payload (<= 1 MiB).
 *   host -> guest                                 guest -> host
 *   1 EXEC    cwd\0 nenv\0 env...\0 argv...\0     16 STDOUT  bytes
 *   2 STDIN   bytes; empty = end of input         17 STDERR  bytes
 *   3 SIGNAL  one byte: signal number             18 EXIT    u32: wait status (after stdout/err end)
 *   4 SETTIME u64 ns since the epoch              19 ERROR   text; the channel is finished
 *   5 RESEED  bytes credited to the kernel RNG    20 OK      reply to SETTIME/RESEED/PING (text)
 *   6 PING                                        21 ACK     one STDIN frame is in the pipe
 * The host sends one STDIN frame per channel and waits for its ACK, so a slow reader is backpressure,
 * not memory.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/random.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define VERSION "banger-agent 1"
#define PORT_NAME "org.banger.agent"
#define VSOCK_PORT 52
#define MAX_PAYLOAD (1u << 20)
#define HEADER 9
#define MAX_CHANNELS 64
#define MAX_FIELDS 4096
#define DRAIN_MS 500 /* output still read after a command exits, for what it left in its pipes */
#define RESCAN_MS 500 /* the virtio port is read at least this often while a host is attached */

enum { K_EXEC = 1, K_STDIN, K_SIGNAL, K_SETTIME, K_RESEED, K_PING };
enum { K_STDOUT = 16, K_STDERR, K_EXIT, K_ERROR, K_OK, K_ACK };

struct channel {
    uint32_t id;
    pid_t pid;             /* 0: slot free */
    int in, out, err;      /* pipes to the child; -1 once closed */
    char *pending;         /* STDIN bytes not yet written */
    size_t pending_len, pending_off;
    int exited, status;
    long long exit_ms;     /* when it exited, for the drain deadline */
};

static struct channel chans[MAX_CHANNELS];
static int link_fd = -1, listen_fd = -1, serial = 0, connected = 0;
static unsigned char *inbuf;
static size_t inlen;

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void say(const char *msg) { fprintf(stderr, "banger-agent: %s\n", msg); }

static void put32(unsigned char *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void close_fd(int *fd) {
    if (*fd >= 0) { close(*fd); *fd = -1; }
}

static void release(struct channel *c) {
    close_fd(&c->in); close_fd(&c->out); close_fd(&c->err);
    free(c->pending);
    memset(c, 0, sizeof *c);
    c->in = c->out = c->err = -1;
}

/* Signal a command's process group; right after fork the child may not have called setsid yet. */
static void signal_command(pid_t pid, int sig) {
    if (kill(-pid, sig) < 0 && errno == ESRCH) kill(pid, sig);
}

/* The host is gone: kill everything it started and wait for a new connection. */
static void disconnect(void) {
    for (int i = 0; i < MAX_CHANNELS; i++) {
        if (chans[i].pid > 0) {
            if (!chans[i].exited) signal_command(chans[i].pid, SIGKILL);
            release(&chans[i]);
        }
    }
    if (!serial) close_fd(&link_fd);
    connected = 0;
    if (!serial && listen_fd < 0) exit(0); /* --fd: the one connection is over */
    inlen = 0;
}

/* Write all of buf to the link; a host that stops reading for 30 s counts as gone. */
static int link_write(const void *buf, size_t len) {
    const char *p = buf;
    int idle = 0;
    while (len > 0 && connected) {
        ssize_t n = write(link_fd, p, len);
        if (n > 0) { p += n; len -= (size_t)n; idle = 0; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) {
            struct pollfd pfd = { link_fd, POLLOUT, 0 };
            if (poll(&pfd, 1, 1000) == 0 && ++idle >= 30) break;
            if (pfd.revents & (POLLHUP | POLLERR)) break;
            continue;
        }
        break;
    }
    if (len > 0) { disconnect(); return -1; }
    return 0;
}

static void send_frame(uint32_t chan, int kind, const void *data, size_t len) {
    unsigned char h[HEADER];
    if (!connected) return;
    put32(h, (uint32_t)len); put32(h + 4, chan); h[8] = (unsigned char)kind;
    if (link_write(h, HEADER) == 0 && len > 0) link_write(data, len);
}

static void send_text(uint32_t chan, int kind, const char *text) { send_frame(chan, kind, text, strlen(text)); }

static struct channel *find(uint32_t id) {
    for (int i = 0; i < MAX_CHANNELS; i++)
        if (chans[i].pid > 0 && chans[i].id == id) return &chans[i];
    return NULL;
}

static void nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static void do_exec(uint32_t id, unsigned char *payload, uint32_t len) {
    static char *fields[MAX_FIELDS + 1];
    int n = 0;
    size_t off = 0;
    struct channel *c = NULL;
    while (off < len && n < MAX_FIELDS) {
        char *s = (char *)payload + off;
        size_t l = strnlen(s, len - off);
        if (off + l >= len) break; /* unterminated field */
        fields[n++] = s;
        off += l + 1;
    }
    if (n < 3 || off != len || find(id)) { send_text(id, K_ERROR, "malformed EXEC frame"); return; }
    int nenv = atoi(fields[1]);
    if (nenv < 0 || 2 + nenv >= n) { send_text(id, K_ERROR, "EXEC without a command"); return; }
    for (int i = 0; i < MAX_CHANNELS; i++)
        if (chans[i].pid == 0) { c = &chans[i]; break; }
    if (!c) { send_text(id, K_ERROR, "too many commands running in this guest (64)"); return; }
    int pin[2] = { -1, -1 }, pout[2] = { -1, -1 }, perr[2] = { -1, -1 };
    if (pipe2(pin, O_CLOEXEC) < 0 || pipe2(pout, O_CLOEXEC) < 0 || pipe2(perr, O_CLOEXEC) < 0) {
        int saved = errno;
        for (int i = 0; i < 2; i++) { close_fd(&pin[i]); close_fd(&pout[i]); close_fd(&perr[i]); }
        send_text(id, K_ERROR, strerror(saved));
        return;
    }
    fields[n] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        setsid();
        dup2(pin[0], 0); dup2(pout[1], 1); dup2(perr[1], 2);
        /* dup2 onto itself keeps close-on-exec; a pipe end may already be 0, 1 or 2. */
        for (int fd = 0; fd < 3; fd++) fcntl(fd, F_SETFD, 0);
        clearenv();
        setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
        setenv("HOME", "/root", 1); setenv("USER", "root", 1); setenv("LOGNAME", "root", 1);
        setenv("SHELL", "/bin/sh", 1); setenv("LANG", "C.UTF-8", 1);
        for (int i = 0; i < nenv; i++) putenv(fields[2 + i]);
        if (fields[0][0] && chdir(fields[0]) < 0) {
            dprintf(2, "banger-agent: cannot cd to %s: %s\n", fields[0], strerror(errno));
            _exit(126);
        }
        execvp(fields[2 + nenv], &fields[2 + nenv]);
        dprintf(2, "banger-agent: cannot run %s: %s\n", fields[2 + nenv], strerror(errno));
        _exit(errno == ENOENT ? 127 : 126);
    }
    close(pin[0]); close(pout[1]); close(perr[1]);
    if (pid < 0) {
        int saved = errno;
        close(pin[1]); close(pout[0]); close(perr[0]);
        send_text(id, K_ERROR, strerror(saved));
        return;
    }
    c->id = id; c->pid = pid; c->in = pin[1]; c->out = pout[0]; c->err = perr[0];
    nonblock(c->in); nonblock(c->out); nonblock(c->err);
}

static void flush_stdin(struct channel *c) {
    while (c->pending_off < c->pending_len) {
        ssize_t n = write(c->in, c->pending + c->pending_off, c->pending_len - c->pending_off);
        if (n > 0) { c->pending_off += (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return;
        break; /* the command closed its input: drop the rest, as a pipe would */
    }
    free(c->pending);
    c->pending = NULL;
    c->pending_len = c->pending_off = 0;
    send_frame(c->id, K_ACK, NULL, 0);
}

static void do_stdin(uint32_t id, unsigned char *payload, uint32_t len) {
    struct channel *c = find(id);
    if (!c) return; /* finished already: its input no longer matters */
    if (len == 0) {
        if (!c->pending) close_fd(&c->in);
        send_frame(id, K_ACK, NULL, 0);
        return;
    }
    if (c->in < 0 || c->pending || !(c->pending = malloc(len))) { send_frame(id, K_ACK, NULL, 0); return; }
    memcpy(c->pending, payload, len);
    c->pending_len = len;
    c->pending_off = 0;
    flush_stdin(c);
}

static void do_settime(uint32_t id, unsigned char *p, uint32_t len) {
    if (len != 8) { send_text(id, K_ERROR, "SETTIME takes 8 bytes"); return; }
    uint64_t ns = (uint64_t)get32(p) << 32 | get32(p + 4);
    struct timespec ts = { (time_t)(ns / 1000000000u), (long)(ns % 1000000000u) };
    if (clock_settime(CLOCK_REALTIME, &ts) < 0) { send_text(id, K_ERROR, strerror(errno)); return; }
    send_text(id, K_OK, "clock set");
}

static void do_reseed(uint32_t id, unsigned char *p, uint32_t len) {
    if (len == 0 || len > 4096) { send_text(id, K_ERROR, "RESEED takes 1..4096 bytes"); return; }
    struct rand_pool_info *info = malloc(sizeof *info + len);
    int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
    if (!info || fd < 0) {
        int saved = errno;
        free(info);
        if (fd >= 0) close(fd);
        send_text(id, K_ERROR, strerror(saved));
        return;
    }
    info->entropy_count = (int)len * 8;
    info->buf_size = (int)len;
    memcpy(info->buf, p, len);
    int rc = ioctl(fd, RNDADDENTROPY, info);
    if (rc == 0) rc = ioctl(fd, RNDRESEEDCRNG);
    int saved = errno;
    close(fd);
    free(info);
    if (rc < 0) { send_text(id, K_ERROR, strerror(saved)); return; }
    send_text(id, K_OK, "rng reseeded");
}

static void handle_frame(uint32_t chan, int kind, unsigned char *payload, uint32_t len) {
    struct channel *c;
    switch (kind) {
    case K_EXEC: do_exec(chan, payload, len); break;
    case K_STDIN: do_stdin(chan, payload, len); break;
    case K_SIGNAL:
        c = find(chan);
        if (c && !c->exited && len == 1) signal_command(c->pid, payload[0]);
        break;
    case K_SETTIME: do_settime(chan, payload, len); break;
    case K_RESEED: do_reseed(chan, payload, len); break;
    case K_PING: send_text(chan, K_OK, VERSION); break;
    default: send_text(chan, K_ERROR, "unknown frame kind"); break;
    }
}

/* Handle every whole frame in inbuf; keep a partial one for the next read. */
static void process_input(void) {
    size_t off = 0;
    while (connected && inlen - off >= HEADER) {
        uint32_t len = get32(inbuf + off);
        if (len > MAX_PAYLOAD) { say("oversized frame from the host; dropping the link"); disconnect(); return; }
        if (inlen - off < HEADER + len) break;
        handle_frame(get32(inbuf + off + 4), inbuf[off + 8], inbuf + off + HEADER, len);
        off += HEADER + len;
    }
    if (!connected) return;
    memmove(inbuf, inbuf + off, inlen - off);
    inlen -= off;
}

static void read_link(void) {
    while (connected) {
        ssize_t n = read(link_fd, inbuf + inlen, HEADER + MAX_PAYLOAD - inlen);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return;
        if (n <= 0) { disconnect(); return; }
        inlen += (size_t)n;
        process_input();
    }
}

/* Forward one read of what the command wrote: 1 while the pipe is open, 0 at its end (closed). One read
 * per poll round, so a command that never stops printing cannot keep the link from being read. */
static int pump(struct channel *c, int *fd, int kind) {
    static char buf[65536];
    for (;;) {
        ssize_t n = read(*fd, buf, sizeof buf);
        if (n > 0) { send_frame(c->id, kind, buf, (size_t)n); return connected; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return 1;
        close_fd(fd);
        return 0;
    }
}

/* Report commands that exited and whose output ended (or whose drain time is up). */
static void finish_done(void) {
    for (int i = 0; i < MAX_CHANNELS && connected; i++) {
        struct channel *c = &chans[i];
        if (c->pid <= 0 || !c->exited) continue;
        if (c->out >= 0 || c->err >= 0) {
            if (now_ms() - c->exit_ms < DRAIN_MS) continue;
            /* A background child may still hold the pipes: take what is there (bounded), then stop. */
            for (int i = 0; i < 16 && connected && c->out >= 0; i++) pump(c, &c->out, K_STDOUT);
            for (int i = 0; i < 16 && connected && c->err >= 0; i++) pump(c, &c->err, K_STDERR);
            if (!connected) return;
        }
        unsigned char st[4];
        put32(st, (uint32_t)c->status);
        send_frame(c->id, K_EXIT, st, 4);
        if (c->pid > 0) release(c);
    }
}

static void reap(int sfd) {
    struct signalfd_siginfo si;
    while (read(sfd, &si, sizeof si) > 0) {}
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < MAX_CHANNELS; i++) {
            if (chans[i].pid == pid) {
                chans[i].exited = 1;
                chans[i].status = status;
                chans[i].exit_ms = now_ms();
            }
        }
    }
}

static int open_serial(void) {
    DIR *dir = opendir("/sys/class/virtio-ports");
    struct dirent *e;
    int fd = -1;
    if (!dir) return -1;
    while (fd < 0 && (e = readdir(dir)) != NULL) {
        char path[512], name[128] = "";
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
        FILE *f = fopen(path, "re");
        if (!f) continue;
        if (fgets(name, sizeof name, f)) name[strcspn(name, "\n")] = 0;
        fclose(f);
        if (strcmp(name, PORT_NAME) != 0) continue;
        snprintf(path, sizeof path, "/dev/%s", e->d_name);
        fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    }
    closedir(dir);
    return fd;
}

static int open_vsock(void) {
    struct sockaddr_vm addr = { .svm_family = AF_VSOCK, .svm_port = VSOCK_PORT, .svm_cid = VMADDR_CID_ANY };
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(fd, 4) < 0) { close(fd); return -1; }
    return fd;
}

/* Firecracker guests say banger.agent=vsock on the kernel command line; QEMU guests use the port. */
static int wants_vsock(void) {
    char line[4096] = "";
    FILE *f = fopen("/proc/cmdline", "re");
    if (!f) return 0;
    if (!fgets(line, sizeof line, f)) line[0] = 0;
    fclose(f);
    return strstr(line, "banger.agent=vsock") != NULL;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    /* Started with 0, 1 or 2 closed, our pipes would land there: keep them taken. */
    int null_fd;
    while ((null_fd = open("/dev/null", O_RDWR)) >= 0 && null_fd < 3) {}
    if (null_fd >= 3) close(null_fd);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    inbuf = malloc(HEADER + MAX_PAYLOAD);
    if (sfd < 0 || !inbuf) { say("cannot set up"); return 1; }
    for (int i = 0; i < MAX_CHANNELS; i++) release(&chans[i]);
    if (argc == 3 && strcmp(argv[1], "--fd") == 0) {
        /* One connection on an inherited socket, then exit: how the host-side tests drive the agent. */
        link_fd = atoi(argv[2]);
        nonblock(link_fd);
        connected = 1;
    }
    /* The port or the vsock device may appear a little after we start (module load): wait for it. */
    int vsock = link_fd < 0 && wants_vsock();
    for (int tries = 0; link_fd < 0 && listen_fd < 0; tries++) {
        if (vsock) listen_fd = open_vsock();
        else if ((link_fd = open_serial()) >= 0) serial = 1;
        if (link_fd >= 0 || listen_fd >= 0) break;
        if (tries >= 600) { say(vsock ? "no vsock device" : "no virtio port " PORT_NAME); return 1; }
        usleep(100000);
    }
    if (argc != 3) say(serial ? "listening on virtio port " PORT_NAME : "listening on vsock port 52");
    static struct pollfd pfds[2 + 3 * MAX_CHANNELS];
    static struct channel *owner[2 + 3 * MAX_CHANNELS];
    for (;;) {
        int np = 0, timeout = -1;
        if (serial && !connected) {
            /* A virtio port reads 0 while no host is attached (and polls as hung up): probe it. */
            ssize_t r = read(link_fd, inbuf, HEADER + MAX_PAYLOAD);
            if (r > 0) { connected = 1; inlen = (size_t)r; process_input(); }
            else if (r < 0 && errno == EAGAIN) connected = 1;
            if (!connected) timeout = 50;
        }
        /* A clone wakes up with its template's interrupt state; should a wake-up for the port be lost
         * there, its data would wait in the ring forever. A read takes buffers off the ring itself, so
         * the link is also read every RESCAN_MS whatever poll says. */
        if (serial && connected && (timeout < 0 || timeout > RESCAN_MS)) timeout = RESCAN_MS;
        pfds[np].fd = sfd; pfds[np].events = POLLIN; owner[np++] = NULL;
        if (!serial && !connected) { pfds[np].fd = listen_fd; pfds[np].events = POLLIN; owner[np++] = NULL; }
        if (connected) { pfds[np].fd = link_fd; pfds[np].events = POLLIN; owner[np++] = NULL; }
        for (int i = 0; i < MAX_CHANNELS; i++) {
            struct channel *c = &chans[i];
            if (c->pid <= 0) continue;
            if (c->out >= 0) { pfds[np].fd = c->out; pfds[np].events = POLLIN; owner[np++] = c; }
            if (c->err >= 0) { pfds[np].fd = c->err; pfds[np].events = POLLIN; owner[np++] = c; }
            if (c->pending) { pfds[np].fd = c->in; pfds[np].events = POLLOUT; owner[np++] = c; }
            if (c->exited && (c->out >= 0 || c->err >= 0)) timeout = DRAIN_MS / 5;
        }
        int ready = poll(pfds, (nfds_t)np, timeout);
        if (ready < 0 && errno != EINTR) { say("poll failed"); return 1; }
        if (ready == 0 && serial && connected) read_link();
        for (int i = 0; i < np; i++) {
            if (!pfds[i].revents) continue;
            struct channel *c = owner[i];
            if (c == NULL) {
                if (pfds[i].fd == sfd) reap(sfd);
                else if (!serial && !connected && pfds[i].fd == listen_fd) {
                    int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd >= 0) { link_fd = fd; connected = 1; inlen = 0; }
                } else if (connected && pfds[i].fd == link_fd) read_link();
                continue;
            }
            if (c->pid <= 0) continue; /* released while handling an earlier fd */
            if (pfds[i].fd == c->out) pump(c, &c->out, K_STDOUT);
            else if (pfds[i].fd == c->err) pump(c, &c->err, K_STDERR);
            else if (pfds[i].fd == c->in && c->pending) flush_stdin(c);
        }
        finish_done();
    }
}
