"""bench.gpu_check runs end to end on toy shapes here, so a lent GPU's few minutes are not spent
on a crash: every figure it reports is produced, including the search-shaped value comparison
that decides `ValueConfig.pack_tokens` on CUDA."""

from __future__ import annotations

import json


def test_gpu_check_tiny_reports_every_figure(tmp_path):
    from bench import gpu_check

    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--tiny", "--shapes", "smollm2-135m", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["shapes"]["smollm2-135m"]
    assert row["value_path"] == "models.value.HFValueModel"
    for key in ("generate_tok_s_b4", "hfpolicy_tok_s_b4", "value_states_s_b4", "search_shaped_states_s_padded",
                "search_shaped_states_s_tree"):
        assert row[key] > 0, key
