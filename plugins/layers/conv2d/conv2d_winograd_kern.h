/* The Winograd kernels that run once per copy of the instruction set
 * (cpu_isa.h): conv2d_winograd.c includes this file three times, under
 * `#pragma GCC target` for AVX-512 and AVX2 and without one, with WK(name)
 * naming each copy (name_avx512, name_avx2, name_generic). No include
 * guard, no types: those live in conv2d_winograd.c. Everything here is
 * lane-by-lane float arithmetic in a fixed order, so the copies agree to
 * the bit (the plugin is built with -ffp-contract=off). */

/* ---- the 1-D transforms, on 16 lanes (see conv2d_winograd.c) ------------ */

/* BT (6x6) d: the input transform. */
static inline void WK(bt_1d)(float *o, size_t os, const float *d, size_t is)
{
    const vec d0 = vload(d), d1 = vload(d + is), d2 = vload(d + 2 * is), d3 = vload(d + 3 * is), d4 = vload(d + 4 * is),
              d5 = vload(d + 5 * is);
    vstore(o, 4.0f * d0 - 5.0f * d2 + d4);
    vstore(o + os, -4.0f * (d1 + d2) + d3 + d4);
    vstore(o + 2 * os, 4.0f * (d1 - d2) - d3 + d4);
    vstore(o + 3 * os, 2.0f * (d3 - d1) - d2 + d4);
    vstore(o + 4 * os, 2.0f * (d1 - d3) - d2 + d4);
    vstore(o + 5 * os, 4.0f * d1 - 5.0f * d3 + d5);
}

/* BT^T v: the adjoint of bt_1d (backward to the input). */
static inline void WK(b_1d)(float *o, size_t os, const float *v, size_t is)
{
    const vec v0 = vload(v), v1 = vload(v + is), v2 = vload(v + 2 * is), v3 = vload(v + 3 * is), v4 = vload(v + 4 * is),
              v5 = vload(v + 5 * is);
    vstore(o, 4.0f * v0);
    vstore(o + os, 4.0f * (v2 - v1) + 2.0f * (v4 - v3) + 4.0f * v5);
    vstore(o + 2 * os, -5.0f * v0 - 4.0f * (v1 + v2) - v3 - v4);
    vstore(o + 3 * os, v1 - v2 + 2.0f * (v3 - v4) - 5.0f * v5);
    vstore(o + 4 * os, v0 + v1 + v2 + v3 + v4);
    vstore(o + 5 * os, v5);
}

/* AT (4x6) m: the output transform. */
static inline void WK(at_1d)(float *o, size_t os, const float *m, size_t is)
{
    const vec m0 = vload(m), m1 = vload(m + is), m2 = vload(m + 2 * is), m3 = vload(m + 3 * is), m4 = vload(m + 4 * is),
              m5 = vload(m + 5 * is);
    const vec s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
    vstore(o, m0 + s12 + s34);
    vstore(o + os, d12 + 2.0f * d34);
    vstore(o + 2 * os, s12 + 4.0f * s34);
    vstore(o + 3 * os, d12 + 8.0f * d34 + m5);
}

/* AT^T g (6 from 4): the adjoint of at_1d (backward from the output). */
static inline void WK(a_1d)(float *o, size_t os, const float *g, size_t is)
{
    const vec g0 = vload(g), g1 = vload(g + is), g2 = vload(g + 2 * is), g3 = vload(g + 3 * is);
    const vec e = g0 + g2, od = g1 + g3, e4 = g0 + 4.0f * g2, od2 = 2.0f * g1 + 8.0f * g3;
    vstore(o, g0);
    vstore(o + os, e + od);
    vstore(o + 2 * os, e - od);
    vstore(o + 3 * os, e4 + od2);
    vstore(o + 4 * os, e4 - od2);
    vstore(o + 5 * os, g3);
}

/* G (6x3) g: the filter transform, on 16 lanes (multiplications by
 * reciprocals, which cost a fraction of divisions). */
static inline void WK(g_1d)(float *o, size_t os, const float *g, size_t is)
{
    const vec g0 = vload(g), g1 = vload(g + is), g2 = vload(g + 2 * is);
    vstore(o, g0 * R4);
    vstore(o + os, -(g0 + g1 + g2) * R6);
    vstore(o + 2 * os, -(g0 - g1 + g2) * R6);
    vstore(o + 3 * os, g0 * R24 + g1 * R12 + g2 * R6);
    vstore(o + 4 * os, g0 * R24 - g1 * R12 + g2 * R6);
    vstore(o + 5 * os, g2);
}

/* U[xi][f][c0 .. c0+n) = (G w[f][c] G^T)[xi] for n <= 16 channels of filter
 * f: 16 channels per vector, so the 36 stores are whole rows of U (the
 * filter's 3x3 taps are first gathered channel-minor). */
