"""`core validate --data PIPELINE`: the data checks `core run` makes before training, alone
(no model, no labelers): every image file's header and tail (core.data.image_check),
every test set's query and gallery, and the test sets' protocol warnings (identities seen
in training, query images also in the gallery: core.data.protocol_checks). With
`--full-decode`, every image file is decoded too: it finds the files whose middle is
damaged, which the header and tail check passes and a run then meets at the first batch
that holds one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from core.data.image_check import SKIP_FLAG, files_used_in, find_bad_images, pipeline_sets, write_bad_list

#: what each depth of check reads, for the summary
CHECKS = {False: "header and tail", True: "full decode"}


def validate_data(pipeline: str | Path, overrides: Sequence[str] = (), full_decode: bool = False) -> dict[str, Any]:
    """A summary: the sets and their sizes, every unreadable file with its reason and the
    sets using it, the file holding that list, and the empty-split faults. `full_decode`:
    decode every image file, not only its header and tail."""
    from core.config.loading import load_pipeline
    from core.pipeline import build_data_sources, empty_split_fault, list_records, test_set_warnings

    cfg = load_pipeline(pipeline, list(overrides))
    sources = build_data_sources(cfg)
    train_records, test_records = list_records(cfg, sources)
    train = [list(records) for records in train_records]
    test = [(list(q), list(g)) for q, g in test_records]
    sets = pipeline_sets(sources, train, test)
    used_in = files_used_in(sets)
    bad = find_bad_images(used_in, full_decode=full_decode)
    list_file = write_bad_list(bad, used_in)[0] if bad else None
    faults = [str(fault) for i, (q, g) in enumerate(test)
              if (fault := empty_split_fault(cfg, sources, i, q, g, (len(q), len(g)))) is not None]
    names = [n for n, _ in sources.test_pairs]
    warnings = [w for i, (q, g) in enumerate(test_records) if len(q) and len(g)
                for w in test_set_warnings(cfg, sources, i, names[i] if names.count(names[i]) == 1 else
                                           f"{names[i]}#{i}", train_records, q, g)]
    return {
        "pipeline": str(pipeline),
        "sets": {s.label: {"records": len(s.records), "files": sum(r.path is not None for r in s.records),
                           "unreadable": sum(r.path is not None and str(r.path) in bad for r in s.records)}
                 for s in sets},
        "files_checked": len(used_in),
        "check": CHECKS[full_decode],
        "unreadable": [{"path": p, "reason": why, "used_in": used_in[p]} for p, why in bad.items()],
        "list_file": str(list_file) if list_file else None,
        "split_faults": faults,
        "warnings": warnings,
        "ok": not bad and not faults,
    }


def validate_data_command(pipelines: Sequence[str], overrides: Sequence[str] = (), as_json: bool = False,
                          full_decode: bool = False) -> int:
    """Print each pipeline's data summary; 0 when every one is sound, 2 otherwise."""
    rc = 0
    for path in pipelines:
        summary = validate_data(path, overrides, full_decode=full_decode)
        rc = rc if summary["ok"] else 2
        if as_json:
            print(json.dumps(summary, indent=2))
            continue
        bad = summary["unreadable"]
        head = "data OK" if summary["ok"] else "data NOT OK"
        print(f"{path}: {head}: {summary['files_checked']:,} image files checked ({summary['check']}), "
              f"{len(bad)} unreadable")
        for label, n in summary["sets"].items():
            memory = n["records"] - n["files"]
            print(f"  {label}: {n['records']:,} images" + (f" ({memory:,} rendered in memory)" if memory else "")
                  + (f", {n['unreadable']} unreadable" if n["unreadable"] else ""))
        for item in bad:
            print(f"  unreadable: {item['path']}: {item['reason']}")
        if bad:
            what = ("replace or delete them: `core run` screens only headers and tails before training, and "
                    "stops at the first batch that holds a file only the full decode finds"
                    if full_decode else
                    f"`core run` stops on these files, `core run {SKIP_FLAG}` leaves them out (with a warning)")
            print(f"  the full list: {summary['list_file'] or '(could not be written)'}; {what}")
        for fault in summary["split_faults"]:
            print(f"  error: {fault}")
        for warning in summary["warnings"]:
            print(f"  {warning}")
    return rc
