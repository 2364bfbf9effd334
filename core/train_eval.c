/* dmnist-run --eval CHECKPOINT CONFIG.ini: a checkpoint evaluated on the
 * test set, with no training step. The trainer is set up as for a run
 * (comm, device, dataset, model), the file is read and checked by the
 * resume code (train_ckpt.c: config hash, sizes, every header field), its
 * parameters and layer state reach every rank, and the test set is
 * evaluated over all ranks (train_data.c) with a confusion matrix; rank 0
 * reports (train_report.c). */
#define _GNU_SOURCE
#include "trainer.h"

#include <stdlib.h>

int dm_eval_run(dm_experiment *x, const dm_train_opts *opts, dm_error *err)
{
    trainer t = {.x = x, .opts = opts, .t_start = now_s()};
    float *confusion = NULL;
    int rc = tr_setup(&t, err);
    /* every rank's layers start from their initial state, as a fresh run's
     * do: the checkpoint's state (format 2) replaces it on rank 0 */
    if (!rc && rank0(&t)) rc = dm_model_init_params(&t.m, x->seed, err);
    if (!rc) rc = dm_dev_sync(&t.dev, err);
    if (!rc) rc = tr_resume(&t, err);
    if (!rc) rc = tr_broadcast_dev(&t, t.m.params, t.m.param_count * sizeof(float), err);
    if (!rc && t.m.state_count) rc = tr_broadcast_dev(&t, t.m.state, t.m.state_count * sizeof(float), err);
    if (!rc) rc = dm_dev_zero(&t.dev, t.m.metrics, 2 * sizeof(float), err);
    const int classes = t.model_built ? t.m.layers[t.m.n_layers - 1].out_shape.c : 0;
    if (!rc && !(confusion = calloc((size_t)classes * (size_t)classes + 1, sizeof(float))))
        rc = dm_fail(err, DM_ERR_NOMEM, "out of memory");
    double loss = 0, acc = 0, t0 = now_s();
    if (!rc) rc = tr_evaluate(&t, &loss, &acc, confusion, err);
    if (!rc) rc = tr_report_checkpoint_eval(&t, loss, acc, confusion, classes, now_s() - t0, err);
    free(confusion);
    if (t.tb) {
        int brc = dm_tb_close(t.tb, rc == DM_OK ? err : &(dm_error){0});
        t.tb = NULL;
        if (rc == DM_OK) rc = brc;
    }
    tr_teardown(&t);
    return rc;
}
