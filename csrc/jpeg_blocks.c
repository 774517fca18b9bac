/* A JPEG crop's quantised DCT blocks alone, for the device to finish the decode
 * (data/device/jpegblocks.py is its Python side, kernels/jpegdecode.py the device's part).
 *
 * jpeg_read_coefficients of the libjpeg Pillow loaded does the entropy decoding; a progress
 * monitor cuts a sequential file short once the crop's iMCU rows are in, so the rows below
 * are not decoded at all. The tail is then checked for markers as region() checks it. */
#include "jpeg_lib.h"

#include <math.h>

typedef struct {
    struct jpeg_progress_mgr pub;
    JDIMENSION rows;           /* the iMCU rows wanted: [0, rows) */
    const JOCTET *rest;        /* where the input stood once they were in */
    int marker;                /* and the marker the entropy decoder had stopped at */
} Progress;

static const JOCTET fake_eoi[2] = {0xFF, JPEG_EOI};

static boolean eoi_now(j_decompress_ptr cinfo) {
    cinfo->src->next_input_byte = fake_eoi;
    cinfo->src->bytes_in_buffer = 2;
    return TRUE;
}

/* Called before each unit of input: in a sequential file's one scan, an iMCU row. Once the
 * rows a region needs are in, the input is cut short with an EOI, as a truncated file's
 * is: libjpeg runs through the remaining rows without data, and what it warns of then is
 * moot. */
static void monitor(j_common_ptr common) {
    j_decompress_ptr cinfo = (j_decompress_ptr)common;
    Progress *p = (Progress *)cinfo->progress;
    Errors *err = (Errors *)cinfo->err;
    if (err->stopped || cinfo->progressive_mode || cinfo->comps_in_scan != cinfo->num_components ||
        cinfo->input_iMCU_row < p->rows || cinfo->input_iMCU_row >= cinfo->total_iMCU_rows)
        return;
    err->stopped = 1;
    p->rest = cinfo->src->next_input_byte;
    p->marker = cinfo->unread_marker;
    cinfo->src->bytes_in_buffer = 0;
    cinfo->src->fill_input_buffer = eoi_now;
}

/* Whether the file's layout is one the device's upsampling covers: 8-bit YCbCr with
 * chroma at 1x1 and luma at 1x1, 2x1, 1x2 or 2x2 (4:4:4, 4:2:2, 4:4:0, 4:2:0), where
 * libjpeg picks its fancy upsampling (jdsample.c: a chroma row wider than 2 for h2), or
 * 8-bit grayscale. */
static int covered_layout(j_decompress_ptr cinfo, int gray, char *why) {
    int hmax = cinfo->max_h_samp_factor, vmax = cinfo->max_v_samp_factor, ok;
    jpeg_component_info *c = cinfo->comp_info;
    if (gray)
        ok = cinfo->jpeg_color_space == JCS_GRAYSCALE && cinfo->num_components == 1 &&
             hmax <= 2 && vmax <= 2;
    else
        ok = cinfo->jpeg_color_space == JCS_YCbCr && cinfo->num_components == 3 &&
             hmax <= 2 && vmax <= 2 && c[0].h_samp_factor == hmax &&
             c[0].v_samp_factor == vmax && c[1].h_samp_factor == 1 &&
             c[1].v_samp_factor == 1 && c[2].h_samp_factor == 1 && c[2].v_samp_factor == 1 &&
             (hmax == 1 || c[1].downsampled_width > 2);
    if (!ok || cinfo->data_precision != 8)
        snprintf(why, JMSG_LENGTH_MAX, "colour space %d, %d components, %dx%d sampling, %d-bit",
                 (int)cinfo->jpeg_color_space, cinfo->num_components, hmax, vmax,
                 cinfo->data_precision);
    return ok && cinfo->data_precision == 8;
}

