/* slowsync: a stand-in for a slow disk in benchmarks.
 * Preloaded into a process (LD_PRELOAD), it makes every fsync/fdatasync wait
 * SLOWSYNC_US microseconds (default 2000) before syncing, as on a disk whose
 * flush takes that long (cloud block storage). Nothing else changes.
 *
 * bench/writes.py builds it with cc at run time for its slow-disk pass; by hand:
 *   sh bench/slowsync/build.sh /tmp/libslowsync.so
 *   SLOWSYNC_US=2000 LD_PRELOAD=/tmp/libslowsync.so python bench/writes.py --pass full
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long delay_us(void) {
    static long us = -1;
    if (us < 0) {
        const char *v = getenv("SLOWSYNC_US");
        us = v ? atol(v) : 2000;
    }
    return us;
}

static void wait_a_while(void) {
    long us = delay_us();
    struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
    while (nanosleep(&ts, &ts) != 0) {}
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    wait_a_while();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    wait_a_while();
    return real(fd);
}
