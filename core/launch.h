/* Starting several ranks on one machine (dmnist-run --np N) and the
 * per-process thread settings that depend on how many ranks share it. */
#ifndef DMNIST_LAUNCH_H
#define DMNIST_LAUNCH_H

#include "dm_core.h"

/* Where this process sits in a job, as its launcher told it through the
 * environment: the one place those variables are read (dmnist-run --np
 * writes DMNIST_*, mpirun OMPI_COMM_WORLD_*, srun SLURM_* inside a job
 * step, MPICH's hydra PMI_*). Fields are -1 where no launcher says;
 * launcher is NULL for a process started alone. Backends get the result
 * through dm_comm_config. */
typedef struct dm_launch_env {
    int rank, size;             /* in the whole job */
    int local_rank, local_size; /* on this machine */
    const char *launcher;       /* "dmnist-run --np", "mpirun", DM_LAUNCHER_SLURM, "a PMI launcher",
                                    "a PMIx launcher", or NULL */
    int nodes;                  /* machines in the job (Slurm only), -1 when unknown */
} dm_launch_env;

/* The launcher name of a Slurm job step's tasks (srun). */
#define DM_LAUNCHER_SLURM "srun"

/* Slurm's step id when this process is a task of a job step srun started,
 * else -1 (a batch script's shell, salloc's shell, no Slurm at all). */
long dm_slurm_step(void);

/* Node `node`'s count (0-based) in a Slurm tasks-per-node list such as
 * "2(x3),1"; -1 when the list is malformed or too short. */
int dm_slurm_tasks_on_node(const char *spec, int node);

/* Read it (docs/architecture.md, "Ranks and launchers", gives the order);
 * a value that is not a number, or a rank outside its world, is a
 * one-line error naming the variable. */
int dm_launch_env_read(dm_launch_env *env, dm_error *err);

/* The comm config every rank of experiment x starts its backend with: rank,
 * size and local rank from the launcher (dm_launch_env_read), the
 * rendezvous (DMNIST_RENDEZVOUS), timeout, device, and the job's id and
 * fingerprint, whose strings live in *ids. */
typedef struct dm_comm_ids {
    char job_id[128];
    char fingerprint[17];
    char rendezvous[200]; /* one derived for a Slurm step on one node, else "" */
} dm_comm_ids;
int dm_comm_config_init(dm_comm_config *cc, dm_comm_ids *ids, const dm_experiment *x, dm_error *err);

/* Remove a folder and everything below it (rendezvous folders). */
void dm_remove_tree(const char *dir);

/* The name the launcher's messages start with ("dmnist-run" by default). */
extern const char *dm_launch_prog;

/* How dmnist-run --np starts its ranks. */
typedef struct dm_launch_opts {
    int np;               /* ranks on this host */
    int max_restarts;     /* --max-restarts: lost ranks (elastic) or the failed job started again */
    int nodes, node_rank; /* --nodes M --node-rank I: this host's agent of M (0: one host) */
} dm_launch_opts;

/* Start np copies of this program as ranks 0..np-1 (with --nodes, ranks
 * I*np .. I*np+np-1 of M*np, through the environment's rendezvous) and wait
 * for them; max_restarts > 0: start lost ranks (experiment.elastic) or the
 * failed job (from its newest checkpoint) again, that many times in all.
 * Returns the exit code dmnist-run should exit with. */
int dm_launch(int argc, char **argv, const dm_launch_opts *o, const char *config_path, const char *const *sets,
              int n_sets);

/* launch.c, for launch_job.c: fork this host's o->np workers with rdzv and
 * supervise them until all ended (elastic: a lost one is started again while
 * restarts last); returns the launcher's exit code. */
int dm_run_workers(const char *exe, char **child_argv, const dm_launch_opts *o, const char *rdzv, int elastic,
                   int restarts);
/* The launcher got SIGINT, SIGTERM or SIGHUP. */
int dm_launch_stopped(void);

/* Decide CPU threads per rank (experiment.threads, else cores / local ranks)
 * and export OMP_NUM_THREADS / OPENBLAS_NUM_THREADS before any plugin loads,
 * unless the user set them. */
void dm_set_thread_env(const dm_config *cfg);

#endif
