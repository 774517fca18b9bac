/* Decode only the rows and iMCU columns of a JPEG that a crop needs, with the bytes a full
 * decode gives (deit_pipe.data.jpeg is its Python side).
 *
 * The calls go to the libjpeg that Pillow itself loaded (`bind`), so the arithmetic is the
 * library Pillow decodes with, at the settings Pillow uses (libjpeg's defaults: ISLOW IDCT,
 * fancy upsampling). The decode is widened by one iMCU on
 * every side of the crop: libjpeg-turbo's partial decode treats the edges of a cropped
 * region as image edges in its fancy upsampling (libjpeg.txt, "Decompressing partial
 * scanlines"), and the margin keeps those edge pixels out of the crop. Rows below the crop
 * are entropy-decoded only, so that damage anywhere in the file is found as a full decode
 * finds it. Anything unusual (a warning from libjpeg, a colour space other than
 * YCbCr/RGB/grayscale, 12-bit data) returns None, and the caller decodes with Pillow.
 *
 * libjpeg reports errors by calling error_exit, which must not return: it longjmps back
 * here, which is why this is C and not ctypes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jpeglib.h"

static struct {
    struct jpeg_error_mgr *(*std_error)(struct jpeg_error_mgr *);
    void (*create)(j_decompress_ptr, int, size_t);
    void (*destroy)(j_decompress_ptr);
    void (*mem_src)(j_decompress_ptr, const unsigned char *, unsigned long);
    int (*read_header)(j_decompress_ptr, boolean);
    boolean (*start)(j_decompress_ptr);
    void (*crop)(j_decompress_ptr, JDIMENSION *, JDIMENSION *);
    JDIMENSION (*skip)(j_decompress_ptr, JDIMENSION);
    JDIMENSION (*read)(j_decompress_ptr, JSAMPARRAY, JDIMENSION);
    boolean (*finish)(j_decompress_ptr);
    jvirt_barray_ptr *(*coefficients)(j_decompress_ptr);
    int bound;
} lib;

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    int warned;
    int stopped; /* the rows wanted are in: what libjpeg says of the cut-off rest is moot */
} Errors;

static void error_exit(j_common_ptr cinfo) { longjmp(((Errors *)cinfo->err)->jump, 1); }

static void emit_message(j_common_ptr cinfo, int level) {
    Errors *err = (Errors *)cinfo->err;
    if (level < 0 && !err->stopped) /* corrupt or truncated data: Pillow decides */
        err->warned = 1;
}

static void output_message(j_common_ptr cinfo) { (void)cinfo; }

static PyObject *bind(PyObject *self, PyObject *args) {
    (void)self;
    const char *path;
    if (!PyArg_ParseTuple(args, "s", &path)) return NULL;
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) return PyErr_Format(PyExc_OSError, "dlopen %s: %s", path, dlerror());
#define SYM(field, name)                                                                   \
    if (!(*(void **)&lib.field = dlsym(h, name)))                                          \
        return PyErr_Format(PyExc_OSError, "%s has no %s", path, name);
    SYM(std_error, "jpeg_std_error")
    SYM(create, "jpeg_CreateDecompress")
    SYM(destroy, "jpeg_destroy_decompress")
    SYM(mem_src, "jpeg_mem_src")
    SYM(read_header, "jpeg_read_header")
    SYM(start, "jpeg_start_decompress")
    SYM(crop, "jpeg_crop_scanline")
    SYM(skip, "jpeg_skip_scanlines")
    SYM(read, "jpeg_read_scanlines")
    SYM(finish, "jpeg_finish_decompress")
    SYM(coefficients, "jpeg_read_coefficients")
#undef SYM
    lib.bound = 1;
    Py_RETURN_NONE;
}

enum { OK, FALLBACK, BROKEN, SHORT };

/* Whether [p, end) holds only entropy-coded bytes (0xFF stuffed as FF 00), restart markers
 * and, as its last two bytes, the EOI marker: nothing a decoder could find fatal. */
static int plain_tail(const unsigned char *p, const unsigned char *end) {
    while (p < end && (p = memchr(p, 0xFF, (size_t)(end - p))) != NULL) {
        const unsigned char *q = p + 1;
        while (q < end && *q == 0xFF) q++; /* fill bytes before a marker */
        if (q == end) return 0;
        if (*q == 0xD9) return q == end - 1;
        if (*q != 0x00 && (*q < 0xD0 || *q > 0xD7)) return 0;
        p = q + 1;
    }
    return 1;
}
#define CHUNK 16 /* rows read a call: the tallest iMCU row (v2 sampling) */

