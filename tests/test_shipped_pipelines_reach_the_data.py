"""Every dataset entry of every shipped pipeline for real data (and each `source:` nested in
one) builds up to the point where it looks for its files: on a machine without the data the
only error is the dataset's own "not found" line. `core validate` stops at the first entry,
so an entry further down (or a nested source) could otherwise crash only on the machine that
has the data: `name:` inside an Instruct-ReID `source:` collided with Registry.build's own
`name` parameter (a TypeError), found in review 15."""

from pathlib import Path

import pytest

from core.config.loading import load_pipeline
from core.pipeline import DATASET_KEYS
from core.registry import build_registry

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
REAL = sorted(p.name for p in PIPELINES.glob("*.yaml") if "synthetic" not in p.name and "quickstart" not in p.name)


def entries(data: dict):
    """Each dataset spec: the entries of data.train / data.test and the `source:` mappings
    inside them (an `instruct` entry's own, or each of its `sources`)."""
    for split in ("train", "test"):
        for i, spec in enumerate(data.get(split) or []):
            yield f"data.{split}.{i}", spec
            if isinstance(spec.get("source"), dict):
                yield f"data.{split}.{i}.source", spec["source"]
            for j, part in enumerate(spec.get("sources") or []):
                yield f"data.{split}.{i}.sources.{j}.source", part["source"]


@pytest.mark.parametrize("name", REAL)
def test_every_dataset_entry_builds_up_to_its_files(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative roots (data/...) exist nowhere
    registry = build_registry()
    data = load_pipeline(PIPELINES / name).data["data"]
    checked = 0
    for where, spec in entries(data):
        params = {k: v for k, v in spec.items() if k not in ("dataset", *DATASET_KEYS)}
        target = registry.get("dataset", spec["dataset"]).load()
        with pytest.raises((FileNotFoundError, ValueError), match="not found") as caught:
            target(**params)
        assert "got multiple values" not in str(caught.value), where
        checked += 1
    assert checked >= 1
