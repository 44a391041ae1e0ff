"""The search tree: nodes are code states, edges are lines (RESTRL_SPEC.md section 2).

Pure data and arithmetic, no I/O: strategies (`search.strategies`) grow the tree from policy
samples; this module owns how continuations become children, value back-up, UCT selection with
virtual loss and exhaustion.

Rules implemented here, exactly as the spec fixes them:

* The policy continues the state without its final newline (`models.prompting.prompt_code`);
  a sample that starts with that newline is the continuation ``c`` after it, and one that does not
  (it extended the last line) is a candidate program but proposes no child.
* A finished continuation ``c`` (the engine stopped at the closing fence) that holds no further
  step is the last line: a *terminal* child whose state is the full program. "No further step"
  means nothing but whitespace follows ``c``'s first step - the engine stops at the fence, so a
  finished program's continuation usually ends ``"    return x\n"``, and that newline does not make
  a next line (the spec's "c has no newline" read on the text with its trailing whitespace
  removed). Otherwise the child's action is ``c``'s first line (with its newline); children with
  the same line merge into one child. With ``step_lines = s`` (our knob for the step size; the
  spec's step is one line, s = 1) the action is ``c``'s first s lines, and a finished ``c`` with at
  most s lines is the rest of the program: a terminal child.
* A finished sample is *canonical*: ``\r\n`` becomes ``\n`` and trailing whitespace is removed
  (the program ends with one newline), so samples that differ only there are one candidate and one
  terminal child, and a terminal child's state is exactly its rollouts' program (scored once).
  `rollout_code` is that rule; everything that rebuilds candidates from a trace calls it.
* A child starts with ``N = 1`` and ``W = V(child)``; the expanded node and all its ancestors
  receive ``n = sum of the children's N`` and ``W += sum of the children's values``. With
  ``per_sample`` (`SearchConfig.merged_visits = "samples"`, the reference code's counting) a child
  that m samples chose starts with ``N = m``, ``W = m * V``; the spec's rule (N = 1) is the default
  (measured on the gym validation split, bench/RESULTS.md).
* Only the ``num_decision`` best children (by initial value; ties keep sampling order) are
  selectable.
* ``UCT(c) = V(c) + C * sqrt((1 + ln N(parent)) / (eps + N(c)))``, ties broken by the search's
  seeded random generator.
* A terminal node that is selected is marked *exhausted* (no budget is spent on it); an expanded
  node whose selectable children are all exhausted, or that produced no child, is exhausted too.
  When the root is exhausted the search is over.

Our decisions where the spec is silent:

* A continuation cut off by the token limit (finish reason ``length``) is still a rollout and a
  final-answer candidate (its program may well run), but it never makes a terminal node: its
  complete lines, at most ``step_lines`` of them, become an ordinary child; with no complete line
  it adds no child.
  Continuations the engine aborted are dropped.
* Several expansions of one search may be in flight at once. Each in-flight expansion adds a
  *virtual loss* to every node on its path (one pending visit that contributes value 0), so UCT
  steers the next selections elsewhere; the node being expanded is not selectable until its
  result is applied.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from models.prompting import continuation, join_code


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """A child an expansion proposes: its line, its state, and the samples that chose it."""

    line: str
    state: str
    terminal: bool
    samples: tuple[int, ...]  # indices of the continuations whose first line is ``line``


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    """A full program sampled during an expansion (state + continuation): a final-answer candidate."""

    code: str
    sample: int  # index of the continuation in the policy's answer
    finish_reason: str
    child: int | None  # index into the expansion's children, None when it made no child


def _step_end(text: str, step_lines: int) -> int:
    """Index just past the ``step_lines``-th newline of ``text``, or -1 when it has fewer."""
    cut = -1
    for _ in range(step_lines):
        cut = text.find("\n", cut + 1)
        if cut < 0:
            return -1
    return cut + 1


def _finished(text: str) -> str:
    """A finished sample's text up to its last non-blank character, plus one newline ("" when blank)."""
    stripped = text.rstrip()
    return stripped + "\n" if stripped else ""


def rollout_code(state: str, text: str, finish_reason: str) -> str:
    """The candidate program (code inside the block) that sample ``text`` makes from ``state``:
    `models.prompting.join_code` with line endings normalised and, for a finished sample
    (``stop``), trailing whitespace removed (see the module doc)."""
    code = join_code(state, text.replace("\r\n", "\n"))
    return _finished(code) if finish_reason == "stop" else code