/* Rows [y0, y1) and columns [x0, x1) of the decoded image into `out`, RGB (a grayscale
 * file's value three times, as Pillow's convert("RGB") does), rows `stride` bytes apart.
 * Runs without the GIL. */
static int decode(const unsigned char *data, size_t size, int gray, int x0, int y0, int x1,
                  int y1, unsigned char *out, size_t stride, char *why) {
    struct jpeg_decompress_struct cinfo;
    Errors err;
    JSAMPLE *volatile row = NULL; /* volatile: read after a longjmp */
    volatile int created = 0;
    memset(&cinfo, 0, sizeof cinfo);
    cinfo.err = lib.std_error(&err.pub);
    err.pub.error_exit = error_exit;
    err.pub.emit_message = emit_message;
    err.pub.output_message = output_message;
    err.warned = err.stopped = 0;
    if (setjmp(err.jump)) {
        err.pub.format_message((j_common_ptr)&cinfo, why);
        free(row);
        if (created) lib.destroy(&cinfo);
        return BROKEN;
    }
    lib.create(&cinfo, JPEG_LIB_VERSION, sizeof cinfo);
    created = 1;
    lib.mem_src(&cinfo, data, (unsigned long)size);
    lib.read_header(&cinfo, TRUE);
    int is_rgb = (cinfo.jpeg_color_space == JCS_YCbCr || cinfo.jpeg_color_space == JCS_RGB) &&
                 cinfo.num_components == 3;
    int is_gray = cinfo.jpeg_color_space == JCS_GRAYSCALE && cinfo.num_components == 1;
    if (cinfo.data_precision != 8 || !(gray ? is_gray : is_rgb)) {
        snprintf(why, JMSG_LENGTH_MAX, "colour space %d, %d components, %d-bit",
                 (int)cinfo.jpeg_color_space, cinfo.num_components, cinfo.data_precision);
        lib.destroy(&cinfo);
        return FALLBACK;
    }
    int width = (int)cinfo.image_width, height = (int)cinfo.image_height;
    if (x0 < 0 || y0 < 0 || x1 > width || y1 > height || x0 >= x1 || y0 >= y1) {
        snprintf(why, JMSG_LENGTH_MAX, "box outside the %dx%d image", width, height);
        lib.destroy(&cinfo);
        return BROKEN;
    }
    int channels = gray ? 1 : 3;
    cinfo.out_color_space = gray ? JCS_GRAYSCALE : JCS_RGB;
    lib.start(&cinfo);
    int imcu_w = cinfo.max_h_samp_factor * DCTSIZE, imcu_h = cinfo.max_v_samp_factor * DCTSIZE;
    int left = x0 - imcu_w > 0 ? x0 - imcu_w : 0;
    int right = x1 + imcu_w < width ? x1 + imcu_w : width;
    JDIMENSION xoff = (JDIMENSION)left, span = (JDIMENSION)(right - left);
    if (span < (JDIMENSION)width) lib.crop(&cinfo, &xoff, &span); /* xoff moves left */
    int top = y0 - imcu_h > 0 ? y0 - imcu_h : 0;
    if (top > 0) lib.skip(&cinfo, (JDIMENSION)top);
    /* Several rows a call: libjpeg emits an iMCU row's worth at once, else it copies via a
     * spare row (4:2:0 upsamples two rows at a time). */
    size_t row_bytes = (size_t)cinfo.output_width * channels;
    row = malloc(row_bytes * CHUNK);
    if (!row) {
        snprintf(why, JMSG_LENGTH_MAX, "out of memory");
        lib.destroy(&cinfo);
        return BROKEN;
    }
    JSAMPROW rows[CHUNK];
    for (int k = 0; k < CHUNK; k++) rows[k] = row + k * row_bytes;
    size_t first = (size_t)(x0 - (int)xoff) * channels, count = (size_t)(x1 - x0);
    for (int y = top; y < y1;) {
        JDIMENSION want = (JDIMENSION)(y1 - y < CHUNK ? y1 - y : CHUNK);
        JDIMENSION got = lib.read(&cinfo, rows, want);
        if (got == 0) {
            snprintf(why, JMSG_LENGTH_MAX, "no scanline %d", y);
            err.warned = 1;
            break;
        }
        for (JDIMENSION k = 0; k < got; k++, y++) {
            if (y < y0) continue;
            const JSAMPLE *src = rows[k] + first;
            unsigned char *dst = out + (size_t)(y - y0) * stride;
            if (!gray) {
                memcpy(dst, src, count * 3);
                continue;
            }
            for (size_t x = 0; x < count; x++) dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = src[x];
        }
    }
    /* A file Pillow refuses for damage anywhere must be refused here too, or a view would
     * depend on whether its crop reaches the damage (and a machine decoding whole images
     * could not replay it). Entropy-coded data can only make libjpeg warn; what is fatal
     * is a marker. So when the rest of the file is entropy-coded bytes, restart markers
     * and the final EOI, the rows below need no decoding; otherwise they are entropy-
     * decoded (skipped, no IDCT) to the end as a full decode would. The last row is read:
     * a skip to the very end marks the input finished without decoding it. */
    JDIMENSION left_over = cinfo.output_height - cinfo.output_scanline;
    const unsigned char *rest = cinfo.src->next_input_byte;
    int marker = cinfo.unread_marker; /* one the entropy decoder stopped at, not yet read */
    int benign = marker == 0 || (marker >= 0xD0 && marker <= 0xD7) ||
                 (marker == 0xD9 && rest == data + size);
    if (!err.warned && !(benign && plain_tail(rest, data + size))) {
        if (left_over > 1) lib.skip(&cinfo, left_over - 1);
        if (left_over > 0 && lib.read(&cinfo, rows, 1) != 1) err.warned = 1;
        if (!err.warned) lib.finish(&cinfo);
    }
    free(row);
    row = NULL;
    lib.destroy(&cinfo);
    if (err.warned) {
        if (!why[0]) snprintf(why, JMSG_LENGTH_MAX, "libjpeg warned (corrupt data)");
        return FALLBACK;
    }
    return OK;
}

