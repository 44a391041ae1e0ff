"""Forward + backward of the default policy with a LoRA adapter, float32 vs bfloat16, on this
machine: whether a training job should compute in bf16 here (`grpo.bf16`; the value job's cache
dtype). The two precisions alternate so that a change in load hits both; prints a table, writes JSON.

    python -m bench.train_precision [--batch 8] [--tokens 400] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def step_seconds(model: object, ids: object) -> float:
    t0 = time.perf_counter()
    out = model(input_ids=ids, labels=ids)  # type: ignore[operator]
    out.loss.backward()
    return time.perf_counter() - t0


def main() -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from models.config import native_bf16
    from models.default import prepare_default_model

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=400)
    p.add_argument("--repeats", type=int, default=3, help="timed steps per precision (after one warm-up step each)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_precision.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = prepare_default_model()
    ids = torch.randint(0, 49000, (args.batch, args.tokens), generator=torch.Generator().manual_seed(0))
    models: dict[str, Any] = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
        models[name] = get_peft_model(model, lora).train()
        step_seconds(models[name], ids)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            times[name].append(step_seconds(model, ids))
    med = {name: median(t) for name, t in times.items()}
    result: dict[str, Any] = {
        "command": "python -m bench.train_precision " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "machine": {"cpus": os.cpu_count(), "native_bf16": native_bf16("cpu"), "platform": platform.platform(),
                    "load_avg_at_end": os.getloadavg()},
        "seconds": times, "median_s": med, "ratio_float32_over_bfloat16": med["float32"] / med["bfloat16"],
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"{'precision':10} {'median s':>9}  steps")
    for name, t in times.items():
        print(f"{name:10} {med[name]:9.2f}  {', '.join(f'{x:.2f}' for x in t)}")
    print(f"float32 / bfloat16: {result['ratio_float32_over_bfloat16']:.2f}x (native bf16: {result['machine']['native_bf16']})")


if __name__ == "__main__":
    main()
