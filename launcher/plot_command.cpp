// `shardlora plot RUN_DIR [--out FILE.svg]`: the training loss (and learning rate) and the
// evaluation loss of a run, from its metrics.jsonl, as an SVG chart: two panels sharing the
// step axis, for people who would rather look than read. SVG opens in any browser; for a PNG,
// `rsvg-convert plot.svg -o plot.png`.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "commands.h"
#include "shardlora/io/staging_directory.h"
#include "shardlora/kernels/check.h"

namespace shardlora::launcher {
namespace {

struct PlotArgs {
  std::string run_dir;
  std::string out;
};

struct Series {
  std::string name, color;
  std::vector<std::pair<double, double>> points;  // (step, value)
  bool markers = false;
};

// Metric series by key, read from metrics.jsonl; errors name the file and line.
std::map<std::string, Series> read_metrics(const std::string& file) {
  std::ifstream in(file);
  SHARDLORA_CHECK(in, file, ": cannot open (is this a run directory?)");
  std::map<std::string, Series> series = {{"loss", {"train loss", "#1f77b4", {}}},
                                          {"eval_loss", {"eval loss", "#d62728", {}, true}},
                                          {"lr", {"learning rate", "#2ca02c", {}}}};
  int line_number = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_number;
    if (line.empty()) continue;
    nlohmann::json record;
    try {
      record = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& error) {
      throw Error(file + ":" + std::to_string(line_number) + ": not JSON: " + error.what());
    }
    SHARDLORA_CHECK(record.is_object() && record.contains("step") && record["step"].is_number(), file, ":", line_number,
                    ": a metrics line needs a numeric 'step'");
    for (auto& [key, s] : series) {
      if (record.contains(key) && record[key].is_number() && std::isfinite(record[key].get<double>())) {
        s.points.emplace_back(record["step"].get<double>(), record[key].get<double>());
      }
    }
  }
  SHARDLORA_CHECK(!series["loss"].points.empty(), file, ": no training loss logged yet");
  return series;
}

// A round step for about five ticks over [low, high].
double tick_step(double low, double high) {
  const double raw = std::max(high - low, 1e-12) / 5;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  for (double factor : {1.0, 2.0, 5.0}) {
    if (raw <= factor * magnitude) return factor * magnitude;
  }
  return 10 * magnitude;
}

std::string xml_escaped(const std::string& text) {
  std::string out;
  for (const char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '\'': out += "&apos;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string number(double value) {
  std::ostringstream text;
  text << value;
  return text.str();
}

// One panel: axes, grid, ticks, the series, a legend.
void draw_panel(std::ostringstream& svg, const std::vector<const Series*>& series, double top, double height, double max_step,
                const std::string& y_label) {
  constexpr double left = 70, width = 620;
  double low = INFINITY, high = -INFINITY;
  for (const Series* s : series) {
    for (const auto& p : s->points) low = std::min(low, p.second), high = std::max(high, p.second);
  }
  if (low == high) low -= 0.5, high += 0.5;
  const double step = tick_step(low, high);
  low = std::floor(low / step) * step;
  high = std::ceil(high / step) * step;
  const auto x = [&](double v) { return left + width * v / std::max(max_step, 1.0); };
  const auto y = [&](double v) { return top + height * (1 - (v - low) / (high - low)); };
  svg << "<rect x='" << left << "' y='" << top << "' width='" << width << "' height='" << height << "' fill='none' stroke='#444'/>\n";
  for (double v = low; v <= high + step / 2; v += step) {
    svg << "<line x1='" << left << "' x2='" << left + width << "' y1='" << y(v) << "' y2='" << y(v) << "' stroke='#ddd'/>"
        << "<text x='" << left - 6 << "' y='" << y(v) + 4 << "' text-anchor='end' font-size='11'>" << number(v) << "</text>\n";
  }
  const double x_step = tick_step(0, max_step);
  for (double v = 0; v <= max_step + x_step / 2; v += x_step) {
    svg << "<text x='" << x(v) << "' y='" << top + height + 14 << "' text-anchor='middle' font-size='11'>" << number(v) << "</text>\n";
  }
  svg << "<text x='18' y='" << top + height / 2 << "' transform='rotate(-90 18 " << top + height / 2
      << ")' text-anchor='middle' font-size='12'>" << y_label << "</text>\n";
  double legend_y = top + 16;
  for (const Series* s : series) {
    if (s->points.empty()) continue;
    svg << "<polyline data-series='" << s->name << "' fill='none' stroke='" << s->color << "' stroke-width='1.5' points='";
    for (const auto& p : s->points) svg << x(p.first) << "," << y(p.second) << " ";
    svg << "'/>\n";
    if (s->markers) {
      for (const auto& p : s->points) svg << "<circle cx='" << x(p.first) << "' cy='" << y(p.second) << "' r='3' fill='" << s->color << "'/>\n";
    }
    svg << "<text x='" << left + width - 8 << "' y='" << legend_y << "' text-anchor='end' font-size='12' fill='" << s->color << "'>"
        << s->name << "</text>\n";
    legend_y += 16;
  }
}

int run_plot(const PlotArgs& args) {
  const std::string out = args.out.empty() ? args.run_dir + "/plot.svg" : args.out;
  SHARDLORA_CHECK(out.size() > 4 && out.substr(out.size() - 4) == ".svg", "--out ", out,
                  ": only SVG is written (for a PNG: rsvg-convert plot.svg -o plot.png)");
  const auto series = read_metrics(args.run_dir + "/metrics.jsonl");
  double max_step = 0;
  for (const auto& [key, s] : series) {
    for (const auto& p : s.points) max_step = std::max(max_step, p.first);
  }
  std::ostringstream svg;
  svg << "<svg xmlns='http://www.w3.org/2000/svg' width='720' height='520' font-family='sans-serif'>\n"
      << "<rect width='100%' height='100%' fill='white'/>\n"
      << "<text x='360' y='22' text-anchor='middle' font-size='15'>" << xml_escaped(args.run_dir) << "</text>\n";
  draw_panel(svg, {&series.at("loss"), &series.at("eval_loss")}, 40, 270, max_step, "loss");
  draw_panel(svg, {&series.at("lr")}, 360, 120, max_step, "learning rate");
  svg << "<text x='380' y='512' text-anchor='middle' font-size='12'>step</text>\n</svg>\n";
  io::write_file_atomically(out, svg.str());
  std::printf("wrote %s: %zu training points, %zu evaluations, up to step %.0f\n", out.c_str(), series.at("loss").points.size(),
              series.at("eval_loss").points.size(), max_step);
  return 0;
}

}  // namespace

Subcommand add_plot_command(CLI::App& root) {
  auto args = std::make_shared<PlotArgs>();
  CLI::App* app = root.add_subcommand("plot", "Plot a run's loss, eval loss and learning rate to an SVG file");
  app->add_option("RUN_DIR", args->run_dir, "Run directory (output.dir) holding metrics.jsonl")->required()->check(CLI::ExistingDirectory);
  app->add_option("--out", args->out, "SVG file to write (default: RUN_DIR/plot.svg)");
  return {app, [args] { return run_plot(*args); }};
}

}  // namespace shardlora::launcher