/* k_u cos((2x + 1) u pi / 16), [x][u]: the IDCT's basis with libjpeg's scaling */
static const double BASIS[DCTSIZE][DCTSIZE] = {
    {1, 1.3870398453221475, 1.3065629648763766, 1.1758756024193588, 1.0000000000000002, 0.78569495838710235, 0.54119610014619712, 0.27589937928294311},
    {1, 1.1758756024193588, 0.54119610014619712, -0.27589937928294295, -1, -1.3870398453221475, -1.3065629648763768, -0.78569495838710213},
    {1, 0.78569495838710235, -0.54119610014619701, -1.3870398453221475, -1.0000000000000002, 0.27589937928294306, 1.3065629648763764, 1.1758756024193591},
    {1, 0.27589937928294311, -1.3065629648763766, -0.78569495838710213, 0.99999999999999978, 1.1758756024193591, -0.54119610014619723, -1.3870398453221477},
    {1, -0.27589937928294295, -1.3065629648763768, 0.78569495838710168, 1.0000000000000002, -1.1758756024193586, -0.54119610014619812, 1.3870398453221475},
    {1, -0.7856949583871019, -0.54119610014619779, 1.3870398453221475, -0.99999999999999889, -0.27589937928294267, 1.3065629648763766, -1.1758756024193584},
    {1, -1.1758756024193588, 0.54119610014619735, 0.27589937928294372, -0.99999999999999956, 1.3870398453221477, -1.3065629648763761, 0.78569495838710124},
    {1, -1.3870398453221475, 1.3065629648763764, -1.1758756024193586, 0.99999999999999878, -0.78569495838710124, 0.54119610014619668, -0.27589937928294345},
};

/* Whether a block's IDCT gives the same bytes through libjpeg-turbo's SIMD (16-bit lanes:
 * pmullw dequantises, paddw sums, packssdw saturates pass 1, so corrupt coefficients wrap
 * or saturate there), its C code (which wraps a sample outside [-512, 511] through
 * range_limit[x & 1023]) and the device's exact integer IDCT with the final saturation.
 * With F = coefficient x quantiser, k_0 = 1 and k_u = sqrt(2), pass 1 gives
 * p_u(y) = 4 sum_v F(u,v) k_v cos(..), a sample is sum_u p_u(y) k_u cos(..) / 32, and
 * every 16-bit value is a sum of F's down a column or of p's along a row. So the test:
 * W = sum |F| k_u k_v <= 4064 (k_u k_v rounded up to halves: `half_weight`) bounds them
 * all (4W < 32768, |sample| <= W/8 + rounding), and a block beyond that (stripes have
 * W ~ 2300, a checkerboard ~ 5300, uniform noise at quality 100 ~ 7000) has its two
 * passes computed here, with margins for islow's rounding. Only corrupt data fails it;
 * such a crop is decoded to pixels by the libjpeg Pillow uses, Pillow's bytes by
 * construction. */
static inline int half_weight(int k) { /* 2 k_u k_v rounded up: 2 (DC), 3 (edges), 4 */
    return k == 0 ? 2 : (k < DCTSIZE || k % DCTSIZE == 0) ? 3 : 4;
}

static int exact_block(const JCOEF *coef, const UINT16 *quant, const int *weight) {
    if (weight) { /* 8-bit tables: 64 x 32768 x 1020 < 2^31, and the sum vectorises */
        int w = 0;
        for (int k = 0; k < DCTSIZE2; k++) w += (coef[k] < 0 ? -coef[k] : coef[k]) * weight[k];
        if (w <= 2 * 4064) return 1;
    } else {
        long long w = 0;
        for (int k = 0; k < DCTSIZE2; k++)
            w += half_weight(k) * llabs((long long)coef[k] * quant[k]);
        if (w <= 2 * 4064) return 1;
    }
    double f[DCTSIZE2];
    for (int k = 0; k < DCTSIZE2; k++) f[k] = (double)coef[k] * quant[k];
    double p[DCTSIZE][DCTSIZE]; /* pass 1: [y][u] */
    for (int u = 0; u < DCTSIZE; u++) {
        double column = 0;
        for (int v = 0; v < DCTSIZE; v++) column += fabs(f[v * DCTSIZE + u]);
        if (column > 32700) return 0;
        for (int y = 0; y < DCTSIZE; y++) {
            double s = 0;
            for (int v = 0; v < DCTSIZE; v++) s += f[v * DCTSIZE + u] * BASIS[y][v];
            p[y][u] = 4 * s;
        }
    }
    for (int y = 0; y < DCTSIZE; y++) {
        double along = 0;
        for (int u = 0; u < DCTSIZE; u++) along += fabs(p[y][u]);
        if (along > 32700) return 0;
        for (int x = 0; x < DCTSIZE; x++) {
            double s = 0;
            for (int u = 0; u < DCTSIZE; u++) s += p[y][u] * BASIS[x][u];
            if (fabs(s / 32) > 508) return 0;
        }
    }
    return 1;
}

