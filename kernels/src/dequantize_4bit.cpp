// dequantize_4bit dispatch: validates once, then routes by device.
#include "shardlora/kernels/dequantize_4bit.h"

#include "dequantize_4bit_impl.h"
#include "shardlora/kernels/check.h"

namespace shardlora::kernels {
namespace {

void check_packed_4bit(const Packed4bit& in, const void* out, DType out_dtype) {
  const auto& traits = quant_type_traits(in.type);
  SHARDLORA_CHECK(traits.bits == 4, "dequantize_4bit: ", traits.name, " is not a 4-bit type");
  SHARDLORA_CHECK(is_valid_4bit_blocksize(in.blocksize), "dequantize_4bit: blocksize ",
                  in.blocksize, " is not a power of two in [32, 4096]");
  SHARDLORA_CHECK(in.numel >= 0, "dequantize_4bit: negative element count ", in.numel);
  SHARDLORA_CHECK(out_dtype == DType::F32 || out_dtype == DType::F16 || out_dtype == DType::BF16,
                  "dequantize_4bit: output dtype ", dtype_name(out_dtype),
                  " is not float32, float16 or bfloat16");
  if (in.numel > 0) {
    SHARDLORA_CHECK(in.codes && in.absmax && out, "dequantize_4bit: null buffer for ",
                    in.numel, " elements");
  }
}

}  // namespace

void dequantize_4bit(const Packed4bit& in, void* out, DType out_dtype, Device device,
                     Stream stream) {
  check_packed_4bit(in, out, out_dtype);
  if (in.numel == 0) return;
  switch (device.type) {
    case DeviceType::CPU: dequantize_4bit_cpu(in, out, out_dtype); return;
    case DeviceType::CUDA: dequantize_4bit_cuda(in, out, out_dtype, stream); return;
  }
}

}  // namespace shardlora::kernels
