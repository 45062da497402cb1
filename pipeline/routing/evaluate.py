"""Offline evaluation of a task classifier against a labelled JSONL set
(`{"prompt", "label", "lang"}` per line): accuracy, per-language accuracy and a confusion
matrix. `python -m pipeline.routing.evaluate [--data PATH]` prints the report."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.paths import REPO_DIR
from pipeline.routing.classifier import TASK_CLASSES, Classifier, RuleClassifier

DEFAULT_DATA = REPO_DIR / "tests" / "unit" / "data" / "classifier_eval.jsonl"


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    confusion: dict[str, dict[str, int]]       # true label -> predicted label -> count
    n: int
    per_language: dict[str, float]             # lang -> accuracy
    per_language_confusion: dict[str, dict[str, dict[str, int]]]

    def count(self, label: str, predicted: str) -> int:
        return self.confusion[label][predicted]


@dataclass(frozen=True)
class Example:
    prompt: str
    label: str
    lang: str


def load_examples(path: Path) -> list[Example]:
    examples = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            example = Example(str(row["prompt"]), str(row["label"]), str(row.get("lang", "?")))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{lineno}: expected a JSON object with prompt and label: {exc}") from None
        if example.label not in TASK_CLASSES:
            raise ValueError(f"{path}:{lineno}: label must be one of {TASK_CLASSES}, got {example.label!r}")
        examples.append(example)
    return examples


def _empty_matrix() -> dict[str, dict[str, int]]:
    return {label: {predicted: 0 for predicted in TASK_CLASSES} for label in TASK_CLASSES}


def evaluate(classifier: Classifier, path: Path = DEFAULT_DATA) -> EvalResult:
    examples = load_examples(path)
    if not examples:
        raise ValueError(f"{path}: no examples")
    confusion = _empty_matrix()
    by_lang: dict[str, dict[str, dict[str, int]]] = {}
    for ex in examples:
        predicted = classifier.classify([("user", ex.prompt)]).task_class
        confusion[ex.label][predicted] += 1
        by_lang.setdefault(ex.lang, _empty_matrix())[ex.label][predicted] += 1
    return EvalResult(
        accuracy=_accuracy(confusion), confusion=confusion, n=len(examples),
        per_language={lang: _accuracy(m) for lang, m in sorted(by_lang.items())},
        per_language_confusion=dict(sorted(by_lang.items())))


def _accuracy(matrix: dict[str, dict[str, int]]) -> float:
    total = sum(sum(row.values()) for row in matrix.values())
    correct = sum(matrix[label][label] for label in TASK_CLASSES)
    return correct / total if total else 0.0


def _matrix_table(matrix: dict[str, dict[str, int]]) -> list[str]:
    width = max(len(c) for c in TASK_CLASSES) + 2
    lines = ["true \\ predicted".ljust(18) + "".join(c.rjust(width) for c in TASK_CLASSES)
             + "total".rjust(width)]
    for label in TASK_CLASSES:
        row = matrix[label]
        lines.append(label.ljust(18) + "".join(str(row[c]).rjust(width) for c in TASK_CLASSES)
                     + str(sum(row.values())).rjust(width))
    return lines


def format_report(result: EvalResult) -> str:
    lines = [f"examples: {result.n}", f"accuracy: {result.accuracy:.1%}"]
    for lang, acc in result.per_language.items():
        n = sum(sum(r.values()) for r in result.per_language_confusion[lang].values())
        lines.append(f"accuracy[{lang}]: {acc:.1%} (n={n})")
    lines += ["", "confusion (all):", *_matrix_table(result.confusion)]
    for lang, matrix in result.per_language_confusion.items():
        lines += ["", f"confusion ({lang}):", *_matrix_table(matrix)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.routing.evaluate",
                                     description="Evaluate the rule classifier on labelled prompts.")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="JSONL of labelled prompts")
    args = parser.parse_args(argv)
    print(format_report(evaluate(RuleClassifier(), args.data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