/* The quantised DCT blocks of iMCU columns [c0, c1) and rows [r0, r1), each component's
 * block rows into its own buffer (luma `stride_y` bytes a row; chroma `stride_c` a row,
 * `plane_c` a component), and the components' quantisation tables (natural order) into
 * `quant`. Only the entropy decoding runs here: rows below the region are not decoded
 * (a sequential file is cut short after them), and the tail is checked for markers as
 * `decode` checks it, so damage anywhere in the file sends it to the caller's fallback. */
static int coefs(const unsigned char *data, size_t size, int gray, int c0, int r0, int c1,
                 int r1, unsigned char *out_y, size_t stride_y, size_t len_y,
                 unsigned char *out_c, size_t stride_c, size_t plane_c, size_t len_c,
                 unsigned short *quant, char *why) {
    struct jpeg_decompress_struct cinfo;
    Errors err;
    Progress progress;
    volatile int created = 0;
    dp_init_errors(&cinfo, &err);
    memset(&progress, 0, sizeof progress);
    if (setjmp(err.jump)) {
        err.pub.format_message((j_common_ptr)&cinfo, why);
        if (created) dp_lib.destroy(&cinfo);
        return BROKEN;
    }
    dp_lib.create(&cinfo, JPEG_LIB_VERSION, sizeof cinfo);
    created = 1;
    dp_lib.mem_src(&cinfo, data, (unsigned long)size);
    dp_lib.read_header(&cinfo, TRUE);
    if (dp_too_large(&cinfo, why)) {
        dp_lib.destroy(&cinfo);
        return BROKEN;
    }
    if (!covered_layout(&cinfo, gray, why)) {
        dp_lib.destroy(&cinfo);
        return FALLBACK;
    }
    int hmax = cinfo.max_h_samp_factor, vmax = cinfo.max_v_samp_factor;
    int cols = ((int)cinfo.image_width + 8 * hmax - 1) / (8 * hmax);
    int rows = ((int)cinfo.image_height + 8 * vmax - 1) / (8 * vmax);
    if (c0 < 0 || r0 < 0 || c1 > cols || r1 > rows || c0 >= c1 || r0 >= r1) {
        snprintf(why, JMSG_LENGTH_MAX, "iMCU box outside the %dx%d iMCUs", cols, rows);
        dp_lib.destroy(&cinfo);
        return BROKEN;
    }
    size_t span = (size_t)(c1 - c0) * sizeof(JBLOCK), n = (size_t)(r1 - r0);
    if (stride_y < span * hmax || len_y < (n * vmax - 1) * stride_y + span * hmax ||
        (!gray && (stride_c < span || plane_c < n * stride_c || len_c < plane_c + n * stride_c))) {
        dp_lib.destroy(&cinfo);
        return SHORT;
    }
    progress.pub.progress_monitor = monitor;
    progress.rows = (JDIMENSION)r1;
    cinfo.progress = &progress.pub;
    jvirt_barray_ptr *arrays = dp_lib.coefficients(&cinfo);
    if (!arrays) {
        snprintf(why, JMSG_LENGTH_MAX, "no coefficients");
        err.warned = 1;
    }
    if (err.stopped) { /* the tail was not decoded: refuse what a full decode would */
        if (!dp_plain_tail(progress.marker, progress.rest, data + size)) {
            snprintf(why, JMSG_LENGTH_MAX, "a marker below the region");
            err.warned = 1;
        }
    }
    for (int ci = 0; !err.warned && ci < cinfo.num_components; ci++) {
        jpeg_component_info *comp = &cinfo.comp_info[ci];
        if (!comp->quant_table) {
            snprintf(why, JMSG_LENGTH_MAX, "component %d has no quantisation table", ci);
            err.warned = 1;
        }
        /* libjpeg smooths a progressive file's blocks when some coefficients stay coarse
         * (jdcoefct.c, smoothing_ok): the device does not, so those decode whole. */
        for (int k = 0; cinfo.progressive_mode && !err.warned && k < 10; k++)
            if (cinfo.coef_bits[ci][k] != 0) {
                snprintf(why, JMSG_LENGTH_MAX, "a progressive file left coarse");
                err.warned = 1;
            }
    }
    if (err.warned) {
        if (!why[0]) snprintf(why, JMSG_LENGTH_MAX, "libjpeg warned (corrupt data)");
        dp_lib.destroy(&cinfo);
        return FALLBACK;
    }
    for (int ci = 0; ci < cinfo.num_components; ci++) {
        jpeg_component_info *comp = &cinfo.comp_info[ci];
        int h = comp->h_samp_factor, v = comp->v_samp_factor;
        unsigned char *base = ci == 0 ? out_y : out_c + (size_t)(ci - 1) * plane_c;
        size_t stride = ci == 0 ? stride_y : stride_c;
        /* half_weight x quantiser, the test's weights for this component's table */
        int weight[DCTSIZE2], narrow = 1;
        for (int k = 0; k < DCTSIZE2; k++) {
            int q = comp->quant_table->quantval[k];
            weight[k] = half_weight(k) * q;
            narrow &= q <= 255;
        }
        for (int r = r0 * v; r < r1 * v; r++) {
            JBLOCKARRAY row = cinfo.mem->access_virt_barray((j_common_ptr)&cinfo, arrays[ci],
                                                            (JDIMENSION)r, 1, FALSE);
            for (int b = c0 * h; b < c1 * h; b++)
                if (!exact_block(row[0][b], comp->quant_table->quantval, narrow ? weight : NULL)) {
                    snprintf(why, JMSG_LENGTH_MAX, "coefficients beyond the exact IDCT's range");
                    dp_lib.destroy(&cinfo);
                    return FALLBACK;
                }
            memcpy(base + (size_t)(r - r0 * v) * stride, row[0][c0 * h],
                   (size_t)(c1 - c0) * h * sizeof(JBLOCK));
        }
        for (int k = 0; k < DCTSIZE2; k++) quant[ci * DCTSIZE2 + k] = comp->quant_table->quantval[k];
    }
    dp_lib.destroy(&cinfo);
    return OK;
}