/* region(data, gray, x0, y0, x1, y1, out, stride) -> None once the crop is in `out` (a
 * writable buffer, RGB rows `stride` bytes apart), or (broken, why) where Pillow must
 * decode the file: it is not one this covers (broken False) or libjpeg refused it (True). */
static PyObject *region(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buf, out;
    int gray, x0, y0, x1, y1;
    Py_ssize_t stride;
    if (!PyArg_ParseTuple(args, "y*piiiiw*n", &buf, &gray, &x0, &y0, &x1, &y1, &out, &stride))
        return NULL;
    int bad = !lib.bound || x1 <= x0 || y1 <= y0 || stride < (Py_ssize_t)(x1 - x0) * 3 ||
              out.len < (Py_ssize_t)(y1 - y0 - 1) * stride + (Py_ssize_t)(x1 - x0) * 3;
    if (bad) {
        PyBuffer_Release(&buf);
        PyBuffer_Release(&out);
        return PyErr_Format(PyExc_ValueError, "region: unbound, an empty box or a short buffer");
    }
    char why[JMSG_LENGTH_MAX] = "";
    int status;
    Py_BEGIN_ALLOW_THREADS;
    status = decode(buf.buf, (size_t)buf.len, gray, x0, y0, x1, y1, out.buf, (size_t)stride, why);
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&buf);
    PyBuffer_Release(&out);
    if (status == OK) Py_RETURN_NONE;
    return Py_BuildValue("(Os)", status == BROKEN ? Py_True : Py_False, why);
}