def split_continuations(
    state: str, texts: Sequence[str], finish_reasons: Sequence[str], *, step_lines: int = 1
) -> tuple[list[ChildSpec], list[RolloutSpec]]:
    """Turn the K continuations of ``state`` into merged first-step children and rollouts (a step
    is ``step_lines`` lines)."""
    # a child is (step text, terminal): a finished "return x\n" and a "return x\n" that the sample
    # continued past are the same state but different children (one is complete, one goes on)
    order: list[tuple[str, bool]] = []
    members: dict[tuple[str, bool], list[int]] = {}
    child_of: dict[int, tuple[str, bool]] = {}
    codes: dict[int, str] = {}
    for i, (raw, reason) in enumerate(zip(texts, finish_reasons, strict=True)):
        if reason == "abort":
            continue
        code = codes[i] = rollout_code(state, raw, reason)
        text = continuation(state, raw.replace("\r\n", "\n"))
        if text is None:  # it extended the state's last line: a candidate, but no step of the tree
            continue
        if reason == "stop":
            text = code[len(state):]  # canonical: code == state + text
        end = _step_end(text, step_lines)
        if reason == "stop" and (end < 0 or end == len(text)):
            key = (text, True)  # no further step: the rest of the program
        elif end >= 0:
            key = (text[:end], False)
        elif "\n" in text:  # truncated inside its first step: the complete lines make the child
            key = (text[: text.rfind("\n") + 1], False)
        else:  # truncated inside its first line: a candidate, but no step of the tree
            continue
        if key not in members:
            order.append(key)
            members[key] = []
        members[key].append(i)
        child_of[i] = key
    children = [ChildSpec(line=k[0], state=state + k[0], terminal=k[1], samples=tuple(members[k])) for k in order]
    index = {k: j for j, k in enumerate(order)}
    rollouts = [
        RolloutSpec(code=code, sample=i, finish_reason=finish_reasons[i], child=index[child_of[i]] if i in child_of else None)
        for i, code in codes.items()
    ]
    return children, rollouts


