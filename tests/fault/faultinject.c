/* faultinject: an LD_PRELOAD shim for tests that makes one chosen call of a
 * libc function fail, to see how dmnist handles it.
 *
 *   DMNIST_FAULT=KIND:N[+][:ERRNO][,KIND:N...]
 *
 * makes the Nth call (counting from 1) of KIND fail with ERRNO; with "+" the
 * Nth and every later call fail (a full disk, a dead network). KIND and its
 * default errno:
 *
 *   malloc   malloc, calloc, realloc (size > 0), posix_memalign,
 *            aligned_alloc                                          ENOMEM
 *   write    write, pwrite                                          ENOSPC
 *   fsync    fsync, fdatasync                                       EIO
 *   rename   rename, renameat                                       EIO
 *   open     open, open64, openat, creat, fopen, fopen64 of a file
 *            for writing (O_WRONLY, O_RDWR, O_CREAT or a "w"/"a"/"+"
 *            mode); opens for reading are not counted               EACCES
 *   socket   socket                                                 EMFILE
 *   connect  connect                                                ECONNREFUSED
 *   send     send, sendto, sendmsg                                  ECONNRESET
 *
 * ERRNO is a name: EIO ENOSPC EACCES ENOMEM EMFILE ECONNREFUSED ECONNRESET
 * EINTR EAGAIN EROFS EDQUOT EPIPE EXDEV.
 *
 *   DMNIST_FAULT_CALLER=SUBSTR   count malloc-family calls only when the
 *            caller's object file (dladdr) contains SUBSTR, e.g. the build
 *            folder: dmnist's own allocations, not libc's or OpenMP's
 *   DMNIST_FAULT_LOG=FILE        append one line per failed call, naming the
 *            call, its number and the caller (object+offset, symbol)
 *   DMNIST_FAULT_REPORT=FILE     at exit, write "KIND COUNT" for every kind:
 *            how many calls were counted (a run without DMNIST_FAULT tells
 *            a test how far to walk N)
 *
 * A DMNIST_FAULT it cannot parse stops the process with one line on stderr
 * and exit status 2. Not for sanitizer builds: ASan owns malloc and must be
 * the first library loaded. Test code only; never installed.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum { K_MALLOC, K_WRITE, K_FSYNC, K_RENAME, K_OPEN, K_SOCKET, K_CONNECT, K_SEND, K_COUNT };
static const char *const kind_name[K_COUNT] = {"malloc", "write",  "fsync",   "rename",
                                               "open",   "socket", "connect", "send"};
static const int kind_errno[K_COUNT] = {ENOMEM, ENOSPC, EIO, EIO, EACCES, EMFILE, ECONNREFUSED, ECONNRESET};

static const struct {
    const char *name;
    int value;
} errnos[] = {
    {"EIO", EIO},
    {"ENOSPC", ENOSPC},
    {"EACCES", EACCES},
    {"ENOMEM", ENOMEM},
    {"EMFILE", EMFILE},
    {"ECONNREFUSED", ECONNREFUSED},
    {"ECONNRESET", ECONNRESET},
    {"EINTR", EINTR},
    {"EAGAIN", EAGAIN},
    {"EROFS", EROFS},
    {"EDQUOT", EDQUOT},
    {"EPIPE", EPIPE},
    {"EXDEV", EXDEV},
};

static struct {
    long long n; /* fail call n (0: never) */
    int sticky;  /* and every later one */
    int err;
} rule[K_COUNT];
static long long counter[K_COUNT];
static const char *caller_filter;
static int ready; /* set once the constructor has parsed the environment */

