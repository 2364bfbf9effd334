/* The trainer's checkpoints: rank 0 saves; on --resume rank 0 reads the
 * latest and every rank receives it. The file format is checkpoint.c's. */
#define _GNU_SOURCE
#include "trainer.h"

#include <stdlib.h>

/* ---- checkpoints ------------------------------------------------------------- */

int tr_save_checkpoint(trainer *t, dm_error *err)
{
    if (!t->x->checkpoint_dir[0] || !rank0(t)) return DM_OK;
    float *p = malloc(t->m.param_count * sizeof(float) + 4);
    float *o = malloc(t->n_opt * sizeof(float) + 4);
    float *s = malloc(t->m.state_count * sizeof(float) + 4);
    int rc = (!p || !o || !s) ? dm_fail(err, DM_ERR_NOMEM, "out of memory") : DM_OK;
    if (!rc) rc = dm_dev_download(&t->dev, p, t->m.params, t->m.param_count * sizeof(float), err);
    if (!rc && t->n_opt) rc = dm_dev_download(&t->dev, o, t->opt_state, t->n_opt * sizeof(float), err);
    if (!rc && t->m.state_count) rc = dm_dev_download(&t->dev, s, t->m.state, t->m.state_count * sizeof(float), err);
    dm_ckpt_state st = {
        dm_experiment_hash(t->x), t->step, t->epoch, t->epoch_pos, t->x->seed, t->ci.size, t->m.param_count, t->n_opt,
        t->m.state_count,         0};
    char path[4096];
    if (!rc)
        rc = dm_checkpoint_write(t->x->checkpoint_dir, &st, p, o, s, t->x->keep_checkpoints, path, sizeof path, err);
    if (!rc) {
        tr_bar_clear(t);
        printf("checkpoint: %s (step %lld)\n", path, (long long)t->step);
        fflush(stdout);
    }
    free(p);
    free(o);
    free(s);
    return rc;
}

/* Rank 0 reads the latest checkpoint (--eval: the file it names) and checks
 * it against this model (config hash, sizes, position, seed); every rank
 * learns whether it worked, so a bad file stops all ranks with rank 0's
 * message. The caller broadcasts what rank 0 uploaded. */
int tr_resume(trainer *t, dm_error *err)
{
    int64_t hdr[4] = {0, 0, 0, 0}; /* ok, step, epoch, epoch_pos */
    float *p = NULL, *o = NULL, *s = NULL;
    int with_state = 0; /* rank 0: the file holds this model's layer state */
    dm_error e = {0};
    if (rank0(t)) {
        char path[4096];
        dm_ckpt_state st;
        const char *given = t->opts ? t->opts->eval_path : NULL; /* --eval names its file */
        int rc = given                ? (snprintf(path, sizeof path, "%s", given) < (int)sizeof path
                                             ? DM_OK
                                             : dm_fail(&e, DM_ERR_INVALID, "--eval: checkpoint path too long"))
            : t->x->checkpoint_dir[0] ? dm_checkpoint_latest(t->x->checkpoint_dir, path, sizeof path, &e)
                                      : dm_fail(&e, DM_ERR_INVALID,
                                                "%s: --resume needs train.checkpoint_dir (the folder to resume "
                                                "from)",
                                                t->x->cfg->path);
        if (!rc) rc = dm_checkpoint_read_all(path, &st, &p, &o, &s, &e);
        if (!rc && st.config_hash != dm_experiment_hash(t->x))
            rc = dm_fail(&e, DM_ERR_INVALID,
                         "%s: checkpoint was written for a different model or optimizer "
                         "(config hash %016llx, this config %016llx)",
                         path, (unsigned long long)st.config_hash, (unsigned long long)dm_experiment_hash(t->x));
        /* A version-1 file predates layer state: the layers keep their initial state. */
        int no_state_yet = !rc && st.version == 1 && st.n_state == 0 && t->m.state_count;
        if (!rc &&
            (st.n_params != t->m.param_count || st.n_opt != t->n_opt ||
             (st.n_state != t->m.state_count && !no_state_yet)))
            rc = dm_fail(&e, DM_ERR_INVALID,
                         "%s: checkpoint holds %llu parameters, %llu optimizer floats and "
                         "%llu layer-state floats, this model needs %zu, %zu and %zu",
                         path, (unsigned long long)st.n_params, (unsigned long long)st.n_opt,
                         (unsigned long long)st.n_state, t->m.param_count, t->n_opt, t->m.state_count);
        if (!rc) rc = dm_checkpoint_check_position(path, &st, t->di.count[DM_SPLIT_TRAIN], &e);
        if (!rc && st.seed != t->x->seed)
            rc = dm_fail(&e, DM_ERR_INVALID, "%s: checkpoint used seed %llu, this config seed %llu", path,
                         (unsigned long long)st.seed, (unsigned long long)t->x->seed);
        if (!rc) {
            hdr[0] = 1;
            hdr[1] = st.step;
            hdr[2] = st.epoch;
            hdr[3] = st.epoch_pos;
            printf("%s %s (step %lld, written by %d rank%s)\n", given ? "evaluating" : "resuming from", path,
                   (long long)st.step, st.world_size, st.world_size == 1 ? "" : "s");
            fflush(stdout); /* said when it happens, not at the next log */
            if (no_state_yet)
                printf("note: %s (format 1) holds no layer state: the layers' running state starts from its "
                       "initial values\n",
                       path);
            with_state = !no_state_yet && t->m.state_count;
        }
    }
    int rc = DM_OK;
    if (t->ci.size > 1) {
        dm_error be = {0};
        rc = tr_broadcast_host(t, hdr, sizeof hdr, &be);
        if (rc) {
            free(p);
            free(o);
            free(s);
            return tr_comm_fail(t, err, rc, be.msg);
        }
    }
    if (!hdr[0]) {
        free(p);
        free(o);
        free(s);
        if (rank0(t)) return dm_fail(err, e.code ? e.code : DM_ERR_IO, "%s", e.msg);
        exit_as(t, DM_EXIT_PEER);
        return dm_fail(err, DM_ERR_IO, "rank 0 could not read the checkpoint (see its message)");
    }
    if (rank0(t)) {
        rc = dm_dev_upload(&t->dev, t->m.params, p, t->m.param_count * sizeof(float), err);
        if (!rc && t->n_opt) rc = dm_dev_upload(&t->dev, t->opt_state, o, t->n_opt * sizeof(float), err);
        if (!rc && with_state) rc = dm_dev_upload(&t->dev, t->m.state, s, t->m.state_count * sizeof(float), err);
    }
    free(p);
    free(o);
    free(s);
    t->step = hdr[1];
    t->epoch = hdr[2];
    t->epoch_pos = hdr[3];
    return rc;
}
