"""The training gym: procedurally generated Python function-writing problems with hidden tests.

A problem is a *composition*: a chain of primitive operations (`OPS`) applied to one argument,
e.g. ``keep_even -> square_each -> sum_list`` on a list of integers. Its tier is the chain length
(tier 1 = one primitive, tier 2 = two composed, tier 3 = three). Each operation belongs to a family
(``lists``, ``strings``, ``numbers``, ``dicts``, ``algorithms``); a problem's family is that of its
first operation. Some operations take a small constant (``{k}``) drawn per problem.

The generator writes the reference solution twice: as trusted Python callables (`Op.fn`, which
produce the tests' expected values here) and as source text (``metadata["reference_solution"]``,
which the tests run through ``sandbox/`` to check that both agree). Only the generator's own code
runs in this process; no generated text is executed here.

What a problem holds: the statement (``prompt``), a signature with a docstring and one worked
example (``starter_code``), ``entry_point``, hidden ``call`` tests (``tests``), the example as
``public_tests``, and metadata (family, tier, composition, constants, reference solution).

Degenerate problems are rejected: the tests must see at least two different outputs, and deleting
any type-preserving step from the chain must change some output (``sort`` before ``sum`` would be
invisible). Splits hold out whole compositions: every composition signature (the tuple of operation
names) belongs to exactly one of train / validation / test, so a test signature never appears in
train. Everything is deterministic from the seed; growing ``n_per_tier`` only appends problems.
"""

from __future__ import annotations

import builtins
import itertools
import keyword
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.jsonl import write_jsonl
from tasks.problem import Problem, TestCase

logger = logging.getLogger(__name__)

Family = Literal["lists", "strings", "numbers", "dicts", "algorithms"]
GymType = Literal["int", "bool", "str", "list[int]", "list[str]", "dict[str, int]"]
SplitName = Literal["train", "validation", "test"]
FAMILIES: tuple[Family, ...] = ("lists", "strings", "numbers", "dicts", "algorithms")
SPLITS: tuple[SplitName, ...] = ("train", "validation", "test")


class DomainError(ValueError):
    """An operation is undefined (or would explode) on this input; the input is redrawn."""


def _need(ok: bool) -> None:
    if not ok:
        raise DomainError


@dataclass(frozen=True, slots=True)
class Op:
    """One primitive operation. ``expr`` is Python source using ``{v}`` (the input variable) and
    ``{k}`` (the constant); ``fn(value, k)`` computes the same thing here; ``helper`` is source of
    module-level helper functions the expression calls; ``order_only`` marks pure reorderings (two of
    them in a row are never composed)."""

    name: str
    family: Family
    takes: GymType
    gives: GymType
    phrase: str
    expr: str
    fn: Callable[[Any, Any], Any]
    slug: str
    k_range: tuple[int, int] | None = None
    helper: str = ""
    order_only: bool = False


# ---------------------------------------------------------------- trusted reference callables
def _is_prime(n: int) -> bool:
    _need(0 <= n <= 10**7)
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def _collatz_steps(n: int) -> int:
    _need(1 <= n <= 10**6)
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def _fibonacci(n: int) -> int:
    _need(0 <= n <= 60)
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def _divisors(n: int) -> list[int]:
    _need(1 <= n <= 10**5)
    return [d for d in range(1, n + 1) if n % d == 0]


def _gcd(a: int, b: int) -> int:
    a, b = abs(a), abs(b)
    while b:
        a, b = b, a % b
    return a


def _running_sum(xs: list[int]) -> list[int]:
    out, total = [], 0
    for x in xs:
        total += x
        out.append(total)
    return out


def _second_largest(xs: list[int]) -> int:
    distinct = sorted(set(xs), reverse=True)
    return distinct[1] if len(distinct) > 1 else 0


