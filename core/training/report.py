"""The final report: markdown tables of every evaluation of a run, untrained baseline first;
the metrics of the groups within a test set (query categories, an evaluator's tasks or
settings: `<set>/<group>/<metric>` keys) of the last evaluation in a second table."""

from __future__ import annotations

from typing import Any

#: Metric columns in the order ReID papers print them.
COLUMNS = ("mAP", "rank-1", "rank-5", "rank-10", "mINP")


def _groups(history: list[dict[str, Any]], depth: int) -> list[str]:
    """Prefixes of `<prefix>/<metric>` keys whose prefix has `depth` parts, in order of appearance."""
    found: list[str] = []
    for record in history:
        for key in record:
            parts = key.split("/")
            if len(parts) == depth + 1 and parts[-1] in COLUMNS and "/".join(parts[:-1]) not in found:
                found.append("/".join(parts[:-1]))
    return found


def metric_keys(history: list[dict[str, Any]]) -> list[str]:
    """Test-set level keys (`<set>/<metric>`), the `mean` over sets last."""
    sets = sorted(_groups(history, 1), key=lambda s: s == "mean")
    return [f"{s}/{c}" for s in sets for c in COLUMNS if any(f"{s}/{c}" in r for r in history)]


def format_table(rows: list[tuple[str, dict[str, Any]]], keys: list[str]) -> str:
    lines = ["| | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for label, record in rows:
        cells = [f"{record[k]:.2f}" if isinstance(record.get(k), (int, float)) else "-" for k in keys]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def skipped_queries_lines(record: dict[str, Any]) -> list[str]:
    """A sentence per test set whose evaluator left queries out of every metric (the
    standard protocol skips a query with no gallery item of its identity from another
    camera): the table's numbers are over the valid queries alone, which a reader
    comparing with a paper's query count must know."""
    lines = []
    for name, total in (record.get("queries") or {}).items():
        valid = record.get(f"{name}/num_valid_queries")
        if isinstance(valid, (int, float)) and int(valid) < total:
            lines.append(f"Test set '{name}' ({record['tag']}): {total - int(valid)} of {total} queries have no "
                         "gallery item of their identity that evaluation ranks (e.g. from another camera) and are "
                         f"left out of every metric; the numbers are over the other {int(valid)}.")
    return ["", *lines] if lines else []


def budget_line(record: dict[str, Any]) -> str:
    """The training budget behind `record` (an evaluation): optimisation steps and images
    seen, what must match across the rows of a comparison (issue 20)."""
    steps, images = record.get("global_step"), record.get("images_seen")
    if steps is None:
        return ""
    seen = f", {images:,} training images seen" if isinstance(images, int) else ""
    return f"Training budget: {steps:,} optimisation steps{seen}."


#: the report of a run that evaluated nothing (a train-only dataset, `data.test: []`)
NO_TEST_SET = ("This run has no test set, so it has no metrics: it trained without evaluation (the build warned "
               "why). Name one in data.test, or give the training dataset its query and gallery splits, to evaluate.")


def format_report(name: str, history: list[dict[str, Any]]) -> str:
    if not history:  # no evaluation at all: an empty table (`| |  |`) read as a broken report
        return f"# {name}\n\n{NO_TEST_SET}\n"
    budget = budget_line(history[-1])
    text = [f"# {name}", "", "Metrics in % (CMC rank-k, mAP, mINP) per test set."
            + (f" {budget}" if budget else ""), "",
            format_table([(r["tag"], r) for r in history], metric_keys(history))]
    text += skipped_queries_lines(history[-1])
    categories = _groups(history[-1:], 2)
    if categories:
        last = history[-1]
        text += ["", f"Within each test set: per query category, task or setting ({last['tag']}):", "",
                 format_table([(c, {m: last.get(f"{c}/{m}") for m in COLUMNS}) for c in categories],
                              list(COLUMNS))]
    return "\n".join(text) + "\n"
