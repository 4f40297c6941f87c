// quantize_4bit dispatch: validates once, then routes by device.
#include "shardlora/kernels/quantize_4bit.h"

#include "quantize_4bit_impl.h"

namespace shardlora::kernels {

void quantize_4bit(const void* input, DType input_dtype, const Quantized4bit& out, Device device,
                   Stream stream) {
  const auto& traits = quant_type_traits(out.type);
  SHARDLORA_CHECK(traits.bits == 4, "quantize_4bit: ", traits.name, " is not a 4-bit type");
  SHARDLORA_CHECK(is_valid_4bit_blocksize(out.blocksize), "quantize_4bit: blocksize ", out.blocksize,
                  " is not a power of two in [32, 4096]");
  SHARDLORA_CHECK(out.numel >= 0, "quantize_4bit: negative element count ", out.numel);
  SHARDLORA_CHECK(input_dtype == DType::F32 || input_dtype == DType::F16 || input_dtype == DType::BF16,
                  "quantize_4bit: input dtype ", dtype_name(input_dtype), " is not float32, float16 or bfloat16");
  if (out.numel == 0) return;
  SHARDLORA_CHECK(input && out.codes && out.absmax, "quantize_4bit: null buffer for ", out.numel, " elements");
  switch (device.type) {
    case DeviceType::CPU: quantize_4bit_cpu(input, input_dtype, out); return;
    case DeviceType::CUDA: quantize_4bit_cuda(input, input_dtype, out, stream); return;
  }
}

}  // namespace shardlora::kernels
