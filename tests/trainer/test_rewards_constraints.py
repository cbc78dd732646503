"""Every IFEval constraint check of verifiers.py at the boundary of its rule (one below, at, one above),
the `around` tolerance of the quantified counts, and exact-value arithmetic of MATH answers.

The cases are written from each check's docstring (the rule as open-instruct's `if_functions.py`
states it), so a changed comparison, count or tolerance fails here.
"""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from olmo_trainer import rewards, verifiers
from olmo_trainer.verifiers import RewardError


def holds(name: str, response: str, **kwargs: object) -> bool:
    """The constraint `name` on `response`, through the ground-truth JSON path the data uses."""
    return verifiers.verify_ifeval(response, json.dumps({"func_name": name, **kwargs}))


CASES: list[tuple[str, str, dict[str, object], bool]] = [
    # keyword presence, any case
    ("verify_keywords", "Paris in SPRING", {"keyword_list": ["paris", "Spring"]}, True),
    ("verify_keywords", "Paris in autumn", {"keyword_list": ["paris", "spring"]}, False),
    # whole-word frequency, exact
    ("verify_keyword_frequency", "Cat cat CAT category", {"word": "cat", "N": 3}, True),
    ("verify_keyword_frequency", "Cat cat category", {"word": "cat", "N": 3}, False),
    ("verify_keyword_frequency", "cat cat cat cat", {"word": "Cat", "N": 3}, False),
    # forbidden words, any case, substring
    ("validate_forbidden_words", "A clean answer", {"forbidden_words": ["bad", "worse"]}, True),
    ("validate_forbidden_words", "This is WORSE", {"forbidden_words": ["bad", "worse"]}, False),
    # letter frequency, exact and case-sensitive
    ("verify_letter_frequency", "banana", {"letter": "a", "N": 3}, True),
    ("verify_letter_frequency", "bAnana", {"letter": "a", "N": 3}, False),
    ("verify_letter_frequency", "banana a", {"letter": "a", "N": 3}, False),
    # paragraphs separated by * * *
    ("verify_paragraph_count", "one\n* * *\ntwo", {"N": 2}, True),
    ("verify_paragraph_count", "  one  \n  * * *  \n  two  ", {"N": 2}, True),  # lines are stripped
    ("verify_paragraph_count", "one\n* * *\ntwo", {"N": 3}, False),
    ("verify_paragraph_count", "one\n* * *\n\n* * *\nthree", {"N": 3}, False),  # an empty paragraph
    # word counts: at least / at most / around (+-10%, at least 1)
    ("validate_word_constraint", "a b c", {"N": 3, "quantifier": "at least"}, True),
    ("validate_word_constraint", "a b", {"N": 3, "quantifier": "at least"}, False),
    ("validate_word_constraint", "a b c", {"N": 3, "quantifier": "at most"}, True),
    ("validate_word_constraint", "a b c d", {"N": 3, "quantifier": "at most"}, False),
    ("validate_word_constraint", "a b c d", {"N": 3, "quantifier": "around"}, True),  # tolerance 1
    ("validate_word_constraint", "a b c d e", {"N": 3, "quantifier": "around"}, False),
    ("validate_word_constraint", " ".join(["w"] * 18), {"N": 20, "quantifier": "around"}, True),  # 10% of 20
    ("validate_word_constraint", " ".join(["w"] * 17), {"N": 20, "quantifier": "around"}, False),
    ("validate_word_constraint", " ".join(["w"] * 22), {"N": 20, "quantifier": "around"}, True),
    ("validate_word_constraint", " ".join(["w"] * 23), {"N": 20, "quantifier": "around"}, False),
    # sentence counts: around is +-1
    ("verify_sentence_constraint", "One. Two? Three!", {"N": 3, "quantifier": "at most"}, True),
    ("verify_sentence_constraint", "One. Two? Three! Four.", {"N": 3, "quantifier": "at most"}, False),
    ("verify_sentence_constraint", "One. Two.", {"N": 3, "quantifier": "around"}, True),
    ("verify_sentence_constraint", "One.", {"N": 3, "quantifier": "around"}, False),
    ("verify_sentence_constraint", "One. Two. Three. Four.", {"N": 3, "quantifier": "around"}, True),
    ("verify_sentence_constraint", "One. Two. Three. Four. Five.", {"N": 3, "quantifier": "around"}, False),
    (
        "verify_sentence_constraint",
        "One.Two. Three.",
        {"N": 3, "quantifier": "at least"},
        False,
    ),  # needs a space
    # N paragraphs by blank lines, the i-th starting with a word
    ("validate_paragraphs", "Alpha one\n\nBeta two", {"N": 2, "first_word": "Beta", "i": 2}, True),
    ("validate_paragraphs", "Alpha one\n\nBeta two", {"N": 2, "first_word": "Alpha", "i": 1}, True),
    ("validate_paragraphs", "Alpha one\n\nBeta two", {"N": 2, "first_word": "Alpha", "i": 2}, False),
    ("validate_paragraphs", "Alpha one\n\nBeta two", {"N": 3, "first_word": "Beta", "i": 2}, False),
    ("validate_paragraphs", "Alpha one\n\nBeta two", {"N": 2, "first_word": "Beta", "i": 3}, False),
    ("validate_paragraphs", "Alpha one\n\nBeta two", {"N": 2, "first_word": "Beta", "i": 0}, False),
    # postscript: the marker, then something
    ("verify_postscript", "Body.\nP.S. see you", {"postscript_marker": "P.S."}, True),
    ("verify_postscript", "Body.\nP.S.   ", {"postscript_marker": "P.S."}, False),
    ("verify_postscript", "Body only", {"postscript_marker": "P.S."}, False),
    ("verify_postscript", "P.S. at the very start", {"postscript_marker": "P.S."}, True),
    (
        "verify_postscript",
        "P.S. first, then a bare P.S.",
        {"postscript_marker": "P.S."},
        True,
    ),  # the first marker
    # placeholders in square brackets: at least N
    ("validate_placeholders", "Send to [name] at [address]", {"N": 2}, True),
    ("validate_placeholders", "Send to [name]", {"N": 2}, False),
    ("validate_placeholders", "[a] [b] [c]", {"N": 2}, True),
    # bullets: exactly N
    ("verify_bullet_points", "* a\n  - b\ntext", {"N": 2}, True),
    ("verify_bullet_points", "* a\n- b\n* c", {"N": 2}, False),
    # title
    ("validate_title", "<<A Title>>\nbody", {}, True),
    ("validate_title", "<<>> no title", {}, False),
    ("validate_title", "<A Title>", {}, False),
    # choice
    ("validate_choice", "My answer is yes.", {"options": ["yes", "no"]}, True),
    ("validate_choice", "My answer is maybe.", {"options": ["yes", "no"]}, False),
    # highlighted sections: at least N
    ("validate_highlighted_sections", "*one* and *two*", {"N": 2}, True),
    ("validate_highlighted_sections", "*one* and two", {"N": 2}, False),
    ("validate_highlighted_sections", "*one* *two* *three*", {"N": 2}, True),
    # sections: at least N
    ("validate_sections", "Intro Section 1 a Section 2 b", {"N": 2, "section_splitter": "Section"}, True),
    ("validate_sections", "Intro section 1 a", {"N": 2, "section_splitter": "Section"}, False),
    (
        "validate_sections",
        "SECTION 1 a SECTION 2 b SECTION 3 c",
        {"N": 2, "section_splitter": "Section"},
        True,
    ),
    # JSON
    ("validate_json_format", "```\n[1, 2]\n```", {}, True),
    ("validate_json_format", '  "text"  ', {}, True),
    ("validate_json_format", "text", {}, False),
    # repeat the prompt first
    ("validate_repeat_prompt", "Write a poem. Roses are red.", {"original_prompt": "Write a poem."}, True),
    ("validate_repeat_prompt", "Roses. Write a poem.", {"original_prompt": "Write a poem."}, False),
    # two different responses
    ("validate_two_responses", "first******second", {}, True),
    ("validate_two_responses", "same****** same", {}, False),
    ("validate_two_responses", "a******b******c", {}, False),
    ("validate_two_responses", "first******   ", {}, False),
    # case
    ("validate_uppercase", "ALL CAPS 123!", {}, True),
    ("validate_uppercase", "ALL CAPs", {}, False),
    ("validate_lowercase", "all lower 123!", {}, True),
    ("validate_lowercase", "not all Lower", {}, False),
    # capital words: around is +-10%, at least 1
    ("validate_frequency_capital_words", "THE CAT sat", {"N": 2, "quantifier": "at least"}, True),
    ("validate_frequency_capital_words", "THE cat sat", {"N": 2, "quantifier": "at least"}, False),
    ("validate_frequency_capital_words", "THE CAT SAT", {"N": 2, "quantifier": "at most"}, False),
    ("validate_frequency_capital_words", "THE CAT SAT", {"N": 2, "quantifier": "around"}, True),
    ("validate_frequency_capital_words", "THE CAT SAT ON", {"N": 2, "quantifier": "around"}, False),
    # end phrase
    ("validate_end", "Goodbye. That is all.  \n", {"end_phrase": "That is all."}, True),
    ("validate_end", "That is all. Goodbye.", {"end_phrase": "That is all."}, False),
    # quotation
    ("validate_quotation", '  "quoted answer"  ', {}, True),
    ("validate_quotation", '"', {}, False),
    ("validate_quotation", '"half quoted', {}, False),
    ("validate_quotation", 'half quoted"', {}, False),
    # no commas
    ("validate_no_commas", "", {}, True),
    ("validate_no_commas", "one, two", {}, False),
]


