/* dm_launch_env_read (core/launch.c) on a Slurm job step's variables: rank,
 * size, local rank and this node's entry of a tasks-per-node list; a batch
 * script's own shell (no step id, or Slurm's batch step id) is no rank; a
 * launcher inside the step (dmnist-run --np, mpirun) keeps priority; a bad
 * value is an error naming the variable. */
#include "launch.h"
#include "check.h"

#include <stdlib.h>
#include <string.h>

static const char *const all_vars[] = {"SLURM_JOB_ID",
                                       "SLURM_STEP_ID",
                                       "SLURM_STEPID",
                                       "SLURM_PROCID",
                                       "SLURM_NTASKS",
                                       "SLURM_STEP_NUM_TASKS",
                                       "SLURM_LOCALID",
                                       "SLURM_NODEID",
                                       "SLURM_NNODES",
                                       "SLURM_STEP_NUM_NODES",
                                       "SLURM_TASKS_PER_NODE",
                                       "SLURM_STEP_TASKS_PER_NODE",
                                       "SLURM_NTASKS_PER_NODE",
                                       "DMNIST_RANK",
                                       "DMNIST_WORLD_SIZE",
                                       "DMNIST_LOCAL_RANK",
                                       "DMNIST_LOCAL_WORLD_SIZE",
                                       "OMPI_COMM_WORLD_RANK",
                                       "OMPI_COMM_WORLD_SIZE",
                                       "OMPI_COMM_WORLD_LOCAL_RANK",
                                       "OMPI_COMM_WORLD_LOCAL_SIZE",
                                       "PMI_RANK",
                                       "PMI_SIZE",
                                       "MPI_LOCALRANKID",
                                       "MPI_LOCALNRANKS",
                                       "PMIX_RANK",
                                       NULL};

static void clear(void)
{
    for (int i = 0; all_vars[i]; i++) unsetenv(all_vars[i]);
}

/* rank 5 of 7 on the third node of "2(x2),3": local rank 1 of 3 */
static void step_vars(void)
{
    clear();
    setenv("SLURM_JOB_ID", "4242", 1);
    setenv("SLURM_STEP_ID", "0", 1);
    setenv("SLURM_PROCID", "5", 1);
    setenv("SLURM_NTASKS", "7", 1);
    setenv("SLURM_LOCALID", "1", 1);
    setenv("SLURM_NODEID", "2", 1);
    setenv("SLURM_NNODES", "3", 1);
    setenv("SLURM_TASKS_PER_NODE", "2(x2),3", 1);
}

