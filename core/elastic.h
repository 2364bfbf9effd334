/* Elastic membership: which processes form the world of each round.
 *
 * A world is formed in a round: a folder <rendezvous>/elastic.<job>/r<R>/
 * in the job's file rendezvous, which every process of the job sees. Each
 * process that wants to be in the world writes one file there, m.<id>
 * ("<previous rank> <step> <host>"), and the first process to find the round
 * complete writes "closed" (create-exclusive: exactly one wins), listing the
 * members in their new rank order. Everyone reads that list. A round is
 * complete when every rank of the previous world has arrived, or, after a
 * failure (some never will), when at least min_ranks have, nobody new
 * arrived for settle_s and every member still missing is gone: each process
 * touches a heartbeat file, hb.<id>, from a thread of its own, so a process
 * killed or frozen stops touching it, while one still stuck in a collective
 * of the old world (or cut off from the others but not from this folder)
 * is waited for. Only members of the previous world (or, in round 0,
 * ranks the launcher numbered) may close a round: a process that joins late
 * never forms a world of its own beside the running one.
 *
 * New ranks: the members of the previous world in their old order, then
 * the newcomers; the member with the most optimizer steps done becomes
 * rank 0 (the state is broadcast from rank 0), the first of them on a tie.
 * Round R's communicator uses the job id "<job>.e<R>", so a backend's
 * rendezvous keys never meet the last round's.
 *
 * Why files: the rendezvous folder is already shared by every rank (gloo's
 * file store, dmnist-run --np, Slurm on one node); create-exclusive link()
 * is atomic on local file systems and NFS. docs/elastic.md says more. */
#ifndef DMNIST_ELASTIC_H
#define DMNIST_ELASTIC_H

#include "dm_core.h"

typedef struct dm_elastic {
    char dir[1024]; /* <rendezvous folder>/elastic.<job> */
    char id[128];   /* this process: host.pid.random */
    char host[64];
    int min_ranks, max_ranks; /* max_ranks 0: no limit */
    double settle_s, timeout_s;
    int round;          /* the current world's round; -1 before the first */
    int size;           /* its size */
    int joined;         /* 1 once this process was in a world */
    char (*world)[128]; /* the current world's member ids */
    int n_world;
} dm_elastic;

typedef struct dm_elastic_world {
    int round;
    int rank, size;
    int local_size;      /* members on this host */
    int64_t source_step; /* rank 0's steps: the state every rank goes on from */
    int done;            /* the job ended before this process got in */
} dm_elastic_world;

/* rendezvous must be "file:///folder". One line naming the key on a refusal. */
int dm_elastic_open(dm_elastic *e, const char *rendezvous, const char *job_id, int min_ranks, int max_ranks,
                    double settle_s, double timeout_s, dm_error *err);
/* Be in the next world. prev_rank: this process's rank in the current world
 * (in round 0, the launcher's rank; -1 for a newcomer), prev_size that
 * world's size (round 0: the launcher's). step: optimizer steps this process
 * has done. Returns within timeout_s (a newcomer waits up to 4 timeouts). */
int dm_elastic_form(dm_elastic *e, int prev_rank, int prev_size, int64_t step, dm_elastic_world *w, dm_error *err);
/* Someone waits to join the next round (rank 0 asks at step boundaries). */
int dm_elastic_waiting(const dm_elastic *e);
/* The job finished: newcomers still waiting give up (rank 0 calls it). */
void dm_elastic_finish(const dm_elastic *e);
/* Free what open and form allocated (the heartbeat thread goes on until the
 * process ends: it only touches a file). */
void dm_elastic_close(dm_elastic *e);

#endif
