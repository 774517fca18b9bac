/* What the two halves of the JPEG extension share: the libjpeg Pillow loaded (bound at run
 * time, `dp_lib`), error handling that longjmps instead of exiting, and the tail check that
 * refuses a damaged file whatever the crop. */
#ifndef DEIT_PIPE_JPEG_LIB_H
#define DEIT_PIPE_JPEG_LIB_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jpeglib.h"

typedef struct {
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
} Lib;
extern Lib dp_lib;


typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    int warned;
    int stopped; /* the rows wanted are in: what libjpeg says of the cut-off rest is moot */
} Errors;

enum { OK, FALLBACK, BROKEN, SHORT };

/* A zeroed decompress struct whose errors longjmp to err->jump and whose warnings are
 * counted (the caller still calls setjmp: it must be in the caller's frame). */
void dp_init_errors(j_decompress_ptr cinfo, Errors *err);

/* Whether the rest of the file from p, the entropy decoder stopped at `marker` (0 if
 * none), holds only entropy-coded bytes, restart markers and a final EOI. */
int dp_plain_tail(int marker, const unsigned char *p, const unsigned char *end);

/* Pillow's decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS): a header claiming more
 * pixels is refused before libjpeg allocates anything for it, whoever checked it before. */
#define DP_MAX_PIXELS 178956970.0

/* Whether the header's image is larger than DP_MAX_PIXELS (its size then in `why`). */
static inline int dp_too_large(j_decompress_ptr cinfo, char *why) {
    double pixels = (double)cinfo->image_width * (double)cinfo->image_height;
    if (pixels <= DP_MAX_PIXELS) return 0;
    snprintf(why, JMSG_LENGTH_MAX, "a %ux%u image: more pixels than Pillow decodes",
             (unsigned)cinfo->image_width, (unsigned)cinfo->image_height);
    return 1;
}

/* coefficients(...): jpeg_blocks.c */
PyObject *dp_coefficients(PyObject *self, PyObject *args);
#endif
