// The AdamW optimizer: 32-bit cpu and paged placements follow torch::optim::AdamW for every
// schedule; paging through a small staging buffer changes nothing; 8-bit state is ~4x
// smaller and trains a least-squares problem as well; clipping, skipped steps, schedules and
// save/load/resume.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "shardlora/kernels/check.h"
#include "shardlora/optim/adamw.h"
#include "temp_dir.h"

using namespace shardlora;
using namespace shardlora::optim;

namespace {

const std::vector<int64_t> kOddSizes = {1, 3, 257, 1000, 4099};

std::vector<torch::Tensor> random_params(const std::vector<int64_t>& sizes, uint64_t seed) {
  torch::manual_seed(seed);
  std::vector<torch::Tensor> params;
  for (const int64_t size : sizes) params.push_back(torch::randn({size}).requires_grad_(true));
  return params;
}

std::vector<torch::Tensor> clones(const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> copies;
  for (const auto& p : params) copies.push_back(p.detach().clone().requires_grad_(true));
  return copies;
}

// Gradients for step `step`, the same for every optimizer under comparison.
void set_gradients(std::vector<torch::Tensor>& params, int64_t step, double scale = 1e-2) {
  torch::manual_seed(1000 + step);
  for (auto& p : params) p.mutable_grad() = torch::randn(p.sizes()) * scale;
}

// Hugging Face's lr_lambda, written out here as the reference.
double hf_multiplier(const LrSchedule& s, int64_t step) {
  if (step < s.warmup_steps) return double(step) / double(std::max<int64_t>(1, s.warmup_steps));
  if (s.type == ScheduleType::Constant) return 1.0;
  const double progress = double(step - s.warmup_steps) / double(std::max<int64_t>(1, s.total_steps - s.warmup_steps));
  if (s.type == ScheduleType::Linear) return std::max(0.0, double(s.total_steps - step) / double(s.total_steps - s.warmup_steps));
  return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * 0.5 * 2.0 * progress)));
}

bool bitwise_equal(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  for (size_t i = 0; i < a.size(); ++i) {
    if (!torch::equal(a[i], b[i])) return false;
  }
  return true;
}

bool same_state(const AdamW& a, const AdamW& b) {
  const auto x = a.state_dict(), y = b.state_dict();
  if (x.size() != y.size()) return false;
  for (const auto& [key, tensor] : x) {
    if (!y.count(key) || !torch::equal(tensor, y.at(key))) return false;
  }
  return true;
}

AdamWOptions paged(AdamWOptions options, int64_t page_elements, int64_t staging_pages) {
  options.placement = Placement::Paged;
  options.page_elements = page_elements;
  options.staging_pages = staging_pages;
  return options;
}

}  // namespace

TEST(LrSchedule, FollowsHuggingFaceWithWarmup) {
  const LrSchedule linear{ScheduleType::Linear, 10, 100}, cosine{ScheduleType::Cosine, 10, 100},
      constant{ScheduleType::Constant, 4, 0};
  EXPECT_DOUBLE_EQ(linear.multiplier(0), 0.0);
  EXPECT_DOUBLE_EQ(linear.multiplier(5), 0.5);
  EXPECT_DOUBLE_EQ(linear.multiplier(10), 1.0);
  EXPECT_DOUBLE_EQ(linear.multiplier(55), 0.5);
  EXPECT_DOUBLE_EQ(linear.multiplier(100), 0.0);
  EXPECT_DOUBLE_EQ(cosine.multiplier(10), 1.0);
  EXPECT_NEAR(cosine.multiplier(55), 0.5, 1e-15);
  EXPECT_NEAR(cosine.multiplier(100), 0.0, 1e-15);
  EXPECT_DOUBLE_EQ(constant.multiplier(2), 0.5);
  EXPECT_DOUBLE_EQ(constant.multiplier(1000), 1.0);
  for (int64_t step = 0; step <= 100; ++step) {
    EXPECT_NEAR(cosine.multiplier(step), hf_multiplier(cosine, step), 1e-15);
    EXPECT_NEAR(linear.multiplier(step), hf_multiplier(linear, step), 1e-15);
  }
  EXPECT_THROW((LrSchedule{ScheduleType::Cosine, 10, 10}.validate()), Error);
  EXPECT_THROW((LrSchedule{ScheduleType::Constant, -1, 0}.validate()), Error);
}

