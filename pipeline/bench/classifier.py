"""`llmpipe bench classifier`: the task classifier against the labelled prompt set
(pipeline/routing/examples.py): accuracy, per-language accuracy and a confusion matrix."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from pipeline.routing.classifier import TASK_CLASSES, Classifier, RuleClassifier
from pipeline.routing.examples import DEFAULT_DATA, load_examples

HELP = "the rule classifier on the labelled prompt set: accuracy and confusion matrices"

@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    confusion: dict[str, dict[str, int]]       # true label -> predicted label -> count
    n: int
    per_language: dict[str, float]             # lang -> accuracy
    per_language_confusion: dict[str, dict[str, dict[str, int]]]

    def count(self, label: str, predicted: str) -> int:
        return self.confusion[label][predicted]


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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="JSONL of labelled prompts")


def main(args: argparse.Namespace) -> int:
    print(format_report(evaluate(RuleClassifier(), args.data)))
    return 0
