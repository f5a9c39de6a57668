// stb_image's declarations (the single-file library from Debian's libstb-dev, or any copy of
// stb_image.h found through STB_INCLUDE_DIR). Its implementation is compiled once, in stb_image_impl.cpp.
#pragma once

#include <stb_image.h>