TEST(AdamW, MatchesTorchAdamWForEverySchedule) {
  const std::vector<std::pair<const char*, LrSchedule>> schedules = {
      {"constant", {ScheduleType::Constant, 10, 0}},
      {"linear", {ScheduleType::Linear, 10, 100}},
      {"cosine", {ScheduleType::Cosine, 10, 100}}};
  for (const auto& [schedule_name, schedule] : schedules) {
    AdamWOptions options;
    options.lr = 2e-3;
    options.weight_decay = 0.05;
    options.schedule = schedule;
    for (const AdamWOptions& variant : {options, paged(options, 512, 2)}) {
      auto reference = random_params(kOddSizes, 1);
      auto ours = clones(reference);
      torch::optim::AdamW torch_adamw(reference, torch::optim::AdamWOptions(options.lr).weight_decay(options.weight_decay));
      AdamW adamw(ours, variant);
      for (int64_t step = 0; step < 100; ++step) {
        static_cast<torch::optim::AdamWOptions&>(torch_adamw.param_groups()[0].options())
            .lr(options.lr * hf_multiplier(schedule, step));
        set_gradients(reference, step);
        set_gradients(ours, step);
        torch_adamw.step();
        const StepReport report = adamw.step();
        ASSERT_TRUE(report.applied);
        EXPECT_NEAR(report.lr, options.lr * hf_multiplier(schedule, step), 1e-15);
      }
      for (size_t i = 0; i < ours.size(); ++i) {
        const torch::Tensor error = (ours[i] - reference[i]).abs();
        const torch::Tensor bound = 1e-6 * reference[i].abs() + 1e-7;
        EXPECT_TRUE((error <= bound).all().item<bool>())
            << schedule_name << " " << placement_name(variant.placement) << ", parameter " << i << ": max error "
            << error.max().item<double>();
      }
    }
  }
}

// LoRA+'s rates: torch::optim::AdamW with one param group per rate (as PEFT's
// create_loraplus_optimizer builds them) is the reference, on both placements.
TEST(AdamW, LearningRateMultipliersActAsTorchParamGroups) {
  AdamWOptions options;
  options.lr = 2e-3;
  options.weight_decay = 0.05;
  options.schedule = {ScheduleType::Cosine, 5, 40};
  options.lr_multipliers = {1.0, 16.0, 1.0, 16.0};
  const std::vector<int64_t> sizes = {300, 257, 1000, 64};
  for (const AdamWOptions& variant : {options, paged(options, 512, 2)}) {
    auto reference = random_params(sizes, 3);
    auto ours = clones(reference);
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(std::vector<torch::Tensor>{reference[0], reference[2]},
                        std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(options.lr).weight_decay(options.weight_decay)));
    groups.emplace_back(std::vector<torch::Tensor>{reference[1], reference[3]},
                        std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(16 * options.lr).weight_decay(options.weight_decay)));
    torch::optim::AdamW torch_adamw(groups);
    AdamW adamw(ours, variant);
    for (int64_t step = 0; step < 40; ++step) {
      for (size_t g = 0; g < 2; ++g) {
        static_cast<torch::optim::AdamWOptions&>(torch_adamw.param_groups()[g].options())
            .lr((g == 0 ? 1 : 16) * options.lr * hf_multiplier(options.schedule, step));
      }
      set_gradients(reference, step);
      set_gradients(ours, step);
      torch_adamw.step();
      EXPECT_NEAR(adamw.step().lr, options.lr * hf_multiplier(options.schedule, step), 1e-15) << "the base rate is reported";
    }
    for (size_t i = 0; i < ours.size(); ++i) {
      const torch::Tensor error = (ours[i] - reference[i]).abs();
      EXPECT_TRUE((error <= 1e-6 * reference[i].abs() + 1e-7).all().item<bool>())
          << placement_name(variant.placement) << ", parameter " << i << ": max error " << error.max().item<double>();
    }
  }
  options.lr_multipliers = {1.0};
  EXPECT_THROW(AdamW(random_params(sizes, 3), options), Error);
}

TEST(AdamW, PagingThroughTwoStagingPagesEqualsTheUnpagedUpdate) {
  for (const int bits : {32, 8}) {
    AdamWOptions options;
    options.state_bits = bits;
    auto unpaged_params = random_params({10 * 1024, 777}, 2);  // 10 pages of 1024, and a partial one
    auto paged_params = clones(unpaged_params);
    AdamW unpaged(unpaged_params, options);
    AdamW paged_adamw(paged_params, paged(options, 1024, 2));
    for (int64_t step = 0; step < 5; ++step) {
      set_gradients(unpaged_params, step);
      set_gradients(paged_params, step);
      unpaged.step();
      paged_adamw.step();
    }
    EXPECT_TRUE(bitwise_equal(paged_params, unpaged_params)) << bits << "-bit";
    EXPECT_TRUE(same_state(paged_adamw, unpaged)) << bits << "-bit";
  }
}

