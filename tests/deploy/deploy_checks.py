"""Helpers shared by the deployment tests: paths, PromQL metric-name extraction, exported series.

Not a test module (no ``test_`` prefix); the test files import it by name (pytest puts this folder on
sys.path, the suite uses no ``__init__.py`` files).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "restrl.json"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
COMPOSE_FILE = ROOT / "docker-compose.yml"

# Series Prometheus itself attaches to every scrape target; the dashboard may use them.
SCRAPE_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

# PromQL's functions, aggregations and keywords (Prometheus 2.x) - anything else bare is a metric name.
PROMQL_FUNCTIONS = frozenset("""
abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp clamp_max
clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year days_in_month deg delta deriv exp
floor histogram_avg histogram_count histogram_fraction histogram_quantile histogram_stddev histogram_stdvar
histogram_sum holt_winters hour idelta increase irate label_join label_replace last_over_time ln log10 log2
mad_over_time max_over_time min_over_time minute month pi predict_linear present_over_time
quantile_over_time rad rate resets round scalar sgn sin sinh sort sort_by_label sort_by_label_desc
sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time tan tanh time timestamp vector year
sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio
""".split())
PROMQL_KEYWORDS = frozenset("by without on ignoring group_left group_right bool and or unless offset atan2 inf nan".split())

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$\w+")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NUMBER = re.compile(r"(?<![\w:])(?:\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?)+")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(?:\{[^}]*\})?\s*,\s*\w+\s*\)\s*$")


class PromQLNameError(ValueError):
    """An expression calls something that is not a PromQL function."""


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label matchers, ranges and grouping stripped)."""
    text = _STRING.sub(" ", expr)
    text = _GRAFANA_VAR.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        word = match.group()
        called = text[match.end():].lstrip().startswith("(")
        if called:
            if word not in PROMQL_FUNCTIONS:
                raise PromQLNameError(f"{word!r} is not a PromQL function (in {expr!r})")
        elif word not in PROMQL_KEYWORDS:
            names.add(word)
    return names


def exported_series(exposition: str) -> set[str]:
    """Every series name a Prometheus text exposition can produce, samples or not (HELP/TYPE lines count)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable (label_values(m, l) -> m)."""
    exprs = []
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            exprs.append((f"panel {panel['title']!r} target {target['refId']}", target["expr"]))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = _LABEL_VALUES.match(query)
        exprs.append((f"variable {var['name']!r}", match.group(1) if match else query))
    return exprs


def alert_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [(f"rule {rule.get('alert') or rule.get('record')!r}", rule["expr"])
            for group in rules["groups"] for rule in group["rules"]]