/* coefficients(data, gray, c0, r0, c1, r1, out_y, stride_y, out_c, stride_c, plane_c,
 * quant) -> None once the blocks are in the buffers, or (broken, why) as region(). */
PyObject *dp_coefficients(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buf, oy, oc, q;
    int gray, c0, r0, c1, r1;
    Py_ssize_t sy, sc, pc;
    if (!PyArg_ParseTuple(args, "y*piiiiw*nw*nnw*", &buf, &gray, &c0, &r0, &c1, &r1, &oy, &sy,
                          &oc, &sc, &pc, &q))
        return NULL;
    if (!dp_lib.bound || c1 <= c0 || r1 <= r0 || q.len < 3 * DCTSIZE2 * 2 || sy < 0 || sc < 0 ||
        pc < 0) {
        PyBuffer_Release(&buf);
        PyBuffer_Release(&oy);
        PyBuffer_Release(&oc);
        PyBuffer_Release(&q);
        return PyErr_Format(PyExc_ValueError, "coefficients: unbound, an empty box or a short buffer");
    }
    char why[JMSG_LENGTH_MAX] = "";
    int status;
    Py_BEGIN_ALLOW_THREADS;
    status = coefs(buf.buf, (size_t)buf.len, gray, c0, r0, c1, r1, oy.buf, (size_t)sy,
                   (size_t)oy.len, oc.buf, (size_t)sc, (size_t)pc, (size_t)oc.len, q.buf, why);
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&buf);
    PyBuffer_Release(&oy);
    PyBuffer_Release(&oc);
    PyBuffer_Release(&q);
    if (status == SHORT) return PyErr_Format(PyExc_ValueError, "coefficients: a short buffer");
    if (status == OK) Py_RETURN_NONE;
    return Py_BuildValue("(Os)", status == BROKEN ? Py_True : Py_False, why);
}

