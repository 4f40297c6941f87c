#include "shardlora/data/byte_level.h"

#include <array>

namespace shardlora::data {
namespace {

std::string utf8(uint32_t code_point) {
  std::string text;
  if (code_point < 0x80) {
    text += static_cast<char>(code_point);
  } else {  // the mapping stays below U+0800: two bytes
    text += static_cast<char>(0xc0 | (code_point >> 6));
    text += static_cast<char>(0x80 | (code_point & 0x3f));
  }
  return text;
}

}  // namespace

std::string byte_level_char(uint8_t byte) {
  // bytes_to_unicode(): '!'..'~', '¡'..'¬', '®'..'ÿ' map to themselves, the rest to 256, 257, ...
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> chars;
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
      chars[b] = utf8(printable ? b : next++);
    }
    return chars;
  }();
  return table[byte];
}

}  // namespace shardlora::data
