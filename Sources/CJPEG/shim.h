// libjpeg reports errors by calling error_exit, which must not return; the
// only safe way out is longjmp, which Swift cannot express. These inline
// functions keep setjmp on the C side and turn every failure into a message.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <jpeglib.h>

typedef struct {
    struct jpeg_error_mgr base;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
} stitch_jpeg_error;

static void stitch_jpeg_error_exit(j_common_ptr info) {
    stitch_jpeg_error *err = (stitch_jpeg_error *)info->err;
    (*info->err->format_message)(info, err->message);
    longjmp(err->jump, 1);
}

/// Warnings (e.g. "premature end of data") are errors for us: a truncated
/// file must not silently decode to grey rows.
static void stitch_jpeg_emit_message(j_common_ptr info, int level) {
    if (level < 0) stitch_jpeg_error_exit(info);
}

/// Decodes a JPEG held in memory to interleaved 8-bit RGB (components == 3)
/// or, for CMYK/YCCK files, to 8-bit CMYK (components == 4).
/// Returns 0 on success; on failure returns -1 and fills `message`. An image of more than
/// `max_pixels` pixels is refused from its header, before anything is decoded or allocated:
/// -2, with `width` and `height` set.
static inline int stitch_jpeg_decode(const unsigned char *data, unsigned long size, unsigned long max_pixels,
                                     unsigned char **pixels, int *width, int *height,
                                     int *components, char *message, int message_size) {
    struct jpeg_decompress_struct info;
    stitch_jpeg_error err;
    unsigned char *volatile out = NULL;
    info.err = jpeg_std_error(&err.base);
    err.base.error_exit = stitch_jpeg_error_exit;
    err.base.emit_message = stitch_jpeg_emit_message;
    err.message[0] = 0;
    if (setjmp(err.jump)) {
        snprintf(message, message_size, "%s", err.message);
        jpeg_destroy_decompress(&info);
        free(out);
        return -1;
    }
    jpeg_create_decompress(&info);
    jpeg_mem_src(&info, data, size);
    jpeg_read_header(&info, TRUE);
    if ((unsigned long long)info.image_width * info.image_height > max_pixels) {
        *width = (int)info.image_width;
        *height = (int)info.image_height;
        jpeg_destroy_decompress(&info);
        return -2;
    }
    if (info.jpeg_color_space == JCS_CMYK || info.jpeg_color_space == JCS_YCCK) {
        info.out_color_space = JCS_CMYK;
    } else {
        info.out_color_space = JCS_RGB;
    }
    jpeg_start_decompress(&info);
    size_t stride = (size_t)info.output_width * info.output_components;
    out = (unsigned char *)malloc(stride * info.output_height);
    if (!out) {
        snprintf(message, message_size, "out of memory for %ux%u image", info.output_width, info.output_height);
        jpeg_destroy_decompress(&info);
        return -1;
    }
    while (info.output_scanline < info.output_height) {
        JSAMPROW row = out + stride * info.output_scanline;
        jpeg_read_scanlines(&info, &row, 1);
    }
    jpeg_finish_decompress(&info);
    *pixels = out;
    *width = (int)info.output_width;
    *height = (int)info.output_height;
    *components = info.output_components;
    jpeg_destroy_decompress(&info);
    return 0;
}

/// Encodes interleaved 8-bit RGB to a JPEG in memory (freed by the caller with free()).
static inline int stitch_jpeg_encode(const unsigned char *pixels, int width, int height, int quality,
                                     unsigned char **output, unsigned long *output_size,
                                     char *message, int message_size) {
    struct jpeg_compress_struct info;
    stitch_jpeg_error err;
    info.err = jpeg_std_error(&err.base);
    err.base.error_exit = stitch_jpeg_error_exit;
    err.message[0] = 0;
    *output = NULL;
    *output_size = 0;
    if (setjmp(err.jump)) {
        snprintf(message, message_size, "%s", err.message);
        jpeg_destroy_compress(&info);
        return -1;
    }
    jpeg_create_compress(&info);
    jpeg_mem_dest(&info, output, output_size);
    info.image_width = (JDIMENSION)width;
    info.image_height = (JDIMENSION)height;
    info.input_components = 3;
    info.in_color_space = JCS_RGB;
    jpeg_set_defaults(&info);
    jpeg_set_quality(&info, quality, TRUE);
    jpeg_start_compress(&info, TRUE);
    while (info.next_scanline < info.image_height) {
        JSAMPROW row = (JSAMPROW)(pixels + (size_t)info.next_scanline * width * 3);
        jpeg_write_scanlines(&info, &row, 1);
    }
    jpeg_finish_compress(&info);
    jpeg_destroy_compress(&info);
    return 0;
}