/* glibc's own allocator, so that no dlsym is needed for the malloc family. */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_rename)(const char *, const char *);
static int (*real_renameat)(int, const char *, int, const char *);
static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_creat)(const char *, mode_t);
static FILE *(*real_fopen)(const char *, const char *);
static FILE *(*real_fopen64)(const char *, const char *);
static int (*real_socket)(int, int, int);
static int (*real_connect)(int, const struct sockaddr *, socklen_t);
static ssize_t (*real_send)(int, const void *, size_t, int);
static ssize_t (*real_sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
static ssize_t (*real_sendmsg)(int, const struct msghdr *, int);
static int (*real_close)(int);

#define RESOLVE(f) (real_##f = (__typeof__(real_##f))dlsym(RTLD_NEXT, #f))

static void die(const char *fmt, const char *arg)
{
    char line[512];
    int n = snprintf(line, sizeof line, fmt, arg);
    if (n > (int)sizeof line - 1) n = (int)sizeof line - 1;
    line[n] = '\n';
    if (real_write) real_write(2, line, (size_t)n + 1);
    _exit(2);
}

static void append_line(const char *path, const char *text)
{
    if (!path || !real_open || !real_write) return;
    int fd = real_open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return;
    real_write(fd, text, strlen(text));
    real_close(fd);
}

/* Decide whether this call of KIND fails; counts it. CALLER: the return
 * address of the interposed function (for the log and the caller filter). */
static __thread int busy __attribute__((tls_model("initial-exec")));

static int fault_checked(int kind, const void *caller);

static int fault(int kind, const void *caller)
{
    /* calls made by the shim itself (dladdr, snprintf, strerror) are neither counted nor failed */
    if (!ready || busy) return 0;
    busy = 1;
    int e = errno, r = fault_checked(kind, caller);
    errno = r ? rule[kind].err : e;
    busy = 0;
    return r;
}

static int fault_checked(int kind, const void *caller)
{
    if (kind == K_MALLOC && caller_filter) {
        Dl_info di;
        if (!dladdr(caller, &di) || !di.dli_fname || !strstr(di.dli_fname, caller_filter)) return 0;
    }
    long long c = __atomic_add_fetch(&counter[kind], 1, __ATOMIC_RELAXED);
    if (!rule[kind].n || c < rule[kind].n || (c > rule[kind].n && !rule[kind].sticky)) return 0;
    const char *log = getenv("DMNIST_FAULT_LOG");
    if (log) {
        Dl_info di;
        char line[768];
        if (dladdr(caller, &di) && di.dli_fname) {
            snprintf(line, sizeof line, "faultinject: %s call %lld failed (%s) from %s+%#lx (%s)\n", kind_name[kind], c,
                     strerror(rule[kind].err), di.dli_fname,
                     (unsigned long)((const char *)caller - (const char *)di.dli_fbase),
                     di.dli_sname ? di.dli_sname : "?");
        } else {
            snprintf(line, sizeof line, "faultinject: %s call %lld failed (%s) from %p\n", kind_name[kind], c,
                     strerror(rule[kind].err), caller);
        }
        append_line(log, line);
    }
    return 1;
}

#define CALLER __builtin_extract_return_addr(__builtin_return_address(0))

static void parse(const char *spec)
{
    char buf[512];
    if (strlen(spec) >= sizeof buf) die("faultinject: DMNIST_FAULT is too long: %s", spec);
    strcpy(buf, spec);
    char *save = NULL;
    for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(item, ':');
        if (!colon) die("faultinject: DMNIST_FAULT: '%s' is not KIND:N[+][:ERRNO]", item);
        *colon = '\0';
        int k = 0;
        while (k < K_COUNT && strcmp(item, kind_name[k]) != 0) k++;
        if (k == K_COUNT)
            die("faultinject: DMNIST_FAULT: unknown kind '%s' (malloc, write, fsync, rename, open, socket, "
                "connect, send)",
                item);
        char *end;
        errno = 0;
        long long n = strtoll(colon + 1, &end, 10);
        if (end == colon + 1 || n < 1 || errno) die("faultinject: DMNIST_FAULT: '%s' needs a call number N >= 1", item);
        rule[k].n = n;
        rule[k].err = kind_errno[k];
        if (*end == '+') {
            rule[k].sticky = 1;
            end++;
        }
        if (*end == ':') {
            size_t i = 0;
            while (i < sizeof errnos / sizeof errnos[0] && strcmp(end + 1, errnos[i].name) != 0) i++;
            if (i == sizeof errnos / sizeof errnos[0])
                die("faultinject: DMNIST_FAULT: unknown errno name '%s'", end + 1);
            rule[k].err = errnos[i].value;
        } else if (*end) {
            die("faultinject: DMNIST_FAULT: trailing text in the entry for '%s'", item);
        }
    }
}

__attribute__((constructor)) static void faultinject_init(void)
{
    RESOLVE(write);
    RESOLVE(pwrite);
    RESOLVE(fsync);
    RESOLVE(fdatasync);
    RESOLVE(rename);
    RESOLVE(renameat);
    RESOLVE(open);
    RESOLVE(open64);
    RESOLVE(openat);
    RESOLVE(creat);
    RESOLVE(fopen);
    RESOLVE(fopen64);
    RESOLVE(socket);
    RESOLVE(connect);
    RESOLVE(send);
    RESOLVE(sendto);
    RESOLVE(sendmsg);
    RESOLVE(close);
    const char *spec = getenv("DMNIST_FAULT");
    if (spec && *spec) parse(spec);
    caller_filter = getenv("DMNIST_FAULT_CALLER");
    if (caller_filter && !*caller_filter) caller_filter = NULL;
    ready = 1;
}

