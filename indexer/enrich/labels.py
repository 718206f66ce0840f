"""A label set as input: labels from text or a file, prompt templates, which labels become tags, and the checks
that run before any model does, so a typo fails in a moment. No torch here: the front ends import it."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from indexer.errors import BadInputError

DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a blurry photo of a {}.",
    "a good photo of a {}.",
)
DEFAULT_SET = "default"
MAX_LABELS = 5_000
MAX_LABEL_CHARS = 200
MAX_TEMPLATES = 50


@dataclass(frozen=True)
class TagOptions:
    """Which labels become tags. Neither top_k nor threshold: the best label (single) or 0.5 (multi)."""

    top_k: int | None = None
    threshold: float | None = None
    multi_label: bool = False

    def resolved(self, n_labels: int) -> "TagOptions":
        """Check the options against the label count and fill in the defaults."""
        if self.top_k is not None and not 1 <= self.top_k <= n_labels:
            raise BadInputError(f"top_k must be between 1 and the number of labels ({n_labels})")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise BadInputError("threshold is a probability: give a number between 0 and 1 (exclusive)")
        if self.top_k is None and self.threshold is None:
            return TagOptions(threshold=0.5, multi_label=True) if self.multi_label else TagOptions(top_k=1)
        return self


def parse_labels(text: str) -> list[str]:
    """Labels from a comma-separated string."""
    return check_labels(text.split(","))


def read_labels_file(path: Path) -> list[str]:
    """Labels from a file: one a line; blank lines and lines starting with # are ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(f"cannot read the labels file {path}: {e}") from None
    return check_labels(line for line in lines if not line.lstrip().startswith("#"))


def check_labels(raw: Iterable[str]) -> list[str]:
    """Stripped, non-empty, unique (ignoring case) labels, no more than MAX_LABELS."""
    labels = [label.strip() for label in raw if label.strip()]
    if not labels:
        raise BadInputError("the label set is empty: give at least one label")
    if len(labels) > MAX_LABELS:
        raise BadInputError(f"{len(labels)} labels is over the limit of {MAX_LABELS}; split them into several sets")
    long = [label for label in labels if len(label) > MAX_LABEL_CHARS]
    if long:
        raise BadInputError(f"labels must be at most {MAX_LABEL_CHARS} characters; {long[0][:40]!r}... is longer")
    seen: dict[str, str] = {}
    dupes = []
    for label in labels:
        if label.casefold() in seen:
            dupes.append(label)
        seen.setdefault(label.casefold(), label)
    if dupes:
        raise BadInputError(f"duplicate labels (case is ignored): {', '.join(sorted(set(dupes)))}; list each once")
    return labels


def check_templates(templates: Sequence[str] | None) -> list[str]:
    """The default ensemble when none are given; each template must hold exactly one {}."""
    if not templates:
        return list(DEFAULT_TEMPLATES)
    if len(templates) > MAX_TEMPLATES:
        raise BadInputError(f"at most {MAX_TEMPLATES} templates")
    for template in templates:
        if template.count("{}") != 1:
            raise BadInputError(f"template {template!r} needs one {{}} where the label goes: 'a photo of a {{}}.'")
    return list(templates)


@dataclass(frozen=True)
class LabelSetRequest:
    """A checked request to tag a store: labels, templates, options and the set's name."""

    labels: tuple[str, ...]
    templates: tuple[str, ...]
    options: TagOptions
    name: str


def check_request(
    labels: Sequence[str],
    templates: Sequence[str] | None = None,
    options: TagOptions = TagOptions(),
    name: str = DEFAULT_SET,
) -> LabelSetRequest:
    """Every check a tagging job needs, done before any model runs; BadInputError says what is wrong."""
    labels, templates = check_labels(labels), check_templates(templates)
    name = name.strip()
    if not name or len(name) > MAX_LABEL_CHARS:
        raise BadInputError(f"a label set needs a name of 1 to {MAX_LABEL_CHARS} characters")
    return LabelSetRequest(tuple(labels), tuple(templates), options.resolved(len(labels)), name)
