// GPT-2's byte-to-unicode mapping (used by byte-level BPE tokenizer.json files): every byte
// gets a printable character, bytes that are printable keep their own.
#pragma once

#include <cstdint>
#include <string>

namespace shardlora::data {

// The UTF-8 text of the character standing for `byte`.
std::string byte_level_char(uint8_t byte);

// The byte a byte-level character stands for, or -1 when `character` is not one.
int byte_level_byte(const std::string& character);

}  // namespace shardlora::data
