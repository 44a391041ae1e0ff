"""The strategies behind one registry, all on the same machinery (`search.context.SearchRun`) and
the same budget unit (sampled programs), so that they compare at equal, explicitly counted cost.

* ``greedy``    - one sample at temperature 0 (uses 1 of the sample budget); the evaluator scores it.
* ``best_of_n`` - all the sample budget in one request at the configured temperature; the value
                  model scores the full programs (outcome reward model, ORM-BoN); the best is returned.
* ``prm_best_of_n`` - the same samples scored as a process reward model would (PRM-BoN, the paper's
                  baseline): the value model scores every line prefix of each program and the
                  program's score aggregates them (``prm_aggregate``: min, mean or last).
* ``beam``      - step-level beam search (PRM-style): expand every beam state with K continuations,
                  score the first-line children with the value model, keep the ``beam_width`` best
                  non-terminal children; every sampled program is a scored candidate; until the
                  budget is spent or no state is left ("exhausted").
* ``orm_mcts``  - the MCTS below with `ORMEvaluator`: node values come only from scoring full
                  programs (a child gets the mean of its rollouts' scores).
* ``vm_mcts``   - VM-MCTS (RESTRL_SPEC.md section 2) with `VMEvaluator`.

MCTS runs up to ``parallel_expansions`` expansions at once (virtual loss, see `search.tree`);
results are applied in issue order, so the tree does not depend on request timing.
"""

from __future__ import annotations

from typing import ClassVar

from models.base import ValueModel
from search.context import SearchRun
from search.evaluators import Evaluator, ORMEvaluator, PRMEvaluator, VMEvaluator
from search.tree import BLOCKED, Node, Tree
from search.types import SearchConfig


class Strategy:
    """A search strategy: ``run`` grows a `SearchRun` until a limit or the strategy stops it."""

    name: ClassVar[str]

    @staticmethod
    def default_evaluator(value: ValueModel, config: SearchConfig) -> Evaluator:
        return VMEvaluator(value)

    async def run(self, run: SearchRun) -> None:
        raise NotImplementedError


class Greedy(Strategy):
    name = "greedy"

    async def run(self, run: SearchRun) -> None:
        exp = run.reserve(run.tree.root, n=1, temperature=0.0, grow=False)
        if exp is None:
            run.stop(run.refusal or "samples")
            return
        run.launch(exp)
        await run.apply(await run.next_done())
        run.stop("done")


class BestOfN(Strategy):
    name = "best_of_n"

    async def run(self, run: SearchRun) -> None:
        while run.stop_reason is None:
            exp = run.reserve(run.tree.root, n=run.config.budget.samples, temperature=run.config.temperature, grow=False)
            if exp is None:
                run.stop(run.refusal or "samples")
                return
            run.launch(exp)
            await run.apply(await run.next_done())


class PRMBestOfN(BestOfN):
    name = "prm_best_of_n"

    @staticmethod
    def default_evaluator(value: ValueModel, config: SearchConfig) -> Evaluator:
        return PRMEvaluator(value, aggregate=config.prm_aggregate)


class Beam(Strategy):
    name = "beam"

    async def run(self, run: SearchRun) -> None:
        cfg = run.config
        beam: list[Node] = [run.tree.root]
        while beam and run.stop_reason is None:
            for node in beam:
                exp = run.reserve(node, n=cfg.k, temperature=cfg.temperature)
                if exp is None:
                    break
                run.launch(exp)
            if not run.inflight:
                run.stop(run.refusal or "samples")
                return
            pool: list[Node] = []
            while run.inflight:
                pool.extend(ch for ch in await run.apply(await run.next_done()) if not ch.terminal)
                if run.stop_reason is not None:
                    return
            pool.sort(key=lambda ch: -(ch.initial_value or 0.0))  # stable: ties keep creation order
            beam = pool[: cfg.beam_width]
        run.stop("exhausted")


class MCTS(Strategy):
    """Monte Carlo tree search over lines; the evaluator decides VM- or ORM-MCTS."""

    name = "vm_mcts"

    async def run(self, run: SearchRun) -> None:
        cfg = run.config
        tree = run.tree
        while run.stop_reason is None:
            leaf: object = None
            run.refusal = None
            while len(run.inflight) < cfg.parallel_expansions:
                leaf = tree.select(run.rng, c=cfg.c_uct, eps=cfg.eps_uct)
                if leaf is None or leaf is BLOCKED:
                    break
                assert isinstance(leaf, Node)
                exp = run.reserve(leaf, n=cfg.k, temperature=cfg.temperature)
                if exp is None:
                    break
                Tree.add_virtual_loss(leaf)
                run.launch(exp)
            if not run.inflight:
                run.stop(run.refusal or "exhausted")
                return
            exp = await run.next_done()
            Tree.remove_virtual_loss(exp.node)
            await run.apply(exp)


class VMMCTS(MCTS):
    name = "vm_mcts"


class ORMMCTS(MCTS):
    name = "orm_mcts"

    @staticmethod
    def default_evaluator(value: ValueModel, config: SearchConfig) -> Evaluator:
        return ORMEvaluator(value)


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Greedy, BestOfN, PRMBestOfN, Beam, ORMMCTS, VMMCTS)
}