@dataclass(eq=False)
class Node:
    id: int
    parent: Node | None
    line: str
    state: str
    depth: int
    terminal: bool = False
    initial_value: float | None = None  # V assigned at creation (VM(child) or rollout aggregate)
    visits: int = 0
    value_sum: float = 0.0
    expanded: bool = False
    exhausted: bool = False
    busy: bool = False  # an expansion of this node is in flight
    pending: int = 0  # virtual losses: in-flight expansions at or below this node
    children: list[Node] = field(default_factory=list)
    selectable: list[Node] = field(default_factory=list)
    rollout_values: list[float] = field(default_factory=list)  # values of rollouts sampled here
    expansions: int = 0  # policy requests answered from this state
    drawn: int = 0  # samples drawn here that reached a child
    drawn_value: float = 0.0  # the sum of those samples' children's values (`widen_value`)

    @property
    def value(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0

    def path(self) -> list[Node]:
        """This node and its ancestors, root last."""
        out: list[Node] = []
        node: Node | None = self
        while node is not None:
            out.append(node)
            node = node.parent
        return out

    def summary(self) -> dict[str, Any]:
        """The streamed view of a node (`SearchProgress.new_nodes`)."""
        return {
            "id": self.id,
            "parent": self.parent.id if self.parent else None,
            "line": self.line,
            "value": self.value,
            "visits": self.visits,
            "terminal": self.terminal,
        }


class _Blocked:
    """Selection found only nodes whose expansion is in flight: wait for one to finish."""


BLOCKED = _Blocked()
_TERMINAL_HIT = object()


def uct(parent: Node, child: Node, *, c: float, eps: float) -> float:
    """UCT of ``child`` with virtual losses counted as pending zero-value visits."""
    n_child = child.visits + child.pending
    n_parent = parent.visits + parent.pending
    v = child.value_sum / n_child if n_child else 0.0
    return v + c * math.sqrt((1.0 + math.log(max(n_parent, 1))) / (eps + n_child))


def widen_value(node: Node) -> float:
    """What one more expansion of ``node`` is worth: the mean value of the children its samples
    reached so far (a child counted once per sample that chose it) - the expected value of a fresh
    sample's child, on the same scale as the children's values it competes with."""
    return node.drawn_value / node.drawn if node.drawn else 0.0


def widen_uct(node: Node, *, c: float, eps: float) -> float:
    """UCT of expanding ``node`` again (`Tree` with ``widen``): `widen_value` and one visit per
    expansion, an in-flight one counted as a pending zero-value visit."""
    n_arm = node.expansions + (1 if node.busy else 0)
    v = widen_value(node) * node.expansions / n_arm if n_arm else 0.0
    n_parent = node.visits + node.pending
    return v + c * math.sqrt((1.0 + math.log(max(n_parent, 1))) / (eps + n_arm))


class Tree:
    """A search tree rooted at ``root_state``; node ids are creation order.

    With ``widen`` (`SearchConfig.widen`) an expanded node competes in selection with its own
    children: expanding it again (`widen_uct`) samples K more continuations from its state; lines it
    already has merge into their children, new ones become children. An expanded node is then never
    exhausted (it can always be sampled again): the budget ends the search."""

    def __init__(self, root_state: str, *, widen: bool = False) -> None:
        self.root = Node(id=0, parent=None, line="", state=root_state, depth=0)
        self.nodes: list[Node] = [self.root]
        self.widen = widen

    @property
    def max_depth(self) -> int:
        return max(n.depth for n in self.nodes)

    def add_child(self, parent: Node, spec: ChildSpec, value: float, *, visits: int = 1) -> Node:
        child = Node(
            id=len(self.nodes),
            parent=parent,
            line=spec.line,
            state=spec.state,
            depth=parent.depth + 1,
            terminal=spec.terminal,
            initial_value=value,
            visits=visits,
            value_sum=value * visits,
        )
        parent.children.append(child)
        self.nodes.append(child)
        return child

    def expand(
        self, node: Node, specs: Sequence[ChildSpec], values: Sequence[float], *, num_decision: int, per_sample: bool = False
    ) -> list[Node]:
        """Attach the evaluated children of ``node``, keep the best ``num_decision`` selectable and
        back the new children's visits and values up to the root. A node expanded again (``widen``)
        keeps its children: a spec with the line (and terminality) of one of them merges into it."""
        known = {(ch.line, ch.terminal): ch for ch in node.children}
        new: list[Node] = []
        for spec, v in zip(specs, values, strict=True):
            child = known.get((spec.line, spec.terminal))
            if child is None:
                child = self.add_child(node, spec, v, visits=len(spec.samples) if per_sample else 1)
                known[(spec.line, spec.terminal)] = child
                new.append(child)
            node.drawn += len(spec.samples)
            node.drawn_value += len(spec.samples) * (child.initial_value or 0.0)
        node.expanded = True
        node.expansions += 1
        ranked = sorted(node.children, key=lambda ch: -(ch.initial_value or 0.0))  # stable: ties keep order
        node.selectable = ranked[:num_decision]
        self.backup(node, n=sum(ch.visits for ch in new), total=sum(ch.value_sum for ch in new))
        if not node.selectable and not self.widen:
            self.exhaust(node)
        return new

    @staticmethod
    def backup(node: Node, *, n: int, total: float) -> None:
        for a in node.path():
            a.visits += n
            a.value_sum += total

    def exhaust(self, node: Node) -> None:
        """Mark ``node`` exhausted and every ancestor whose selectable children all are (none with
        ``widen``: an expanded node can be sampled again)."""
        node.exhausted = True
        parent = node.parent
        while not self.widen and parent is not None and parent.expanded and all(ch.exhausted for ch in parent.selectable):
            parent.exhausted = True
            parent = parent.parent

    @staticmethod
    def add_virtual_loss(node: Node) -> None:
        node.busy = True
        for a in node.path():
            a.pending += 1

    @staticmethod
    def remove_virtual_loss(node: Node) -> None:
        node.busy = False
        for a in node.path():
            a.pending -= 1

    def select(self, rng: random.Random, *, c: float, eps: float) -> Node | _Blocked | None:
        """Descend from the root by UCT to an unexpanded, non-terminal node that is not in flight.

        Terminal nodes reached on the way are marked exhausted and selection restarts (they cost
        no budget). Returns `BLOCKED` when only in-flight nodes remain reachable, None when the
        whole tree is exhausted."""
        while True:
            found = self._descend(self.root, rng, c, eps)
            if found is not _TERMINAL_HIT:
                return found  # type: ignore[return-value]

    def _descend(self, node: Node, rng: random.Random, c: float, eps: float) -> object:
        if node.exhausted:
            return None
        if not node.expanded:
            if node.terminal:
                self.exhaust(node)
                return _TERMINAL_HIT
            return BLOCKED if node.busy else node
        options = [ch for ch in node.selectable if not ch.exhausted]
        if not options and not self.widen:
            self.exhaust(node)
            return None
        rng.shuffle(options)  # seeded tie-break: the sort below is stable
        scored = [(uct(node, ch, c=c, eps=eps), ch) for ch in options]
        if self.widen:  # expanding this node again competes with its children (last: ties go to the children)
            scored.append((widen_uct(node, c=c, eps=eps), node))
        scored.sort(key=lambda sc: -sc[0])
        blocked = False
        for _, ch in scored:
            if ch is node:
                if not node.busy:
                    return node
                blocked = True
                continue
            found = self._descend(ch, rng, c, eps)
            if found is _TERMINAL_HIT:
                return found
            if found is BLOCKED:
                blocked = True
            elif found is not None:
                return found
        return BLOCKED if blocked else None
