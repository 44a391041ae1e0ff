"""The README and docs/api.md describe what the code really has: every setting with its variable,
every exported metric, every make target the quick start names, the search options of the wire."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.metrics import Metrics
from server.protocol import search_options_table
from server.settings import RENAMED, env_name, setting_rows, settings_table

ROOT = Path(__file__).resolve().parents[1]
DOCS = {name: (ROOT / name).read_text() for name in ("README.md", "docs/api.md")}


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_setting_is_documented_with_its_variable(doc: str) -> None:
    """Every variable (``RESTRL_POLICY__KV_CACHE_GIB``; the checkpoints as ``RESTRL_POLICY`` and
    ``RESTRL_VALUE``), and every renamed flat variable with its new name."""
    shown = {"policy.model": "policy", "value.model": "value"}
    missing = [env_name(shown.get(key, key)) for key, _ in setting_rows() if f"`{env_name(shown.get(key, key))}`" not in DOCS[doc]]
    assert not missing, f"{doc} does not document {missing}"
    for old, keys in RENAMED.items():
        assert f"`{env_name(old)}`" in DOCS[doc] and f"`{env_name(keys[0])}`" in DOCS[doc], old
    assert settings_table() in DOCS[doc]  # the table as `server.settings.settings_table` prints it


def test_the_search_options_table_is_the_one_the_wire_derives() -> None:
    """docs/api.md shows the /v1/solve and OpenAI `search` options as `server.protocol` derives them
    from `search.types.SearchConfig` (fields, bounds, defaults)."""
    assert search_options_table() in DOCS["docs/api.md"]


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_exported_metric_is_documented_and_no_other(doc: str) -> None:
    registry = Metrics().registry  # the families the server registers (not the _created series)
    exported = {f.name + ("_total" if f.type == "counter" else "") for f in registry.collect()}
    documented = set(re.findall(r"`(restrl:[a-z_]+)`", DOCS[doc]))
    assert exported <= documented, f"{doc} lacks {sorted(exported - documented)}"
    assert documented <= exported, f"{doc} names metrics the server does not export: {sorted(documented - exported)}"


def test_quick_start_is_the_two_make_targets_first() -> None:
    readme = DOCS["README.md"]
    quick = readme[readme.index("## Quick start"):]
    first_block = quick[quick.index("```bash") + len("```bash"): quick.index("```", quick.index("```bash") + 7)]
    assert [line.split()[:2] for line in first_block.strip().splitlines()] == [["make", "serve"], ["make", "test"]]
    makefile = (ROOT / "Makefile").read_text()
    for target in ("serve", "test", "test-all", "lint", "bench", "eval", "prepare"):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), target


def _error_table(text: str) -> set[tuple[int, str]]:
    section = text[text.index("**Errors.**"):text.index("## `POST /v1/solve`")]
    return {(int(m.group(1)), m.group(2)) for m in re.finditer(r"^\| (\d{3}) \| `([a-z_]+)` \|", section, re.M)}


def test_error_table_is_the_servers_list_of_errors() -> None:
    """Issue 24: the statuses and types the server answers and the documented ones were different
    lists; now docs/api.md's table is `ERROR_KINDS`, every error class is in it, and README has no
    second copy."""
    from server import errors

    kinds = {(k.status, k.type) for k in errors.ERROR_KINDS}
    assert _error_table(DOCS["docs/api.md"]) == kinds
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.APIError)]
    assert {(c.status, c.type) for c in classes} <= kinds
    assert "| status | type | when |" not in DOCS["README.md"]


def test_every_refused_openai_field_is_documented() -> None:
    from server.protocol import UNSUPPORTED_FIELDS

    api = DOCS["docs/api.md"]
    section = api[api.index("**Fields that would change the answer.**"):]
    assert [name for name in UNSUPPORTED_FIELDS if f"`{name}`" not in section] == []
