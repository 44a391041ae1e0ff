"""Tree arithmetic: children from continuations, back-up, UCT, exhaustion, virtual loss."""

from __future__ import annotations

import math
import random

import pytest

from search.tree import BLOCKED, ChildSpec, Tree, split_continuations, uct, widen_uct, widen_value


def test_split_merges_first_lines_and_makes_terminals():
    # The prompt ends at "S" (the state's final newline held back), so samples start with it.
    texts = ["\na = 1\nreturn a", "\na = 1\nreturn 2", "\nreturn 3", "\nb = 2\n", "\nreturn 3", "\nxx"]
    reasons = ["stop", "stop", "stop", "stop", "stop", "length"]
    children, rollouts = split_continuations("S\n", texts, reasons)
    assert [(c.line, c.terminal, c.samples) for c in children] == [
        ("a = 1\n", False, (0, 1)),
        ("return 3\n", True, (2, 4)),
        ("b = 2\n", True, (3,)),  # finished after its line: the engine stopped at the fence
    ]
    assert children[1].state == "S\nreturn 3\n"  # a terminal's state is the full program
    # finished programs end with one newline; the truncated one is kept as sampled
    assert [r.code for r in rollouts] == ["S" + t.rstrip() + "\n" for t in texts[:5]] + ["S\nxx"]
    assert [r.child for r in rollouts] == [0, 0, 1, 2, 1, None]  # the truncated one-liner makes no child
    assert children[1].state == rollouts[2].code  # a terminal child is its rollouts' program: scored once


def test_split_sample_that_extends_the_last_line_is_a_candidate_without_child():
    children, rollouts = split_continuations("x = (1\n", [" + 2)\nreturn x", "\nreturn x"], ["stop", "stop"])
    assert [c.line for c in children] == ["return x\n"]
    assert [r.code for r in rollouts] == ["x = (1 + 2)\nreturn x\n", "x = (1\nreturn x\n"]
    assert [r.child for r in rollouts] == [None, 0]


def test_split_truncated_with_newline_keeps_first_line_and_drops_abort():
    children, rollouts = split_continuations("", ["x = 1\ny = (", "zzz"], ["length", "abort"])
    assert [(c.line, c.terminal) for c in children] == [("x = 1\n", False)]
    assert len(rollouts) == 1 and rollouts[0].finish_reason == "length"


def test_issue_reproducer_a_finished_last_line_is_terminal():
    children, rollouts = split_continuations("def f(x):\n", ["\n    return x\n"], ["stop"])
    assert [(c.line, c.terminal, c.state) for c in children] == [("    return x\n", True, "def f(x):\n    return x\n")]
    assert rollouts[0].code == children[0].state


# What the engine really returns when it stops at the closing fence of a finished program: the
# newline before the fence, blank (or indented blank) lines, CRLF line ends, a stop in the first line.
REALISTIC_ENDINGS = [
    "\n    return x\n",
    "\n    return x\n\n",
    "\n    return x\n    \n",
    "\n    return x\n\n\n",
    "\n    return x",
    "\n    return x   \n",
    "\r\n    return x\r\n",
    "\n    return x\r\n\r\n",
]


@pytest.mark.parametrize("step_lines", [1, 2, 3])
def test_finished_programs_with_any_trailing_whitespace_make_one_terminal_child(step_lines):
    state = "def f(x):\n"
    children, rollouts = split_continuations(state, REALISTIC_ENDINGS, ["stop"] * len(REALISTIC_ENDINGS), step_lines=step_lines)
    assert [(c.line, c.terminal, c.samples) for c in children] == [("    return x\n", True, tuple(range(len(REALISTIC_ENDINGS))))]
    assert {r.code for r in rollouts} == {"def f(x):\n    return x\n"}  # one candidate program


@pytest.mark.parametrize("step_lines", [1, 2, 4])
def test_a_finished_sample_is_terminal_exactly_when_no_further_step_follows(step_lines):
    body = ["    y = x\n", "    z = y\n", "    return z\n"]
    for lines in range(1, 4):
        text = "\n" + "".join(body[:lines]) + "\n"  # + a blank line before the fence
        children, _ = split_continuations("def f(x):\n", [text], ["stop"], step_lines=step_lines)
        (child,) = children
        assert child.terminal == (lines <= step_lines)
        assert child.line == "".join(body[: min(lines, step_lines)])
    # the same text cut by the token limit is never terminal
    children, _ = split_continuations("def f(x):\n", ["\n    return x\n"], ["length"], step_lines=step_lines)
    assert [(c.line, c.terminal) for c in children] == [("    return x\n", False)]


