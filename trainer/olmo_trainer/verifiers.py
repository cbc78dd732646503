"""The one home of answer checking: verifiers keyed by a row's `dataset`, used by RLVR rewards
(rewards.py) and by every generative evaluation (evaluate.py). Nothing else checks an answer.

    verify("gsm8k", "3 + 4 = 7. The answer is 7", "7")   # True
    check_rows(rows)                                      # at data-load time: unknown names raise here

The public RLVR data (`allenai/RLVR-GSM-MATH-IF-Mixed-Constraints`) has rows
`{"messages": [...], "ground_truth": "...", "dataset": "gsm8k" | "math" | "ifeval"}`; the dataset name
picks the verifier (Tülu 3 report section 6; OLMo 2 paper section 5; open-instruct `ground_truth_utils.py`):

- `gsm8k`: thousands commas removed, the last number in the response, equal to the ground truth.
- `math`: the answer is the content of the last `\\boxed{...}`; else the Minerva form "Final Answer: The
  final answer is X. I hope it is correct."; else the last `$...$`; compared with the ground truth after
  the Minerva normalisation (Lewkowycz et al. 2022, appendix D.1), numbers compared by value.
- `ifeval`: the ground truth is JSON `{"func_name": ..., **kwargs}` naming one IFEval constraint check
  (the names and keyword arguments of open-instruct's `if_functions.py`, which the data uses).

An unknown dataset, constraint or argument is a `RewardError` when the data is loaded (`check_rows`),
never a silent False.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from olmo_trainer.errors import DataError

Verifier = Callable[[str, str], bool]
"""(response text, ground truth) -> verified."""


class RewardError(DataError):
    """A row names a verifier, constraint or argument that does not exist, or its ground truth is
    malformed."""


# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------

# A comma between digits followed by exactly three digits is a thousands separator: "1,234,567".
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _number_value(text: str) -> Decimal | None:
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def last_number(text: str) -> str | None:
    """The last number in `text` after thousands commas are removed ("-1,234.5" -> "-1234.5"), or None."""
    found = _NUMBER.findall(_THOUSANDS.sub("", text))
    return found[-1] if found else None


def verify_gsm8k(response: str, ground_truth: str) -> bool:
    """GSM8K: the last number of the response equals the ground truth (by value: "12.0" == "12")."""
    answer = last_number(response)
    expected = _number_value(_THOUSANDS.sub("", ground_truth.strip()))
    if answer is None or expected is None:
        return False
    return _number_value(answer) == expected


# ---------------------------------------------------------------------------------------------
# MATH
# ---------------------------------------------------------------------------------------------

_MINERVA = re.compile(r"Final Answer: The final answer is (.*?)\. I hope it is correct\.", re.DOTALL)


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced; None when there is none
    or it is never closed."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for index in range(brace, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : index]
    return None


def extract_math_answer(response: str) -> str | None:
    """The answer a MATH response gives: last \\boxed{}, else the Minerva sentence, else the last $...$."""
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed
    minerva = _MINERVA.findall(response)
    if minerva:
        return str(minerva[-1])
    dollars = [match.start() for match in re.finditer(r"(?<!\\)\$", response)]
    if len(dollars) >= 2:
        return response[dollars[-2] + 1 : dollars[-1]]
    return None


# Minerva's normalisation (Lewkowycz et al. 2022, appendix D.1): textual substitutions, then units
# and decorations removed.
_SUBSTITUTIONS = [
    ("an ", ""),
    ("a ", ""),
    (".$", "$"),
    ("\\$", ""),
    ("\\ ", ""),
    (" ", ""),
    ("mbox", "text"),
    (",\\text{and}", ","),
    ("\\text{and}", ","),
    ("\\text{m}", "\\text{}"),
    ("\\dfrac", "\\frac"),
    ("\\tfrac", "\\frac"),
    ("\\left", ""),
    ("\\right", ""),
]
_REMOVED = [
    "square",
    "ways",
    "integers",
    "dollars",
    "mph",
    "inches",
    "ft",
    "hours",
    "km",
    "units",
    "\\ldots",
    "sue",
    "points",
    "feet",
    "minutes",
    "digits",
    "cents",
    "degrees",
    "cm",
    "gm",
    "pounds",
    "meters",
    "meals",
    "edges",
    "students",
    "childrentickets",
    "multiples",
    "\\text{s}",
    "\\text{.}",
    "\\text{\ns}",
    "\\text{}^2",
    "\\text{}^3",
    "\\text{\n}",
    "\\text{}",
    r"\mathrm{th}",
    r"^\circ",
    r"^{\circ}",
    r"\;",
    r",\!",
    "{,}",
    '"',
    "\\dots",
    "\\!",
]


def normalize_math(answer: str) -> str:
    """Minerva-normalised form of a final answer: `\\frac12` -> `\\frac{1}{2}`, units and `$` gone,
    `x = 3` -> `3`, `1,000` -> `1000`, trailing `.` dropped."""
    answer = answer.split("=")[-1]
    for before, after in _SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for expression in _REMOVED:
        answer = answer.replace(expression, "")
    answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", r"$\3$", answer)
    answer = re.sub(r"(\\text\{)(.*?)(\})", r"\2", answer)
    answer = re.sub(r"(\\textbf\{)(.*?)(\})", r"\2", answer)
    answer = re.sub(r"(\\overline\{)(.*?)(\})", r"\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", r"\2", answer)
    answer = re.sub(r"(frac)([^{])(.)", r"frac{\2}{\3}", answer)
    answer = re.sub(r"(sqrt)([^{])", r"sqrt{\2}", answer)
    answer = answer.replace("$", "").strip().rstrip(".")
    if answer.replace(",", "").lstrip("-").isdigit():
        answer = answer.replace(",", "")
    return answer


def _math_value(answer: str) -> Fraction | None:
    """The exact value of a plain number, a/b or \\frac{a}{b} (signed), else None."""
    text = answer.strip()
    sign = -1 if text.startswith("-") else 1
    text = text.lstrip("-")
    match = re.fullmatch(r"\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}", text) or re.fullmatch(
        r"(-?\d+(?:\.\d+)?)/(-?\d+(?:\.\d+)?)", text
    )
    try:
        if match:  # a zero denominator raises ZeroDivisionError: no value
            return sign * Fraction(match.group(1)) / Fraction(match.group(2))
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            return sign * Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def math_equivalent(answer: str, ground_truth: str) -> bool:
    """Equal after normalisation, or equal in value when both are numbers or fractions."""
    left, right = normalize_math(answer), normalize_math(ground_truth)
    if left == right:
        return True
    a, b = _math_value(left), _math_value(right)
    return a is not None and a == b


def verify_math(response: str, ground_truth: str) -> bool:
    """MATH: the extracted answer (see `extract_math_answer`) is equivalent to the ground truth."""
    answer = extract_math_answer(response)
    return answer is not None and math_equivalent(answer, ground_truth)


# ---------------------------------------------------------------------------------------------
# IFEval constraints: names and keyword arguments as the RLVR data writes them
# ---------------------------------------------------------------------------------------------


def _quantified(count: int, n: int, quantifier: str, around: int) -> bool:
    if quantifier == "at least":
        return count >= n
    if quantifier == "at most":
        return count <= n
    if quantifier == "around":
        return abs(count - n) <= around
    raise RewardError(f"quantifier must be 'at least', 'at most' or 'around', got {quantifier!r}")


def verify_keywords(text: str, keyword_list: list[str]) -> bool:
    """Every keyword appears (case-insensitive)."""
    return all(keyword.lower() in text.lower() for keyword in keyword_list)


def verify_keyword_frequency(text: str, word: str, N: int) -> bool:
    """`word` appears exactly N times as a whole word (case-insensitive)."""
    return re.findall(r"\b\w+\b", text.lower()).count(word.lower()) == N


def validate_forbidden_words(text: str, forbidden_words: list[str]) -> bool:
    """None of the words appears (case-insensitive substring)."""
    return not any(word.lower() in text.lower() for word in forbidden_words)


def verify_letter_frequency(text: str, letter: str, N: int) -> bool:
    """`letter` occurs exactly N times (case-sensitive)."""
    return text.count(letter) == N


def verify_paragraph_count(text: str, N: int) -> bool:
    """Exactly N non-empty paragraphs separated by the markdown divider `* * *`."""
    cleaned = "\n".join(line.strip() for line in text.splitlines()).strip()
    parts = cleaned.split("* * *")
    return all(part.strip() for part in parts) and len(parts) == N


def validate_word_constraint(text: str, N: int, quantifier: str) -> bool:
    """Whitespace-separated word count at least / at most / around (+-10%, at least 1) N."""
    return _quantified(len(text.split()), N, quantifier, around=max(round(N * 0.1), 1))


def verify_sentence_constraint(text: str, N: int, quantifier: str) -> bool:
    """Sentence count (split after . ? ! followed by space) at least / at most / around (+-1) N."""
    sentences = [s for s in re.split(r"(?<=[.?!])\s+", text.strip()) if s]
    return _quantified(len(sentences), N, quantifier, around=1)


def validate_paragraphs(text: str, N: int, first_word: str, i: int) -> bool:
    """N paragraphs separated by blank lines, the i-th (1-based) starting with `first_word`."""
    paragraphs = text.split("\n\n")
    return len(paragraphs) == N and 1 <= i <= N and paragraphs[i - 1].strip().startswith(first_word)


def verify_postscript(text: str, postscript_marker: str) -> bool:
    """A postscript starting with the marker, with something after it."""
    index = text.find(postscript_marker)
    return index >= 0 and len(text[index:].strip()) > len(postscript_marker)


def validate_placeholders(text: str, N: int) -> bool:
    """At least N placeholders in square brackets, e.g. [address]."""
    return len(re.findall(r"\[(.*?)\]", text)) >= N


def verify_bullet_points(text: str, N: int) -> bool:
    """Exactly N markdown bullet lines (starting with `*` or `-`)."""
    return sum(1 for line in text.splitlines() if line.strip().startswith(("*", "-"))) == N


def validate_title(text: str) -> bool:
    """A title in double angular brackets, <<like this>>."""
    return re.search(r"<<(.+?)>>", text) is not None


def validate_choice(text: str, options: list[str]) -> bool:
    """One of the options appears."""
    return any(option in text for option in options)


def validate_highlighted_sections(text: str, N: int) -> bool:
    """At least N *highlighted* sections."""
    return len(re.findall(r"\*([^*\n]+)\*", text)) >= N


def validate_sections(text: str, N: int, section_splitter: str) -> bool:
    """At least N sections headed `<splitter> <number>` (e.g. `Section 1`), case-insensitive."""
    pattern = r"\s?" + re.escape(section_splitter) + r"\s?\d+\s?"
    return len(re.split(pattern, text, flags=re.IGNORECASE)) - 1 >= N


def validate_json_format(text: str) -> bool:
    """The whole response parses as JSON (a ```json fence around it is allowed)."""
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json|JSON)?\s*(.*?)\s*```", body, re.DOTALL)
    try:
        json.loads(fenced.group(1) if fenced else body)
    except ValueError:
        return False
    return True


def validate_repeat_prompt(text: str, original_prompt: str) -> bool:
    """The response starts with the request, unchanged."""
    return text.startswith(original_prompt)


def validate_two_responses(text: str) -> bool:
    """Two different responses separated by one `******`."""
    parts = text.split("******")
    return len(parts) == 2 and parts[0].strip() != parts[1].strip() and all(p.strip() for p in parts)


def validate_uppercase(text: str) -> bool:
    """No lowercase letter."""
    return text == text.upper()


def validate_lowercase(text: str) -> bool:
    """No capital letter."""
    return text == text.lower()


def validate_frequency_capital_words(text: str, N: int, quantifier: str) -> bool:
    """All-capital words counted at least / at most / around (+-10%, at least 1) N."""
    return _quantified(len(re.findall(r"\b[A-Z]+\b", text)), N, quantifier, around=max(round(N * 0.1), 1))


def validate_end(text: str, end_phrase: str) -> bool:
    """The response ends with the exact phrase (trailing whitespace ignored)."""
    return text.rstrip().endswith(end_phrase)


def validate_quotation(text: str) -> bool:
    """The whole response is wrapped in double quotes."""
    body = text.strip()
    return len(body) >= 2 and body.startswith('"') and body.endswith('"')


def validate_no_commas(text: str) -> bool:
    """No comma at all."""
    return "," not in text


IFEVAL_CONSTRAINTS: dict[str, Callable[..., bool]] = {
    fn.__name__: fn
    for fn in (
        verify_keywords,
        verify_keyword_frequency,
        validate_forbidden_words,
        verify_letter_frequency,
        verify_paragraph_count,
        validate_word_constraint,
        verify_sentence_constraint,
        validate_paragraphs,
        verify_postscript,
        validate_placeholders,
        verify_bullet_points,
        validate_title,
        validate_choice,
        validate_highlighted_sections,
        validate_sections,
        validate_json_format,
        validate_repeat_prompt,
        validate_two_responses,
        validate_uppercase,
        validate_lowercase,
        validate_frequency_capital_words,
        validate_end,
        validate_quotation,
        validate_no_commas,
    )
}
"""IFEval constraint checks by `func_name`. (`validate_response_language` needs a language detector
and is not supported: rows that use it are refused at load time.)"""


def parse_ifeval(ground_truth: str) -> tuple[Callable[..., bool], dict[str, Any]]:
    """The constraint check and its keyword arguments (None values dropped) of a ground-truth JSON.
    Raises RewardError when it is not JSON, names no known check, or passes unknown/missing arguments."""
    try:
        spec = json.loads(ground_truth)
    except ValueError as error:
        raise RewardError(f"ifeval ground_truth is not JSON ({error}): {ground_truth[:80]!r}") from None
    if not isinstance(spec, dict) or "func_name" not in spec:
        raise RewardError(
            f"ifeval ground_truth must be a JSON object with `func_name`: {ground_truth[:80]!r}"
        )
    name = spec.pop("func_name")
    check = IFEVAL_CONSTRAINTS.get(name)
    if check is None:
        raise RewardError(f"ifeval constraint {name!r} is not supported; known: {sorted(IFEVAL_CONSTRAINTS)}")
    kwargs = {key: value for key, value in spec.items() if value is not None}
    parameters = list(inspect.signature(check).parameters)[1:]
    unknown, missing = set(kwargs) - set(parameters), set(parameters) - set(kwargs)
    if unknown or missing:
        raise RewardError(
            f"ifeval constraint {name!r} takes {parameters}; ground truth has unknown {sorted(unknown)} "
            f"and lacks {sorted(missing)}"
        )
    return check, kwargs


def verify_ifeval(response: str, ground_truth: str) -> bool:
    """IFEval: the constraint named by the ground-truth JSON holds for the response."""
    check, kwargs = parse_ifeval(ground_truth)
    return bool(check(response, **kwargs))


# ---------------------------------------------------------------------------------------------
# Registry by dataset, and the entry point
# ---------------------------------------------------------------------------------------------

VERIFIERS: dict[str, Verifier] = {"gsm8k": verify_gsm8k, "math": verify_math, "ifeval": verify_ifeval}
"""Verifier by the `dataset` field of an RLVR row."""


def verifier(dataset: str) -> Verifier:
    """The verifier of a dataset name; RewardError naming the known ones when there is none."""
    found = VERIFIERS.get(dataset.lower())
    if found is None:
        raise RewardError(f"no verifier for dataset {dataset!r}; known: {sorted(VERIFIERS)}")
    return found


def check_row(row: Mapping[str, Any], where: str = "row") -> None:
    """Refuse, at load time, a row whose answer could never be checked (RewardError naming `where`)."""
    for key in ("ground_truth", "dataset"):
        if not isinstance(row.get(key), str):
            raise RewardError(f"{where}: `{key}` must be a string, got {type(row.get(key)).__name__}")
    try:
        verifier(row["dataset"])
        if row["dataset"].lower() == "ifeval":
            parse_ifeval(row["ground_truth"])
    except RewardError as error:
        raise RewardError(f"{where}: {error}") from None


def check_rows(rows: Iterable[Mapping[str, Any]], source: str = "data") -> int:
    """`check_row` on every row (named `<source> row <n>` in errors); returns how many were checked."""
    count = 0
    for count, row in enumerate(rows, start=1):
        check_row(row, f"{source} row {count}")
    return count


def verify(dataset: str, response: str, ground_truth: str) -> bool:
    """Whether `response` answers correctly, by the verifier of `dataset` (gsm8k, math, ifeval; any case).

    Raises RewardError when no verifier has that name, or the ground truth is malformed (ifeval)."""
    return verifier(dataset)(response, ground_truth)
