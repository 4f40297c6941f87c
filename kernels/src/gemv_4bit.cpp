// gemv_4bit dispatch: validates once, then routes by device.
#include "shardlora/kernels/gemv_4bit.h"

#include "gemv_4bit_impl.h"

namespace shardlora::kernels {

void gemv_4bit(const Packed4bit& weight, Gemv4bitShape shape, const void* x, DType x_dtype, void* y, DType y_dtype,
               Device device, Stream stream) {
  const auto& traits = quant_type_traits(weight.type);
  SHARDLORA_CHECK(traits.bits == 4, "gemv_4bit: ", traits.name, " is not a 4-bit type");
  SHARDLORA_CHECK(is_valid_4bit_blocksize(weight.blocksize), "gemv_4bit: blocksize ", weight.blocksize,
                  " is not a power of two in [32, 4096]");
  SHARDLORA_CHECK(shape.rows >= 0 && shape.cols >= 0 && weight.numel == shape.rows * shape.cols,
                  "gemv_4bit: weight has ", weight.numel, " elements, not rows * cols = ", shape.rows, " * ",
                  shape.cols);
  SHARDLORA_CHECK(shape.cols % weight.blocksize == 0, "gemv_4bit: cols ", shape.cols,
                  " is not a multiple of the blocksize ", weight.blocksize);
  for (DType dtype : {x_dtype, y_dtype}) {
    SHARDLORA_CHECK(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16, "gemv_4bit: dtype ",
                    dtype_name(dtype), " is not float32, float16 or bfloat16");
  }
  if (shape.rows == 0) return;
  SHARDLORA_CHECK(weight.codes && weight.absmax && x && y, "gemv_4bit: null buffer");
  if (device.type == DeviceType::CPU) {
    gemv_4bit_cpu(weight, shape, x, x_dtype, y, y_dtype);
  } else {
    gemv_4bit_cuda(weight, shape, x, x_dtype, y, y_dtype, stream);
  }
}

}  // namespace shardlora::kernels
