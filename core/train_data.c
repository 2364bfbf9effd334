/* The trainer's data: the epoch's permutation, this rank's slice of each
 * global batch (read through the dataset plugin, or gathered on the GPU
 * when the whole dataset was uploaded there), and the test evaluation. */
#define _GNU_SOURCE
#include "trainer.h"
#ifdef DMNIST_CORE_CUDA
#include "dm_cuda.h"
#endif

#include <stdlib.h>
#include <unistd.h>

/* ---- data ------------------------------------------------------------------ */

static void make_perm(trainer *t, int64_t epoch)
{
    int64_t n = t->di.count[DM_SPLIT_TRAIN];
    uint64_t s = dm_hash64(t->x->seed, 0xE90C0000ull + (uint64_t)epoch);
    for (int64_t i = 0; i < n; i++) t->perm[i] = i;
    for (int64_t i = n - 1; i > 0; i--) { /* Fisher-Yates */
        int64_t j = (int64_t)(dm_rng_next(&s) % (uint64_t)(i + 1));
        int64_t tmp = t->perm[i];
        t->perm[i] = t->perm[j];
        t->perm[j] = tmp;
    }
    t->perm_epoch = epoch;
}

static int load_batch(trainer *t, dm_split split, const int64_t *idx, int n, dm_error *err)
{
    size_t item = dm_shape_per_item(t->di.item);
    float *img = t->dev.device == DM_DEVICE_CPU ? t->m.input.data : t->h_images;
    int32_t *lab = t->dev.device == DM_DEVICE_CPU ? t->m.labels : t->h_labels;
    dm_error e = {0};
    int rc = t->dvt->read(t->data, split, idx, n, img, lab, &e);
    if (rc) return dm_fail(err, rc, "data: %s", e.msg);
    for (int i = 0; i < n; i++)
        if (lab[i] < 0 || lab[i] >= t->m.layers[t->m.n_layers - 1].out_shape.c)
            return dm_fail(err, DM_ERR_FORMAT, "data: label %d of example %lld is out of range [0, %d)", lab[i],
                           (long long)idx[i], t->m.layers[t->m.n_layers - 1].out_shape.c);
    if (t->dev.device != DM_DEVICE_CPU) {
        if ((rc = dm_dev_upload(&t->dev, t->m.input.data, img, (size_t)n * item * sizeof(float), err))) return rc;
        if ((rc = dm_dev_upload(&t->dev, t->m.labels, lab, (size_t)n * sizeof(int32_t), err))) return rc;
    }
    return DM_OK;
}

/* device = cuda with the dataset on the GPU: examples d_idx[0..n) (a slice
 * of the device permutation), or first..first+n when d_idx is NULL. */
static int gather_batch(trainer *t, dm_split split, const int64_t *d_idx, int64_t first, int n, dm_error *err)
{
#ifdef DMNIST_CORE_CUDA
    return dm_cuda_gather(t->m.input.data, t->m.labels, t->d_images[split], t->d_labels[split], d_idx, first, n,
                          dm_shape_per_item(t->di.item), t->dev.stream, err);
#else
    (void)t, (void)split, (void)d_idx, (void)first, (void)n;
    return dm_fail(err, DM_ERR_INTERNAL, "gather_batch without CUDA");
#endif
}

/* Read every example of both splits once and keep them on the GPU, so
 * a step copies nothing from the host (60,000 MNIST images are 188 MB of
 * float32). Without room, batches keep coming from the host. */