def test_a_stop_inside_the_first_line_and_an_immediate_close():
    children, rollouts = split_continuations("S\n", ["\nreturn 1", "\n", "\n\n"], ["stop"] * 3)
    assert [(c.line, c.terminal, c.samples) for c in children] == [("return 1\n", True, (0,)), ("", True, (1, 2))]
    assert [r.code for r in rollouts] == ["S\nreturn 1\n", "S\n", "S\n"]  # closing at once: the state is the program


def test_finished_and_continued_samples_of_one_line_are_two_children():
    # same first line: one sample ends there, the other goes on (trailing prints, a second function)
    children, _ = split_continuations("def f(x):\n", ["\n    return x\n", "\n    return x\nprint(f(1))\n"], ["stop", "stop"])
    assert [(c.line, c.terminal, c.samples) for c in children] == [("    return x\n", True, (0,)), ("    return x\n", False, (1,))]


def test_split_with_multi_line_steps():
    texts = ["\na = 1\nb = 2\nreturn a", "\na = 1\nb = 2\nreturn b", "\na = 1\nreturn a", "\nc = 3\nd = (", "\nz = (", "\nq"]
    reasons = ["stop", "stop", "stop", "length", "length", "stop"]
    children, rollouts = split_continuations("S\n", texts, reasons, step_lines=2)
    assert [(c.line, c.terminal, c.samples) for c in children] == [
        ("a = 1\nb = 2\n", False, (0, 1)),  # two lines make one step; equal steps merge
        ("a = 1\nreturn a\n", True, (2,)),  # no more than a step, finished: the rest of the program
        ("c = 3\n", False, (3,)),  # truncated inside its first step: its complete lines
        ("q\n", True, (5,)),
    ]
    assert [r.child for r in rollouts] == [0, 0, 1, 2, None, 3]
    one_line, _ = split_continuations("S\n", texts, reasons)
    assert [c.line for c in one_line] == ["a = 1\n", "c = 3\n", "q\n"]  # step_lines=1 is the spec's rule


def _spec(line: str, terminal: bool = False, state: str = "") -> ChildSpec:
    return ChildSpec(line=line, state=state + line, terminal=terminal, samples=(0,))


def test_backup_on_hand_built_tree():
    t = Tree("")
    a, b = t.expand(t.root, [_spec("a\n"), _spec("b\n")], [0.2, 0.6], num_decision=2)
    assert (t.root.visits, t.root.value_sum) == (2, pytest.approx(0.8))
    c, d, e = t.expand(a, [_spec("c\n", state="a\n"), _spec("d\n", state="a\n"), _spec("e", True, "a\n")], [0.5, 0.1, 0.9], num_decision=3)
    # a: its own N=1, W=0.2 plus the children's 3 visits and 1.5 value
    assert (a.visits, a.value_sum) == (4, pytest.approx(1.7))
    assert (t.root.visits, t.root.value_sum) == (5, pytest.approx(2.3))
    assert (b.visits, b.value_sum) == (1, pytest.approx(0.6))
    assert e.terminal and e.depth == 2 and t.max_depth == 2
    # invariant: N(non-root) = 1 + descendants, N(root) = descendants
    assert c.visits == d.visits == e.visits == 1


def test_uct_formula_and_choice():
    t = Tree("")
    a, b = t.expand(t.root, [_spec("a\n"), _spec("b\n")], [0.5, 0.4], num_decision=2)
    t.expand(a, [_spec("c\n", state="a\n")], [0.1], num_decision=1)  # a: N=2, V=0.3 ; root N=3
    c, eps = 0.1, 0.1
    ua = 0.3 + c * math.sqrt((1 + math.log(3)) / (eps + 2))
    ub = 0.4 + c * math.sqrt((1 + math.log(3)) / (eps + 1))
    assert uct(t.root, a, c=c, eps=eps) == pytest.approx(ua)
    assert uct(t.root, b, c=c, eps=eps) == pytest.approx(ub)
    assert t.select(random.Random(0), c=c, eps=eps) is b
    # a large C favours the less visited child too; C=0 picks the highest mean value
    t2 = Tree("")
    x, y = t2.expand(t2.root, [_spec("x\n"), _spec("y\n")], [0.9, 0.1], num_decision=2)
    assert t2.select(random.Random(0), c=0.0, eps=eps) is x


