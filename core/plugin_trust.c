/* Who could change a plugin before we load it?
 *
 * dm_trust_path() walks an absolute path one component at a time with
 * lstat()/readlink(), following each symlink itself, and refuses the path
 * when anyone other than root or us could swap what it leads to (the rules
 * of OpenSSH's StrictModes and sudo):
 *
 *  - every folder, symlink and the final file is owned by root or by the
 *    effective user;
 *  - nothing is writable by its group or by other users, except a sticky
 *    folder (such as /tmp) above the final folder: its entries can only be
 *    renamed by their owners, and ours are owned by root or us;
 *  - the folder holding the final file and every folder holding a symlink
 *    that the walk follows must not be writable by others even when
 *    sticky: anyone could drop a new file or link there;
 *  - at most DM_TRUST_MAX_LINKS symlinks per path (a loop ends there).
 *
 * Since every entry on the resolved path is then owned by a trusted user in
 * a folder that only trusted users can change, nobody else can swap it
 * between this check and the dlopen() that follows. */
#define _GNU_SOURCE
#include "dm_core.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define DM_TRUST_MAX_LINKS 40

static int trusted_owner(const struct stat *st) { return st->st_uid == 0 || st->st_uid == geteuid(); }

/* A folder on the way; strict: it holds the file or a symlink we follow. */
static int check_folder(const char *dir, const struct stat *st, int strict, const char *role, dm_error *err)
{
    if (!trusted_owner(st))
        return dm_fail(err, DM_ERR_INVALID,
                       "refused: folder %s%s is owned by uid %u, neither root nor us "
                       "(uid %u)",
                       dir, role, (unsigned)st->st_uid, (unsigned)geteuid());
    if ((st->st_mode & 022) && (strict || !(st->st_mode & S_ISVTX)))
        return dm_fail(err, DM_ERR_INVALID,
                       "refused: folder %s%s is writable by other users (mode %04o, "
                       "owner uid %u); chmod go-w it or move the plugin",
                       dir, role, (unsigned)(st->st_mode & 07777), (unsigned)st->st_uid);
    return DM_OK;
}

/* Append "/name" (or "name" after "/") to cur, which holds len bytes. */
static int append(char *cur, size_t *len, size_t size, const char *name, size_t n)
{
    size_t need = *len + (*len > 1 ? 1 : 0) + n;
    if (need + 1 > size) return -1;
    if (*len > 1) cur[(*len)++] = '/';
    memcpy(cur + *len, name, n);
    *len += n;
    cur[*len] = 0;
    return 0;
}