TEST(AdamW, EightBitStateIsSmallAndTrainsLikeThirtyTwoBit) {
  // Least squares with a noise floor: minimise |A w + b - y|^2 / n over w of 8192 weights
  // (8-bit state) and a bias of 16 (too small for 8-bit: stays 32-bit); A has rank 64 < n,
  // so the optimum leaves the noise's residual.
  torch::manual_seed(3);
  const int64_t n = 256, features = 8192;
  const torch::Tensor A = torch::randn({n, 64}).matmul(torch::randn({64, features})) / std::sqrt(64.0 * features);
  const torch::Tensor y = A.matmul(torch::randn({features})) + 0.5 + 0.3 * torch::randn({n});
  const auto train = [&](int bits, int64_t* state_bytes) {
    torch::manual_seed(4);
    std::vector<torch::Tensor> params = {torch::zeros({features}).requires_grad_(true), torch::zeros({16}).requires_grad_(true)};
    AdamWOptions options;
    options.lr = 1e-2;
    options.weight_decay = 0.0;
    options.state_bits = bits;
    AdamW adamw(params, options);
    double loss_value = 0;
    for (int step = 0; step < 500; ++step) {
      adamw.zero_grad();
      const torch::Tensor loss = (A.matmul(params[0]) + params[1].mean() - y).pow(2).mean();
      loss.backward();
      loss_value = loss.item<double>();
      adamw.step();
    }
    *state_bytes = adamw.state_bytes();
    return loss_value;
  };
  int64_t bytes32 = 0, bytes8 = 0;
  const double loss32 = train(32, &bytes32), loss8 = train(8, &bytes8);
  EXPECT_EQ(bytes32, (features + 16) * 8);
  EXPECT_LE(double(bytes8), 0.27 * double(bytes32)) << bytes8 << " vs " << bytes32;
  const double initial = y.pow(2).mean().item<double>();
  EXPECT_LT(loss32, 0.2 * initial) << "the 32-bit run did not train";
  EXPECT_GT(loss32, 0.01) << "the problem has a noise floor";
  EXPECT_LE(std::fabs(loss8 - loss32), 0.02 * loss32) << "8-bit loss " << loss8 << ", 32-bit " << loss32;
  std::printf("least squares after 500 steps: 32-bit %.6f, 8-bit %.6f (initial %.4f); state %lld vs %lld bytes\n", loss32,
              loss8, initial, static_cast<long long>(bytes32), static_cast<long long>(bytes8));
}

TEST(AdamW, ClipsToTheGlobalNormLikeTorch) {
  auto reference = random_params(kOddSizes, 5);
  auto ours = clones(reference);
  AdamWOptions options;
  options.max_grad_norm = 0.1;
  AdamW adamw(ours, options);
  torch::optim::AdamW torch_adamw(reference, torch::optim::AdamWOptions(options.lr).weight_decay(options.weight_decay));
  for (int64_t step = 0; step < 3; ++step) {
    set_gradients(reference, step, 0.1);
    set_gradients(ours, step, 0.1);
    double squares = 0;  // fp64, element by element
    for (const auto& p : reference) {
      const torch::Tensor g = p.grad().to(torch::kFloat64);
      for (int64_t i = 0; i < g.numel(); ++i) squares += g[i].item<double>() * g[i].item<double>();
    }
    const double reference_norm = torch::nn::utils::clip_grad_norm_(reference, options.max_grad_norm);
    torch_adamw.step();
    const StepReport report = adamw.step();
    EXPECT_NEAR(report.grad_norm, std::sqrt(squares), 1e-6 * std::sqrt(squares));
    EXPECT_NEAR(report.grad_norm, reference_norm, 1e-6 * reference_norm);
    EXPECT_GT(report.grad_norm, 10 * options.max_grad_norm) << "the test must clip";
  }
  for (size_t i = 0; i < ours.size(); ++i) EXPECT_TRUE(torch::allclose(ours[i], reference[i], 1e-6, 1e-7)) << i;

  // The reduce callback sees the local squared norm and returns the global one.
  double seen = -1;
  set_gradients(ours, 9, 0.1);
  const StepReport report = adamw.step([&](double local) {
    seen = local;
    return 4 * local;  // as if three more ranks held the same gradients
  });
  EXPECT_NEAR(report.grad_norm, 2 * std::sqrt(seen), 1e-12 * report.grad_norm);
}