def _run_length(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        j = i
        while j < len(s) and s[j] == s[i]:
            j += 1
        out.append(f"{s[i]}{j - i}")
        i = j
    return "".join(out)


def _caesar(s: str, k: int) -> str:
    return "".join(chr((ord(c) - 97 + k) % 26 + 97) if "a" <= c <= "z" else c for c in s)


def _char_counts(s: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in s:
        if c != " ":
            counts[c] = counts.get(c, 0) + 1
    return counts


def _max_key(d: dict[str, int]) -> str:
    if not d:
        return ""
    best = max(d.values())
    return min(key for key, value in d.items() if value == best)


def _nonneg(n: int) -> int:
    _need(n >= 0)
    return n


def _upto(n: int) -> list[int]:
    _need(0 <= n <= 40)
    return list(range(1, n + 1))


# Helper source text for the reference program, one per helper-using operation.
_HELPERS = {
    "is_prime": '''def _is_prime(n):
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True
''',
    "collatz_steps": '''def _collatz_steps(n):
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps
''',
    "fibonacci": '''def _fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
''',
    "gcd_with": '''def _gcd(a, b):
    a, b = abs(a), abs(b)
    while b:
        a, b = b, a % b
    return a
''',
    "running_sum": '''def _running_sum(xs):
    out, total = [], 0
    for x in xs:
        total += x
        out.append(total)
    return out
''',
    "second_largest": '''def _second_largest(xs):
    distinct = sorted(set(xs), reverse=True)
    return distinct[1] if len(distinct) > 1 else 0
''',
    "run_length": '''def _run_length(s):
    out, i = [], 0
    while i < len(s):
        j = i
        while j < len(s) and s[j] == s[i]:
            j += 1
        out.append(s[i] + str(j - i))
        i = j
    return "".join(out)
''',
    "caesar_shift": '''def _caesar(s, k):
    return "".join(chr((ord(c) - 97 + k) % 26 + 97) if "a" <= c <= "z" else c for c in s)
''',
    "char_counts": '''def _char_counts(s):
    counts = {}
    for c in s:
        if c != " ":
            counts[c] = counts.get(c, 0) + 1
    return counts
''',
    "dict_max_key": '''def _max_key(d):
    if not d:
        return ""
    best = max(d.values())
    return min(key for key, value in d.items() if value == best)
''',
}

_VOWELS = "aeiouAEIOU"

# fmt: off
OPS: tuple[Op, ...] = (
    # lists: list[int] -> ...
    Op("keep_even", "lists", "list[int]", "list[int]", "keep only the even numbers", "[x for x in {v} if x % 2 == 0]", lambda v, k: [x for x in v if x % 2 == 0], "evens"),
    Op("keep_odd", "lists", "list[int]", "list[int]", "keep only the odd numbers", "[x for x in {v} if x % 2 != 0]", lambda v, k: [x for x in v if x % 2 != 0], "odds"),
    Op("keep_positive", "lists", "list[int]", "list[int]", "keep only the numbers greater than zero", "[x for x in {v} if x > 0]", lambda v, k: [x for x in v if x > 0], "positives"),
    Op("keep_greater", "lists", "list[int]", "list[int]", "keep only the numbers greater than {k}", "[x for x in {v} if x > {k}]", lambda v, k: [x for x in v if x > k], "above", (1, 12)),
    Op("square_each", "lists", "list[int]", "list[int]", "square every number", "[x * x for x in {v}]", lambda v, k: [x * x for x in v], "squares"),
    Op("add_each", "lists", "list[int]", "list[int]", "add {k} to every number", "[x + {k} for x in {v}]", lambda v, k: [x + k for x in v], "shifted", (1, 12)),
    Op("times_each", "lists", "list[int]", "list[int]", "multiply every number by {k}", "[x * {k} for x in {v}]", lambda v, k: [x * k for x in v], "scaled", (2, 7)),
    Op("abs_each", "lists", "list[int]", "list[int]", "replace every number by its absolute value", "[abs(x) for x in {v}]", lambda v, k: [abs(x) for x in v], "absolutes"),
    Op("sort_asc", "lists", "list[int]", "list[int]", "sort the numbers in ascending order", "sorted({v})", lambda v, k: sorted(v), "sorted_up", order_only=True),
    Op("sort_desc", "lists", "list[int]", "list[int]", "sort the numbers in descending order", "sorted({v}, reverse=True)", lambda v, k: sorted(v, reverse=True), "sorted_down", order_only=True),
    Op("reverse_list", "lists", "list[int]", "list[int]", "reverse the order of the numbers", "{v}[::-1]", lambda v, k: v[::-1], "reversed_list", order_only=True),
    Op("unique_numbers", "lists", "list[int]", "list[int]", "remove repeated numbers, keeping only the first occurrence of each", "list(dict.fromkeys({v}))", lambda v, k: list(dict.fromkeys(v)), "uniques"),
    Op("first_k", "lists", "list[int]", "list[int]", "keep only the first {k} numbers", "{v}[:{k}]", lambda v, k: v[:k], "head", (2, 5)),
    Op("sum_list", "lists", "list[int]", "int", "add up all the numbers", "sum({v})", lambda v, k: sum(v), "total"),
    Op("max_or_zero", "lists", "list[int]", "int", "take the largest number (0 if there are no numbers)", "max({v}, default=0)", lambda v, k: max(v, default=0), "largest"),
    Op("min_or_zero", "lists", "list[int]", "int", "take the smallest number (0 if there are no numbers)", "min({v}, default=0)", lambda v, k: min(v, default=0), "smallest"),
    Op("count_items", "lists", "list[int]", "int", "count how many numbers there are", "len({v})", lambda v, k: len(v), "count"),
    Op("any_negative", "lists", "list[int]", "bool", "check whether any number is negative", "any(x < 0 for x in {v})", lambda v, k: any(x < 0 for x in v), "has_negative"),
    # numbers: int -> ...
    Op("digit_sum", "numbers", "int", "int", "add up the decimal digits of the number", "sum(int(d) for d in str(abs({v})))", lambda v, k: sum(int(d) for d in str(abs(v))), "digit_total"),
    Op("reverse_digits", "numbers", "int", "int", "reverse the decimal digits of the number (for example 120 becomes 21)", "int(str({v})[::-1])", lambda v, k: int(str(_nonneg(v))[::-1]), "mirrored"),
    Op("square_number", "numbers", "int", "int", "square the number", "{v} * {v}", lambda v, k: v * v, "squared"),
    Op("add_k", "numbers", "int", "int", "add {k} to the number", "{v} + {k}", lambda v, k: v + k, "plus", (1, 12)),
    Op("times_k", "numbers", "int", "int", "multiply the number by {k}", "{v} * {k}", lambda v, k: v * k, "times", (2, 7)),
    Op("mod_k", "numbers", "int", "int", "take the remainder of the number divided by {k}", "{v} % {k}", lambda v, k: v % k, "remainder", (2, 9)),
    Op("count_digits", "numbers", "int", "int", "count the decimal digits of the number (ignoring a minus sign)", "len(str(abs({v})))", lambda v, k: len(str(abs(v))), "digit_count"),
    Op("number_digits", "numbers", "int", "list[int]", "make the list of the decimal digits of the number, most significant first", "[int(d) for d in str({v})]", lambda v, k: [int(d) for d in str(_nonneg(v))], "digit_list"),
    Op("range_to_n", "numbers", "int", "list[int]", "make the list of the integers from 1 to the number, inclusive", "list(range(1, {v} + 1))", lambda v, k: _upto(v), "upto"),
    Op("is_even_number", "numbers", "int", "bool", "check whether the number is even", "{v} % 2 == 0", lambda v, k: v % 2 == 0, "is_even"),
    Op("to_binary", "numbers", "int", "str", "write the number in binary, without any prefix (for example 6 becomes '110')", "bin({v})[2:]", lambda v, k: bin(_nonneg(v))[2:], "binary"),
    # strings: str -> ... and list[str] -> ...
    Op("upper_text", "strings", "str", "str", "convert the text to upper case", "{v}.upper()", lambda v, k: v.upper(), "shouted"),
    Op("lower_text", "strings", "str", "str", "convert the text to lower case", "{v}.lower()", lambda v, k: v.lower(), "lowered"),
    Op("reverse_text", "strings", "str", "str", "reverse the text", "{v}[::-1]", lambda v, k: v[::-1], "backwards"),
    Op("remove_vowels", "strings", "str", "str", "remove every vowel (a, e, i, o, u in either case)", '"".join(c for c in {v} if c not in "aeiouAEIOU")', lambda v, k: "".join(c for c in v if c not in _VOWELS), "no_vowels"),
    Op("remove_spaces", "strings", "str", "str", "remove all spaces", '{v}.replace(" ", "")', lambda v, k: v.replace(" ", ""), "no_spaces"),
    Op("swap_case", "strings", "str", "str", "swap the case of every letter", "{v}.swapcase()", lambda v, k: v.swapcase(), "swapped"),
    Op("dashes_for_spaces", "strings", "str", "str", "replace every space with a dash '-'", '{v}.replace(" ", "-")', lambda v, k: v.replace(" ", "-"), "dashed"),
    Op("text_length", "strings", "str", "int", "count the characters of the text", "len({v})", lambda v, k: len(v), "length"),
    Op("count_vowels", "strings", "str", "int", "count the vowels (a, e, i, o, u in either case)", 'sum(1 for c in {v} if c in "aeiouAEIOU")', lambda v, k: sum(1 for c in v if c in _VOWELS), "vowel_count"),
    Op("count_upper", "strings", "str", "int", "count the upper-case letters", "sum(1 for c in {v} if c.isupper())", lambda v, k: sum(1 for c in v if c.isupper()), "capitals"),
    Op("split_words", "strings", "str", "list[str]", "split the text into its words (separated by spaces)", "{v}.split()", lambda v, k: v.split(), "words"),
    Op("sort_words", "strings", "list[str]", "list[str]", "sort the words alphabetically", "sorted({v})", lambda v, k: sorted(v), "alphabetical", order_only=True),
    Op("reverse_words", "strings", "list[str]", "list[str]", "reverse the order of the words", "{v}[::-1]", lambda v, k: v[::-1], "reversed_words", order_only=True),
    Op("long_words", "strings", "list[str]", "list[str]", "keep only the words longer than {k} characters", "[w for w in {v} if len(w) > {k}]", lambda v, k: [w for w in v if len(w) > k], "long", (3, 5)),
    Op("upper_words", "strings", "list[str]", "list[str]", "write every word in upper case", "[w.upper() for w in {v}]", lambda v, k: [w.upper() for w in v], "loud_words"),
    Op("join_spaces", "strings", "list[str]", "str", "join the words with single spaces", '" ".join({v})', lambda v, k: " ".join(v), "sentence"),
    Op("join_dashes", "strings", "list[str]", "str", "join the words with dashes '-'", '"-".join({v})', lambda v, k: "-".join(v), "kebab"),
    Op("initials", "strings", "list[str]", "str", "join the first letters of the words into one string", '"".join(w[0] for w in {v} if w)', lambda v, k: "".join(w[0] for w in v if w), "initials"),
    Op("word_lengths", "strings", "list[str]", "list[int]", "replace every word by its length", "[len(w) for w in {v}]", lambda v, k: [len(w) for w in v], "lengths"),
    Op("longest_word", "strings", "list[str]", "str", "take the longest word (the first one if several are equally long, '' if there are none)", 'max({v}, key=len, default="")', lambda v, k: max(v, key=len, default=""), "longest"),
    Op("count_words", "strings", "list[str]", "int", "count the words", "len({v})", lambda v, k: len(v), "word_count"),
    # dicts: dict[str, int] -> ...
    Op("dict_sum_values", "dicts", "dict[str, int]", "int", "add up all the values", "sum({v}.values())", lambda v, k: sum(v.values()), "value_total"),
    Op("dict_max_key", "dicts", "dict[str, int]", "str", "find the key with the largest value (the alphabetically first key on ties, '' if empty)", "_max_key({v})", lambda v, k: _max_key(v), "top_key", helper=_HELPERS["dict_max_key"]),
    Op("dict_sorted_keys", "dicts", "dict[str, int]", "list[str]", "list the keys in alphabetical order", "sorted({v})", lambda v, k: sorted(v), "key_list"),
    Op("dict_sorted_values", "dicts", "dict[str, int]", "list[int]", "list the values in ascending order", "sorted({v}.values())", lambda v, k: sorted(v.values()), "value_list"),
    Op("dict_keep_greater", "dicts", "dict[str, int]", "dict[str, int]", "keep only the entries whose value is greater than {k}", "{{key: val for key, val in {v}.items() if val > {k}}}", lambda v, k: {a: b for a, b in v.items() if b > k}, "big_entries", (0, 12)),
    Op("dict_add", "dicts", "dict[str, int]", "dict[str, int]", "add {k} to every value", "{{key: val + {k} for key, val in {v}.items()}}", lambda v, k: {a: b + k for a, b in v.items()}, "raised", (1, 12)),
    Op("dict_upper_keys", "dicts", "dict[str, int]", "dict[str, int]", "write every key in upper case", "{{key.upper(): val for key, val in {v}.items()}}", lambda v, k: {a.upper(): b for a, b in v.items()}, "loud_keys"),
    Op("dict_count", "dicts", "dict[str, int]", "int", "count the entries", "len({v})", lambda v, k: len(v), "entry_count"),
    # algorithms
    Op("is_prime", "algorithms", "int", "bool", "check whether the number is prime", "_is_prime({v})", lambda v, k: _is_prime(v), "is_prime", helper=_HELPERS["is_prime"]),
    Op("collatz_steps", "algorithms", "int", "int", "count the Collatz steps to reach 1 (halve an even number, replace an odd one by 3 * n + 1)", "_collatz_steps({v})", lambda v, k: _collatz_steps(v), "collatz", helper=_HELPERS["collatz_steps"]),
    Op("fibonacci", "algorithms", "int", "int", "compute the Fibonacci number with that index (fib(0) = 0, fib(1) = 1)", "_fibonacci({v})", lambda v, k: _fibonacci(v), "fib", helper=_HELPERS["fibonacci"]),
    Op("divisors", "algorithms", "int", "list[int]", "list the positive divisors of the number in increasing order", "[d for d in range(1, {v} + 1) if {v} % d == 0]", lambda v, k: _divisors(v), "divisor_list"),
    Op("gcd_with", "algorithms", "int", "int", "compute the greatest common divisor of the number and {k}", "_gcd({v}, {k})", lambda v, k: _gcd(v, k), "common", (6, 30), helper=_HELPERS["gcd_with"]),
    Op("running_sum", "algorithms", "list[int]", "list[int]", "replace every number by the sum of itself and all numbers before it", "_running_sum({v})", lambda v, k: _running_sum(v), "prefix_sums", helper=_HELPERS["running_sum"]),
    Op("neighbour_differences", "algorithms", "list[int]", "list[int]", "replace the list by the differences between neighbours (each number minus the one before it)", "[b - a for a, b in zip({v}, {v}[1:])]", lambda v, k: [b - a for a, b in zip(v, v[1:], strict=False)], "steps"),
    Op("is_sorted", "algorithms", "list[int]", "bool", "check whether the numbers are in non-decreasing order", "all(a <= b for a, b in zip({v}, {v}[1:]))", lambda v, k: all(a <= b for a, b in zip(v, v[1:], strict=False)), "is_ordered"),
    Op("second_largest", "algorithms", "list[int]", "int", "take the second largest distinct number (0 if there is none)", "_second_largest({v})", lambda v, k: _second_largest(v), "runner_up", helper=_HELPERS["second_largest"]),
    Op("run_length", "algorithms", "str", "str", "run-length encode the text: each run of one repeated character becomes the character followed by the run length (for example 'aaab' becomes 'a3b1')", "_run_length({v})", lambda v, k: _run_length(v), "encoded", helper=_HELPERS["run_length"]),
    Op("caesar_shift", "algorithms", "str", "str", "shift every lower-case letter {k} places forward in the alphabet, wrapping from z to a (other characters stay)", "_caesar({v}, {k})", lambda v, k: _caesar(v, k), "ciphered", (1, 7), helper=_HELPERS["caesar_shift"]),
    Op("char_counts", "algorithms", "str", "dict[str, int]", "count how often each character other than a space occurs, as a dictionary from character to count", "_char_counts({v})", lambda v, k: _char_counts(v), "letter_counts", helper=_HELPERS["char_counts"]),
    Op("is_palindrome", "algorithms", "str", "bool", "check whether the text reads the same forwards and backwards", "{v} == {v}[::-1]", lambda v, k: v == v[::-1], "is_mirror"),
)
# fmt: on
OPS_BY_NAME: dict[str, Op] = {op.name: op for op in OPS}

_ARG = {"int": "n", "str": "text", "list[int]": "nums", "list[str]": "words", "dict[str, int]": "counts"}
_DESCRIBE_IN = {
    "int": "an integer",
    "str": "a string",
    "list[int]": "a list of integers",
    "list[str]": "a list of words",
    "dict[str, int]": "a dictionary mapping strings to integers",
}
_DESCRIBE_OUT = {
    "int": "an integer",
    "bool": "True or False",
    "str": "a string",
    "list[int]": "a list of integers",
    "list[str]": "a list of strings",
    "dict[str, int]": "a dictionary",
}
_WORDS = (
    "apple banana cherry delta echo river stone cloud tiger lemon mango pixel ocean maple zebra "
    "quiet book moon sun sky red blue green tree bee grass door"
).split()
_PALINDROMES = ("level", "noon", "kayak", "radar", "abba", "racecar", "wow")


# ---------------------------------------------------------------- random inputs
def _rand_int(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.45:
        return rng.randint(0, 20)
    if roll < 0.75:
        return rng.randint(21, 200)
    return rng.randint(201, 99999)


def _rand_word(rng: random.Random) -> str:
    word = rng.choice(_WORDS)
    return word.capitalize() if rng.random() < 0.25 else word


def _rand_text(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.15:
        return rng.choice(_PALINDROMES)
    if roll < 0.25:
        return "".join(rng.choice("aab") * rng.randint(1, 3) for _ in range(rng.randint(2, 4)))
    return " ".join(_rand_word(rng) for _ in range(rng.randint(1, 4)))


def _rand_input(kind: GymType, rng: random.Random) -> Any:
    if kind == "int":
        return _rand_int(rng)
    if kind == "str":
        return _rand_text(rng)
    if kind == "list[int]":
        size = 0 if rng.random() < 0.07 else rng.randint(1, 8)
        return [rng.randint(-9, 20) for _ in range(size)]
    if kind == "list[str]":
        return [_rand_word(rng) for _ in range(rng.randint(0 if rng.random() < 0.07 else 1, 6))]
    if kind == "dict[str, int]":
        keys = rng.sample(_WORDS, rng.randint(0 if rng.random() < 0.07 else 1, 5))
        return {key: rng.randint(-5, 20) for key in keys}
    raise ValueError(f"no generator for inputs of type {kind}")


def _small_enough(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return abs(value) < 10**12
    if isinstance(value, str):
        return len(value) <= 120
    if isinstance(value, list):
        return len(value) <= 40 and all(_small_enough(v) for v in value)
    if isinstance(value, dict):
        return len(value) <= 30 and all(_small_enough(v) for v in value.values())
    return False


# ---------------------------------------------------------------- compositions
Composition = tuple[str, ...]


def _chain_ok(chain: Composition) -> bool:
    for a, b in zip(chain, chain[1:], strict=False):
        if a == b or (OPS_BY_NAME[a].order_only and OPS_BY_NAME[b].order_only):
            return False
    return True


def compositions(depth: int, *, families: tuple[Family, ...] = FAMILIES) -> list[Composition]:
    """Every type-correct chain of ``depth`` operations whose first operation is in ``families``
    (no operation twice in a row, no two pure reorderings in a row), in a fixed order."""
    chains: list[Composition] = [(op.name,) for op in OPS if op.family in families and op.takes in _ARG]
    for _ in range(depth - 1):
        chains = [
            chain + (op.name,)
            for chain in chains
            for op in OPS
            if op.takes == OPS_BY_NAME[chain[-1]].gives and _chain_ok(chain + (op.name,))
        ]
    return chains


def _apply(chain: Composition, ks: tuple[int | None, ...], value: Any) -> Any:
    for name, k in zip(chain, ks, strict=True):
        value = OPS_BY_NAME[name].fn(value, k)
    return value


def _run(chain: Composition, ks: tuple[int | None, ...], value: Any) -> Any:
    """The chain's output, or None when some step is out of its domain."""
    try:
        out = _apply(chain, ks, value)
    except (DomainError, RecursionError, OverflowError, ValueError):
        return None
    return out if _small_enough(out) else None


# ---------------------------------------------------------------- rendering
def function_name(chain: Composition) -> str:
    name = "_".join(OPS_BY_NAME[op].slug for op in chain)
    if keyword.iskeyword(name) or hasattr(builtins, name):
        name += "_fn"
    return name


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:]


def statement(chain: Composition, ks: tuple[int | None, ...]) -> str:
    """The natural-language statement of a composition with its constants."""
    first = OPS_BY_NAME[chain[0]]
    name, arg = function_name(chain), _ARG[first.takes]
    phrases = [OPS_BY_NAME[op].phrase.format(k=k) for op, k in zip(chain, ks, strict=True)]
    out = _DESCRIBE_OUT[OPS_BY_NAME[chain[-1]].gives]
    head = f"Write a Python function `{name}({arg})` that takes {_DESCRIBE_IN[first.takes]} `{arg}`"
    if len(chain) == 1:
        return f"{head}. {_sentence(phrases[0])} and return the result ({out})."
    steps = "\n".join(f"{i}. {_sentence(p)}." for i, p in enumerate(phrases, start=1))
    return f"{head} and applies these steps in order, each to the result of the previous one:\n{steps}\nReturn the final result ({out})."


def _signature(chain: Composition) -> str:
    first, last = OPS_BY_NAME[chain[0]], OPS_BY_NAME[chain[-1]]
    return f"def {function_name(chain)}({_ARG[first.takes]}: {first.takes}) -> {last.gives}:"


def starter_code(chain: Composition, ks: tuple[int | None, ...], example: TestCase) -> str:
    """Signature, a docstring listing the steps, and one doctest-style example."""
    phrases = [OPS_BY_NAME[op].phrase.format(k=k) for op, k in zip(chain, ks, strict=True)]
    doc = "; then ".join(phrases)
    call = f"{function_name(chain)}({example.args[0]!r})" if example.args else ""
    return (
        f"{_signature(chain)}\n"
        f'    """{_sentence(doc)}.\n\n'
        f"    >>> {call}\n"
        f"    {example.expected!r}\n"
        f'    """\n'
    )


def reference_solution(chain: Composition, ks: tuple[int | None, ...]) -> str:
    """The reference program as source text: the function with one statement per step, then the
    helpers it calls. Equivalent to the trusted callables (checked in the sandbox by the tests)."""
    first = OPS_BY_NAME[chain[0]]
    var = _ARG[first.takes]
    lines = [_signature(chain)]
    for name, k in zip(chain, ks, strict=True):
        lines.append(f"    {var} = {OPS_BY_NAME[name].expr.format(v=var, k=k)}")
    lines.append(f"    return {var}")
    helpers = []
    for name in chain:
        helper = OPS_BY_NAME[name].helper
        if helper and helper not in helpers:
            helpers.append(helper)
    return "\n".join(lines) + "\n" + "".join(f"\n\n{h}" for h in helpers)


# ---------------------------------------------------------------- configuration and generation
class GymConfig(BaseModel):
    """How to generate a gym. Same config, same problems (ids included)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(default=0, ge=0, description="seed of everything random in the gym")
    n_per_tier: int = Field(default=100, ge=3, description="problems per tier over all three splits")
    tiers: tuple[int, ...] = Field(default=(1, 2, 3), description="composition depths to generate (1 to 4)")
    fractions: tuple[float, float, float] = Field(
        default=(0.8, 0.1, 0.1), description="train / validation / test shares of compositions and of problems"
    )
    n_tests: int = Field(default=8, ge=2, le=32, description="hidden tests per problem")
    families: tuple[Family, ...] = Field(default=FAMILIES, description="families a problem's first operation may come from")

    @model_validator(mode="after")
    def _check(self) -> GymConfig:
        if not self.tiers or any(t < 1 or t > 4 for t in self.tiers) or len(set(self.tiers)) != len(self.tiers):
            raise ValueError(f"tiers must be distinct depths between 1 and 4, got {self.tiers}")
        if any(f <= 0 for f in self.fractions) or abs(sum(self.fractions) - 1.0) > 1e-6:
            raise ValueError(f"fractions must be three positive shares summing to 1, got {self.fractions}")
        if not self.families:
            raise ValueError("families must name at least one family")
        return self


@dataclass
class GymSplits:
    """Problems per split; each problem's ``metadata["split"]`` says which."""

    train: list[Problem] = field(default_factory=list)
    validation: list[Problem] = field(default_factory=list)
    test: list[Problem] = field(default_factory=list)

    def split(self, name: SplitName) -> list[Problem]:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]

    def all(self) -> list[Problem]:
        return [*self.train, *self.validation, *self.test]

    def write(self, directory: str | Path) -> dict[str, Path]:
        """Write ``train.jsonl``, ``validation.jsonl`` and ``test.jsonl`` (restrl schema)."""
        out: dict[str, Path] = {}
        for name in SPLITS:
            path = Path(directory) / f"{name}.jsonl"
            write_jsonl(path, self.split(name))
            out[name] = path
        return out


def _split_compositions(chains: list[Composition], cfg: GymConfig, tier: int) -> dict[SplitName, list[Composition]]:
    shuffled = list(chains)
    random.Random(f"gym:{cfg.seed}:{tier}:compositions").shuffle(shuffled)
    n = len(shuffled)
    if n < 3:
        raise ValueError(f"tier {tier} has only {n} compositions for the chosen families: cannot hold out three splits")
    n_val = max(1, round(n * cfg.fractions[1]))
    n_test = max(1, round(n * cfg.fractions[2]))
    return {"train": shuffled[: n - n_val - n_test], "validation": shuffled[n - n_val - n_test : n - n_test], "test": shuffled[n - n_test :]}


def _pick_tests(chain: Composition, ks: tuple[int | None, ...], rng: random.Random, n_tests: int) -> list[tuple[Any, Any]] | None:
    """Inputs with their outputs: distinct outputs first (so a bool function sees both values),
    then random fill; None when the composition is degenerate for these constants."""
    kind = OPS_BY_NAME[chain[0]].takes
    pool: list[tuple[Any, Any]] = []
    seen_inputs: list[Any] = []
    for _ in range(n_tests * 6):
        value = _rand_input(kind, rng)
        if value in seen_inputs:
            continue
        out = _run(chain, ks, value)
        if out is None:
            continue
        seen_inputs.append(value)
        pool.append((value, out))
    if len(pool) < n_tests:
        return None
    chosen: list[tuple[Any, Any]] = []
    outputs: list[Any] = []
    for pair in pool:
        if pair[1] not in outputs:
            outputs.append(pair[1])
            chosen.append(pair)
        if len(chosen) >= n_tests // 2:
            break
    rest = [p for p in pool if p not in chosen]
    chosen += rest[: n_tests - len(chosen)]
    if len(outputs) < 2:
        return None
    # every type-preserving step must matter: deleting it must change some output
    for i, name in enumerate(chain):
        op = OPS_BY_NAME[name]
        if len(chain) > 1 and op.takes == op.gives:
            sub, sub_ks = chain[:i] + chain[i + 1 :], ks[:i] + ks[i + 1 :]
            if all(_run(sub, sub_ks, value) == out for value, out in chosen):
                return None
    return chosen


def _make_problem(
    chain: Composition, ks: tuple[int | None, ...], pairs: list[tuple[Any, Any]], *, pid: str, tier: int, split: SplitName, cfg: GymConfig
) -> Problem:
    entry = function_name(chain)
    tests = [TestCase(kind="call", args=[value], expected=out, fn_name=entry) for value, out in pairs]
    example = tests[0]
    return Problem(
        id=pid,
        prompt=statement(chain, ks),
        starter_code=starter_code(chain, ks, example),
        entry_point=entry,
        tests=tests,
        public_tests=[example],
        metadata={
            "source": "gym",
            "split": split,
            "family": OPS_BY_NAME[chain[0]].family,
            "tier": tier,
            "composition": list(chain),
            "constants": list(ks),
            "gym_seed": cfg.seed,
            "reference_solution": reference_solution(chain, ks),
        },
    )


def _stream(chains: list[Composition], *, tier: int, split: SplitName, cfg: GymConfig) -> Iterator[Problem]:
    """The split's problems in a fixed order: cycle through its compositions, drawing constants
    and inputs from a generator seeded by the position; duplicates and degenerate draws are skipped."""
    seen: set[tuple[Composition, tuple[int | None, ...]]] = set()
    count = 0
    misses = 0
    j = 0
    while misses < 50 * len(chains) + 100:
        chain = chains[j % len(chains)]
        rng = random.Random(f"gym:{cfg.seed}:{tier}:{split}:{j}")
        j += 1
        ks = tuple(rng.randint(*OPS_BY_NAME[n].k_range) if OPS_BY_NAME[n].k_range else None for n in chain)  # type: ignore[misc]
        if (chain, ks) in seen:
            misses += 1
            continue
        pairs = _pick_tests(chain, ks, rng, cfg.n_tests)
        if pairs is None:
            misses += 1
            continue
        seen.add((chain, ks))
        misses = 0
        yield _make_problem(chain, ks, pairs, pid=f"gym-s{cfg.seed}-t{tier}-{split}-{count:05d}", tier=tier, split=split, cfg=cfg)
        count += 1


def generate(cfg: GymConfig) -> GymSplits:
    """Generate the gym described by ``cfg``."""
    splits = GymSplits()
    for tier in cfg.tiers:
        by_split = _split_compositions(compositions(tier, families=cfg.families), cfg, tier)
        n_val = round(cfg.n_per_tier * cfg.fractions[1])
        n_test = round(cfg.n_per_tier * cfg.fractions[2])
        wanted: dict[SplitName, int] = {"train": cfg.n_per_tier - n_val - n_test, "validation": n_val, "test": n_test}
        for name in SPLITS:
            made = list(itertools.islice(_stream(by_split[name], tier=tier, split=name, cfg=cfg), wanted[name]))
            if len(made) < wanted[name]:
                logger.warning("gym tier %d %s: only %d distinct problems (asked %d)", tier, name, len(made), wanted[name])
            splits.split(name).extend(made)
    logger.info(
        "gym seed %d: %d train, %d validation, %d test problems over tiers %s",
        cfg.seed, len(splits.train), len(splits.validation), len(splits.test), list(cfg.tiers),
    )
    return splits


def make_gym(seed: int, n_per_tier: int, **options: Any) -> GymSplits:
    """``make_gym(seed, n_per_tier, tiers=..., fractions=..., n_tests=..., families=...)``:
    generate train / validation / test splits (see `GymConfig`)."""
    return generate(GymConfig(seed=seed, n_per_tier=n_per_tier, **options))
