/* dm_grow: room for more items in a realloc'ed array (see dm_core.h). */
#include "dm_core.h"

#include <stdlib.h>
#include <string.h>

int dm_grow(void *items, int *cap, int need, size_t item_size, int first_cap)
{
    if (need <= *cap) return 0;
    int c = *cap > 0 ? *cap : first_cap;
    while (c < need) c *= 2;
    void *old, *grown;
    memcpy(&old, items, sizeof old); /* items is a T **: no T ** converts to void ** */
    if (!(grown = realloc(old, (size_t)c * item_size))) return -1;
    memcpy(items, &grown, sizeof grown);
    *cap = c;
    return 0;
}
