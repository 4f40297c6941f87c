#include "shardlora/data/byte_level.h"

#include <array>
#include <unordered_map>

#include "shardlora/data/utf8.h"

namespace shardlora::data {

std::string byte_level_char(uint8_t byte) {
  // bytes_to_unicode(): '!'..'~', '¡'..'¬', '®'..'ÿ' map to themselves, the rest to 256, 257, ...
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> chars;
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
      chars[b] = utf8_encode(printable ? b : next++);
    }
    return chars;
  }();
  return table[byte];
}

int byte_level_byte(const std::string& character) {
  static const std::unordered_map<std::string, int> bytes = [] {
    std::unordered_map<std::string, int> map;
    for (int b = 0; b < 256; ++b) map[byte_level_char(static_cast<uint8_t>(b))] = b;
    return map;
  }();
  const auto it = bytes.find(character);
  return it == bytes.end() ? -1 : it->second;
}

}  // namespace shardlora::data