int tr_upload_dataset(trainer *t, dm_error *err)
{
    const size_t item = dm_shape_per_item(t->di.item);
    const int classes = t->m.layers[t->m.n_layers - 1].out_shape.c;
    const int chunk = 4096;
    int rc = DM_OK;
    for (int split = 0; split < 2 && rc == DM_OK; split++) {
        const int64_t count = t->di.count[split];
        dm_error oom = {0};
        t->d_images[split] = dm_dev_alloc(&t->dev, (size_t)count * item * sizeof(float), &oom);
        t->d_labels[split] = dm_dev_alloc(&t->dev, (size_t)count * sizeof(int32_t), &oom);
        if (!t->d_images[split] || !t->d_labels[split]) {
            if (rank0(t))
                printf("note: the dataset does not fit on the GPU (%s); batches are copied from the host\n", oom.msg);
            for (int s = 0; s < 2; s++) {
                dm_dev_free(&t->dev, t->d_images[s]);
                dm_dev_free(&t->dev, t->d_labels[s]);
                t->d_images[s] = NULL;
                t->d_labels[s] = NULL;
            }
            return DM_OK;
        }
        float *img = malloc((size_t)chunk * item * sizeof(float));
        int32_t *lab = malloc((size_t)chunk * sizeof(int32_t));
        int64_t *idx = malloc((size_t)chunk * sizeof(int64_t));
        if (!img || !lab || !idx) rc = dm_fail(err, DM_ERR_NOMEM, "out of memory");
        for (int64_t i0 = 0; i0 < count && rc == DM_OK; i0 += chunk) {
            const int n = (int)(count - i0 < chunk ? count - i0 : chunk);
            for (int k = 0; k < n; k++) idx[k] = i0 + k;
            dm_error e = {0};
            if ((rc = t->dvt->read(t->data, (dm_split)split, idx, n, img, lab, &e))) {
                rc = dm_fail(err, rc, "data: %s", e.msg);
                break;
            }
            for (int k = 0; k < n && rc == DM_OK; k++)
                if (lab[k] < 0 || lab[k] >= classes)
                    rc = dm_fail(err, DM_ERR_FORMAT, "data: label %d of example %lld is out of range [0, %d)", lab[k],
                                 (long long)idx[k], classes);
            if (rc == DM_OK)
                rc = dm_dev_upload(&t->dev, t->d_images[split] + (size_t)i0 * item, img,
                                   (size_t)n * item * sizeof(float), err);
            if (rc == DM_OK)
                rc = dm_dev_upload(&t->dev, t->d_labels[split] + i0, lab, (size_t)n * sizeof(int32_t), err);
            if (rc == DM_OK) rc = dm_dev_sync(&t->dev, err); /* img and lab are reused */
        }
        free(img);
        free(lab);
        free(idx);
    }
    if (rc == DM_OK && !(t->d_perm = dm_dev_alloc(&t->dev, (size_t)t->di.count[DM_SPLIT_TRAIN] * sizeof(int64_t), err)))
        rc = err ? err->code : DM_ERR_NOMEM;
    return rc;
}

/* Fill this rank's slice of the next global batch. */
int tr_next_train_batch(trainer *t, dm_error *err)
{
    int b = t->x->batch_size;
    int64_t global = (int64_t)b * t->ci.size;
    if (t->epoch_pos + global > t->di.count[DM_SPLIT_TRAIN]) { /* drop the ragged tail */
        t->epoch++;
        t->epoch_pos = 0;
    }
    if (t->perm_epoch != t->epoch) {
        make_perm(t, t->epoch);
        int rc;
        if (t->d_perm &&
            (rc = dm_dev_upload(&t->dev, t->d_perm, t->perm, (size_t)t->di.count[DM_SPLIT_TRAIN] * sizeof(int64_t),
                                err)))
            return rc;
    }
    const int64_t *slice = t->perm + t->epoch_pos + (int64_t)t->ci.rank * b;
    t->epoch_pos += global;
    if (t->d_images[DM_SPLIT_TRAIN]) return gather_batch(t, DM_SPLIT_TRAIN, t->d_perm + (slice - t->perm), 0, b, err);
    return load_batch(t, DM_SPLIT_TRAIN, slice, b, err);
}

/* Tests (tests/distributed/elastic.sh): DMNIST_TEST_TRACE_DATA=PREFIX makes
 * each process append, to PREFIX.<pid>, one line per completed step: "step
 * round rank epoch" and the examples this rank trained on, so a test can
 * check that no example was skipped or seen twice within an epoch across
 * changes of the world. */
void tr_open_data_trace(trainer *t)
{
    const char *prefix = getenv("DMNIST_TEST_TRACE_DATA");
    if (!prefix || !prefix[0]) return;
    char path[4096];
    snprintf(path, sizeof path, "%s.%ld", prefix, (long)getpid());
    t->data_trace = fopen(path, "a");
}

void tr_trace_data(trainer *t)
{
    if (!t->data_trace) return; /* the usual case: one test of a pointer per step */
    const int b = t->x->batch_size;
    /* the step just taken: the cursor moved past its global batch */
    const int64_t first = t->epoch_pos - (int64_t)b * t->ci.size + (int64_t)t->ci.rank * b;
    fprintf(t->data_trace, "%lld %d %d %lld", (long long)t->step, t->el ? t->el->round : 0, t->ci.rank,
            (long long)t->epoch);
    for (int i = 0; i < b; i++) fprintf(t->data_trace, " %lld", (long long)t->perm[first + i]);
    fputc('\n', t->data_trace);
    fflush(t->data_trace);
}

/* ---- evaluation -------------------------------------------------------------- */

