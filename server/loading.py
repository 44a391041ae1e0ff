"""The real services: model loading from checkpoint folders, the value batcher, the sandbox.

`EngineLoader` maps a checkpoint folder to `models.EngineConfig` / `models.ValueConfig` using the
server's engine settings: a LoRA policy adapter (``restrl.json`` format ``lora``) is applied on its
base and may reuse the running engine; a full checkpoint gets an engine of its own. Every folder is
verified against its manifest before any weight is read (`models.checkpoints.inspect_directory`).
`build_services(settings)` assembles what `server.app.build_app` needs when a test gives nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from models.base import Policy, ValueModel
from server.services import Services, assemble_services, value_pauses_engine
from server.settings import Settings

logger = logging.getLogger(__name__)


class EngineLoader:
    """Loads policies and value models the way the server's settings say. ``engine_config``: a
    template `models.EngineConfig` used instead of the settings' engine options (its ``model`` and
    ``adapter`` are replaced per checkpoint)."""

    def __init__(self, settings: Settings, *, engine_config: Any = None):
        self._settings = settings
        self._template = engine_config

    def _base_config(self) -> Any:
        from models import EngineConfig

        if self._template is not None:
            return self._template.model_copy(update={"model": None, "adapter": None})
        s = self._settings
        options: dict[str, Any] = {"engine": s.engine, "seed": s.seed, "tensor_parallel_size": s.tensor_parallel_size}
        for name in ("max_model_len", "kv_cache_gib", "gpu_memory_utilization", "dtype", "max_lora_rank"):
            if getattr(s, name) is not None:
                options[name] = getattr(s, name)
        return EngineConfig(**options)

    def engine_config(self, source: str | None) -> Any:
        """The `EngineConfig` of a policy checkpoint folder (None = the embedded default)."""
        from models import default_model_path
        from models.checkpoints import inspect_directory

        config = self._base_config()
        if source is None:
            return config
        manifest, _ = inspect_directory(source, kind="policy")
        if manifest is not None and manifest.format == "lora":
            base = Path(manifest.base).expanduser()
            # the default base stays model=None so that the adapter can reuse the running default engine
            default = base.is_dir() and base.resolve() == default_model_path().resolve()
            model = str(base) if base.is_dir() and not default else None
            return config.model_copy(update={"model": model, "adapter": source})
        return config.model_copy(update={"model": source})

    async def load_policy(self, source: str | None, *, reuse: Policy | None = None) -> Policy:
        from models import load_policy

        return await load_policy(self.engine_config(source), reuse=reuse)

    async def load_value(self, source: str | None) -> ValueModel:
        from models import ValueConfig, load_value_model
        from models.value import cpu_threads

        s = self._settings
        return await load_value_model(ValueConfig(
            model=source, seed=s.seed, device=s.value_device, threads=cpu_threads(s.value_threads, exclusive=value_pauses_engine(s)),
            dtype=s.value_dtype, pack_tokens=s.value_pack_tokens,
        ))


def build_services(settings: Settings) -> Services:
    """The production services (models are loaded later, by the app's lifespan)."""
    from sandbox import Sandbox
    from search import run_search

    return assemble_services(settings, loader=EngineLoader(settings), search_fn=run_search,
                             sandbox=Sandbox(workers=settings.sandbox_workers))