static void WK(filter_transform)(const float *w_f, int c0, int n, size_t fc, float *U_f)
{
    float g[9 * WL], t[18 * WL], u[WN * WL];
    for (int k = 0; k < 9; k++)
        for (int j = 0; j < WL; j++) g[k * WL + j] = j < n ? w_f[(size_t)(c0 + j) * 9 + k] : 0.0f;
    for (int kx = 0; kx < 3; kx++) /* columns: t (6x3) = G g */
        WK(g_1d)(t + kx * WL, 3 * WL, g + kx * WL, 3 * WL);
    for (int i = 0; i < 6; i++) /* rows: u (6x6) = t G^T */
        WK(g_1d)(u + i * 6 * WL, WL, t + i * 3 * WL, WL);
    if (n == WL) {
        for (int xi = 0; xi < WN; xi++) vstore(U_f + xi * fc + c0, vload(u + xi * WL));
    } else {
        for (int xi = 0; xi < WN; xi++)
            for (int j = 0; j < n; j++) U_f[xi * fc + c0 + j] = u[xi * WL + j];
    }
}

/* ---- the per-image transforms (see conv2d_winograd.c) ---------------------- */

/* V for image b's tiles from x_img (C, H, W); img is the channels-last scratch. */
static void WK(input_transform)(const conv2d_state *s, const wino_ws *l, int b, const float *x_img, float *img,
                                float *V)
{
    const int H = s->in_h, W = s->in_w, cp = l->cp;
    const size_t xs = l->tmax * cp; /* floats between positions xi and xi+1 */
    to_channels_last(x_img, s->in_c, H * W, img, cp);
    for (int ty = 0; ty < l->th; ty++) {
        for (int tx = 0; tx < l->tw; tx++) {
            const int t = b * l->tiles + ty * l->tw + tx;
            const int iy = 4 * ty - s->pad_top, ix = 4 * tx - s->pad_left;
            const int inside = iy >= 0 && ix >= 0 && iy + 6 <= H && ix + 6 <= W;
            for (int c0 = 0; c0 < cp; c0 += WL) {
                float d[WN * WL], tmp[WN * WL];
                const float *src = d;
                size_t su = 6 * WL, sv = WL; /* strides of u and v in src */
                if (inside) {
                    src = img + ((size_t)iy * W + ix) * cp + c0;
                    su = (size_t)W * cp, sv = (size_t)cp;
                } else { /* gather the tile with zero padding */
                    for (int u = 0; u < 6; u++)
                        for (int v = 0; v < 6; v++) {
                            const int y = iy + u, xx = ix + v;
                            if (y >= 0 && y < H && xx >= 0 && xx < W)
                                memcpy(d + (u * 6 + v) * WL, img + ((size_t)y * W + xx) * cp + c0, WL * sizeof(float));
                            else memset(d + (u * 6 + v) * WL, 0, WL * sizeof(float));
                        }
                }
                for (int v = 0; v < 6; v++) /* columns: tmp (6x6) = BT d */
                    WK(bt_1d)(tmp + v * WL, 6 * WL, src + v * sv, su);
                float *out = V + (size_t)t * cp + c0;
                for (int i = 0; i < 6; i++) /* rows: V = tmp BT^T */
                    WK(bt_1d)(out + i * 6 * xs, xs, tmp + i * 6 * WL, WL);
            }
        }
    }
}

/* y_img (F, OH, OW) = act(AT M AT^T + bias) for image b's tiles. */
static void WK(output_transform)(const conv2d_state *s, const wino_ws *l, int b, const float *M, float *img,
                                 float *y_img)
{
    const int OH = s->out_h, OW = s->out_w, fp = l->fp, relu = s->relu;
    const size_t xs = l->tmax * fp;
    for (int ty = 0; ty < l->th; ty++) {
        for (int tx = 0; tx < l->tw; tx++) {
            const int t = b * l->tiles + ty * l->tw + tx;
            const int oy = 4 * ty, ox = 4 * tx;
            const int rows = OH - oy < 4 ? OH - oy : 4, cols = OW - ox < 4 ? OW - ox : 4;
            for (int f0 = 0; f0 < fp; f0 += WL) {
                float tmp[24 * WL], o[16 * WL], bias[WL];
                const float *m = M + (size_t)t * fp + f0;
                for (int v = 0; v < 6; v++) /* columns: tmp (4x6) = AT m */
                    WK(at_1d)(tmp + v * WL, 6 * WL, m + v * xs, 6 * xs);
                for (int i = 0; i < 4; i++) /* rows: o (4x4) = tmp AT^T */
                    WK(at_1d)(o + i * 4 * WL, WL, tmp + i * 6 * WL, WL);
                for (int k = 0; k < WL; k++) bias[k] = s->b && f0 + k < s->filters ? s->b[f0 + k] : 0.0f;
                for (int i = 0; i < rows; i++)
                    for (int j = 0; j < cols; j++) {
                        float *dst = img + ((size_t)(oy + i) * OW + ox + j) * fp + f0;
                        const float *src = o + (i * 4 + j) * WL;
                        if (relu) {
                            for (int k = 0; k < WL; k++) {
                                const float v = src[k] + bias[k];
                                dst[k] = v < 0.0f ? 0.0f : v; /* NaN stays NaN */
                            }
                        } else {
                            for (int k = 0; k < WL; k++) dst[k] = src[k] + bias[k];
                        }
                    }
            }
        }
    }
    from_channels_last(img, fp, OH * OW, y_img, s->filters);
}

