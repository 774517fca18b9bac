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
#include <dlfcn.h>

#include "jpeg_lib.h"

Lib dp_lib;

static void dp_error_exit(j_common_ptr cinfo) { longjmp(((Errors *)cinfo->err)->jump, 1); }

static void dp_emit_message(j_common_ptr cinfo, int level) {
    Errors *err = (Errors *)cinfo->err;
    if (level < 0 && !err->stopped) /* corrupt or truncated data: Pillow decides */
        err->warned = 1;
}

static void dp_output_message(j_common_ptr cinfo) { (void)cinfo; }

static PyObject *bind(PyObject *self, PyObject *args) {
    (void)self;
    const char *path;
    if (!PyArg_ParseTuple(args, "s", &path)) return NULL;
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) return PyErr_Format(PyExc_OSError, "dlopen %s: %s", path, dlerror());
#define SYM(field, name)                                                                   \
    if (!(*(void **)&dp_lib.field = dlsym(h, name)))                                          \
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
    dp_lib.bound = 1;
    Py_RETURN_NONE;
}


void dp_init_errors(j_decompress_ptr cinfo, Errors *err) {
    memset(cinfo, 0, sizeof *cinfo);
    cinfo->err = dp_lib.std_error(&err->pub);
    err->pub.error_exit = dp_error_exit;
    err->pub.emit_message = dp_emit_message;
    err->pub.output_message = dp_output_message;
    err->warned = err->stopped = 0;
}

/* Whether the rest of the file from `p` (the entropy decoder stopped at `marker`, 0 if
 * none) holds only entropy-coded bytes (0xFF stuffed as FF 00), restart markers and, as
 * its last two bytes, the EOI marker: nothing a decoder could find fatal. */
int dp_plain_tail(int marker, const unsigned char *p, const unsigned char *end) {
    int benign = marker == 0 || (marker >= 0xD0 && marker <= 0xD7) ||
                 (marker == 0xD9 && p == end);
    if (!benign) return 0;
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
    dp_init_errors(&cinfo, &err);
    if (setjmp(err.jump)) {
        err.pub.format_message((j_common_ptr)&cinfo, why);
        free(row);
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
    int is_rgb = (cinfo.jpeg_color_space == JCS_YCbCr || cinfo.jpeg_color_space == JCS_RGB) &&
                 cinfo.num_components == 3;
    int is_gray = cinfo.jpeg_color_space == JCS_GRAYSCALE && cinfo.num_components == 1;
    if (cinfo.data_precision != 8 || !(gray ? is_gray : is_rgb)) {
        snprintf(why, JMSG_LENGTH_MAX, "colour space %d, %d components, %d-bit",
                 (int)cinfo.jpeg_color_space, cinfo.num_components, cinfo.data_precision);
        dp_lib.destroy(&cinfo);
        return FALLBACK;
    }
    int width = (int)cinfo.image_width, height = (int)cinfo.image_height;
    if (x0 < 0 || y0 < 0 || x1 > width || y1 > height || x0 >= x1 || y0 >= y1) {
        snprintf(why, JMSG_LENGTH_MAX, "box outside the %dx%d image", width, height);
        dp_lib.destroy(&cinfo);
        return BROKEN;
    }
    int channels = gray ? 1 : 3;
    cinfo.out_color_space = gray ? JCS_GRAYSCALE : JCS_RGB;
    dp_lib.start(&cinfo);
    int imcu_w = cinfo.max_h_samp_factor * DCTSIZE, imcu_h = cinfo.max_v_samp_factor * DCTSIZE;
    int left = x0 - imcu_w > 0 ? x0 - imcu_w : 0;
    int right = x1 + imcu_w < width ? x1 + imcu_w : width;
    JDIMENSION xoff = (JDIMENSION)left, span = (JDIMENSION)(right - left);
    if (span < (JDIMENSION)width) dp_lib.crop(&cinfo, &xoff, &span); /* xoff moves left */
    int top = y0 - imcu_h > 0 ? y0 - imcu_h : 0;
    if (top > 0) dp_lib.skip(&cinfo, (JDIMENSION)top);
    /* Several rows a call: libjpeg emits an iMCU row's worth at once, else it copies via a
     * spare row (4:2:0 upsamples two rows at a time). */
    size_t row_bytes = (size_t)cinfo.output_width * channels;
    row = malloc(row_bytes * CHUNK);
    if (!row) {
        snprintf(why, JMSG_LENGTH_MAX, "out of memory");
        dp_lib.destroy(&cinfo);
        return BROKEN;
    }
    JSAMPROW rows[CHUNK];
    for (int k = 0; k < CHUNK; k++) rows[k] = row + k * row_bytes;
    size_t first = (size_t)(x0 - (int)xoff) * channels, count = (size_t)(x1 - x0);
    for (int y = top; y < y1;) {
        JDIMENSION want = (JDIMENSION)(y1 - y < CHUNK ? y1 - y : CHUNK);
        JDIMENSION got = dp_lib.read(&cinfo, rows, want);
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
    if (!err.warned && !dp_plain_tail(cinfo.unread_marker, rest, data + size)) {
        if (left_over > 1) dp_lib.skip(&cinfo, left_over - 1);
        if (left_over > 0 && dp_lib.read(&cinfo, rows, 1) != 1) err.warned = 1;
        if (!err.warned) dp_lib.finish(&cinfo);
    }
    free(row);
    row = NULL;
    dp_lib.destroy(&cinfo);
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
    int bad = !dp_lib.bound || x1 <= x0 || y1 <= y0 || stride < (Py_ssize_t)(x1 - x0) * 3 ||
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

static PyMethodDef methods[] = {
    {"bind", bind, METH_VARARGS, "bind(path): use the libjpeg at `path` (Pillow's)."},
    {"region", region, METH_VARARGS,
     "region(data, gray, x0, y0, x1, y1, out, stride) -> None, or (broken, why): use Pillow."},
    {"coefficients", dp_coefficients, METH_VARARGS,
     "coefficients(data, gray, c0, r0, c1, r1, out_y, stride_y, out_c, stride_c, plane_c, "
     "quant) -> None, or (broken, why): decode the pixels otherwise."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jpeg_region", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__jpeg_region(void) { return PyModule_Create(&module); }
