#include "shardlora/optim/lr_schedule.h"

#include <algorithm>
#include <cmath>

#include "shardlora/kernels/check.h"

namespace shardlora::optim {

std::optional<ScheduleType> schedule_type_from_name(const std::string& name) {
  if (name == "constant") return ScheduleType::Constant;
  if (name == "linear") return ScheduleType::Linear;
  if (name == "cosine") return ScheduleType::Cosine;
  return std::nullopt;
}

const char* schedule_type_name(ScheduleType type) {
  switch (type) {
    case ScheduleType::Constant: return "constant";
    case ScheduleType::Linear: return "linear";
    case ScheduleType::Cosine: return "cosine";
  }
  return "?";
}

void LrSchedule::validate() const {
  SHARDLORA_CHECK(warmup_steps >= 0, "schedule: warmup_steps must be non-negative, found ", warmup_steps);
  if (type != ScheduleType::Constant) {
    SHARDLORA_CHECK(total_steps > warmup_steps, "schedule: a ", schedule_type_name(type),
                    " schedule needs total steps (", total_steps, ") beyond warmup_steps (", warmup_steps, ")");
  }
}

double LrSchedule::multiplier(int64_t step) const {
  if (step < warmup_steps) return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup_steps));
  if (type == ScheduleType::Constant) return 1.0;
  const double progress =
      static_cast<double>(step - warmup_steps) / static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps));
  if (type == ScheduleType::Linear) return std::max(0.0, 1.0 - progress);
  return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * progress)));
}

}  // namespace shardlora::optim
