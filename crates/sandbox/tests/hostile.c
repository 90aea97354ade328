/* A deliberately hostile program for runbox's isolation tests. Built statically at
 * test time (gcc -static) and placed in a test image. Each subcommand attacks one
 * limit or boundary and prints what happened, so the tests can assert on it. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/keyctl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static const char *err(long r) { return r < 0 ? strerrorname_np(errno) : "OK"; }

/* Allocates and touches memory until killed. */
static int membomb(void) {
    for (size_t mb = 1;; mb++) {
        char *p = malloc(1 << 20);
        if (!p) { printf("malloc failed at %zu MiB\n", mb); return 1; }
        memset(p, 1, 1 << 20);
    }
}

/* Opens files until the descriptor limit; reports the errno. */
static int fdbomb(void) {
    int n = 0;
    for (;;) {
        int fd = open("/dev/null", O_RDONLY);
        if (fd < 0) { printf("opened %d then %s\n", n, strerrorname_np(errno)); return 0; }
        n++;
    }
}

/* Creates empty files in DIR until it fails; reports the errno. */
static int inodes(const char *dir) {
    char path[4096];
    for (long i = 0;; i++) {
        snprintf(path, sizeof path, "%s/f%ld", dir, i);
        int fd = open(path, O_CREAT | O_WRONLY, 0644);
        if (fd < 0) { printf("created %ld then %s\n", i, strerrorname_np(errno)); return 0; }
        close(fd);
    }
}

/* Appends 64 KiB blocks to FILE until a write fails; SIGXFSZ ignored so EFBIG shows. */
static int fill(const char *file) {
    static char block[65536];
    signal(SIGXFSZ, SIG_IGN);
    int fd = open(file, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    if (fd < 0) { printf("open: %s\n", strerrorname_np(errno)); return 1; }
    long total = 0;
    for (;;) {
        ssize_t w = write(fd, block, sizeof block);
        if (w <= 0) { printf("wrote %ld then %s\n", total, w < 0 ? strerrorname_np(errno) : "EOF"); return 0; }
        total += w;
    }
}

/* Writes 64 KiB blocks with SIGXFSZ at its default action (terminate). */
static int fsize(const char *file) {
    static char block[65536];
    int fd = open(file, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    for (;;) if (write(fd, block, sizeof block) < 0) { printf("write: %s\n", strerrorname_np(errno)); return 1; }
}

/* Tries system calls the sandbox must refuse, one line each: "name errno". */
static int syscalls(void) {
    printf("unshare_user %s\n", err(unshare(CLONE_NEWUSER)));
    printf("unshare_net %s\n", err(unshare(CLONE_NEWNET)));
    printf("keyctl %s\n", err(syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)));
    printf("io_uring_setup %s\n", err(syscall(SYS_io_uring_setup, 1, calloc(1, 256))));
    printf("userfaultfd %s\n", err(syscall(SYS_userfaultfd, 1 /* UFFD_USER_MODE_ONLY */)));
    printf("bpf %s\n", err(syscall(SYS_bpf, 0, 0, 0)));
    printf("perf_event_open %s\n", err(syscall(SYS_perf_event_open, calloc(1, 256), 0, -1, -1, 0)));
    printf("ptrace %s\n", err(syscall(SYS_ptrace, 0 /* TRACEME */, 0, 0, 0)));
    printf("mount %s\n", err(mount("none", "/tmp", "tmpfs", 0, NULL)));
    printf("setns %s\n", err(syscall(SYS_setns, 0, 0)));
    printf("personality %s\n", err(personality(0x0040000 /* ADDR_NO_RANDOMIZE */)));
    printf("x32_getpid %s\n", err(syscall(SYS_getpid | 0x40000000)));
    printf("clone3 %s\n", err(syscall(SYS_clone3, calloc(1, 88), 88)));
    printf("clone_newuser %s\n", err(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)));
    printf("socket_vsock %s\n", err(socket(40, SOCK_STREAM, 0)));
    printf("tiocsti %s\n", err(ioctl(0, TIOCSTI, "x")));
    printf("getpid %s\n", err(getpid()));
    return 0;
}

/* Terminal injection attempts: TIOCSTI on every stdio fd and on /dev/tty. */
static int tty(void) {
    for (int fd = 0; fd < 3; fd++) printf("fd%d isatty=%d tiocsti=%s\n", fd, isatty(fd), err(ioctl(fd, TIOCSTI, "x")));
    int t = open("/dev/tty", O_RDWR);
    printf("open_dev_tty %s\n", t < 0 ? strerrorname_np(errno) : "OK");
    printf("sid=%d pgid=%d\n", getsid(0), getpgid(0));
    return 0;
}

/* TCP connect to IP:PORT; prints the outcome. */
static int tcp_connect(const char *ip, int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, ip, &a.sin_addr);
    printf("connect %s:%d %s\n", ip, port, err(connect(s, (struct sockaddr *)&a, sizeof a)));
    return 0;
}

/* Listens on 127.0.0.1, connects to itself, sends "hi": proves loopback works. */
static int loopback(void) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    socklen_t len = sizeof a;
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1) || getsockname(l, (struct sockaddr *)&a, &len)) {
        printf("listen %s\n", strerrorname_np(errno));
        return 1;
    }
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, (struct sockaddr *)&a, sizeof a)) { printf("connect %s\n", strerrorname_np(errno)); return 1; }
    int s = accept(l, NULL, NULL);
    char buf[8] = {0};
    if (write(c, "hi", 2) != 2 || read(s, buf, sizeof buf - 1) != 2) { printf("exchange failed\n"); return 1; }
    printf("loopback %s\n", buf);
    return 0;
}

/* Forks until fork fails, keeping every child alive; reports the errno. */
static int forkbomb(void) {
    for (int n = 0;; n++) {
        pid_t p = fork();
        if (p < 0) { printf("forked %d then %s\n", n, strerrorname_np(errno)); fflush(stdout); pause(); }
        if (p == 0) { pause(); _exit(0); }
    }
}

/* Writes N bytes of 'x' to stdout, then a marker line on stderr. */
static int flood(long n) {
    static char block[65536];
    memset(block, 'x', sizeof block);
    while (n > 0) { long k = n < (long)sizeof block ? n : (long)sizeof block; if (write(1, block, k) < 0) return 1; n -= k; }
    fprintf(stderr, "flood done\n");
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc < 2) { fprintf(stderr, "usage: hostile CMD [ARGS]\n"); return 2; }
    const char *c = argv[1];
    if (!strcmp(c, "membomb")) return membomb();
    if (!strcmp(c, "fdbomb")) return fdbomb();
    if (!strcmp(c, "busy")) for (;;) {}
    if (!strcmp(c, "inodes") && argc > 2) return inodes(argv[2]);
    if (!strcmp(c, "fill") && argc > 2) return fill(argv[2]);
    if (!strcmp(c, "fsize") && argc > 2) return fsize(argv[2]);
    if (!strcmp(c, "syscalls")) return syscalls();
    if (!strcmp(c, "tty")) return tty();
    if (!strcmp(c, "connect") && argc > 3) return tcp_connect(argv[2], atoi(argv[3]));
    if (!strcmp(c, "forkbomb")) return forkbomb();
    if (!strcmp(c, "loopback")) return loopback();
    if (!strcmp(c, "flood") && argc > 2) return flood(atol(argv[2]));
    fprintf(stderr, "unknown command %s\n", c);
    return 2;
}
