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

#ifndef CHECK_OUT
#define CHECK_OUT stderr
#endif

/* Failed CHECKs so far (unused in tests that only REQUIRE). */
static int failures __attribute__((unused));

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(CHECK_OUT, "FAIL %s:%d: ", __FILE__, __LINE__);                                \
            fprintf(CHECK_OUT, __VA_ARGS__);                                                       \
            fputc('\n', CHECK_OUT);                                                                \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

#define REQUIRE(cond, ...)                                                                         \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: REQUIRE(%s) failed: ", __FILE__, __LINE__, #cond);            \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

#endif
