/* dmnist-plugin-check --reference FILE: an optimizer's k steps against the
 * parameters its author (or an independent computation) expects.
 *
 * The file is plain text, one directive a line, '#' starts a comment:
 *
 *   case momentum-0.9        a new case (its name, for messages)
 *   settings momentum=0.9 nesterov=true   the plugin's keys (the rest: defaults)
 *   lr 0.05                  the learning rate of every step (default 0.01)
 *   params 0.5 -1 2          the parameters before step 1 (n >= 1 floats)
 *   grad 0.1 0.2 -0.3        the gradient of one step: one line per step
 *   expect 0.495 -1.01 2.015 the parameters after the last step
 *   tolerance 1e-3 1e-6      optional: rtol atol (defaults below)
 *
 * A case passes when max |got - expect| <= rtol * max |expect - params| +
 * atol: the error is measured against how far the parameters moved, so a
 * factor wrong in the update (RMSprop without its (1 - rho)) cannot hide
 * behind parameters much larger than one step. */
#define _GNU_SOURCE
#include "plugin_check.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

#define REF_RTOL 1e-3
#define REF_ATOL 1e-6

typedef struct ref_case {
    char name[128];
    char settings[512];
    double lr, rtol, atol;
    float *params, *expect, *grads; /* grads: steps x n */
    size_t n, n_expect;
    int steps, line;
} ref_case;

static void case_free(ref_case *k)
{
    free(k->params);
    free(k->expect);
    free(k->grads);
    memset(k, 0, sizeof *k);
}

/* Parse the floats of `s` into a new array; returns how many (0: none or
 * not a number, with *bad set). */
static size_t parse_floats(const char *s, float **out, int *bad)
{
    size_t n = 0, cap = 16;
    float *v = malloc(cap * sizeof *v);
    char *end;
    *bad = 0;
    while (v) {
        while (*s == ' ' || *s == '\t') s++;
        if (!*s || *s == '\n' || *s == '#') break;
        double x = strtod(s, &end);
        if (end == s || !isfinite(x)) {
            *bad = 1;
            break;
        }
        if (n == cap) {
            float *nv = realloc(v, 2 * cap * sizeof *nv);
            if (!nv) {
                *bad = 1;
                break;
            }
            v = nv;
            cap *= 2;
        }
        v[n++] = (float)x;
        s = end;
    }
    *out = v;
    return *bad ? 0 : n;
}

/* Run one case; returns 0 and the error relative to the motion, or 1 with why. */
static int run_case(const dm_loaded_component *lc, const pc_ctx *c, const ref_case *k, double *rel, char *why,
                    size_t size)
{
    const dm_optimizer_vtable *vt = lc->component->vtable;
    char spec[1100];
    snprintf(spec, sizeof spec, "%s%s%s", c->user_spec ? c->user_spec : "", c->user_spec && k->settings[0] ? " " : "",
             k->settings);
    dm_param_set *ps = NULL;
    dm_error err = {0};
    void *state = NULL;
    if (dm_param_set_parse(lc->component->params, spec, &ps, &err) != DM_OK) {
        snprintf(why, size, "case '%.100s' (line %d): settings '%.300s': %.300s", k->name, k->line, spec, err.msg);
        return 1;
    }
    dm_optimizer_config cfg = {sizeof cfg, DM_DEVICE_CPU, k->n, 1, NULL};
    dm_optimizer_info info = {sizeof info, 0};
    pc_now("reference case '%s': create '%s'", k->name, spec);
    if (vt->create(dm_param_set_params(ps), &cfg, &state, &info, &err) != DM_OK) {
        snprintf(why, size, "case '%.100s': create refused '%.300s': %.300s", k->name, spec, err.msg);
        dm_param_set_free(ps);
        return 1;
    }
    int bad = 1;
    pc_buf st;
    memset(&st, 0, sizeof st);
    float *p = malloc(k->n * sizeof *p);
    if (info.state_floats_per_param > 64) {
        snprintf(why, size, "case '%s': asks for %zu state floats per parameter", k->name, info.state_floats_per_param);
        goto done;
    }
    pc_buf_alloc(&st, k->n * info.state_floats_per_param * sizeof(float)); /* zeroed */
    if (vt->bind(state, st.p, &err) != DM_OK) {
        snprintf(why, size, "case '%s': bind: %s", k->name, err.msg);
        goto done;
    }
    memcpy(p, k->params, k->n * sizeof *p);
    for (int t = 1; t <= k->steps; t++) {
        dm_opt_step_ctx ctx = {sizeof ctx, t, (float)k->lr, NULL};
        pc_now("reference case '%s' step %d", k->name, t);
        if (vt->step(state, &ctx, p, k->grads + (size_t)(t - 1) * k->n, k->n, &err) != DM_OK) {
            snprintf(why, size, "case '%s' step %d: %s", k->name, t, err.msg);
            goto done;
        }
    }
    double moved = 0, worst = -1;
    size_t at = 0;
    for (size_t i = 0; i < k->n; i++) {
        moved = fmax(moved, fabs((double)k->expect[i] - k->params[i]));
        double e = fabs((double)p[i] - k->expect[i]);
        if (!(e <= worst)) { /* NaN counts as the worst */
            worst = isnan(e) ? INFINITY : e;
            at = i;
        }
    }
    *rel = moved > 0 ? worst / moved : worst;
    if (!(worst <= k->rtol * moved + k->atol)) {
        snprintf(why, size,
                 "case '%.100s' ('%.300s', lr %g): params[%zu] after %d step%s is %.7g, expected %.7g "
                 "(error %.3g of the motion %.3g; tolerance %g)",
                 k->name, spec, k->lr, at, k->steps, k->steps == 1 ? "" : "s", p[at], k->expect[at], *rel, moved,
                 k->rtol);
        goto done;
    }
    bad = 0;
done:
    free(p);
    vt->destroy(state);
    dm_param_set_free(ps);
    pc_buf_free(&st);
    return bad;
}

