"""The labelled prompt set (`{"prompt", "label", "lang"}` per line, JSONL) that the
classifier is measured on and the token estimate is calibrated against."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.paths import REPO_DIR
from pipeline.routing.classifier import TASK_CLASSES

DEFAULT_DATA = REPO_DIR / "tests" / "unit" / "data" / "classifier_eval.jsonl"


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
