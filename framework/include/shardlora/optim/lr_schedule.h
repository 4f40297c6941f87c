// Learning-rate schedules with linear warmup, as Hugging Face's get_*_schedule_with_warmup
// define them: the multiplier of the base rate at optimizer step s (0-based, so the first
// update of a warmup runs at rate 0, as in transformers and torchtune).
//   constant: s < w ? s / w : 1
//   linear:   s < w ? s / w : max(0, (T - s) / (T - w))
//   cosine:   s < w ? s / w : max(0, (1 + cos(pi * (s - w) / (T - w))) / 2)
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace shardlora::optim {

enum class ScheduleType { Constant, Linear, Cosine };

std::optional<ScheduleType> schedule_type_from_name(const std::string& name);  // constant, linear, cosine
const char* schedule_type_name(ScheduleType type);

struct LrSchedule {
  ScheduleType type = ScheduleType::Constant;
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;  // required by linear and cosine

  // Throws when the schedule cannot be evaluated (negative warmup, decay without a total).
  void validate() const;
  double multiplier(int64_t step) const;
};

}  // namespace shardlora::optim
