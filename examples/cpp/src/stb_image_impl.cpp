// The one translation unit that compiles stb_image's implementation, limited to the formats the
// runner documents and to a sane image size (a hostile file cannot ask for gigabytes).
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#define STBI_ONLY_TGA
#define STBI_ONLY_PNM
#define STBI_FAILURE_USERMSG
#define STBI_MAX_DIMENSIONS (1 << 14)
#include "stb_image_decl.hpp"