/* The test set in batches of eval_batch_size over the global index, each
 * rank taking a contiguous run of whole batches. Every batch's loss sum
 * goes into its own slot of a vector that one allreduce combines (a slot
 * plus zeros is exact) and is added up in batch order: the same batches
 * and the same sums on any number of ranks, so 1 rank and N ranks give
 * identical numbers. confusion (classes x classes floats, rows the true
 * class, columns the predicted one, zeroed here) may be NULL; its counts
 * are the argmax of the loss layer's input, first maximum winning, as the
 * loss layers count correct predictions. */
int tr_evaluate(trainer *t, double *loss, double *acc, float *confusion, dm_error *err)
{
    const int64_t total = t->di.count[DM_SPLIT_TEST];
    const int eb = t->x->eval_batch_size, N = t->ci.size, r = t->ci.rank;
    const int64_t nb = (total + eb - 1) / eb;
    const int64_t b_lo = nb * r / N, b_hi = nb * (r + 1) / N;
    const dm_layer_inst *last = &t->m.layers[t->m.n_layers - 1];
    const int classes = last->out_shape.c;
    const dm_tensor *logits = t->m.n_layers >= 2 ? &t->m.layers[t->m.n_layers - 2].out : &t->m.input;
    const size_t cc = confusion ? (size_t)classes * (size_t)classes : 0;
    /* [batch loss sums (nb)] [correct] [examples] [confusion (cc)] */
    const size_t nv = (size_t)nb + 2 + cc;
    float *v = calloc(nv, sizeof(float));
    float *h_logits = confusion ? malloc((size_t)eb * (size_t)classes * sizeof(float)) : NULL;
    int32_t *h_lab = confusion ? malloc((size_t)eb * sizeof(int32_t)) : NULL;
    if (!v || (confusion && (!h_logits || !h_lab))) {
        free(v);
        free(h_logits);
        free(h_lab);
        return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    }
    /* keep the training accumulator for the next log line */
    float saved[2];
    int rc = dm_dev_download(&t->dev, saved, t->m.metrics, sizeof saved, err);
    if (!rc) rc = dm_dev_zero(&t->dev, t->m.metrics, 2 * sizeof(float), err);
    for (int64_t b = b_lo; b < b_hi && rc == DM_OK; b++) {
        const int64_t i = b * eb;
        const int n = (int)(total - i < eb ? total - i : eb);
        for (int k = 0; k < n; k++) t->idx[k] = i + k;
        if (t->d_images[DM_SPLIT_TEST]) {
            if ((rc = gather_batch(t, DM_SPLIT_TEST, NULL, i, n, err))) break;
        } else if ((rc = load_batch(t, DM_SPLIT_TEST, t->idx, n, err))) {
            break;
        }
        if ((rc = dm_model_forward(&t->m, n, 0, 0, err))) break;
        float mm[2];
        if ((rc = dm_dev_download(&t->dev, mm, t->m.metrics, sizeof mm, err))) break;
        v[b] = mm[0];
        v[nb] += mm[1]; /* whole numbers: exact in float up to 2^24 */
        v[nb + 1] += (float)n;
        if ((rc = dm_dev_zero(&t->dev, t->m.metrics, 2 * sizeof(float), err))) break;
        if (confusion) {
            if ((rc = dm_dev_download(&t->dev, h_logits, logits->data, (size_t)n * classes * sizeof(float), err)))
                break;
            if ((rc = dm_dev_download(&t->dev, h_lab, t->m.labels, (size_t)n * sizeof(int32_t), err))) break;
            float *cm = v + nb + 2;
            for (int k = 0; k < n; k++) {
                const float *x = h_logits + (size_t)k * classes;
                int arg = 0;
                for (int j = 1; j < classes; j++)
                    if (x[j] > x[arg]) arg = j;
                cm[(size_t)h_lab[k] * classes + arg] += 1;
            }
        }
    }
    if (rc == DM_OK) rc = tr_allreduce_host(t, v, nv, DM_REDUCE_SUM, err);
    if (rc == DM_OK) {
        double sum = 0;
        for (int64_t b = 0; b < nb; b++) sum += v[b];
        const double count = v[nb + 1];
        *loss = count > 0 ? sum / count : 0;
        *acc = count > 0 ? v[nb] / count : 0;
        if (confusion) memcpy(confusion, v + nb + 2, cc * sizeof(float));
    }
    if (rc == DM_OK) rc = dm_dev_upload(&t->dev, t->m.metrics, saved, sizeof saved, err);
    free(v);
    free(h_logits);
    free(h_lab);
    return rc;
}
