#include "shardlora/data/utf8.h"

namespace shardlora::data {

std::string utf8_encode(uint32_t code_point) {
  std::string text;
  if (code_point < 0x80) {
    text += static_cast<char>(code_point);
  } else if (code_point < 0x800) {
    text += static_cast<char>(0xc0 | (code_point >> 6));
    text += static_cast<char>(0x80 | (code_point & 0x3f));
  } else if (code_point < 0x10000) {
    text += static_cast<char>(0xe0 | (code_point >> 12));
    text += static_cast<char>(0x80 | ((code_point >> 6) & 0x3f));
    text += static_cast<char>(0x80 | (code_point & 0x3f));
  } else {
    text += static_cast<char>(0xf0 | (code_point >> 18));
    text += static_cast<char>(0x80 | ((code_point >> 12) & 0x3f));
    text += static_cast<char>(0x80 | ((code_point >> 6) & 0x3f));
    text += static_cast<char>(0x80 | (code_point & 0x3f));
  }
  return text;
}

bool is_valid_utf8(const std::string& text) {
  for (size_t i = 0; i < text.size();) {
    const auto lead = static_cast<unsigned char>(text[i]);
    const size_t length = utf8_length(lead);
    if (length == 1) {
      if (lead >= 0x80) return false;
      ++i;
      continue;
    }
    if (i + length > text.size()) return false;
    uint32_t code_point = lead & (0xff >> (length + 1));
    for (size_t k = 1; k < length; ++k) {
      const auto byte = static_cast<unsigned char>(text[i + k]);
      if ((byte & 0xc0) != 0x80) return false;
      code_point = (code_point << 6) | (byte & 0x3f);
    }
    const uint32_t smallest[] = {0, 0, 0x80, 0x800, 0x10000};
    if (code_point < smallest[length] || code_point > 0x10ffff || (code_point >= 0xd800 && code_point <= 0xdfff)) return false;
    i += length;
  }
  return true;
}

}  // namespace shardlora::data
