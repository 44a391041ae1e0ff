"""The value-model training study as one table: every `restrl train value` run of a study folder.

Each run folder (``restrl train value --set output_dir=<study>/<name> ...``) holds ``metrics.json``
(held-out rows of gym train-split problems: never HumanEval, never the test split). Per setting:
MSE vs the constant prediction, Pearson r overall and by row kind, within-problem pair accuracy by
the depth of the failing program (the failure mode: deep near-duplicates), its pooled depth >= 2,
and the expected calibration error of the binned predictions. Settings are read from each run's
``final/restrl.json`` config, so the table says what was tried.

    python -m bench.value_study runs/value_study [--out bench/results/value_study.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

SETTING_KEYS = ("top_layers", "lora_r", "lora_layers", "init_from", "learning_rate", "epochs", "max_steps", "rank_weight",
                "problems_per_batch", "max_train_rows", "kinds")


def expected_calibration_error(bins: list[dict[str, float]]) -> float | None:
    rows = sum(b["rows"] for b in bins)
    return sum(b["rows"] * abs(b["mean_pred"] - b["mean_target"]) for b in bins) / rows if rows else None


def summarize_run(folder: Path) -> dict[str, Any]:
    metrics = json.loads((folder / "metrics.json").read_text())
    manifest = folder / "final" / "restrl.json"
    config = json.loads(manifest.read_text()).get("config", {}) if manifest.exists() else {}
    held = metrics["held_out"]
    pairs = metrics.get("held_out_pair_accuracy_by_depth", {})
    return {
        "name": folder.name,
        "setting": {k: config.get(k) for k in SETTING_KEYS if k in config},
        "train_rows": metrics.get("train_rows"),
        "held_out_rows": metrics.get("held_out_rows"),
        "steps": metrics.get("steps"),
        "train_s": metrics.get("train_s"),
        "feature_cache_build_s": (metrics.get("feature_cache") or {}).get("build_s"),  # top_layers: the one-off forward
        "mse": held.get("mse"),
        "constant_mse": held.get("constant_mse"),
        "pearson_r": held.get("pearson_r"),
        "pearson_r_by_kind": {k: v.get("pearson_r") for k, v in metrics.get("held_out_by_kind", {}).items()},
        "pair_accuracy_by_depth": {k: v["accuracy"] for k, v in pairs.items()},
        "pairs_by_depth": {k: v["pairs"] for k, v in pairs.items()},
        "ece": expected_calibration_error(metrics.get("calibration", [])),
    }


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("study", type=Path, help="folder whose subfolders are value training runs")
    ap.add_argument("--out", type=Path, default=Path("bench/results/value_study.json"))
    args = ap.parse_args()
    runs = [summarize_run(f) for f in sorted(args.study.iterdir()) if (f / "metrics.json").exists()]
    head = ("run", "mse", "const", "r", "r prog", "r exp", "r child", "pair@0", "pair@1", "pair@2+", "ece", "rows")
    print(" ".join(f"{h:>10}" for h in head))
    for r in runs:
        by_kind, pa = r["pearson_r_by_kind"], r["pair_accuracy_by_depth"]
        cells = (r["name"][-10:], r["mse"], r["constant_mse"], r["pearson_r"], by_kind.get("program"), by_kind.get("expanded"),
                 by_kind.get("child"), pa.get("0"), pa.get("1"), pa.get("2+"), r["ece"], r["train_rows"])
        print(" ".join(f"{_fmt(c):>10}" for c in cells))
    args.out.write_text(json.dumps({"command": f"python -m bench.value_study {args.study}", "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
