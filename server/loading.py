"""The real services: models loaded the way the settings say, on the pieces of `search.stack`.

`EngineLoader` maps a checkpoint source to the nested `Settings.policy` / `Settings.value` configs
(a folder, a LoRA adapter applied on its base - reusing the running engine when it can - or a hub
id; None = what the settings name) and loads it with the same code every job uses
(`models.load_policy`, `search.stack.load_value`). It applies the pairing rule of
`search.stack`: a policy of another base than the embedded default gets no value model unless
``RESTRL_VALUE`` names one (or ``RESTRL_VALUE__ANY_POLICY`` allows the shipped one), and `match`
says whether a value model may guide a policy. On CUDA the value model is placed with its memory
accounted for beside the vLLM engine, and a swap that cannot fit beside the serving models is
refused before anything loads (`models.placement`: the swap answers 400, the pair serves on). `build_services(settings)` assembles what
`server.app.build_app` needs when a test gives nothing.
"""

from __future__ import annotations

import logging

from models.base import Policy, ValueModel
from models.config import EngineConfig, ValueConfig
from models.loading import load_policy
from models.placement import check_value_fits, place_models
from search import run_search
from search.stack import (
    NoValueModel,
    ValueMatch,
    choose_value,
    load_value,
    open_sandbox,
    value_match,
    value_pauses_engine,
)
from server.services import Services, assemble_services
from server.settings import Settings

logger = logging.getLogger(__name__)


class EngineLoader:
    """Loads policies and value models the way the server's settings say."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._placed: tuple[EngineConfig, ValueConfig] | None = None
        self._loaded_value = False
        if (settings.policy.data_parallel_size or 1) > 1:
            logger.warning("policy.data_parallel_size=%d: the server runs one engine (tensor_parallel_size spreads it over"
                           " GPUs; several servers behind a load balancer scale it out); the setting is for restrl eval and"
                           " collect-values", settings.policy.data_parallel_size)

    def _configs(self) -> tuple[EngineConfig, ValueConfig]:
        """The settings' policy and value configs placed on this machine's GPUs (once, at the first
        load): `models.placement.place_models`."""
        if self._placed is None:
            engine, value, _ = place_models(self._settings.policy, self._settings.value)
            self._placed = engine, value
        return self._placed

    def engine_config(self, source: str | None) -> EngineConfig:
        """The `EngineConfig` of a policy source: the settings' policy, on the weights ``source``
        names (None = the embedded default; the settings' own checkpoint keeps their adapter)."""
        policy = self._configs()[0]
        if source == policy.model:
            return policy
        return policy.model_copy(update={"model": source, "adapter": None})

    async def load_policy(self, source: str | None, *, reuse: Policy | None = None) -> Policy:
        return await load_policy(self.engine_config(source), reuse=reuse)

    async def load_value(self, source: str | None, *, policy: Policy) -> ValueModel:
        """The value model ``source`` names for ``policy`` (None: the settings' choice), or a
        `NoValueModel` where none may guide it."""
        s = self._settings
        placed = self._configs()[1]
        cfg = choose_value(placed.model_copy(update={"model": source}), policy.base_model)
        if cfg is None:
            return NoValueModel(f"no value model for the policy {policy.base_model}: set RESTRL_VALUE to one trained on"
                                " its rollouts (restrl train collect-values, then restrl train value)")
        if self._loaded_value:
            check_value_fits(cfg)  # a swap loads it beside the serving value model: refused up front if it cannot fit
        self._loaded_value = True
        return await load_value(cfg, pauses=value_pauses_engine(s.policy, cfg))

    def match(self, policy: Policy, value: ValueModel) -> ValueMatch:
        return value_match(policy.base_model, value, any_policy=self._settings.value.any_policy)


def build_services(settings: Settings) -> Services:
    """The production services (models are loaded later, by the app's lifespan)."""
    return assemble_services(settings, loader=EngineLoader(settings), search_fn=run_search,
                             sandbox=open_sandbox(settings.sandbox))
