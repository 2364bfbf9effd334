/* Checks for the C tests (tests/<area>/test_*.c); tests/CMakeLists.txt puts
 * tests/common on every test's include path.
 *
 *   CHECK(cond, fmt, ...)    when cond is false: print "FAIL file:line: <message>"
 *                            to CHECK_OUT, count it in `failures` and go on;
 *                            the test returns failures ? 1 : 0 at its end.
 *   REQUIRE(cond, fmt, ...)  when cond is false: print
 *                            "file:line: REQUIRE(cond) failed: <message>" to
 *                            stderr and return 1 from the calling function.
 *
 * CHECK_OUT is stderr unless the test defines it (to stdout, where the rest
 * of its report goes) before including this file. One test program is one
 * translation unit: `failures` is that program's own counter. */
#ifndef DM_TEST_CHECK_H
#define DM_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef CHECK_OUT
#define CHECK_OUT stderr
#endif

/* Failed CHECKs so far (unused in tests that only REQUIRE). */
static int failures __attribute__((unused));

#define CHECK(cond, ...) \
    do { \
        if (!(cond)) { \
            fprintf(CHECK_OUT, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(CHECK_OUT, __VA_ARGS__); \
            fputc('\n', CHECK_OUT); \
            failures++; \
        } \
    } while (0)

#define REQUIRE(cond, ...) \
    do { \
        if (!(cond)) { \
            fprintf(stderr, "%s:%d: REQUIRE(%s) failed: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__); \
            fputc('\n', stderr); \
            return 1; \
        } \
    } while (0)

/* A temporary file holding text, its name ending in .ini (the caller
 * unlinks and frees it); exits 2 when it cannot be written. */
static char *check_write_ini(const char *text) __attribute__((unused));
static char *check_write_ini(const char *text)
{
    /* mkstemp, then the .ini suffix by rename: mkstemps needs _GNU_SOURCE
     * before the first system header, which not every test defines. */
    char tmp[] = "/tmp/dmnist-test-XXXXXX", *path = malloc(sizeof tmp + 4);
    int fd = path ? mkstemp(tmp) : -1;
    if (fd >= 0) snprintf(path, sizeof tmp + 4, "%s.ini", tmp);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text) || rename(tmp, path) != 0) {
        perror("tmp");
        exit(2);
    }
    close(fd);
    return path;
}

#endif
