/* Loading plugin files, shared by the registry (core/registry.c: search
 * folders, components) and the probe (core/plugin_probe.c: each file tried
 * first in a child process). Private to those two files. */
#ifndef DMNIST_PLUGIN_LOAD_H
#define DMNIST_PLUGIN_LOAD_H

#include "dm_core.h"

#include <sys/stat.h>

/* Where a load can be when a plugin misbehaves: the probe child reports the
 * phase through its pipe, the in-process guard names it in its message. */
enum { PH_CTOR = 'L', PH_ENTRY = 'E', PH_CHECK = 'C', PH_OK = 'O', PH_FAIL = 'F' };

/* Report phase ph: through the probe child's pipe fd, or (fd < 0) to the
 * in-process guard's message. */
void dm_plugin_phase(int fd, char ph);
/* "in dm_plugin_entry", "while loading (...)": what a phase is, for messages. */
const char *dm_plugin_phase_what(int ph);

/* dlopen real, call its entry point and check the descriptor, reporting each
 * phase to phase_fd (see dm_plugin_phase). On failure the library is closed
 * and e holds the reason without the path. */
int dm_plugin_open(const dm_registry *r, const char *real, int phase_fd, void **hp, const dm_plugin_descriptor **dp,
                   dm_error *e);
/* Load a file whose path dm_trust_path() accepted (real, with lstat st): in
 * this process, under the guard, and register its components. */
int dm_plugin_load_trusted(dm_registry *r, const char *path, const char *real, const struct stat *st, double timeout_s,
                           dm_error *err);

/* One file of a search folder, and what the probe child saw of it. */
typedef struct dm_probe {
    char *path, *real;
    struct stat st;
    int phase;  /* the last phase the child reported */
    int result; /* PH_OK, PH_FAIL, or 0: the child died or hung in it */
    int status; /* the child's wait status when it died here */
    int timed_out;
    char msg[sizeof(((dm_error *)0)->msg)];
    size_t n;
} dm_probe;

/* Probe ps[0..n) in a child process, each file within timeout_s (0: no
 * limit), and settle each as soon as its verdict is in. */
int dm_probe_all(dm_registry *r, dm_probe *ps, int n, double timeout_s, dm_error *err);
/* Act on the probe's verdict on p (probed = 0: there was none): load it in
 * this process, refuse it, or skip it with a warning. */
int dm_probe_settle(dm_registry *r, const dm_probe *p, int probed, double timeout_s, dm_error *err);

#endif