TEST(AdamW, NonFiniteGradientSkipsTheStepAndTouchesNothing) {
  for (const int bits : {32, 8}) {
    auto params = random_params({5000, 7}, 6);
    AdamWOptions options;
    options.state_bits = bits;
    options.schedule = {ScheduleType::Linear, 0, 10};
    AdamW adamw(params, options);
    set_gradients(params, 0);
    adamw.step();
    const auto params_before = clones(params);
    const auto state_before = adamw.state_dict();
    set_gradients(params, 1);
    params[1].mutable_grad()[3] = std::numeric_limits<float>::quiet_NaN();
    const StepReport skipped = adamw.step();
    EXPECT_FALSE(skipped.applied);
    EXPECT_TRUE(std::isnan(skipped.grad_norm));
    EXPECT_TRUE(bitwise_equal(params, params_before)) << bits;
    for (const auto& [key, tensor] : adamw.state_dict()) {
      if (key.rfind("state.", 0) == 0) EXPECT_TRUE(torch::equal(tensor, state_before.at(key))) << key;
    }
    EXPECT_EQ(adamw.skipped_steps(), 1);
    EXPECT_EQ(adamw.updates(), 1);
    EXPECT_EQ(adamw.schedule_step(), 2) << "the schedule follows the trainer's steps";
    params[0].mutable_grad()[0] = std::numeric_limits<float>::infinity();
    EXPECT_FALSE(adamw.step().applied);
  }
}

class AdamWResume : public shardlora::testing::TempDirTest {};

TEST_F(AdamWResume, SaveLoadContinueEqualsAnUninterruptedRun) {
  for (const int bits : {32, 8}) {
    AdamWOptions options;
    options.state_bits = bits;
    options.max_grad_norm = 1.0;
    options.schedule = {ScheduleType::Cosine, 3, 20};
    auto straight = random_params({6000, 33}, 7);
    auto resumed = clones(straight);
    AdamW uninterrupted(straight, options);
    {
      AdamW first_half(resumed, options);
      for (int64_t step = 0; step < 8; ++step) {
        set_gradients(resumed, step);
        first_half.step();
      }
      first_half.save(path("optimizer.safetensors"));
    }
    // The second half resumes with another placement: state is placement-independent.
    AdamW second_half(resumed, paged(options, 1024, 2));
    second_half.load(path("optimizer.safetensors"));
    EXPECT_EQ(second_half.schedule_step(), 8);
    for (int64_t step = 0; step < 20; ++step) {
      set_gradients(straight, step);
      uninterrupted.step();
      if (step >= 8) {
        set_gradients(resumed, step);
        second_half.step();
      }
    }
    EXPECT_TRUE(bitwise_equal(resumed, straight)) << bits << "-bit";
    EXPECT_TRUE(same_state(second_half, uninterrupted)) << bits << "-bit";
  }
}

TEST_F(AdamWResume, MismatchedStateIsNamed) {
  auto params = random_params({6000, 33}, 8);
  AdamWOptions options;
  AdamW adamw(params, options);
  adamw.save(path("opt.safetensors"));
  const auto load_error = [&](const std::vector<torch::Tensor>& into, AdamWOptions o) {
    try {
      AdamW other(into, o);
      other.load(path("opt.safetensors"));
    } catch (const Error& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  options.state_bits = 8;
  EXPECT_NE(load_error(params, options).find("opt.safetensors: missing optimizer state 'state.0.exp_avg.codes' (saved with"),
            std::string::npos) << load_error(params, options);
  EXPECT_NE(load_error(random_params({6001, 33}, 8), {}).find("'state.0.exp_avg' is Float with 6000 elements, expected Float with 6001"),
            std::string::npos) << load_error(random_params({6001, 33}, 8), {});
  EXPECT_NE(load_error(random_params({6000}, 8), {}).find("7 optimizer state entries, expected 5"), std::string::npos);
}

TEST(AdamW, InvalidOptionsAreErrors) {
  auto params = random_params({10}, 9);
  const auto error_of = [&](AdamWOptions options) {
    try {
      AdamW adamw(params, options);
    } catch (const Error& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  AdamWOptions options;
  options.state_bits = 4;
  EXPECT_NE(error_of(options).find("state bits must be 32 or 8, found 4"), std::string::npos);
  EXPECT_NE(error_of(paged({}, 1000, 2)).find("page_elements must be a positive multiple of 256, found 1000"), std::string::npos);
  EXPECT_NE(error_of(paged({}, 1024, 0)).find("at least one page"), std::string::npos);
  options = {};
  options.beta2 = 1.0;
  EXPECT_NE(error_of(options).find("beta2 must be in [0, 1)"), std::string::npos);
  std::vector<torch::Tensor> doubles = {torch::zeros({3}, torch::kFloat64)};
  EXPECT_THROW(AdamW(doubles, {}), Error);
}
