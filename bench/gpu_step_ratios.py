#!/usr/bin/env python3
"""Sets bench_gpu_step's figures beside the peer's (peer_transformers_peft.py), run by
scripts/gpu-bench: our/peer ratios of tokens/s and peak memory per configuration, and of the
longest sequence that fits, against issue 21's targets.

  gpu_step_ratios.py DIR      (reads DIR/ours-MODEL.json and DIR/peer-MODEL.json)
"""
import json
import pathlib
import sys


def main():
    out = pathlib.Path(sys.argv[1])
    for ours_file in sorted(out.glob("ours-*.json")):
        model = ours_file.stem[len("ours-"):]
        peer_file = out / f"peer-{model}.json"
        if not peer_file.exists():
            print(f"{model}: no peer figures ({peer_file.name} missing)")
            continue
        ours, peer = json.loads(ours_file.read_text()), json.loads(peer_file.read_text())
        print(f"\n{model} on {ours['device']}, {ours['layers']} layers: shardlora (NF4 base) vs transformers "
              f"{peer['versions']['transformers']} + PEFT {peer['versions']['peft']} (bf16 base: no bitsandbytes on this "
              f"machine, so the peer skips dequantization)")
        print(f"{'mb':<4} {'ckpt':<5} {'ours tok/s':>10} {'peer tok/s':>10} {'ratio':>6}   {'ours GiB':>8} {'peer GiB':>8} {'ratio':>6}")
        peer_runs = {(r["micro_batch"], r["checkpointing"]): r for r in peer["runs"]}
        for run in ours["runs"]:
            other = peer_runs.get((run["micro_batch"], run["checkpointing"]))
            if not other or other.get("out_of_memory"):
                print(f"{run['micro_batch']:<4} {'on' if run['checkpointing'] else 'off':<5} {run['tokens_per_second']:>10.0f} "
                      f"{'out of memory' if other else 'not run':>10}")
                continue
            print(f"{run['micro_batch']:<4} {'on' if run['checkpointing'] else 'off':<5} {run['tokens_per_second']:>10.0f} "
                  f"{other['tokens_per_second']:>10.0f} {run['tokens_per_second'] / other['tokens_per_second']:>5.2f}x   "
                  f"{run['peak_allocated_gib']:>8.1f} {other['peak_allocated_gib']:>8.1f} "
                  f"{run['peak_allocated_gib'] / other['peak_allocated_gib']:>5.2f}x")
        if peer.get("longest_seq") and ours.get("longest_seq"):
            limit = " (ours reached the longest tried, --max-seq: the ratio is a lower bound)" \
                if ours["longest_seq"] >= ours.get("max_seq", float("inf")) else ""
            print(f"longest sequence: ours {ours['longest_seq']}, peer {peer['longest_seq']}, "
                  f"{ours['longest_seq'] / peer['longest_seq']:.1f}x{limit}")
    print("\nissue 21 targets (8B, seq 2048): tokens/s >= 1.3x the peer, peak memory <= 0.5x, >= 8,000 tokens/s, "
          "longest sequence >= 10x")


if __name__ == "__main__":
    main()