def test_ties_are_broken_by_the_seed():
    picks = set()
    for seed in range(20):
        t = Tree("")
        t.expand(t.root, [_spec(f"{i}\n") for i in range(4)], [0.5] * 4, num_decision=4)
        picks.add(t.select(random.Random(seed), c=0.1, eps=0.1).line)
    assert len(picks) > 1


def test_same_seed_same_choice():
    def pick(seed):
        t = Tree("")
        t.expand(t.root, [_spec(f"{i}\n") for i in range(4)], [0.5] * 4, num_decision=4)
        return t.select(random.Random(seed), c=0.1, eps=0.1).line

    assert [pick(s) for s in range(10)] == [pick(s) for s in range(10)]


def test_num_decision_limits_selectable_children():
    t = Tree("")
    kids = t.expand(t.root, [_spec(f"{i}\n") for i in range(4)], [0.1, 0.9, 0.5, 0.7], num_decision=2)
    assert [k.line for k in t.root.selectable] == ["1\n", "3\n"]
    assert t.root.visits == 4  # every child still backs up
    chosen = {t.select(random.Random(s), c=10.0, eps=0.1).line for s in range(10)}
    assert chosen <= {"1\n", "3\n"} and kids[0] not in t.root.selectable


def test_terminal_selected_is_exhausted_and_exhaustion_propagates():
    t = Tree("")
    a, b = t.expand(t.root, [_spec("a", True), _spec("b", True)], [0.9, 0.1], num_decision=2)
    assert t.select(random.Random(0), c=0.1, eps=0.1) is None
    assert a.exhausted and b.exhausted and t.root.exhausted


def test_terminal_hit_continues_to_other_branch():
    t = Tree("")
    a, b = t.expand(t.root, [_spec("a", True), _spec("b\n")], [0.9, 0.1], num_decision=2)
    assert t.select(random.Random(0), c=0.0, eps=0.1) is b  # the terminal is skipped at no cost
    assert a.exhausted and not t.root.exhausted


def test_expansion_without_children_exhausts_node():
    t = Tree("")
    t.expand(t.root, [], [], num_decision=5)
    assert t.root.exhausted
    assert t.select(random.Random(0), c=0.1, eps=0.1) is None


def test_virtual_loss_steers_and_blocks():
    t = Tree("")
    a, b = t.expand(t.root, [_spec("a\n"), _spec("b\n")], [0.6, 0.5], num_decision=2)
    rng = random.Random(0)
    first = t.select(rng, c=0.1, eps=0.1)
    assert first is a
    Tree.add_virtual_loss(a)
    assert t.root.pending == 1 and a.busy
    assert t.select(rng, c=0.1, eps=0.1) is b
    Tree.add_virtual_loss(b)
    assert t.select(rng, c=0.1, eps=0.1) is BLOCKED
    Tree.remove_virtual_loss(a)
    Tree.remove_virtual_loss(b)
    assert t.root.pending == 0 and not a.busy


def test_merged_child_counts_its_samples_when_asked():
    t = Tree("")
    specs = [ChildSpec(line="a\n", state="a\n", terminal=False, samples=(0, 2, 3)), ChildSpec(line="b\n", state="b\n", terminal=False, samples=(1,))]
    a, b = t.expand(t.root, specs, [0.5, 0.2], num_decision=2, per_sample=True)
    assert (a.visits, a.value_sum, b.visits, b.value_sum) == (3, pytest.approx(1.5), 1, pytest.approx(0.2))
    assert (t.root.visits, t.root.value_sum) == (4, pytest.approx(1.7))  # every sample is one visit
    one = Tree("")
    a1, _ = one.expand(one.root, specs, [0.5, 0.2], num_decision=2)
    assert (a1.visits, one.root.visits) == (1, 2)  # the spec's rule: one visit per child


