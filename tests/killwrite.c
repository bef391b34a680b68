/* LD_PRELOAD shim for tests/test_kill_writes.py: SIGKILL this process just before its N-th pwrite.
 *
 * HDF5's default (sec2) driver writes with pwrite/pwrite64 only. The N-th call of the process
 * (N = $KILL_BEFORE_PWRITE, counting from 1) raises SIGKILL before writing, so the file holds exactly
 * the first N - 1 writes: every state a kill can leave between two writes. With $PWRITE_COUNT_FILE
 * set, the number of calls is written there when the process exits normally.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>

static long calls = 0;

static void before_write(void) {
    static long at = -2;
    if (at == -2) {
        const char *value = getenv("KILL_BEFORE_PWRITE");
        at = value ? atol(value) : -1;
    }
    if (++calls == at) raise(SIGKILL);
}

__attribute__((destructor)) static void report(void) {
    const char *path = getenv("PWRITE_COUNT_FILE");
    FILE *out = path ? fopen(path, "w") : NULL;
    if (out) {
        fprintf(out, "%ld\n", calls);
        fclose(out);
    }
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t offset) {
    static ssize_t (*real)(int, const void *, size_t, off_t);
    if (!real) real = (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite64");
    before_write();
    return real(fd, buf, n, offset);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t offset) {
    static ssize_t (*real)(int, const void *, size_t, off_t);
    if (!real) real = (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
    before_write();
    return real(fd, buf, n, offset);
}