@pytest.mark.parametrize(
    ("name", "response", "kwargs", "ok"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_constraint(name: str, response: str, kwargs: dict[str, object], ok: bool) -> None:
    assert holds(name, response, **kwargs) is ok


def test_every_constraint_has_a_passing_and_a_failing_case() -> None:
    """A constraint added to the registry without cases here fails this test."""
    passing = {c[0] for c in CASES if c[3]}
    failing = {c[0] for c in CASES if not c[3]}
    assert set(verifiers.IFEVAL_CONSTRAINTS) == passing
    assert set(verifiers.IFEVAL_CONSTRAINTS) == failing


def test_an_unknown_quantifier_is_a_reward_error() -> None:
    with pytest.raises(
        RewardError, match=r"quantifier must be 'at least', 'at most' or 'around', got 'exactly'"
    ):
        holds("validate_word_constraint", "a b", N=2, quantifier="exactly")


def test_ifeval_ground_truth_must_be_an_object_with_func_name() -> None:
    with pytest.raises(RewardError, match=r"must be a JSON object with `func_name`: '\[1\]'"):
        verifiers.parse_ifeval("[1]")
    with pytest.raises(RewardError, match=r"must be a JSON object with `func_name`"):
        verifiers.parse_ifeval('{"N": 3}')
    check, kwargs = verifiers.parse_ifeval('{"func_name": "verify_bullet_points", "N": 3, "unused": null}')
    assert check is verifiers.verify_bullet_points
    assert kwargs == {"N": 3}
    with pytest.raises(RewardError) as info:
        verifiers.parse_ifeval('{"func_name": "verify_bullet_points"}')
    assert str(info.value) == (
        "ifeval constraint 'verify_bullet_points' takes ['N']; ground truth has unknown [] and lacks ['N']"
    )


@pytest.mark.parametrize(
    ("answer", "value"),
    [
        ("7", Fraction(7)),
        ("-7", Fraction(-7)),
        ("2.5", Fraction(5, 2)),
        ("-2.5", Fraction(-5, 2)),
        ("3/4", Fraction(3, 4)),
        ("-3/4", Fraction(-3, 4)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("-\\frac{3}{4}", Fraction(-3, 4)),
        ("\\frac{1.5}{3}", Fraction(1, 2)),
        ("6/2", Fraction(3)),
        ("6/1", Fraction(6)),
        ("X5", None),  # only a minus sign is stripped
        ("1/0", None),  # no value, not an error
        ("\\frac{1}{0}", None),
        ("x", None),
        ("1.2.3", None),
        ("", None),
    ],
)
def test_math_value(answer: str, value: Fraction | None) -> None:
    assert verifiers._math_value(answer) == value


@pytest.mark.parametrize(
    ("answer", "truth", "same"),
    [
        ("\\frac{6}{8}", "0.75", True),
        ("-0.75", "-\\frac{3}{4}", True),
        ("0.75", "-\\frac{3}{4}", False),
        ("6/2", "3", True),
        ("1/0", "1/0", True),  # equal after normalisation, although it has no value
        ("1/0", "2/0", False),
        ("x+1", "1+x", False),  # not numbers: compared as text only
    ],
)
def test_math_equivalent(answer: str, truth: str, same: bool) -> None:
    assert verifiers.math_equivalent(answer, truth) is same


@pytest.mark.parametrize(
    ("text", "boxed"),
    [
        ("\\fbox{4}", "4"),
        ("\\boxed{1} then \\fbox{2}", "2"),
        ("\\fbox{1} then \\boxed{2}", "2"),
        ("\\boxed 5", None),  # no brace after it
        ("{x} \\boxed", None),  # a brace before the last \boxed does not count
        ("\\boxed{}", ""),
        ("\\fbox{1} and \\fbox{2}", "2"),
    ],
)
def test_last_boxed(text: str, boxed: str | None) -> None:
    assert verifiers.last_boxed(text) == boxed


def test_dollar_answers_ignore_escaped_dollars() -> None:
    assert verifiers.extract_math_answer("costs \\$5 and $x=3$") == "x=3"
    assert verifiers.extract_math_answer("only one $ sign") is None


@pytest.mark.parametrize(
    ("answer", "normal"),
    [
        ("10 \\text{ cm}", "10"),
        ("\\$1,000", "1000"),
        ("-1,000", "-1000"),
        ("(1,2)", "(1,2)"),  # a pair, not a number: its comma stays
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\sqrt2", "\\sqrt{2}"),
        ("\\textbf{7}", "7"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("90^\\circ", "90"),
        ("5.", "5"),
    ],
)
def test_normalize_math(answer: str, normal: str) -> None:
    assert verifiers.normalize_math(answer) == normal


def test_gsm8k_ground_truth_without_a_number_never_verifies() -> None:
    assert verifiers.verify_gsm8k("The answer is 7", "seven") is False
    assert verifiers.verify_gsm8k("12,34 apples", "1234") is False  # "12,34" is no thousands separator
    assert verifiers.last_number("x 1,234,5678") == "5678"


def test_the_non_stop_penalty_applies_only_to_responses_that_did_not_stop() -> None:
    assert rewards.reward("The answer is 7", "7", "gsm8k", stopped=True, non_stop_penalty=3.0) == 10.0
    assert rewards.reward("The answer is 6", "7", "gsm8k", stopped=True, non_stop_penalty=3.0) == 0.0
    assert (
        rewards.reward(
            "The answer is 7", "7", "gsm8k", correct_reward=2.5, stopped=False, non_stop_penalty=1.0
        )
        == 1.5
    )


def test_reward_defaults_to_a_stopped_response() -> None:
    assert rewards.reward("The answer is 7", "7", "gsm8k", non_stop_penalty=3.0) == 10.0


def test_check_rows_counts_rows_and_names_the_wrong_type() -> None:
    assert verifiers.check_rows([]) == 0
    assert verifiers.check_rows([{"ground_truth": "1", "dataset": "math"}] * 3) == 3
    with pytest.raises(RewardError) as info:
        verifiers.check_rows(
            [{"ground_truth": "1", "dataset": "math"}, {"ground_truth": 7, "dataset": "gsm8k"}], "rl.jsonl"
        )
    assert str(info.value) == "rl.jsonl row 2: `ground_truth` must be a string, got int"
    with pytest.raises(RewardError) as info:
        verifiers.check_row({"ground_truth": "7", "dataset": None})
    assert str(info.value) == "row: `dataset` must be a string, got NoneType"