def test_widen_expands_a_node_again_when_a_fresh_sample_is_worth_more_than_its_children():
    """`SearchConfig.widen`: once the best child is an exhausted terminal, the spec's tree descends
    into the worse child; a widened tree samples its parent again when a fresh sample (the mean value
    of the children its samples reached) is worth more."""
    specs, values = [_spec("a", True), _spec("b\n")], [0.9, 0.1]
    spec_tree = Tree("")
    spec_tree.expand(spec_tree.root, specs, values, num_decision=2)
    assert spec_tree.select(random.Random(0), c=0.0, eps=0.1).line == "b\n"
    t = Tree("", widen=True)
    a, b = t.expand(t.root, specs, values, num_decision=2)
    assert widen_value(t.root) == pytest.approx(0.5) and t.root.expansions == 1
    assert t.select(random.Random(0), c=0.0, eps=0.1) is t.root
    assert a.exhausted and not t.root.exhausted
    # b's value above what a fresh sample is worth: descend into b
    t2 = Tree("", widen=True)
    t2.expand(t2.root, [_spec("a", True), _spec("b\n")], [0.3, 0.8], num_decision=2)
    assert t2.select(random.Random(0), c=0.0, eps=0.1).line == "b\n"


def test_expanding_again_merges_known_lines_and_keeps_the_visit_invariant():
    t = Tree("", widen=True)
    a, b = t.expand(t.root, [_spec("a", True), ChildSpec(line="b\n", state="b\n", terminal=False, samples=(1, 2))], [0.9, 0.3],
                    num_decision=5)
    assert (t.root.drawn, t.root.drawn_value) == (3, pytest.approx(0.9 + 2 * 0.3))
    new = t.expand(t.root, [_spec("b\n"), _spec("c\n"), _spec("a", True)], [0.3, 0.6, 0.9], num_decision=5)
    assert [n.line for n in new] == ["c\n"] and [ch.line for ch in t.root.children] == ["a", "b\n", "c\n"]
    assert t.root.expansions == 2 and t.root.drawn == 6 and widen_value(t.root) == pytest.approx((0.9 * 2 + 0.3 * 3 + 0.6) / 6)
    assert [ch.line for ch in t.root.selectable] == ["a", "c\n", "b\n"]
    # N(root) = its descendants, each counted once: a merged line adds no visit
    assert (t.root.visits, t.root.value_sum) == (3, pytest.approx(0.9 + 0.3 + 0.6))
    assert b.visits == 1 and len(t.nodes) == 4


def test_a_widened_tree_is_never_exhausted_and_an_inflight_node_blocks():
    t = Tree("", widen=True)
    a, b = t.expand(t.root, [_spec("a", True), _spec("b", True)], [0.9, 0.1], num_decision=2)
    assert t.select(random.Random(0), c=0.1, eps=0.1) is t.root  # the spec's tree: None (exhausted)
    assert a.exhausted and not t.root.exhausted
    Tree.add_virtual_loss(t.root)
    assert t.select(random.Random(0), c=0.1, eps=0.1) is BLOCKED
    Tree.remove_virtual_loss(t.root)
    empty = Tree("", widen=True)
    empty.expand(empty.root, [], [], num_decision=5)
    assert not empty.root.exhausted and empty.select(random.Random(0), c=0.1, eps=0.1) is empty.root


def test_widen_uct_counts_an_expansion_as_a_visit_and_an_inflight_one_as_a_loss():
    t = Tree("", widen=True)
    t.expand(t.root, [_spec("a\n"), _spec("b\n")], [0.2, 0.6], num_decision=2)  # root N=2, one expansion
    c, eps = 0.1, 0.1
    assert widen_uct(t.root, c=c, eps=eps) == pytest.approx(0.4 + c * math.sqrt((1 + math.log(2)) / (eps + 1)))
    Tree.add_virtual_loss(t.root)  # an expansion of the root in flight: N(arm) = 2 with one zero-value visit
    assert widen_uct(t.root, c=c, eps=eps) == pytest.approx(0.2 + c * math.sqrt((1 + math.log(3)) / (eps + 2)))