int dm_trust_path(const char *path, int want_dir, char *real, size_t real_size, struct stat *out, int *missing,
                  dm_error *err)
{
    if (missing) *missing = 0;
    if (!path || path[0] != '/') return dm_fail(err, DM_ERR_INVALID, "not an absolute path");
    /* rest: what is left to walk; grows at the front when a symlink is met. */
    char rest[2 * PATH_MAX], cur[PATH_MAX], link[PATH_MAX];
    if (snprintf(rest, sizeof rest, "%s", path) >= (int)sizeof rest)
        return dm_fail(err, DM_ERR_INVALID, "path too long");
    size_t len = 1;
    strcpy(cur, "/");
    struct stat cur_st, st;
    if (lstat("/", &cur_st) != 0) return dm_fail(err, DM_ERR_IO, "cannot stat /: %s", strerror(errno));
    if (check_folder("/", &cur_st, 0, "", err)) return DM_ERR_INVALID;
    int links = 0, is_file = 0;
    char *p = rest;
    while (*p) {
        while (*p == '/') p++;
        if (!*p) break;
        char *end = strchr(p, '/');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (is_file) return dm_fail(err, DM_ERR_IO, "%s is not a folder", cur);
        if (n == 1 && p[0] == '.') {
            p += n;
            continue;
        }
        if (n == 2 && p[0] == '.' && p[1] == '.') {
            /* cur holds no symlink, so its parent is the lexical one */
            char *slash = strrchr(cur, '/');
            len = slash == cur ? 1 : (size_t)(slash - cur);
            cur[len] = 0;
            if (lstat(cur, &cur_st) != 0)
                return dm_fail(err, DM_ERR_IO, "cannot stat folder %s: %s", cur, strerror(errno));
            p += n;
            continue;
        }
        char parent[PATH_MAX];
        memcpy(parent, cur, len + 1);
        size_t parent_len = len;
        if (append(cur, &len, sizeof cur, p, n) != 0) return dm_fail(err, DM_ERR_INVALID, "path too long");
        p += n;
        if (lstat(cur, &st) != 0) {
            int e = errno;
            if (missing) *missing = e == ENOENT;
            return dm_fail(err, DM_ERR_IO, "cannot stat %s: %s", cur, strerror(e));
        }
        if (S_ISLNK(st.st_mode)) {
            if (check_folder(parent, &cur_st, 1, " (it holds the symlink)", err)) return DM_ERR_INVALID;
            if (!trusted_owner(&st))
                return dm_fail(err, DM_ERR_INVALID,
                               "refused: symlink %s is owned by uid %u, neither root nor "
                               "us (uid %u)",
                               cur, (unsigned)st.st_uid, (unsigned)geteuid());
            if (++links > DM_TRUST_MAX_LINKS)
                return dm_fail(err, DM_ERR_INVALID, "symlink loop (more than %d symlinks) at %s", DM_TRUST_MAX_LINKS,
                               cur);
            ssize_t k = readlink(cur, link, sizeof link - 1);
            if (k <= 0)
                return dm_fail(err, DM_ERR_IO, "cannot read symlink %s: %s", cur, k < 0 ? strerror(errno) : "empty");
            link[k] = 0;
            /* rest becomes link + "/" + what was left after this component */
            size_t left = strlen(p);
            if ((size_t)k + 1 + left + 1 > sizeof rest)
                return dm_fail(err, DM_ERR_INVALID, "path too long after symlink %s", cur);
            memmove(rest + k + 1, p, left + 1);
            memcpy(rest, link, (size_t)k);
            rest[k] = '/';
            p = rest;
            if (link[0] == '/') {
                strcpy(cur, "/");
                len = 1;
                if (lstat("/", &cur_st) != 0) return dm_fail(err, DM_ERR_IO, "cannot stat /: %s", strerror(errno));
            } else {
                memcpy(cur, parent, parent_len + 1);
                len = parent_len;
            }
            continue;
        }
        if (S_ISDIR(st.st_mode)) {
            if (check_folder(cur, &st, 0, "", err)) return DM_ERR_INVALID;
            cur_st = st;
            continue;
        }
        if (want_dir || !S_ISREG(st.st_mode))
            return dm_fail(err, DM_ERR_IO, "%s is not a %s", cur, want_dir ? "folder" : "regular file");
        /* the file: its folder must be strict, the file ours or root's and not writable by others */
        if (check_folder(parent, &cur_st, 1, " (it holds the plugin)", err)) return DM_ERR_INVALID;
        if (!trusted_owner(&st))
            return dm_fail(err, DM_ERR_INVALID,
                           "refused: the file %s is owned by uid %u, neither root nor us "
                           "(uid %u); chown it",
                           cur, (unsigned)st.st_uid, (unsigned)geteuid());
        if (st.st_mode & 022)
            return dm_fail(err, DM_ERR_INVALID,
                           "refused: the file is writable by other users (mode %04o, "
                           "owner uid %u); chmod go-w it",
                           (unsigned)(st.st_mode & 07777), (unsigned)st.st_uid);
        is_file = 1;
    }
    if (want_dir) {
        /* the search folder holds the plugins: strict */
        if (check_folder(cur, &cur_st, 1, "", err)) return DM_ERR_INVALID;
        st = cur_st;
    } else if (!is_file) {
        return dm_fail(err, DM_ERR_IO, "%s is not a regular file", cur);
    }
    if (real && snprintf(real, real_size, "%s", cur) >= (int)real_size)
        return dm_fail(err, DM_ERR_INVALID, "path too long");
    if (out) *out = st;
    return DM_OK;
}
