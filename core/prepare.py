"""The `prepare` section of a pipeline and the `annotations` key of a dataset spec:
labelers run before training, and annotation files attached to the records.

```yaml
prepare:                                  # run once; skipped while the file is up to date
  - {name: vge, out: labels/people_parts.npz, grounder: {name: stripes}}
data:
  train: [{dataset: market1501, root: data/market1501}]
  test:  [{dataset: msmt17, root: data/MSMT17, annotations: labels/msmt_parts.npz}]
```

A prepare step labels the training images of every train dataset and attaches its file
to them; `annotations: FILE` on a dataset spec attaches a file made earlier (by `core
label`, or by any tool that writes the format of core.data.annotations). Paths are
relative to the working directory, like dataset roots.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from core.config.loading import ConfigError, LoadedConfig
from core.config.validation import describe
from core.data.annotations import Annotations, attach, qualified_key
from core.data.table import RecordTable
from core.interfaces import Dataset, Labeler
from core.log_setup import echo_to

_echo = echo_to(logging.getLogger(__name__))


def table_keys(table: RecordTable, datasets: Sequence[Dataset]) -> list[str]:
    """Qualified record keys of a table's records ("<dataset name>:<record key>")."""
    return [qualified_key(table.sources[sid], datasets[sid].record_key(r))
            for sid, r in zip(table.source_ids.tolist(), table.records)]


def attach_dataset_annotations(cfg: LoadedConfig, specs: list, datasets: list[Dataset], train: RecordTable | None,
                               grid: tuple[int, int] | None, key: str,
                               test_tables: list[tuple[int, RecordTable]] | None) -> None:
    """Attach `annotations: FILE` of dataset specs: to the train table's records of that
    dataset (all of them must be annotated) or to the test tables built from it."""
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or spec.get("annotations") is None:
            continue
        file = spec["annotations"]
        if not isinstance(file, str):
            raise cfg.error(f"{key}.{i}.annotations", f"expected the path of an annotation file, got {describe(file)}")
        where = f"{cfg.origin(f'{key}.{i}.annotations')}: {key}.{i}.annotations ({file})"
        try:
            annotations = Annotations.load(file)
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        try:
            if train is not None:
                rows = [j for j, sid in enumerate(train.source_ids.tolist()) if sid == i]
                name = train.sources[i]
                keys = [qualified_key(name, datasets[i].record_key(train.records[j])) for j in rows]
                attach(annotations, train.records, keys, where=where, required=True, grid=grid, rows=rows)
            for index, table in test_tables or []:
                if index == i:
                    attach(annotations, table.records, table_keys(table, [datasets[i]]), where=where,
                           required=False, grid=grid)
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(str(exc)) from None


def _check_out(cfg: LoadedConfig, key: str, out: Path) -> None:
    """Refuse an `out:` the annotation file cannot be written to (a folder, a path through
    a file, a folder that cannot be created or written: `folder_problem`, as for run
    folders) before the labeler runs; its folder is made, as the labelling writes there."""
    from core.training.run_folder import folder_problem

    if out.is_dir():
        raise cfg.error(key, f"{out} is a folder; 'out' is the annotation file to write, e.g. {out / 'parts.npz'}")
    problem = folder_problem(out.parent)
    if problem is not None:
        raise cfg.error(key, f"cannot write {out}: {problem}; give a path in a folder you can write")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a name too long, a folder made or removed meanwhile
        raise cfg.error(key, f"cannot write {out}: its folder {out.parent} cannot be created "
                             f"({exc.strerror or exc}); give a path in a folder you can write") from None


@dataclass
class DeferredLabels:
    """A `prepare` step whose file is missing or stale, left unlabelled by a check
    (`core validate`): `label_rows` labels only the rows the check's batch reads."""
    key: str
    name: str
    out: Path
    labeler: Labeler
    items: list
    fingerprint: dict
    where: str
    provenance: dict

    def label_rows(self, train: RecordTable, rows: Sequence[int], ctx: Any, folder: Path) -> int:
        """Label train rows `rows` into a file in `folder` (not `out`: the pipeline's own
        file stays as it is) and attach it to those rows; returns how many were labelled."""
        from core.labeling import run_labeler

        rows = sorted(set(int(r) for r in rows))  # a PK batch may draw an image twice
        items = [self.items[r] for r in rows]
        try:
            run_labeler(self.labeler, items, folder / f"{self.key}.npz", fingerprint=self.fingerprint, ctx=ctx,
                        name=self.name, provider=self.provenance.get("plugin"), version=self.provenance.get("version"),
                        force=True, progress=False, echo=lambda *_: None)
            attach(Annotations.load(folder / f"{self.key}.npz"), train.records, [i.key for i in items],
                   where=self.where, required=True, grid=ctx.patch_grid, rows=rows)
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(str(exc)) from None
        return len(rows)


