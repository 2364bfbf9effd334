/* Starting several ranks on one machine (dmnist-run --np N) and the
 * per-process thread settings that depend on how many ranks share it. */
#ifndef DMNIST_LAUNCH_H
#define DMNIST_LAUNCH_H

#include "dm_core.h"

/* The name the launcher's messages start with ("dmnist-run" by default). */
extern const char *dm_launch_prog;

/* Start np copies of this program as ranks 0..np-1 and wait for them.
 * Returns the exit code dmnist-run should exit with. */
int dm_launch(int argc, char **argv, int np, const char *config_path, const char *const *sets, int n_sets);

/* Decide CPU threads per rank (experiment.threads, else cores / local ranks)
 * and export OMP_NUM_THREADS / OPENBLAS_NUM_THREADS before any plugin loads,
 * unless the user set them. */
void dm_set_thread_env(const dm_config *cfg);

#endif
