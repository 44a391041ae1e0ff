"""The value-model training study as one table: every `restrl train value` run of a study folder.

Each run folder (``restrl train value --set output_dir=<study>/<name> ...``) holds ``metrics.json``
(held-out rows of gym train-split problems: never HumanEval, never the test split). Per setting:
MSE vs the constant prediction, Pearson r overall and by row kind, within-problem pair accuracy by
the depth of the failing program (the failure mode: deep near-duplicates), its pooled depth >= 2,
pair accuracy against near-misses (failing programs that pass half the tests or more), the top-1
choice, and the expected calibration error of the binned predictions. Settings are read from each run's
``final/restrl.json`` config, so the table says what was tried.

    python -m bench.value_study runs/value_study [--out bench/results/value_study.json]

The study itself, one command, resumable (a setting whose folder has ``metrics.json`` is not
trained again, one with ``selection/eval.json`` not selected again; one recorded in the config's
``record_dir``, committed, is done on a fresh checkout too, and the table reads the record):

    python -m bench.value_study --run configs/value_study.yaml [--only NAME ...] [--table]

runs ``restrl train value --config <train_config> --set ...`` per setting of the study config, and,
with ``selection.samples`` (best_of_n phases on the gym **validation** split sampled once with the
shipped value model: the command is in configs/value_study.yaml), ``restrl eval --set
rescore_from=<samples> --set value.model=<run>/final`` - the same programs ranked by each setting's
value model, the final choice the product makes - paired against the model that scored the samples
(``scorer``: the shipped model when they were sampled, named by its version) and against each
baseline's ranking of the same programs (``vs_baselines``).
A study's ``baselines`` (name -> checkpoint, e.g. the shipped one) are scored, untrained, on the
same held-out rows (``--set evaluate_checkpoint=...``) and selection samples: the bar each
setting must clear, measured the same way. ``--table`` trains nothing: it prints and writes the
table of what the record holds (safe while a study runs).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)

SETTING_KEYS = ("top_layers", "lora_r", "lora_layers", "init_from", "learning_rate", "epochs", "max_steps", "rank_weight",
                "problems_per_batch", "max_train_rows", "kinds", "target")


def expected_calibration_error(bins: list[dict[str, float]]) -> float | None:
    rows = sum(b["rows"] for b in bins)
    return sum(b["rows"] * abs(b["mean_pred"] - b["mean_target"]) for b in bins) / rows if rows else None


class Selection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    samples: str = Field(description="output_dir of a restrl eval run of best_of_n on gym_validation (the programs every setting ranks)")
    eval_config: str = "configs/eval.yaml"
    dataset: str = "gym_validation"
    budgets: list[int] = Field(default=[5, 10, 20], description="as the samples run had them")
    budget: int = Field(default=20, description="the budget the table reports")


class StudyConfig(BaseModel):
    """A value-model training study: settings over one training config, each trained and selected."""

    model_config = ConfigDict(extra="forbid")
    study_dir: str = "runs/value_study"
    record_dir: str | None = Field(
        default=None, description="where each finished setting's light outputs are copied (metrics, manifest, selection report and"
        " phase; no weights): commit it, and --run on a fresh checkout skips what it holds and the table reads it")
    train_config: str = "configs/value.yaml"
    common: dict[str, Any] = Field(default_factory=dict, description="--set for every setting")
    selection: Selection | None = None
    baselines: dict[str, str] = Field(
        default_factory=dict, description="name -> a value checkpoint scored on the same held-out rows and selection samples, untrained"
        " (`restrl train value --set evaluate_checkpoint=...`): the bar a setting must clear")
    settings: dict[str, dict[str, Any]] = Field(description="name -> --set of that setting (over common)")


def _sets(items: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in items.items():
        out += ["--set", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    return out


# the keys of `common` that say which rows and which held-out split (a baseline trains nothing, so the rest do not apply to it)
DATA_KEYS = ("rows_file", "problems_file", "kinds", "holdout_fraction", "split_seed", "holdout_exclude", "seed", "value", "policy")


def train_command(cfg: StudyConfig, name: str) -> list[str]:
    """`restrl train value` of a setting, or of a baseline (its checkpoint evaluated on the same split)."""
    out = Path(cfg.study_dir) / name
    if name in cfg.baselines:
        sets = {**{k: v for k, v in cfg.common.items() if k in DATA_KEYS or k.startswith("value.")},
                "evaluate_checkpoint": cfg.baselines[name]}
    else:
        sets = {**cfg.common, **cfg.settings[name]}
    return [sys.executable, "restrl.py", "train", "value", "--config", cfg.train_config, *_sets({**sets, "output_dir": str(out)})]


def checkpoint_of(cfg: StudyConfig, name: str) -> str:
    return cfg.baselines[name] if name in cfg.baselines else str(Path(cfg.study_dir) / name / "final")


def selection_command(cfg: StudyConfig, name: str) -> list[str]:
    assert cfg.selection is not None
    sel, out = cfg.selection, Path(cfg.study_dir) / name / "selection"
    return [sys.executable, "restrl.py", "eval", "--config", sel.eval_config, *_sets({
        "datasets": [sel.dataset], "strategies": ["best_of_n"], "budgets": sel.budgets, "value.model": checkpoint_of(cfg, name),
        "rescore_from": sel.samples, "output_dir": str(out), "results_file": str(out / "eval.json"), "plot_file": str(out / "eval.png"),
        "prm_aggregates": []})]  # the whole-program value only: PRM-BoN scores every line prefix, several times the calls


def samples_value_version(selection: Selection) -> str | None:
    """The value model that scored the selection samples (their phase file's ``value_version``)."""
    from training.search_eval import read_phase

    path = Path(selection.samples) / f"{selection.dataset}.best_of_n.b{max(selection.budgets)}.json.gz"
    return read_phase(path).get("value_version") if path.exists() else None


def scored_the_samples(folder: Path, selection: Selection | None) -> bool:
    """A baseline that is the very model the selection samples were scored with: its selection is theirs."""
    metrics = folder / "metrics.json"
    if selection is None or not metrics.exists():
        return False
    version = json.loads(metrics.read_text()).get("value_version")
    return version is not None and version == samples_value_version(selection)


def _run(cmd: list[str], folder: Path) -> None:
    logger.info("running: %s", " ".join(cmd[1:]))
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "commands.jsonl").open("a") as fh:
        fh.write(json.dumps({"command": "python " + " ".join(cmd[1:]), "wall_s": round(time.perf_counter() - t0, 1),
                             "at": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")


def finished(folder: Path, selection: Selection | None) -> bool:
    """The setting's folder holds its held-out metrics and, with a selection, its selection report
    (or it is a baseline that scored the selection samples itself)."""
    if not (folder / "metrics.json").exists():
        return False
    return selection is None or (folder / "selection" / "eval.json").exists() or scored_the_samples(folder, selection)


def record(folder: Path, dest: Path, selection: Selection | None) -> None:
    """Copy a finished setting's light outputs (no weights, no predictions) to ``dest``, laid out as
    the run folder is, so `summarize_run` reads either."""
    files = ["metrics.json", "commands.jsonl", "final/restrl.json"]
    if selection is not None:
        files += ["selection/eval.json", f"selection/{selection.dataset}.best_of_n.b{max(selection.budgets)}.json.gz"]
    for rel in files:
        if (folder / rel).exists():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / rel, dest / rel)


def run_study(cfg: StudyConfig, *, only: list[str] | None = None) -> None:
    """Evaluate every baseline, then train and select every setting, not done yet, in the config's order;
    with ``record_dir``, copy each finished setting there (a setting recorded there is done)."""
    if overlap := set(cfg.baselines) & set(cfg.settings):
        raise ValueError(f"a baseline and a setting share a name: {sorted(overlap)}")
    for name in [*cfg.baselines, *cfg.settings]:
        if only and name not in only:
            continue
        folder = Path(cfg.study_dir) / name
        recorded = Path(cfg.record_dir) / name if cfg.record_dir else None
        if recorded is not None and finished(recorded, cfg.selection):
            continue
        if not (folder / "metrics.json").exists():
            _run(train_command(cfg, name), folder)
        if not finished(folder, cfg.selection):
            _run(selection_command(cfg, name), folder)
        elif name in cfg.baselines and cfg.selection is not None and not (folder / "selection" / "eval.json").exists():
            logger.info("%s scored the selection samples themselves: its selection is theirs", name)
        if recorded is not None:
            record(folder, recorded, cfg.selection)


def selection_of(folder: Path, selection: Selection | None, baselines: dict[str, Path] | None = None) -> dict[str, Any] | None:
    """The setting's value model as the product uses it: pass@1 of best_of_n's validation samples
    ranked by it (value; public tests, then value; PRM-BoN), and the value rule paired on the same
    programs (`bench.compare_phases`) against the model that scored the samples (``vs_scorer``) and
    against each of ``baselines`` (name -> its run folder) whose selection is there (``vs_baselines``)."""
    from bench.compare_phases import compare

    report_path = folder / "selection" / "eval.json"
    if selection is not None and not report_path.exists() and scored_the_samples(folder, selection):
        report_path = Path(selection.samples) / "eval.json"
    if selection is None or not report_path.exists():
        return None
    report = json.loads(report_path.read_text())[selection.dataset]
    at = str(selection.budget)
    out: dict[str, Any] = {arm: report[arm][at] for arm in ("best_of_n", "best_of_n+public", "prm_best_of_n") if arm in report}
    top = max(selection.budgets)
    name = f"{selection.dataset}.best_of_n.b{top}.json.gz"
    scorer, mine = Path(selection.samples) / name, folder / "selection" / name
    if not mine.exists():
        return out

    def against(other: Path, label: str) -> dict[str, Any]:  # the setting first: won / lost / difference are the setting's
        paired = compare(mine, other, budget=selection.budget, names=(folder.name, label))["rules"]["value"]
        return {k: paired[k] for k in ("won", "lost", "difference", "ci95", "mcnemar_p")}

    if scorer.exists():
        out["vs_scorer"] = {"value_version": samples_value_version(selection), **against(scorer, "scorer")}
    theirs = {b: f / "selection" / name for b, f in (baselines or {}).items() if f.resolve() != folder.resolve()}
    out["vs_baselines"] = {b: against(path, b) for b, path in theirs.items() if path.exists()}
    return out


def summarize_run(folder: Path, selection: Selection | None = None, baselines: dict[str, Path] | None = None) -> dict[str, Any]:
    metrics = json.loads((folder / "metrics.json").read_text())
    manifest = folder / "final" / "restrl.json"
    config = json.loads(manifest.read_text()).get("config", {}) if manifest.exists() else {}
    held = metrics["held_out"]
    pairs = metrics.get("held_out_pair_accuracy_by_depth", {})
    return {
        "name": folder.name,
        "setting": ({"evaluated_checkpoint": metrics["evaluated_checkpoint"]} if "evaluated_checkpoint" in metrics
                    else {k: config.get(k) for k in SETTING_KEYS if k in config}),
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
        "pair_accuracy_by_failing_reward": {k: v["accuracy"] for k, v in metrics.get("held_out_pair_accuracy_by_failing_reward", {}).items()},
        "top1_choice": metrics.get("held_out_top1_choice"),
        "ece": expected_calibration_error(metrics.get("calibration", [])),
        "selection": selection_of(folder, selection, baselines),
    }


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def table(study: Path, selection: Selection | None, out: Path, command: str, baselines: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Print and write the study's table; each run's selection is paired against the samples' scorer
    and against the ``baselines`` (names of runs in ``study``)."""
    folders = {b: study / b for b in baselines}
    runs = [summarize_run(f, selection, folders) for f in sorted(study.iterdir()) if (f / "metrics.json").exists()] if study.is_dir() else []
    head = ("run", "mse", "const", "r", "r prog", "r exp", "r child", "pair@0", "pair@1", "pair@2+", "pair:most", "top1", "ece", "rows",
            "bon", "bon+pub", "prm")
    print(" ".join(f"{h:>10}" for h in head))
    for r in runs:
        by_kind, pa, sel = r["pearson_r_by_kind"], r["pair_accuracy_by_depth"], r["selection"] or {}
        cells = (r["name"][-10:], r["mse"], r["constant_mse"], r["pearson_r"], by_kind.get("program"), by_kind.get("expanded"),
                 by_kind.get("child"), pa.get("0"), pa.get("1"), pa.get("2+"), r["pair_accuracy_by_failing_reward"].get("most"),
                 (r["top1_choice"] or {}).get("accuracy"), r["ece"],
                 r["train_rows"],
                 sel.get("best_of_n"), sel.get("best_of_n+public"), sel.get("prm_best_of_n"))
        print(" ".join(f"{_fmt(c):>10}" for c in cells))
    scorer = None
    if selection is not None and (Path(selection.samples) / "eval.json").exists():
        report = json.loads((Path(selection.samples) / "eval.json").read_text())[selection.dataset]
        scorer = {arm: report[arm][str(selection.budget)] for arm in ("best_of_n", "best_of_n+public", "prm_best_of_n") if arm in report}
        scorer["value_version"] = samples_value_version(selection)
        print(f"the value model that scored the samples ({scorer['value_version']}) @{selection.budget}: {scorer}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command, "selection": selection.model_dump() if selection else None, "scorer": scorer,
                               "runs": runs}, indent=1))
    return runs


def paired_predictions(a: Path, b: Path) -> dict[str, Any]:
    """Two runs' held-out ``predictions.jsonl`` on the rows both predicted with the same target (e.g.
    VM_2's union split against VM_1's v3 split: v3's rows of the same held-out problems): per run,
    MSE and Pearson r, pair accuracy by the failing member's depth and the top-1 choice, all on the
    same rows (`training.value_train`'s metrics)."""
    from training.value_train import pair_accuracy_by_depth, regression_metrics, top1_choice

    def rows(path: Path) -> dict[tuple[Any, ...], dict[str, Any]]:
        out = {}
        for line in path.read_text().splitlines():
            r = json.loads(line)
            out[(r["problem_id"], r["kind"], r["state"], r["target"])] = r
        return out

    ra, rb = rows(a), rows(b)
    keys = sorted(set(ra) & set(rb))
    result: dict[str, Any] = {"files": [str(a), str(b)], "rows": [len(ra), len(rb)], "common_rows": len(keys)}
    for name, got in (("a", ra), ("b", rb)):
        common = [got[k] for k in keys]
        preds = [r["prediction"] for r in common]
        pairs = pair_accuracy_by_depth(common, preds)
        result[name] = {"regression": regression_metrics(preds, [r["target"] for r in common]),
                        "pair_accuracy_by_depth": {k: v["accuracy"] for k, v in pairs.items()},
                        "pairs_by_depth": {k: v["pairs"] for k, v in pairs.items()},
                        "top1_choice": top1_choice(common, preds)}
    return result


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("study", type=Path, nargs="?", help="folder whose subfolders are value training runs (the table only)")
    ap.add_argument("--run", type=Path, help="a study config (configs/value_study.yaml): train and select every setting not done, then the table")
    ap.add_argument("--only", nargs="+", help="with --run: these settings only")
    ap.add_argument("--table", action="store_true", help="with --run: only the table of what is recorded (while a study runs)")
    ap.add_argument("--predictions", nargs=2, type=Path, metavar=("A", "B"),
                    help="two runs' predictions.jsonl, compared on the held-out rows both predicted (prints; JSON with --out)")
    ap.add_argument("--out", type=Path, help="the table's JSON (default bench/results/value_study.json); with --predictions, theirs")
    args = ap.parse_args()
    table_out = args.out or Path("bench/results/value_study.json")
    if args.predictions:
        res = paired_predictions(*args.predictions)
        print(f"{res['common_rows']} rows both predicted ({res['rows'][0]} and {res['rows'][1]})")
        for name, path in zip(("a", "b"), args.predictions, strict=True):
            r = res[name]
            print(f"{path}: MSE {r['regression']['mse']:.4f}, r {r['regression']['pearson_r']:.3f}, pair accuracy by depth "
                  f"{ {k: round(v, 3) for k, v in r['pair_accuracy_by_depth'].items()} }, top-1 "
                  f"{r['top1_choice']['accuracy']:.3f} of {r['top1_choice']['problems']}")
        if args.out:
            args.out.write_text(json.dumps(res, indent=1))
    elif args.run:
        cfg = StudyConfig.model_validate(yaml.safe_load(args.run.read_text()))
        if not args.table:
            run_study(cfg, only=args.only)
        table(Path(cfg.record_dir or cfg.study_dir), cfg.selection, table_out, f"python -m bench.value_study --run {args.run}",
              baselines=list(cfg.baselines))
    elif args.study:
        table(args.study, None, table_out, f"python -m bench.value_study {args.study}")
    else:
        ap.error("give a study folder or --run CONFIG")


if __name__ == "__main__":
    main()