/* dM = AT^T (dy * relu'(y)) AT for image b's tiles; db (F) += the masked dy's
 * sums. masked: scratch for one image's masked dy. */
static void WK(grad_output_transform)(const conv2d_state *s, const wino_ws *l, int b, const float *y_img,
                                      const float *dy_img, float *masked, float *img, float *dM, float *db)
{
    const int OH = s->out_h, OW = s->out_w, fp = l->fp, ohw = OH * OW;
    const size_t xs = l->tmax * fp;
    const float *g_img = dy_img;
    if (s->relu) {
        for (int f = 0; f < s->filters; f++) {
            const float *g = dy_img + (size_t)f * ohw, *o = y_img + (size_t)f * ohw;
            float *d = masked + (size_t)f * ohw;
            for (int p = 0; p < ohw; p++) {
                const float gp = g[p]; /* unconditional load: vectorises */
                d[p] = o[p] > 0.0f ? gp : 0.0f;
            }
        }
        g_img = masked;
    }
    for (int f = 0; f < s->filters; f++) { /* 8 partial sums, so it vectorises */
        const float *g = g_img + (size_t)f * ohw;
        float acc[8] = {0};
        int p = 0;
        for (; p + 8 <= ohw; p += 8)
            for (int k = 0; k < 8; k++) acc[k] += g[p + k];
        float sum = 0.0f;
        for (; p < ohw; p++) sum += g[p];
        for (int k = 0; k < 8; k++) sum += acc[k];
        db[f] += sum;
    }
    to_channels_last(g_img, s->filters, ohw, img, fp);
    for (int ty = 0; ty < l->th; ty++) {
        for (int tx = 0; tx < l->tw; tx++) {
            const int t = b * l->tiles + ty * l->tw + tx;
            const int oy = 4 * ty, ox = 4 * tx;
            const int rows = OH - oy < 4 ? OH - oy : 4, cols = OW - ox < 4 ? OW - ox : 4;
            for (int f0 = 0; f0 < fp; f0 += WL) {
                float g[16 * WL], tmp[24 * WL];
                const float *src = img + ((size_t)oy * OW + ox) * fp + f0;
                size_t si = (size_t)OW * fp, sj = (size_t)fp;
                if (rows < 4 || cols < 4) { /* a tile past the output's edge: zeros there */
                    for (int i = 0; i < 4; i++)
                        for (int j = 0; j < 4; j++) {
                            if (i < rows && j < cols)
                                memcpy(g + (i * 4 + j) * WL, src + i * si + j * sj, WL * sizeof(float));
                            else memset(g + (i * 4 + j) * WL, 0, WL * sizeof(float));
                        }
                    src = g, si = 4 * WL, sj = WL;
                }
                for (int j = 0; j < 4; j++) /* columns: tmp (6x4) = AT^T g */
                    WK(a_1d)(tmp + j * WL, 4 * WL, src + j * sj, si);
                float *out = dM + (size_t)t * fp + f0;
                for (int u = 0; u < 6; u++) /* rows: dM = tmp AT */
                    WK(a_1d)(out + u * 6 * xs, xs, tmp + u * 4 * WL, WL);
            }
        }
    }
}

/* dx_img (C, H, W) = the sum over image b's tiles of BT^T dV BT, each at its
 * input corner (tiles overlap; parts in the padding are dropped). */
static void WK(grad_input_transform)(const conv2d_state *s, const wino_ws *l, int b, const float *dV, float *img,
                                     float *dx_img)
{
    const int H = s->in_h, W = s->in_w, cp = l->cp;
    const size_t xs = l->tmax * cp;
    memset(img, 0, (size_t)H * W * cp * sizeof(float));
    for (int ty = 0; ty < l->th; ty++) {
        for (int tx = 0; tx < l->tw; tx++) {
            const int t = b * l->tiles + ty * l->tw + tx;
            const int iy = 4 * ty - s->pad_top, ix = 4 * tx - s->pad_left;
            for (int c0 = 0; c0 < cp; c0 += WL) {
                float tmp[WN * WL], dd[WN * WL];
                const float *v = dV + (size_t)t * cp + c0;
                for (int q = 0; q < 6; q++) /* columns: tmp = BT^T dV */
                    WK(b_1d)(tmp + q * WL, 6 * WL, v + q * xs, 6 * xs);
                for (int k = 0; k < 6; k++) /* rows: dd = tmp BT */
                    WK(b_1d)(dd + k * 6 * WL, WL, tmp + k * 6 * WL, WL);
                for (int u = 0; u < 6; u++) {
                    const int yy = iy + u;
                    if (yy < 0 || yy >= H) continue;
                    for (int q = 0; q < 6; q++) {
                        const int xx = ix + q;
                        if (xx < 0 || xx >= W) continue;
                        float *dst = img + ((size_t)yy * W + xx) * cp + c0;
                        const float *src = dd + (u * 6 + q) * WL;
                        for (int k = 0; k < WL; k++) dst[k] += src[k];
                    }
                }
            }
        }
    }
    from_channels_last(img, cp, H * W, dx_img, s->in_c);
}
