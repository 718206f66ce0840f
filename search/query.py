"""Query arithmetic: a search is a weighted sum of ideas, some of them images, some taken away.

    beach + sunset - people        three ideas: two to find, one to move away from
    beach:2 + sunset               "beach" counts twice as much as "sunset"
    at night  (with --like 42)     stored image 42, as it would look at night

The grammar, on purpose small:

    query  := ["-"] term (op term)*
    op     := "+" or "-" with whitespace on both sides ("black-and-white" stays one idea)
    term   := text [":" weight]      weight: a number in (0, 10], right after a text not ending in a digit

The query vector is the normalised sum of each idea's unit vector times its signed weight: CLIP's
embedding arithmetic, as rclip does it. A query needs at least one idea to find (positive weight).
"""

import re
from dataclasses import dataclass

from indexer.errors import BadInputError

MAX_WEIGHT = 10.0
MAX_TERMS = 20
# An operator: "+" or "-" with whitespace on both sides (or opening the query).
OPERATOR = re.compile(r"(?:^|\s+)([+-])(?=\s|$)")
# A weight follows a text that does not end in a digit, so "at 10:30" stays a text.
WEIGHT = re.compile(r"^(.*[^\d\s]):(\d+(?:\.\d*)?|\.\d+)$", re.DOTALL)


@dataclass(frozen=True)
class Term:
    """One idea of a query: a text, or an image (a stored id or path, or an image file), with a signed weight."""

    weight: float
    text: str | None = None
    image: str | None = None

    def __post_init__(self):
        if (self.text is None) == (self.image is None):
            raise BadInputError("a query term is either a text or an image")
        if not 0 < abs(self.weight) <= MAX_WEIGHT:
            raise BadInputError(f"a term's weight must be between -{MAX_WEIGHT:g} and {MAX_WEIGHT:g}, and not 0")


def parse_query(query: str) -> list[Term]:
    """The terms of a query string; a malformed one is a BadInputError that says where."""
    query = query.strip()
    if not query:
        return []
    pieces = OPERATOR.split(query)
    # split() gives [text, op, text, op, text...]; a leading operator leaves an empty first text.
    texts, signs = pieces[0::2], ["+", *pieces[1::2]]
    if OPERATOR.match(query):
        texts, signs = texts[1:], signs[1:]
    terms = []
    for position, (sign, text) in enumerate(zip(signs, texts, strict=True), 1):
        text = text.strip()
        if not text:
            raise BadInputError(f"query term {position} is empty: put an idea between each + and -")
        weight = 1.0
        if match := WEIGHT.match(text):
            text, weight = match[1].strip(), float(match[2])
            if not 0 < weight <= MAX_WEIGHT:
                raise BadInputError(f"the weight of {text!r} must be above 0 and at most {MAX_WEIGHT:g}")
        terms.append(Term(weight if sign == "+" else -weight, text=text))
    return terms


def check_terms(terms: list[Term]) -> list[Term]:
    """Terms a search can use: some, not too many, at least one with a positive weight."""
    if not terms:
        raise BadInputError("the query is empty: give a text, an image, or both")
    if len(terms) > MAX_TERMS:
        raise BadInputError(f"a query may combine at most {MAX_TERMS} terms")
    if all(t.weight < 0 for t in terms):
        raise BadInputError("the query only takes ideas away: add at least one to look for (a term with +)")
    return terms