int main(void)
{
    dm_launch_env env;
    dm_error err = {0};

    CHECK(dm_slurm_tasks_on_node("4", 0) == 4, "4, node 0");
    CHECK(dm_slurm_tasks_on_node("2(x3),1", 0) == 2, "2(x3),1 node 0");
    CHECK(dm_slurm_tasks_on_node("2(x3),1", 2) == 2, "2(x3),1 node 2");
    CHECK(dm_slurm_tasks_on_node("2(x3),1", 3) == 1, "2(x3),1 node 3");
    CHECK(dm_slurm_tasks_on_node("2(x3),1", 4) == -1, "2(x3),1 node 4: past the end");
    CHECK(dm_slurm_tasks_on_node("1,3(x2)", 2) == 3, "1,3(x2) node 2");
    CHECK(dm_slurm_tasks_on_node("2(3)", 0) == -1, "2(3): malformed");
    CHECK(dm_slurm_tasks_on_node("2(x0)", 0) == -1, "2(x0): malformed");
    CHECK(dm_slurm_tasks_on_node("", 0) == -1, "empty");
    CHECK(dm_slurm_tasks_on_node("x", 0) == -1, "x");

    step_vars();
    CHECK(dm_launch_env_read(&env, &err) == DM_OK, "step: %s", err.msg);
    CHECK(env.launcher && strcmp(env.launcher, DM_LAUNCHER_SLURM) == 0, "step: launcher %s",
          env.launcher ? env.launcher : "(none)");
    CHECK(env.rank == 5 && env.size == 7 && env.local_rank == 1 && env.local_size == 3 && env.nodes == 3,
          "step: rank %d of %d, local %d of %d, %d nodes", env.rank, env.size, env.local_rank, env.local_size,
          env.nodes);

    /* the step's own list and count win over the job's */
    setenv("SLURM_STEP_NUM_TASKS", "6", 1);
    setenv("SLURM_STEP_TASKS_PER_NODE", "2(x3)", 1);
    CHECK(dm_launch_env_read(&env, &err) == DM_OK && env.size == 6 && env.local_size == 2,
          "step vars: size %d local %d", env.size, env.local_size);

    /* older Slurm: SLURM_STEPID */
    step_vars();
    unsetenv("SLURM_STEP_ID");
    setenv("SLURM_STEPID", "3", 1);
    CHECK(dm_launch_env_read(&env, &err) == DM_OK && env.size == 7, "SLURM_STEPID: size %d", env.size);

    /* a batch script's shell: SLURM_PROCID=0 and SLURM_NTASKS but no step */
    step_vars();
    unsetenv("SLURM_STEP_ID");
    setenv("SLURM_PROCID", "0", 1);
    CHECK(dm_launch_env_read(&env, &err) == DM_OK && !env.launcher && env.size == -1,
          "batch shell: launcher %s size %d", env.launcher ? env.launcher : "(none)", env.size);
    setenv("SLURM_STEP_ID", "4294967291", 1); /* the batch step's id */
    CHECK(dm_launch_env_read(&env, &err) == DM_OK && !env.launcher, "batch step id");
    setenv("SLURM_STEP_ID", "4294967290", 1); /* the interactive step */
    CHECK(dm_launch_env_read(&env, &err) == DM_OK && !env.launcher, "interactive step id");
    CHECK(dm_slurm_step() == -1, "no step");

    /* dmnist-run --np and mpirun inside a step keep priority */
    step_vars();
    setenv("DMNIST_RANK", "1", 1);
    setenv("DMNIST_WORLD_SIZE", "2", 1);
    CHECK(dm_launch_env_read(&env, &err) == DM_OK && env.size == 2 && strcmp(env.launcher, "dmnist-run --np") == 0,
          "--np in a step");
    step_vars();
    setenv("OMPI_COMM_WORLD_RANK", "3", 1);
    setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
    CHECK(dm_launch_env_read(&env, &err) == DM_OK && env.size == 4 && strcmp(env.launcher, "mpirun") == 0,
          "mpirun in a step");
    /* MPICH's mpiexec inside a one-task step: its PMI world differs */
    step_vars();
    setenv("SLURM_PROCID", "0", 1);
    setenv("SLURM_NTASKS", "1", 1);
    setenv("SLURM_TASKS_PER_NODE", "1", 1);
    setenv("SLURM_NODEID", "0", 1);
    setenv("SLURM_NNODES", "1", 1);
    setenv("SLURM_LOCALID", "0", 1);
    setenv("PMI_RANK", "2", 1);
    setenv("PMI_SIZE", "3", 1);
    CHECK(dm_launch_env_read(&env, &err) == DM_OK && env.size == 3 && strcmp(env.launcher, "a PMI launcher") == 0,
          "mpiexec in a step: size %d", env.size);
    /* srun --mpi=pmi2: PMI agrees with Slurm, which also gives local ranks */
    setenv("PMI_RANK", "0", 1);
    setenv("PMI_SIZE", "1", 1);
    CHECK(dm_launch_env_read(&env, &err) == DM_OK && strcmp(env.launcher, DM_LAUNCHER_SLURM) == 0 &&
              env.local_size == 1,
          "srun --mpi=pmi2");

    /* errors name the variable */
    step_vars();
    setenv("SLURM_PROCID", "7", 1);
    CHECK(dm_launch_env_read(&env, &err) != DM_OK && strstr(err.msg, "SLURM_PROCID=7"), "rank = size: %s", err.msg);
    step_vars();
    setenv("SLURM_TASKS_PER_NODE", "2(x2)", 1);
    CHECK(dm_launch_env_read(&env, &err) != DM_OK && strstr(err.msg, "SLURM_TASKS_PER_NODE='2(x2)'"), "short list: %s",
          err.msg);
    step_vars();
    setenv("SLURM_NTASKS", "many", 1);
    CHECK(dm_launch_env_read(&env, &err) != DM_OK && strstr(err.msg, "SLURM_NTASKS='many'"), "bad size: %s", err.msg);
    step_vars();
    setenv("SLURM_LOCALID", "3", 1);
    CHECK(dm_launch_env_read(&env, &err) != DM_OK && strstr(err.msg, "SLURM_LOCALID=3"), "local: %s", err.msg);

    clear();
    if (failures) fprintf(stderr, "%d checks failed\n", failures);
    return failures ? 1 : 0;
}
