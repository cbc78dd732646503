"""Verifiers on tricky answers (negative numbers, commas, several boxed answers, no answer), the
IFEval constraints the issue names, the reward arithmetic, and load-time refusal of unknown names."""

from __future__ import annotations

import json

import pytest

from olmo_trainer.rewards import reward
from olmo_trainer.verifiers import (
    RewardError,
    check_rows,
    extract_math_answer,
    last_boxed,
    last_number,
    normalize_math,
    verifier,
    verify_gsm8k,
    verify_ifeval,
    verify_math,
)


@pytest.mark.parametrize(
    ("response", "truth", "ok"),
    [
        ("She pays 3 + 4 = 7 dollars. The answer is 7", "7", True),
        ("The total is 1,234,567 apples.", "1234567", True),  # thousands commas removed
        ("The total is 1,234 apples.", "1,234", True),  # ... in the ground truth too
        ("It drops to -5 degrees.", "-5", True),  # a negative number stays negative
        ("It drops to -5 degrees.", "5", False),
        ("Answer: 12.0", "12", True),  # same value
        ("Answer: 12.5", "12", False),
        ("First 10, then 20, finally 30", "30", True),  # the LAST number
        ("First 10, then 20, finally 30", "10", False),
        ("values 1,2,3", "3", True),  # a list's commas are not thousands separators
        ("I do not know.", "4", False),  # no number at all
        ("", "0", False),
    ],
)
def test_gsm8k(response: str, truth: str, ok: bool) -> None:
    assert verify_gsm8k(response, truth) is ok


def test_last_number() -> None:
    assert last_number("a -1,234.5 b") == "-1234.5"
    assert last_number("nothing") is None


@pytest.mark.parametrize(
    ("response", "truth", "ok"),
    [
        ("So $x = 2$, and the answer is \\boxed{3}.", "3", True),
        ("First \\boxed{2}, no wait: \\boxed{5}", "5", True),  # several boxed: the last one
        ("First \\boxed{2}, no wait: \\boxed{5}", "2", False),
        ("\\boxed{\\frac{1}{2}}", "\\frac12", True),  # nested braces, shorthand frac
        ("\\boxed{\\dfrac{1}{2}}", "0.5", True),  # equal value
        ("\\boxed{-\\frac{3}{4}}", "-3/4", True),  # negative fraction
        ("\\boxed{10\\text{ cm}}", "10", True),  # units removed
        ("\\boxed{1,000}", "1000", True),
        ("Final Answer: The final answer is $42$. I hope it is correct.", "42", True),  # Minerva form
        ("We get $y=7$ and then $x = 9$.", "9", True),  # last $...$
        ("The answer is nine.", "9", False),  # no extractable answer
        ("\\boxed{3", "3", False),  # never closed
        ("\\boxed{4}", "3", False),
    ],
)
def test_math(response: str, truth: str, ok: bool) -> None:
    assert verify_math(response, truth) is ok


def test_math_extraction_order() -> None:
    # boxed beats the Minerva sentence, which beats dollars.
    both = "Final Answer: The final answer is $1$. I hope it is correct. \\boxed{2}"
    assert extract_math_answer(both) == "2"
    assert extract_math_answer("Final Answer: The final answer is 7. I hope it is correct. $8$") == "7"
    assert extract_math_answer("no answer") is None
    assert last_boxed("\\boxed{a{b}c} and \\boxed{d}") == "d"
    assert normalize_math("x = \\frac12 .") == "\\frac{1}{2}"


def _ifeval(name: str, **kwargs: object) -> str:
    return json.dumps({"func_name": name, **kwargs})


@pytest.mark.parametrize(
    ("response", "truth", "ok"),
    [
        ("I love Paris and ROME.", _ifeval("verify_keywords", keyword_list=["paris", "rome"]), True),
        ("I love Paris.", _ifeval("verify_keywords", keyword_list=["paris", "rome"]), False),
        ("one two three four", _ifeval("validate_word_constraint", N=4, quantifier="at least"), True),
        ("one two three", _ifeval("validate_word_constraint", N=4, quantifier="at least"), False),
        ("one two three", _ifeval("validate_word_constraint", N=2, quantifier="at most"), False),
        ("Hi. How are you? Fine!", _ifeval("verify_sentence_constraint", N=3, quantifier="at least"), True),
        ("Hi. How are you?", _ifeval("verify_sentence_constraint", N=3, quantifier="at least"), False),
        ("all lower case here", _ifeval("validate_lowercase"), True),
        ("Not all lower", _ifeval("validate_lowercase"), False),
        ("no commas here", _ifeval("validate_no_commas"), True),
        ("yes, a comma", _ifeval("validate_no_commas"), False),
        ("* one\n* two\n- three", _ifeval("verify_bullet_points", N=3), True),
        ("* one\n* two", _ifeval("verify_bullet_points", N=3), False),
        ('{"a": [1, 2]}', _ifeval("validate_json_format"), True),
        ('```json\n{"a": 1}\n```', _ifeval("validate_json_format"), True),
        ("{a: 1}", _ifeval("validate_json_format"), False),
        (
            "... Is there anything else I can help with?",
            _ifeval("validate_end", end_phrase="Is there anything else I can help with?"),
            True,
        ),
        (
            "Is there anything else I can help with? Bye",
            _ifeval("validate_end", end_phrase="Is there anything else I can help with?"),
            False,
        ),
        # A None-valued argument is ignored, as in the public data.
        ("no commas", _ifeval("validate_no_commas", N=None), True),
    ],
)
def test_ifeval(response: str, truth: str, ok: bool) -> None:
    assert verify_ifeval(response, truth) is ok


def test_reward_values() -> None:
    assert reward("The answer is 7", "7", "gsm8k") == 10.0
    assert reward("The answer is 8", "7", "gsm8k") == 0.0
    assert reward("The answer is 7", "7", "GSM8K", correct_reward=1.0) == 1.0
    # Not stopping costs the penalty, verified or not.
    assert reward("The answer is 7", "7", "gsm8k", stopped=False, non_stop_penalty=3.0) == 7.0
    assert reward("nothing", "7", "gsm8k", stopped=False, non_stop_penalty=3.0) == -3.0
    assert reward("nothing", "7", "gsm8k", stopped=False) == 0.0


def test_unknown_names_are_refused_at_load_time() -> None:
    good = [
        {"messages": [], "ground_truth": "7", "dataset": "gsm8k"},
        {"messages": [], "ground_truth": _ifeval("validate_no_commas"), "dataset": "ifeval"},
    ]
    assert check_rows(good, "rl.jsonl") == 2
    with pytest.raises(
        RewardError, match=r"rl.jsonl row 2: no verifier for dataset 'mbpp'; known: \['gsm8k'"
    ):
        check_rows([good[0], {"ground_truth": "x", "dataset": "mbpp"}], "rl.jsonl")
    with pytest.raises(
        RewardError, match="row 1: ifeval constraint 'validate_response_language' is not supported"
    ):
        check_rows(
            [{"ground_truth": _ifeval("validate_response_language", language="en"), "dataset": "ifeval"}]
        )
    with pytest.raises(RewardError, match="unknown \\['n'\\] and lacks \\['N'\\]"):
        check_rows([{"ground_truth": _ifeval("verify_bullet_points", n=3), "dataset": "ifeval"}])
    with pytest.raises(RewardError, match="not JSON"):
        check_rows([{"ground_truth": "{oops", "dataset": "ifeval"}])
    with pytest.raises(RewardError, match="`dataset` must be a string"):
        check_rows([{"ground_truth": "7"}])
    with pytest.raises(RewardError, match="no verifier"):
        verifier("code")
