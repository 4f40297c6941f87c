// dequantize_4bit on the CPU: OpenMP threads over quantization blocks; per block the 16
// code values are scaled once into a lookup table, then each byte yields two outputs.
// Same fp32 products as the reference, so the results are bit-identical.
#include <omp.h>

#include <algorithm>

#include "common/store_element.h"
#include "dequantize_4bit_impl.h"

namespace shardlora::kernels {

void dequantize_4bit_cpu(const Packed4bit& in, void* out, DType out_dtype) {
  const float* code = quant_type_traits(in.type).code;
  const int64_t blocks = (in.numel + in.blocksize - 1) / in.blocksize;
  const int64_t block_bytes = in.blocksize / 2;  // blocksize >= 32 is even: blocks start on a byte
  dispatch_float_dtype(out_dtype, [&](auto tag) {
    using Element = OutputElement<decltype(tag)::value>;
    using Out = typename Element::type;
    auto* dst = static_cast<Out*>(out);
#pragma omp parallel for schedule(static)
    for (int64_t block = 0; block < blocks; ++block) {
      Out lut[16];
      for (int q = 0; q < 16; ++q) lut[q] = Element::from_float(code[q] * in.absmax[block]);
      const int64_t first = block * in.blocksize;
      const int64_t count = std::min(in.blocksize, in.numel - first);
      const uint8_t* src = in.codes + block * block_bytes;
      Out* block_out = dst + first;
      const int64_t pairs = count / 2;
      for (int64_t j = 0; j < pairs; ++j) {
        block_out[2 * j] = lut[src[j] >> 4];
        block_out[2 * j + 1] = lut[src[j] & 0x0f];
      }
      if (count % 2) block_out[count - 1] = lut[src[pairs] >> 4];
    }
  });
}

}  // namespace shardlora::kernels
