/*
 * vmkit-blkio: the few block-device operations busybox lacks, for the Linux
 * test guest that scripts/debian-guest.sh builds (initrd-qemu.img). Built
 * static by that script (gcc -static), run inside the guest.
 *
 *   vmkit-blkio pattern SEED BYTES
 *       writes BYTES bytes of a xorshift32 stream to stdout: state SEED
 *       (non-zero), each step x ^= x << 13; x ^= x >> 17; x ^= x << 5,
 *       then the 4 bytes of x, little-endian (tests/vhost_user.rs makes the
 *       same stream on the host).
 *   vmkit-blkio zeroout DEVICE OFFSET BYTES
 *   vmkit-blkio discard DEVICE OFFSET BYTES
 *       the BLKZEROOUT / BLKDISCARD ioctls (what util-linux's
 *       `blkdiscard -z` and `blkdiscard` do).
 *   vmkit-blkio rand DEVICE read|write BLOCK SECONDS JOBS
 *       O_DIRECT random I/O of BLOCK bytes at BLOCK-aligned offsets over the
 *       whole device, JOBS threads each with one request in flight, for
 *       SECONDS; prints `rand <op> bs=<BLOCK> jobs=<JOBS> ios=<N>
 *       seconds=<S> iops=<N> mib_s=<X>`. Writes write the block's offset
 *       into every 8 bytes of it.
 *
 * Exit status 0 on success, 1 with a message on stderr otherwise.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static int fail(const char *what)
{
    fprintf(stderr, "vmkit-blkio: %s: %s\n", what, strerror(errno));
    return 1;
}

static uint64_t num(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end || end == s) {
        fprintf(stderr, "vmkit-blkio: not a number: %s\n", s);
        exit(1);
    }
    return v;
}

static int pattern(uint32_t x, uint64_t bytes)
{
    static uint8_t buf[1 << 16];
    while (bytes) {
        size_t n = bytes < sizeof(buf) ? bytes : sizeof(buf);
        for (size_t i = 0; i < n; i += 4) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            uint8_t b[4] = {x, x >> 8, x >> 16, x >> 24};
            memcpy(buf + i, b, n - i < 4 ? n - i : 4);
        }
        for (size_t done = 0; done < n;) {
            ssize_t w = write(1, buf + done, n - done);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                return fail("write stdout");
            }
            done += w;
        }
        bytes -= n;
    }
    return 0;
}

static int range_ioctl(const char *dev, unsigned long req, const char *name, uint64_t off, uint64_t len)
{
    int fd = open(dev, O_WRONLY);
    if (fd < 0)
        return fail(dev);
    uint64_t range[2] = {off, len};
    if (ioctl(fd, req, range) < 0)
        return fail(name);
    close(fd);
    return 0;
}

struct job {
    int fd;
    int write;
    uint64_t block, blocks;
    double until;
    uint32_t seed;
    uint64_t ios;
    int err;
};

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void *run(void *arg)
{
    struct job *j = arg;
    void *buf;
    if (posix_memalign(&buf, 4096, j->block)) {
        j->err = ENOMEM;
        return NULL;
    }
    memset(buf, 0, j->block);
    uint32_t x = j->seed;
    while (now() < j->until) {
        for (int k = 0; k < 16; k++) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            uint64_t off = (x % j->blocks) * j->block;
            ssize_t r;
            if (j->write) {
                for (uint64_t i = 0; i < j->block; i += 8)
                    memcpy((char *)buf + i, &off, 8);
                r = pwrite(j->fd, buf, j->block, off);
            } else {
                r = pread(j->fd, buf, j->block, off);
            }
            if (r != (ssize_t)j->block) {
                j->err = r < 0 ? errno : EIO;
                return NULL;
            }
            j->ios++;
        }
    }
    free(buf);
    return NULL;
}

static int rand_io(const char *dev, const char *op, uint64_t block, double seconds, int jobs)
{
    int write = !strcmp(op, "write");
    if (!write && strcmp(op, "read")) {
        fprintf(stderr, "vmkit-blkio: rand: read or write, not %s\n", op);
        return 1;
    }
    if (block < 512 || block % 512 || jobs < 1 || jobs > 64 || seconds <= 0) {
        fprintf(stderr, "vmkit-blkio: rand: bad block size, job count or time\n");
        return 1;
    }
    int fd = open(dev, (write ? O_RDWR : O_RDONLY) | O_DIRECT);
    if (fd < 0)
        return fail(dev);
    uint64_t size;
    if (ioctl(fd, BLKGETSIZE64, &size) < 0) {
        off_t end = lseek(fd, 0, SEEK_END); /* a regular file */
        if (end < 0)
            return fail("size");
        size = end;
    }
    if (size / block == 0) {
        fprintf(stderr, "vmkit-blkio: %s is smaller than one block\n", dev);
        return 1;
    }
    struct job j[64];
    pthread_t t[64];
    double start = now();
    for (int i = 0; i < jobs; i++) {
        j[i] = (struct job){fd, write, block, size / block, start + seconds, 0x9e3779b9u * (i + 1), 0, 0};
        if (pthread_create(&t[i], NULL, run, &j[i])) {
            fprintf(stderr, "vmkit-blkio: pthread_create failed\n");
            return 1;
        }
    }
    uint64_t ios = 0;
    for (int i = 0; i < jobs; i++) {
        pthread_join(t[i], NULL);
        if (j[i].err) {
            errno = j[i].err;
            return fail(write ? "pwrite" : "pread");
        }
        ios += j[i].ios;
    }
    double took = now() - start;
    printf("rand %s bs=%llu jobs=%d ios=%llu seconds=%.2f iops=%.0f mib_s=%.2f\n", op,
           (unsigned long long)block, jobs, (unsigned long long)ios, took, ios / took,
           ios * (double)block / took / (1 << 20));
    close(fd);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && !strcmp(argv[1], "pattern")) {
        uint32_t seed = num(argv[2]);
        if (!seed) {
            fprintf(stderr, "vmkit-blkio: the seed must be non-zero\n");
            return 1;
        }
        return pattern(seed, num(argv[3]));
    }
    if (argc == 5 && !strcmp(argv[1], "zeroout"))
        return range_ioctl(argv[2], BLKZEROOUT, "BLKZEROOUT", num(argv[3]), num(argv[4]));
    if (argc == 5 && !strcmp(argv[1], "discard"))
        return range_ioctl(argv[2], BLKDISCARD, "BLKDISCARD", num(argv[3]), num(argv[4]));
    if (argc == 7 && !strcmp(argv[1], "rand"))
        return rand_io(argv[2], argv[3], num(argv[4]), atof(argv[5]), num(argv[6]));
    fprintf(stderr,
            "usage: vmkit-blkio pattern SEED BYTES\n"
            "       vmkit-blkio zeroout|discard DEVICE OFFSET BYTES\n"
            "       vmkit-blkio rand DEVICE read|write BLOCK SECONDS JOBS\n");
    return 1;
}
