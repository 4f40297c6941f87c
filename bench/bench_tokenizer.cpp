// tokenizer.json encoding throughput against Hugging Face tokenizers (the Rust library, through
// its Node binding) on the same text and the same tokenizer.json, in the same run, one core
// each. The ids must equal the peer's before anything is timed (exit 1 otherwise). The peer
// needs node and the npm packages @anush008/tokenizers + @anush008/tokenizers-linux-x64-gnu
// (e.g. `npm install` in a directory passed as --node-modules); without them the benchmark
// says so and times ours alone.
//
//   bench_tokenizer --tokenizer DIR --text FILE [--reps 20] [--node-modules DIR]
#include <omp.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "shardlora/data/tokenizer.h"
#include "read_file.h"

using namespace shardlora;

namespace {

// The peer: encodes the text `reps` times after one warm-up and prints its ids once and the time.
constexpr const char* kPeerScript = R"(
const { Tokenizer } = require("@anush008/tokenizers");
const fs = require("fs");
const [tokenizerFile, textFile, reps] = process.argv.slice(2);
(async () => {
  const tokenizer = Tokenizer.fromFile(tokenizerFile);
  const text = fs.readFileSync(textFile, "utf8");
  const first = await tokenizer.encode(text, null, { addSpecialTokens: false });
  const start = process.hrtime.bigint();
  for (let i = 0; i < Number(reps); ++i) await tokenizer.encode(text, null, { addSpecialTokens: false });
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  console.log(JSON.stringify({ ids: Array.from(first.getIds()), seconds }));
})();
)";

std::string run_peer(const std::string& node_modules, const std::string& tokenizer_json, const std::string& text_file, int reps) {
  const std::string script = (std::filesystem::temp_directory_path() / ("shardlora_bench_tokenizer_" + std::to_string(getpid()) + ".js")).string();
  std::ofstream(script) << kPeerScript;
  const std::string command = "NODE_PATH='" + node_modules + "' node '" + script + "' '" + tokenizer_json + "' '" + text_file + "' " +
                              std::to_string(reps) + " 2>/dev/null";
  std::string output;
  if (FILE* pipe = popen(command.c_str(), "r")) {
    char buffer[65536];
    for (size_t n; (n = fread(buffer, 1, sizeof buffer, pipe)) > 0;) output.append(buffer, n);
    pclose(pipe);
  }
  std::filesystem::remove(script);
  return output;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir, text_file, node_modules;
  int reps = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--tokenizer") dir = value;
    else if (flag == "--text") text_file = value;
    else if (flag == "--reps") reps = std::stoi(value);
    else if (flag == "--node-modules") node_modules = value;
  }
  if (dir.empty() || text_file.empty()) {
    std::fprintf(stderr, "usage: %s --tokenizer DIR --text FILE [--reps N] [--node-modules DIR]\n", argv[0]);
    return 2;
  }
  at::set_num_threads(1);
  omp_set_num_threads(1);
  const auto tokenizer = data::load_tokenizer(dir);
  const std::string text = read_file(text_file);
  const std::vector<int64_t> ids = tokenizer->encode(text);
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) tokenizer->encode(text);
  const double ours = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double ours_rate = static_cast<double>(ids.size()) * reps / ours;
  std::printf("%s: %zu bytes of text, %zu tokens, %d encodes, one core\n", dir.c_str(), text.size(), ids.size(), reps);
  std::printf("shardlora              %10.0f tokens/s\n", ours_rate);
  if (node_modules.empty() || !std::filesystem::exists(node_modules + "/@anush008/tokenizers")) {
    std::printf("Hugging Face tokenizers: not measured (give --node-modules DIR holding @anush008/tokenizers)\n");
    return 0;
  }
  const std::string output = run_peer(node_modules, dir + "/tokenizer.json", text_file, reps);
  if (output.empty()) {
    std::printf("Hugging Face tokenizers: not measured (node or the package failed to run)\n");
    return 0;
  }
  const auto peer = nlohmann::json::parse(output);
  const auto peer_ids = peer["ids"].get<std::vector<int64_t>>();
  if (peer_ids != ids) {
    size_t at = 0;
    while (at < std::min(ids.size(), peer_ids.size()) && ids[at] == peer_ids[at]) ++at;
    std::fprintf(stderr, "FAILED: ids differ from Hugging Face tokenizers at token %zu (%zu vs %zu tokens)\n", at, ids.size(), peer_ids.size());
    return 1;
  }
  const double peer_rate = static_cast<double>(ids.size()) * reps / peer["seconds"].get<double>();
  std::printf("Hugging Face tokenizers %10.0f tokens/s (Rust, through its Node binding; ids equal)\n", peer_rate);
  std::printf("ours / Hugging Face: %.2fx\n", ours_rate / peer_rate);
  return 0;
}
