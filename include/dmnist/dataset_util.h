/* Small helpers that dataset plugins share: optional, header-only, so a
 * plugin still links nothing of the core. */
#ifndef DMNIST_DATASET_UTIL_H
#define DMNIST_DATASET_UTIL_H

#include "dmnist/dataset.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The checks at the top of read, one line each starting with the dataset's
 * type: `split` is DM_SPLIT_TRAIN or DM_SPLIT_TEST ("<type>: unknown split
 * 2"), and every index of idx[0..n) is in [0, count[split]) ("<type>: index
 * 70000 out of range [0, 60000)"). count: examples per split, as open
 * reported them. Nothing is written before they pass. */
static inline int dm_dataset_check_read(const char *type, dm_split split, const int64_t *idx, int n,
                                        const int64_t count[2], dm_error *err)
{
    if (split != DM_SPLIT_TRAIN && split != DM_SPLIT_TEST)
        return dm_fail(err, DM_ERR_INVALID, "%s: unknown split %d", type, (int)split);
    for (int i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= count[split])
            return dm_fail(err, DM_ERR_INVALID, "%s: index %lld out of range [0, %lld)", type, (long long)idx[i],
                           (long long)count[split]);
    return DM_OK;
}

#ifdef __cplusplus
}
#endif
#endif
