/* The trainer's set-up, in dependency order (comm, device, dataset, model,
 * optimizer, buffers, buckets, staging), and its tear-down. */
#define _GNU_SOURCE
#include "trainer.h"
#include "launch.h"

#include <stdlib.h>

/* ---- set-up and tear-down ------------------------------------------------------ */

int tr_comm_open(trainer *t, dm_error *err)
{
    dm_experiment *x = t->x;
    dm_error e = {0};
    t->ci = (dm_comm_info){.struct_size = sizeof t->ci};
    int rc =
        DM_GUARDED(x->comm.lc, "init", t->cvt->init(dm_param_set_params(x->comm.params), &t->cc, &t->comm, &t->ci, &e));
    if (rc) {
        t->comm = NULL;
        return tr_comm_fail(t, err, rc, e.msg);
    }
    if (t->ci.size < 1 || t->ci.rank < 0 || t->ci.rank >= t->ci.size)
        return dm_fail(err, DM_ERR_COMM, "%s: bad rank %d of %d", x->backend, t->ci.rank, t->ci.size);
    /* the same job everywhere, before the first collective whose size depends on the config */
    return dm_job_agree(t->cvt, t->comm, t->ci.rank, t->ci.size,
                        dm_job_fingerprint(x, t->ci.size, t->cc.job_id ? t->cc.job_id : ""), err);
}

int tr_setup(trainer *t, dm_error *err)
{
    dm_experiment *x = t->x;
    int rc;
    dm_error e = {0};
    /* comm first: it decides rank, size and the local rank (GPU choice) */
    t->cvt = x->comm.lc->component->vtable;
    if ((rc = dm_comm_config_init(&t->cc, &t->ids, x, err))) return rc;
    if ((rc = x->elastic ? tr_elastic_setup(t, err) : tr_comm_open(t, err))) return rc;
    if (t->left_out) return DM_OK; /* elastic: the job ended before this process got in */

    /* Only rank 0 writes checkpoints: find a folder it cannot write now, not
     * after the training it was meant to protect. (--eval writes none.) */
    if (t->ci.rank == 0 && x->checkpoint_dir[0] && !(t->opts && t->opts->eval_path) &&
        (rc = dm_checkpoint_dir_check(x->checkpoint_dir, err)))
        return rc;
    if ((rc = dm_dev_open(&t->dev, x->device, t->ci.local_rank, err))) return rc;
    t->dev_open = 1;

    t->dvt = x->data.lc->component->vtable;
    dm_dataset_config dc = {sizeof dc, x->seed, x->cfg->dir};
    t->di.struct_size = sizeof t->di;
    if ((rc = DM_GUARDED(x->data.lc, "open",
                         t->dvt->open(dm_param_set_params(x->data.params), &dc, &t->data, &t->di, &e)))) {
        t->data = NULL;
        return dm_fail(err, rc, "%s", e.msg);
    }
    if (t->di.count[DM_SPLIT_TRAIN] < (int64_t)x->batch_size * t->ci.size)
        return dm_fail(err, DM_ERR_INVALID,
                       "%s: data: %lld training examples are fewer than one global batch "
                       "(%d ranks x %d)",
                       x->cfg->path, (long long)t->di.count[DM_SPLIT_TRAIN], t->ci.size, x->batch_size);

    int max_batch = x->batch_size > x->eval_batch_size ? x->batch_size : x->eval_batch_size;
    if ((rc = dm_model_build(&t->m, x, &t->dev, t->di.item, max_batch, x->threads, err))) {
        if (rc != DM_ERR_NOMEM && rc != DM_ERR_DEVICE) exit_as(t, DM_EXIT_CONFIG);
        return rc;
    }
    t->model_built = 1;

    t->ovt = x->opt.lc->component->vtable;
    if (!(t->ovt->devices & DM_DEVICE_BIT(x->device)) && exit_as(t, DM_EXIT_CONFIG))
        return dm_fail(err, DM_ERR_UNSUPPORTED, "%s: optimizer: type '%s' has no %s implementation", x->cfg->path,
                       x->opt.lc->component->type_name, dm_device_name(x->device));
    dm_optimizer_config oc = {sizeof oc, x->device, t->m.param_count, x->threads, t->dev.stream};
    t->oi.struct_size = sizeof t->oi;
    if ((rc = DM_GUARDED(x->opt.lc, "create",
                         t->ovt->create(dm_param_set_params(x->opt.params), &oc, &t->opt, &t->oi, &e)))) {
        t->opt = NULL;
        return dm_fail(err, rc, "optimizer: %s", e.msg);
    }
    t->n_opt = t->oi.state_floats_per_param * t->m.param_count;
    if (t->n_opt && !(t->opt_state = dm_dev_alloc(&t->dev, t->n_opt * sizeof(float), err))) return err->code;
    if ((rc = t->ovt->bind(t->opt, t->opt_state, &e))) return dm_fail(err, rc, "optimizer: %s", e.msg);

    size_t item = dm_shape_per_item(t->di.item);
    t->h_images = malloc((size_t)max_batch * item * sizeof(float));
    t->h_labels = malloc((size_t)max_batch * sizeof(int32_t));
    t->idx = malloc((size_t)max_batch * sizeof(int64_t));
    t->perm = malloc((size_t)t->di.count[DM_SPLIT_TRAIN] * sizeof(int64_t));
    if (!t->h_images || !t->h_labels || !t->idx || !t->perm) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    t->perm_epoch = -1;
    if (x->device == DM_DEVICE_CUDA && (rc = tr_upload_dataset(t, err))) return rc;
    if ((rc = tr_build_buckets(t, err))) return rc;
    return tr_setup_staging(t, err);
}

void tr_teardown(trainer *t)
{
    /* first: its queued copies read and write the buffers freed below */
    if (t->copy_stream) dm_dev_stream_free(&t->dev, t->copy_stream);
    if (t->opt) t->ovt->destroy(t->opt);
    if (t->opt_state) dm_dev_free(&t->dev, t->opt_state);
    if (t->model_built) dm_model_free(&t->m);
    if (t->data) t->dvt->close(t->data);
    if (t->comm) {
        dm_error e = {0};
        t->cvt->finalize(t->comm, &e);
    }
    for (int s = 0; s < 2; s++) {
        dm_dev_free(&t->dev, t->d_images[s]);
        dm_dev_free(&t->dev, t->d_labels[s]);
    }
    dm_dev_free(&t->dev, t->d_perm);
    dm_dev_free(&t->dev, t->d_scratch);
    dm_dev_free(&t->dev, t->state_backup);
    /* after finalize: a backend may still hold an unwaited bucket of the mirror */
    dm_dev_event_free(&t->dev, t->computed);
    dm_dev_event_free(&t->dev, t->copies);
    for (int b = 0; t->buckets && b < t->n_buckets; b++) dm_dev_event_free(&t->dev, t->buckets[b].copied);
    dm_host_free(&t->dev, t->h_mirror);
    if (t->dev_open) dm_dev_close(&t->dev);
    free(t->h_images);
    free(t->h_labels);
    free(t->idx);
    free(t->perm);
    free(t->buckets);
    if (t->metrics) fclose(t->metrics);
    if (t->data_trace) fclose(t->data_trace);
    if (t->el) dm_elastic_close(t->el);
    free(t->el);
    if (t->tb) {
        dm_error e = {0};
        dm_tb_close(t->tb, &e); /* after a failure: the run's own error is the one reported */
    }
}