def prepare_steps(cfg: LoadedConfig) -> list:
    """The pipeline's `prepare` steps as a list (one mapping is a list of one)."""
    steps = cfg.data.get("prepare") or []
    if isinstance(steps, dict):
        steps = [steps]
    if not isinstance(steps, list):
        raise cfg.error("prepare", f"expected a list of labelers [{{name: ..., out: ...}}], got {describe(steps)}")
    return steps


def build_step_labeler(cfg: LoadedConfig, builder: Any, ctx: Any, i: int, spec: Any) -> tuple[str, dict, Labeler]:
    """(name, params, labeler) of `prepare.<i>`, built (not run) and checked as a run does:
    `out` given, the component a core Labeler. Used by the run and by the sweep's check
    (core.parameter_check), so both refuse the same steps."""
    key = f"prepare.{i}"
    name, params = builder.spec(key, spec)
    out = params.get("out")
    if not isinstance(out, str) or not out:
        raise cfg.error(f"{key}.out", "each prepare step needs 'out': the annotation file to write, "
                                      "e.g. labels/parts.npz")
    labeler = builder.build("labeler", key, spec, ctx, reserved=("out",))
    if not isinstance(labeler, Labeler):
        raise cfg.error(f"{key}.name", f"labeler '{name}' is a {type(labeler).__name__}, not a core Labeler")
    return name, params, labeler


def run_prepare_steps(cfg: LoadedConfig, builder: Any, ctx: Any, train_names: list[str], train_specs: list,
                      train_datasets: list[Dataset], train: RecordTable, force: bool = False,
                      may_label: bool = True, echo: Callable[[str], None] = _echo,
                      deferred: list[DeferredLabels] | None = None) -> list[Path]:
    """Run (or reuse) each `prepare` labeler over the training images, attach its file.
    `may_label` False: only reuse; a file missing or stale is an error naming `core label`.
    `deferred` (a check): a step whose file is missing or stale is built, its `out`
    checked, and appended there instead of labelling every image."""
    from core.labeling import LabelItem, is_up_to_date, run_labeler
    from core.training import distributed as D

    steps = prepare_steps(cfg)
    if not steps:
        return []
    outs = []
    keys = table_keys(train, train_datasets)
    items = [LabelItem(train_datasets[sid], r, k)
             for sid, r, k in zip(train.source_ids.tolist(), train.records, keys)]
    data_specs = [{"dataset": n, **builder.spec(f"data.train.{i}", s, "dataset")[1]}
                  for i, (n, s) in enumerate(zip(train_names, train_specs))]
    for i, spec in enumerate(steps):
        key = f"prepare.{i}"
        name, params, labeler = build_step_labeler(cfg, builder, ctx, i, spec)
        out = params["out"]
        fingerprint = {"labeler": name, "params": {k: v for k, v in params.items() if k != "out"},
                       "data": data_specs, "patch_grid": list(ctx.patch_grid) if ctx.patch_grid else None}
        provenance = builder.provenance.get(key, {})
        where = f"{cfg.origin(key)}: {key} ({out})"
        checking = deferred is not None or ctx.world_size > 1 or not may_label  # else run_labeler looks
        stale = checking and (force or not is_up_to_date(Path(out), fingerprint, keys))
        if deferred is not None and stale:
            _check_out(cfg, f"{key}.out", Path(out))
            deferred.append(DeferredLabels(key, name, Path(out), labeler, items, fingerprint, where, provenance))
            continue
        if (ctx.world_size > 1 or not may_label) and stale:
            if not may_label:  # resuming: the run goes on with the labels it started with
                raise cfg.error(key, f"labeler '{name}''s file {out} is missing or does not match this run's "
                                     f"training data, and resuming a run does not label (it goes on with the labels "
                                     f"it started with; a received run folder's labeler is code it names). Put the "
                                     f"run's {out} back, or label with `core label {cfg.file}` if you trust its "
                                     f"labeler, then resume")
            # one rank labelling for hours while the others hit the collective timeout
            raise cfg.error(key, f"labeler '{name}' would have to label {len(keys)} images first, and labelling "
                                 f"does not run under torchrun (the other processes would time out waiting). "
                                 f"Run `core label {cfg.file}` in one process first, then start torchrun again")
        if ctx.rank == 0:  # before the labelling, not when its file is written after hours of it
            _check_out(cfg, f"{key}.out", Path(out))
        try:
            if ctx.rank == 0:  # one process labels; the others wait and read the file
                run_labeler(labeler, items, out, fingerprint=fingerprint, ctx=ctx, name=name,
                            provider=provenance.get("plugin"), version=provenance.get("version"),
                            force=force, echo=echo)
            D.barrier()
            attach(Annotations.load(out), train.records, keys, where=where, required=True, grid=ctx.patch_grid)
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(str(exc)) from None
        outs.append(Path(out))
    return outs
