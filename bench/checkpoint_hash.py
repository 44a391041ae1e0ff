"""What verifying a checkpoint costs (issue 19 item 4): sha256 of a synthetic multi-GB checkpoint,
the first time and again in the same process (a policy and a value model on one base: the digest is
remembered while the file is unchanged, `models.checkpoints.sha256_file`), next to the engine start
that bench/results/engine.json measured.

    python -m bench.checkpoint_hash [--gib 1.5] [--files 2]

The files are random bytes named ``*.safetensors`` (hashing does not parse them), written to a
temporary folder and removed. The first hash reads them from the page cache (they were just written;
dropping the cache needs root), so a cold read from disk adds the disk's read time. Writes
bench/results/checkpoint_hash.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from models.checkpoints import hash_files

RESULTS = Path(__file__).parent / "results" / "checkpoint_hash.json"
ENGINE = Path(__file__).parent / "results" / "engine.json"
_BLOCK = 64 << 20


def write_checkpoint(folder: Path, gib: float, files: int) -> int:
    """``files`` files of random bytes, ``gib`` GiB together; returns the bytes written."""
    per_file = int(gib * (1 << 30)) // files
    for i in range(files):
        with (folder / f"model-{i + 1:05d}-of-{files:05d}.safetensors").open("wb") as fh:
            left = per_file
            while left:
                n = min(left, _BLOCK)
                fh.write(os.urandom(n))
                left -= n
    (folder / "config.json").write_text(json.dumps({"model_type": "synthetic"}))
    return per_file * files


def measure(gib: float, files: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        size = write_checkpoint(folder, gib, files)  # a fresh process: no digest is remembered yet
        t0 = time.monotonic()
        first = hash_files(folder)
        first_s = time.monotonic() - t0
        t0 = time.monotonic()
        again = hash_files(folder)
        again_s = time.monotonic() - t0
        assert first == again
    engine = json.loads(ENGINE.read_text()).get("engines", {}) if ENGINE.exists() else {}
    vllm_start = engine.get("vllm", {}).get("startup_s")
    return {"bytes": size, "files": files, "first_hash_s": round(first_s, 2), "again_hash_s": round(again_s, 4),
            "gib_per_s": round(size / (1 << 30) / first_s, 2),
            "vllm_startup_s_135m": vllm_start,
            "first_hash_vs_vllm_startup_135m": round(first_s / vllm_start, 2) if vllm_start else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.5)
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    load_before = [round(x, 2) for x in os.getloadavg()]
    result = measure(args.gib, args.files)
    result |= {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_before": load_before,
                           "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
               "command": f"python -m bench.checkpoint_hash --gib {args.gib} --files {args.files}",
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(f"{result['bytes'] / (1 << 30):.2f} GiB in {args.files} files: first hash {result['first_hash_s']} s "
          f"({result['gib_per_s']} GiB/s), again {result['again_hash_s']} s; vLLM start of the 135M default "
          f"{result['vllm_startup_s_135m']} s (load {load_before})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
