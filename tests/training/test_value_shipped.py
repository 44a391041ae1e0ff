"""The shipped default value adapter: intact, documented, and what the default loader serves."""

from __future__ import annotations

import json

from models.checkpoints import verify_checkpoint
from models.default import SHIPPED_VALUE_DIR


def test_shipped_adapter_verifies_and_says_how_it_was_made() -> None:
    manifest = verify_checkpoint(SHIPPED_VALUE_DIR, kind="value", check_hashes=True)
    assert manifest.format == "lora" and manifest.job == "restrl train value"
    assert "REPRODUCE.md" in manifest.files and "adapter_model.safetensors" in manifest.files
    assert manifest.metrics["held_out_rows"] > 0 and manifest.metrics["held_out_mse"] < manifest.metrics["held_out_constant_mse"]
    assert "restrl train value --config configs/value.yaml" in (SHIPPED_VALUE_DIR / "REPRODUCE.md").read_text()
    adapter = json.loads((SHIPPED_VALUE_DIR / "adapter_config.json").read_text())
    assert "score" in adapter["modules_to_save"] and adapter["r"] == manifest.config["lora_r"]
    assert (SHIPPED_VALUE_DIR / "adapter_model.safetensors").stat().st_size < 30 * 2**20  # an adapter (LoRA + two layers in bfloat16), not a whole model


async def test_default_value_model_is_the_trained_adapter(value_model) -> None:
    assert value_model.trained and "untrained" not in value_model.version
    from tests.search.doubles import make_problem

    scores = await value_model.score(make_problem("p"), ["", "def f():\n    return 1\n"])
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
