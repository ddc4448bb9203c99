#include <png.h>

// PNG_FORMAT_RGB and PNG_FORMAT_RGBA are macro expressions Swift cannot import.
static const png_uint_32 stitch_png_format_rgb = PNG_FORMAT_RGB;
static const png_uint_32 stitch_png_format_rgba = PNG_FORMAT_RGBA;
static const png_uint_32 stitch_png_format_flag_alpha = PNG_FORMAT_FLAG_ALPHA;
static const png_uint_32 stitch_png_format_flag_linear = PNG_FORMAT_FLAG_LINEAR;