__attribute__((destructor)) static void faultinject_fini(void)
{
    const char *path = getenv("DMNIST_FAULT_REPORT");
    if (!path) return;
    ready = 0;
    char text[512];
    size_t len = 0;
    for (int k = 0; k < K_COUNT; k++)
        len += (size_t)snprintf(text + len, sizeof text - len, "%s %lld\n", kind_name[k],
                                __atomic_load_n(&counter[k], __ATOMIC_RELAXED));
    /* one report per process: several processes (ranks) write several files */
    char name[4200];
    snprintf(name, sizeof name, "%s.%ld", path, (long)getpid());
    int fd = real_open ? real_open(name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644) : -1;
    if (fd >= 0) {
        real_write(fd, text, len);
        real_close(fd);
    }
}

/* ---- the malloc family ------------------------------------------------------- */

void *malloc(size_t n)
{
    if (fault(K_MALLOC, CALLER)) return NULL;
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t size)
{
    if (fault(K_MALLOC, CALLER)) return NULL;
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t n)
{
    if (n && fault(K_MALLOC, CALLER)) return NULL;
    return __libc_realloc(p, n);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    if (fault(K_MALLOC, CALLER)) return ENOMEM;
    if (align < sizeof(void *) || (align & (align - 1))) return EINVAL;
    void *p = __libc_memalign(align, n);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}

void *aligned_alloc(size_t align, size_t n)
{
    if (fault(K_MALLOC, CALLER)) return NULL;
    return __libc_memalign(align, n);
}

/* ---- files ------------------------------------------------------------------- */

ssize_t write(int fd, const void *buf, size_t n)
{
    if (fault(K_WRITE, CALLER)) return -1;
    return real_write(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    if (fault(K_WRITE, CALLER)) return -1;
    return real_pwrite(fd, buf, n, off);
}

int fsync(int fd)
{
    if (fault(K_FSYNC, CALLER)) return -1;
    return real_fsync(fd);
}

int fdatasync(int fd)
{
    if (fault(K_FSYNC, CALLER)) return -1;
    return real_fdatasync(fd);
}

int rename(const char *from, const char *to)
{
    if (fault(K_RENAME, CALLER)) return -1;
    return real_rename(from, to);
}

int renameat(int dfrom, const char *from, int dto, const char *to)
{
    if (fault(K_RENAME, CALLER)) return -1;
    return real_renameat(dfrom, from, dto, to);
}

static int writes(int flags) { return (flags & (O_WRONLY | O_RDWR | O_CREAT)) != 0; }

static mode_t mode_arg(int flags, va_list ap)
{
    return (flags & (O_CREAT | O_TMPFILE)) == 0 ? 0 : (mode_t)va_arg(ap, int);
}

/* open and open64: fail the Nth open for writing, pass everything else on. */
#define FAULT_OPEN(name, real) \
    int name(const char *path, int flags, ...) \
    { \
        va_list ap; \
        va_start(ap, flags); \
        mode_t mode = mode_arg(flags, ap); \
        va_end(ap); \
        if (writes(flags) && fault(K_OPEN, CALLER)) return -1; \
        return real(path, flags, mode); \
    }
FAULT_OPEN(open, real_open)
FAULT_OPEN(open64, real_open64)

int openat(int dir, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    if (writes(flags) && fault(K_OPEN, CALLER)) return -1;
    return real_openat(dir, path, flags, mode);
}

int creat(const char *path, mode_t mode)
{
    if (fault(K_OPEN, CALLER)) return -1;
    return real_creat(path, mode);
}

static int mode_writes(const char *mode) { return mode && strpbrk(mode, "wa+") != NULL; }

FILE *fopen(const char *path, const char *mode)
{
    if (mode_writes(mode) && fault(K_OPEN, CALLER)) return NULL;
    return real_fopen(path, mode);
}

FILE *fopen64(const char *path, const char *mode)
{
    if (mode_writes(mode) && fault(K_OPEN, CALLER)) return NULL;
    return real_fopen64(path, mode);
}

/* ---- sockets ----------------------------------------------------------------- */

int socket(int domain, int type, int protocol)
{
    if (fault(K_SOCKET, CALLER)) return -1;
    return real_socket(domain, type, protocol);
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    if (fault(K_CONNECT, CALLER)) return -1;
    return real_connect(fd, addr, len);
}

ssize_t send(int fd, const void *buf, size_t n, int flags)
{
    if (fault(K_SEND, CALLER)) return -1;
    return real_send(fd, buf, n, flags);
}

ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *to, socklen_t len)
{
    if (fault(K_SEND, CALLER)) return -1;
    return real_sendto(fd, buf, n, flags, to, len);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    if (fault(K_SEND, CALLER)) return -1;
    return real_sendmsg(fd, msg, flags);
}
