#!/usr/bin/env python3
"""The peer of bench_gpu_step: transformers + PEFT on the same model shape, sequence length
and tokens (torch.manual_seed(0), then torch.randint on the CPU, as bench_gpu_step draws
them): sdpa attention, gradient checkpointing on and off, AdamW over LoRA r=16 on every
Linear, bf16, micro-batch 1 and 2. The GPU box has no bitsandbytes, so the peer's base is
bf16, not 4-bit: a harder baseline for speed (no dequantization), an easier one for memory.
Prints a table and writes the figures as JSON (--json FILE).

  peer_transformers_peft.py [--model 8b|70b-layers] [--layers N] [--seq 2048] [--steps 3]
                            [--max-seq 65536] [--json FILE]
"""
import argparse
import json
import os
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM


def model_config(name, layers):
    big = name == "70b-layers"
    return LlamaConfig(
        vocab_size=128256, hidden_size=8192 if big else 4096, intermediate_size=28672 if big else 14336,
        num_hidden_layers=layers or (16 if big else 32), num_attention_heads=64 if big else 32, num_key_value_heads=8,
        rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=131072, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
        attn_implementation="sdpa")


def build(config):
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    # PEFT keeps the adapters in the base's dtype: fp32 as ours (and as PEFT's QLoRA recipes cast them).
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    model.enable_input_require_grads()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, optimizer


def train_step(model, optimizer, ids):
    optimizer.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    return loss.detach()


def seconds_per_step(model, optimizer, ids, steps):
    train_step(model, optimizer, ids)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, ids)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="8b", choices=["8b", "70b-layers"])
    parser.add_argument("--layers", type=int, default=0)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max-seq", type=int, default=65536)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("peer_transformers_peft: skipped, no CUDA device")
        return
    import peft
    import transformers
    config = model_config(args.model, args.layers)
    start = time.perf_counter()
    model, optimizer = build(config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    device = torch.cuda.get_device_name(0)
    print(f"{device}: transformers {transformers.__version__} + PEFT {peft.__version__}, torch {torch.__version__}, "
          f"{args.model}, {config.num_hidden_layers} layers, bf16 base (no bitsandbytes here), LoRA r=16 all-linear "
          f"({trainable / 1e6:.1f}M adapter parameters), sdpa, AdamW; built in {time.perf_counter() - start:.0f} s")
    results = {"device": device, "model": args.model, "layers": config.num_hidden_layers, "base": "bf16",
               "max_seq": args.max_seq,
               "versions": {"transformers": transformers.__version__, "peft": peft.__version__, "torch": torch.__version__},
               "runs": []}

    def save():  # after every figure: what was measured survives scripts/gpu-bench's time limits
        if args.json:
            partial = args.json + ".partial"
            with open(partial, "w") as out:
                json.dump(results, out, indent=2)
            os.replace(partial, args.json)

    print(f"{'mb':<4} {'ckpt':<6} {'tokens/s':>10} {'peak alloc':>12} {'reserved':>10}")
    model.train()
    for micro_batch, checkpointing in [(1, True), (1, False), (2, True), (2, False)]:
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_disable()
        torch.manual_seed(0)
        ids = torch.randint(config.vocab_size, (micro_batch, args.seq)).cuda()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            first_loss = train_step(model, optimizer, ids).item()
            step = seconds_per_step(model, optimizer, ids, args.steps)
        except torch.cuda.OutOfMemoryError:
            print(f"{micro_batch:<4} {'on' if checkpointing else 'off':<6} out of memory")
            optimizer.zero_grad(set_to_none=True)
            results["runs"].append({"micro_batch": micro_batch, "checkpointing": checkpointing, "out_of_memory": True})
            save()
            continue
        allocated = torch.cuda.max_memory_allocated() / 2**30
        reserved = torch.cuda.max_memory_reserved() / 2**30
        tokens_per_second = micro_batch * (args.seq - 1) / step
        print(f"{micro_batch:<4} {'on' if checkpointing else 'off':<6} {tokens_per_second:>10.0f} {allocated:>8.1f} GiB "
              f"{reserved:>6.1f} GiB")
        results["runs"].append({"micro_batch": micro_batch, "checkpointing": checkpointing,
                                "tokens_per_second": tokens_per_second, "peak_allocated_gib": allocated,
                                "peak_reserved_gib": reserved, "step_seconds": step, "first_loss": first_loss})
        save()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    longest, seq = 0, args.seq
    while seq <= args.max_seq:
        try:
            torch.cuda.empty_cache()
            train_step(model, optimizer, torch.randint(config.vocab_size, (1, seq)).cuda())
            torch.cuda.synchronize()
            longest = seq
            results["longest_seq"] = longest
            save()
        except torch.cuda.OutOfMemoryError:
            print(f"seq {seq}: out of memory")
            break
        seq *= 2
    print(f"longest sequence that fits (micro-batch 1, checkpointing): {longest} tokens")
    results["longest_seq"] = longest
    save()


if __name__ == "__main__":
    main()