/* A case is complete: params, at least one grad, expect, all of one length. */
static int case_ready(const ref_case *k, char *why, size_t size)
{
    if (!k->n || !k->steps || !k->n_expect) {
        snprintf(why, size, "case '%s' (line %d) needs params, grad and expect lines", k->name, k->line);
        return 0;
    }
    if (k->n_expect != k->n) {
        snprintf(why, size, "case '%s' (line %d): %zu params but %zu expected values", k->name, k->line, k->n,
                 k->n_expect);
        return 0;
    }
    return 1;
}

void pc_check_reference(const pc_ctx *c, const dm_loaded_component *lc)
{
    const char *row = "reference (cpu)";
    FILE *f = fopen(c->reference, "r");
    if (!f) {
        pc_row(lc, row, PC_FAIL, "%s: %s", c->reference, strerror(errno));
        return;
    }
    char *line = NULL, why[1024] = "";
    size_t cap = 0;
    ref_case k;
    memset(&k, 0, sizeof k);
    int lineno = 0, cases = 0, failed = 0, open_case = 0, total_steps = 0;
    double worst = 0;
    ssize_t len;
    while (!failed && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        char *s = line;
        while (*s == ' ' || *s == '\t') s++;
        if (!*s || *s == '\n' || *s == '#') continue;
        size_t wl = strcspn(s, " \t\n");
        char *rest = s + wl;
        while (*rest == ' ' || *rest == '\t') rest++;
        rest[strcspn(rest, "\n")] = 0;
        int bad = 0;
        if (!open_case) {
            case_free(&k);
            k.lr = 0.01, k.rtol = REF_RTOL, k.atol = REF_ATOL, k.line = lineno;
            snprintf(k.name, sizeof k.name, "%d", cases + 1);
            open_case = 1;
        }
        if (wl == 4 && strncmp(s, "case", 4) == 0) {
            snprintf(k.name, sizeof k.name, "%s", rest);
        } else if (wl == 8 && strncmp(s, "settings", 8) == 0) {
            snprintf(k.settings, sizeof k.settings, "%s", rest);
        } else if (wl == 2 && strncmp(s, "lr", 2) == 0) {
            char *end;
            k.lr = strtod(rest, &end);
            bad = end == rest || !isfinite(k.lr);
        } else if (wl == 9 && strncmp(s, "tolerance", 9) == 0) {
            bad = sscanf(rest, "%lf %lf", &k.rtol, &k.atol) != 2 || !(k.rtol >= 0) || !(k.atol >= 0);
        } else if (wl == 6 && strncmp(s, "params", 6) == 0) {
            free(k.params);
            k.n = parse_floats(rest, &k.params, &bad);
            bad |= k.n == 0 || k.steps > 0;
        } else if (wl == 4 && strncmp(s, "grad", 4) == 0) {
            float *g = NULL;
            size_t n = parse_floats(rest, &g, &bad);
            float *ng = !bad && n == k.n && k.n ? realloc(k.grads, (size_t)(k.steps + 1) * k.n * sizeof *ng) : NULL;
            if (!ng) {
                bad = 1;
            } else {
                k.grads = ng;
                memcpy(k.grads + (size_t)k.steps * k.n, g, k.n * sizeof *g);
                k.steps++;
            }
            free(g);
        } else if (wl == 6 && strncmp(s, "expect", 6) == 0) {
            free(k.expect);
            k.n_expect = parse_floats(rest, &k.expect, &bad);
            if (!bad && !case_ready(&k, why, sizeof why)) {
                failed = 1;
                break;
            }
            if (!bad) {
                double rel = 0;
                cases++;
                total_steps += k.steps;
                if (run_case(lc, c, &k, &rel, why, sizeof why)) failed = 1;
                else if (c->verbose)
                    printf("  reference case '%s': %d steps, error %.3g of the motion\n", k.name, k.steps, rel);
                worst = fmax(worst, rel);
                open_case = 0;
            }
        } else {
            snprintf(why, sizeof why,
                     "%s:%d: unknown directive '%.*s' (case, settings, lr, params, grad, "
                     "expect, tolerance)",
                     c->reference, lineno, (int)wl, s);
            failed = 1;
            break;
        }
        if (bad) {
            snprintf(why, sizeof why,
                     "%s:%d: bad '%.*s' line (numbers expected; params before grad; every "
                     "grad as long as params)",
                     c->reference, lineno, (int)wl, s);
            failed = 1;
        }
    }
    free(line);
    fclose(f);
    if (!failed && open_case && (k.n || k.steps))
        snprintf(why, sizeof why, "%s: the last case ('%s') has no expect line", c->reference, k.name), failed = 1;
    case_free(&k);
    if (!failed && cases == 0) snprintf(why, sizeof why, "%s: no case in the file", c->reference), failed = 1;
    if (failed) pc_row(lc, row, PC_FAIL, "%s", why);
    else
        pc_row(lc, row, PC_OK, "%d case%s from %s (%d steps): parameters within %.2g of their motion", cases,
               cases == 1 ? "" : "s", c->reference, total_steps, worst);
}
