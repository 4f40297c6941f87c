// UTF-8 helpers for the tokenizers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace shardlora::data {

// Length of the UTF-8 sequence starting with `lead` (1 for a stray continuation byte, so
// malformed text still advances).
inline size_t utf8_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xe) return 3;
  if ((lead >> 3) == 0x1e) return 4;
  return 1;
}

// The text cut into characters (each a UTF-8 sequence).
inline std::vector<std::string> utf8_chars(const std::string& text) {
  std::vector<std::string> chars;
  for (size_t i = 0; i < text.size();) {
    const size_t length = std::min(utf8_length(static_cast<unsigned char>(text[i])), text.size() - i);
    chars.push_back(text.substr(i, length));
    i += length;
  }
  return chars;
}

std::string utf8_encode(uint32_t code_point);

// Well-formed UTF-8: no stray or missing continuation bytes, no overlong forms, surrogates
// or code points above U+10FFFF.
bool is_valid_utf8(const std::string& text);

}  // namespace shardlora::data