/* ---- coefficients(): the host's share when the device runs the IDCT ---- */

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
    memset(&cinfo, 0, sizeof cinfo);
    memset(&progress, 0, sizeof progress);
    cinfo.err = lib.std_error(&err.pub);
    err.pub.error_exit = error_exit;
    err.pub.emit_message = emit_message;
    err.pub.output_message = output_message;
    err.warned = err.stopped = 0;
    if (setjmp(err.jump)) {
        err.pub.format_message((j_common_ptr)&cinfo, why);
        if (created) lib.destroy(&cinfo);
        return BROKEN;
    }
    lib.create(&cinfo, JPEG_LIB_VERSION, sizeof cinfo);
    created = 1;
    lib.mem_src(&cinfo, data, (unsigned long)size);
    lib.read_header(&cinfo, TRUE);
    if (!covered_layout(&cinfo, gray, why)) {
        lib.destroy(&cinfo);
        return FALLBACK;
    }
    int hmax = cinfo.max_h_samp_factor, vmax = cinfo.max_v_samp_factor;
    int cols = ((int)cinfo.image_width + 8 * hmax - 1) / (8 * hmax);
    int rows = ((int)cinfo.image_height + 8 * vmax - 1) / (8 * vmax);
    if (c0 < 0 || r0 < 0 || c1 > cols || r1 > rows || c0 >= c1 || r0 >= r1) {
        snprintf(why, JMSG_LENGTH_MAX, "iMCU box outside the %dx%d iMCUs", cols, rows);
        lib.destroy(&cinfo);
        return BROKEN;
    }
    size_t span = (size_t)(c1 - c0) * sizeof(JBLOCK), n = (size_t)(r1 - r0);
    if (stride_y < span * hmax || len_y < (n * vmax - 1) * stride_y + span * hmax ||
        (!gray && (stride_c < span || plane_c < n * stride_c || len_c < plane_c + n * stride_c))) {
        lib.destroy(&cinfo);
        return SHORT;
    }
    progress.pub.progress_monitor = monitor;
    progress.rows = (JDIMENSION)r1;
    cinfo.progress = &progress.pub;
    jvirt_barray_ptr *arrays = lib.coefficients(&cinfo);
    if (err.stopped) { /* the tail was not decoded: refuse what a full decode would */
        int m = progress.marker;
        int benign = m == 0 || (m >= 0xD0 && m <= 0xD7) ||
                     (m == 0xD9 && progress.rest == data + size);
        if (!benign || !plain_tail(progress.rest, data + size)) {
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
        lib.destroy(&cinfo);
        return FALLBACK;
    }
    for (int ci = 0; ci < cinfo.num_components; ci++) {
        jpeg_component_info *comp = &cinfo.comp_info[ci];
        int h = comp->h_samp_factor, v = comp->v_samp_factor;
        unsigned char *base = ci == 0 ? out_y : out_c + (size_t)(ci - 1) * plane_c;
        size_t stride = ci == 0 ? stride_y : stride_c;
        for (int r = r0 * v; r < r1 * v; r++) {
            JBLOCKARRAY row = cinfo.mem->access_virt_barray((j_common_ptr)&cinfo, arrays[ci],
                                                            (JDIMENSION)r, 1, FALSE);
            memcpy(base + (size_t)(r - r0 * v) * stride, row[0][c0 * h],
                   (size_t)(c1 - c0) * h * sizeof(JBLOCK));
        }
        for (int k = 0; k < DCTSIZE2; k++) quant[ci * DCTSIZE2 + k] = comp->quant_table->quantval[k];
    }
    lib.destroy(&cinfo);
    return OK;
}

/* coefficients(data, gray, c0, r0, c1, r1, out_y, stride_y, out_c, stride_c, plane_c,
 * quant) -> None once the blocks are in the buffers, or (broken, why) as region(). */
static PyObject *coefficients(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buf, oy, oc, q;
    int gray, c0, r0, c1, r1;
    Py_ssize_t sy, sc, pc;
    if (!PyArg_ParseTuple(args, "y*piiiiw*nw*nnw*", &buf, &gray, &c0, &r0, &c1, &r1, &oy, &sy,
                          &oc, &sc, &pc, &q))
        return NULL;
    if (!lib.bound || c1 <= c0 || r1 <= r0 || q.len < 3 * DCTSIZE2 * 2 || sy < 0 || sc < 0 ||
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

static PyMethodDef methods[] = {
    {"bind", bind, METH_VARARGS, "bind(path): use the libjpeg at `path` (Pillow's)."},
    {"region", region, METH_VARARGS,
     "region(data, gray, x0, y0, x1, y1, out, stride) -> None, or (broken, why): use Pillow."},
    {"coefficients", coefficients, METH_VARARGS,
     "coefficients(data, gray, c0, r0, c1, r1, out_y, stride_y, out_c, stride_c, plane_c, "
     "quant) -> None, or (broken, why): decode the pixels otherwise."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jpeg_region", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__jpeg_region(void) { return PyModule_Create(&module); }
