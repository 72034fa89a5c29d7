"""The `core` command line. Start-up is cheap: this module imports neither torch nor any
component; `core --help` and `core plugins` run without torch."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from core import __version__

EPILOG = """\
examples:
  core run pipelines/quickstart.yaml                     train and evaluate
  core run pipelines/quickstart.yaml --set stages.0.epochs=2 --set sampler.k=8
  core run a.yaml b.yaml                                 several runs, one comparison table
  core run a.yaml --grid sampler.k=4,8 --seeds 0,1,2     an ablation grid, mean ± std over seeds
  core eval runs/quickstart-20261121-101500              evaluate a trained run (or a checkpoint file)
  core run --resume runs/quickstart-20261121-101500      continue a run exactly where it stopped
  core run pipelines/quickstart.yaml --print-config      show the resolved pipeline and exit
  core validate pipelines/quickstart.yaml                build everything, run one step
  core plugins                                           installed plugins and their components

Pipelines are YAML: `_base_` inherits another file (mappings merge, lists are replaced,
`_delete_: true` replaces a mapping); `--set key.path=value` overrides any key (list items
by index: losses.0.weight=0.5). Environment: CORE_LOAD_PLUGINS, CORE_DISABLE_PLUGINS,
CORE_STRICT_PLUGINS=1, CORE_TRACE_PLUGINS=1 (see README).
"""


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a pipeline key (value parsed as YAML); repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="core", description="reid-core: train and evaluate object re-identification pipelines "
                                 "assembled from plugins by a YAML file.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"reid-core {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="train and evaluate one or more pipelines",
                       description="Train and evaluate pipelines. Each run writes a run folder: the resolved "
                                   "pipeline with the plugin behind each component, metrics.jsonl, report.md, "
                                   "environment.json and checkpoints/last.pt. Several pipelines end with one "
                                   "comparison table.")
    p.add_argument("pipelines", nargs="*", metavar="PIPELINE", help="pipeline YAML file(s)")
    _add_set(p)
    p.add_argument("--run-dir", help="run folder to write (default: <trainer.output_dir>/<name>-<time>); "
                                     "one pipeline only")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from checkpoints/last.pt "
                                                       "(model, optimizer, schedule, position, RNG)")
    p.add_argument("--print-config", action="store_true", help="print the resolved pipeline and exit")
    p.add_argument("--grid", action="append", default=[], metavar="KEY.PATH=V1,V2",
                   help="run every value (every combination over several --grid); repeatable")
    p.add_argument("--seeds", metavar="S1,S2", help="run each variant with each seed (mean ± std in the table)")
    p.add_argument("--sweep-dir", help="folder for a sweep's runs and comparison table "
                                       "(default: <trainer.output_dir>/sweep-<time>)")
    p.add_argument("--overwrite", action="store_true",
                   help="let --run-dir replace the run already in that folder (its outputs only)")
    p.add_argument("--continue", dest="continue_sweep", action="store_true",
                   help="with --sweep-dir: go on with a sweep that stopped part-way; finished runs are read "
                        "back (metrics.jsonl), stopped ones resumed, the others run")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="drop unreadable images found before training (with a warning) instead of stopping")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("eval", help="evaluate a trained run or checkpoint, or released weights of another code base",
                       description="Evaluate the model of a run folder (or one of its checkpoints) on the "
                                   "pipeline's test sets; --set may change the evaluator or the test data "
                                   "(e.g. --set evaluator.metric=euclidean --set trainer.eval_flip=true). "
                                   "With --weights, the target is a pipeline YAML (the architecture and the test "
                                   "data) and FILE another code base's released weights, converted into it "
                                   "(docs/model-zoo.md, 'Evaluating released weights').")
    p.add_argument("target", metavar="RUN_DIR_OR_CHECKPOINT_OR_PIPELINE")
    from core.tools.commands import add_released_weights_args  # torch-free at import

    add_released_weights_args(p)
    _add_set(p)
    p.add_argument("--json", action="store_true",
                   help="print the metrics as JSON (with --weights also 'released': the file, its reader, what was "
                        "loaded, left out and kept, and the notes)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("validate", help="build a pipeline and run one step without training",
                       description="Check a pipeline: validate every key, build every component, load the "
                                   "data, and run one forward and backward pass on one batch (no update).")
    p.add_argument("pipelines", nargs="+", metavar="PIPELINE")
    _add_set(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--data", action="store_true",
                   help="check only the data, as `core run` does before training: every image file's header "
                        "and tail, every test set's query and gallery (no model is built)")
    p.add_argument("--full-decode", action="store_true",
                   help="with --data (implies it): decode every image file, not only its header and tail; finds "
                        "the files whose middle is damaged, which a run meets only at the batch that holds one "
                        "(slower; the verdicts are cached)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("label", help="run a pipeline's labelers (its `prepare` steps) over the training images",
                       description="Run the pipeline's `prepare` labelers over its training images and write "
                                   "their annotation files (resumable: an interrupted run continues; a file "
                                   "that is up to date is kept unless --force).")
    p.add_argument("pipeline", metavar="PIPELINE")
    _add_set(p)
    p.add_argument("--force", action="store_true", help="label again even when the files are up to date")
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("plugins", help="list installed plugins and the components they provide",
                       description="List the plugins (built-in, installed through the `reid_core` entry "
                                   "point) with their versions and components; plugins that failed to load "
                                   "are shown with their error.")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_plugins)

    from core.plugins import get_plugin_manager

    # the core's own tools are the CLI's, not a plugin's: added here, so the plugin layer
    # (core.builtins) never imports the CLI's modules
    from core.data.commands import add_data_command  # torch-free at import
    from core.tools.commands import add_tool_commands  # torch-free at import

    add_data_command(sub)
    add_tool_commands(sub)
    get_plugin_manager().hook.register_commands(subparsers=sub)
    _add_global_flags(parser, sub)
    return parser


#: commands that read a run folder or checkpoint someone else may have made
READS_RUN_FOLDERS = ("run", "eval", "extract", "search", "explain", "export")


VERBOSITY_FLAGS = (
    ("quiet", ("-q", "--quiet"), "show only warnings and errors on the console (the run's log.txt keeps "
                                 "everything; results still print)"),
    ("verbose", ("-v", "--verbose"), "show debug messages too (on the console and in the run's log.txt)"),
)


def _add_global_flags(parser: argparse.ArgumentParser, sub) -> None:
    """--debug, --quiet and --verbose everywhere; the trust flags on the commands that load run folders."""
    from core import trust

    for name, command in sub.choices.items():
        command.add_argument("--debug", action="store_true",
                             help="on failure, print the full traceback (it also goes to the run's log.txt)")
        for dest, flags, text in VERBOSITY_FLAGS:  # a plugin's command may already use -q or -v
            flags = [f for f in flags if f not in command._option_string_actions]
            if flags:
                command.add_argument(*flags, dest=dest, action="store_true", help=text)
        if name in READS_RUN_FOLDERS or name == "validate":  # validate builds what run builds
            command.add_argument(trust.CHECKPOINT_FLAG, dest="trust_checkpoint", action="store_true",
                                 help="load a checkpoint that needs pickle, or a TorchScript archive as "
                                      "pretrained weights (they can run code: only for files you trust; "
                                      "reid-core's own checkpoints never need it)")
        if name in READS_RUN_FOLDERS:
            command.add_argument(trust.PLUGIN_FILES_FLAG, dest="allow_plugin_files", action="store_true",
                                 help="import the local plugin files (plugins: [./x.py]) a run folder's "
                                      "pipeline names (Python code: read them first)")


def cmd_plugins(args: argparse.Namespace) -> int:
    from core.plugins import get_plugin_manager
    from core.registry import KINDS, build_registry

    pm = get_plugin_manager()
    registry = build_registry(pm)
    provided: dict[str, dict[str, list[str]]] = {}
    for kind in KINDS:
        for entry in registry.entries(kind):
            provided.setdefault(entry.provider, {}).setdefault(kind, []).append(entry.name)
    rows = []
    for name, info in pm.infos.items():
        rows.append({"name": name, "version": info.version, "source": info.source,
                     "distribution": info.distribution, "provides": provided.get(name, {}),
                     "hooks": info.hooks, "error": info.error})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        title = f"{row['name']} {row['version'] or ''}".strip()
        origin = row["distribution"] or row["source"]
        print(f"{title}  ({row['source']}: {origin})")
        if row["error"]:
            print(f"  FAILED TO LOAD: {row['error'].splitlines()[-1]}")
        for kind, names in row["provides"].items():
            print(f"  {kind + ':':<11}{', '.join(names)}")
        other = [h for h in row["hooks"] if not h.startswith("register_")]
        if other:
            print(f"  {'events:':<11}{', '.join(other)}")
    for kind in KINDS:  # a name two plugins register is usable only as plugin:name
        for name, providers in registry.ambiguous(kind).items():
            print(f"note: {kind} '{name}' is registered by plugins {', '.join(providers)}; name it as "
                  + " or ".join(f"{p}:{name}" for p in providers))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    if args.data or args.full_decode:
        from core.data.validate import validate_data_command

        return validate_data_command(args.pipelines, args.overrides, as_json=args.json,
                                     full_decode=args.full_decode)
    from core.runner import validate

    for path in args.pipelines:
        summary = validate(path, args.overrides)
        if args.json:
            print(json.dumps(summary, indent=2))
            continue
        print(f"{path}: OK")
        for key, info in summary["components"].items():
            print(f"  {key:<18}{info['name']}  (plugin {info['plugin']})")
        t = summary["train"]
        print(f"  train: {t['images']} images, {t['identities']} identities {t['categories']}, "
              f"{t['batches_per_epoch']} batches/epoch")
        for name, sizes in summary["test"].items():
            print(f"  test {name}: {sizes['query']} query, {sizes['gallery']} gallery")
        print(f"  model: {summary['parameters']:,} parameters on {summary['device']}; outputs "
              + ", ".join(f"{k} {v}" for k, v in summary["outputs"].items()))
        print("  one step: " + ", ".join(f"{k}={v:.4f}" for k, v in summary["losses"].items()))
        print("  losses read: " + ", ".join(f"{k} <- {v}" for k, v in summary["loss_inputs"].items())
              + f"; stage parameter patterns checked (on {summary['patterns_checked_on']})")
        for step in summary["labels_sampled"]:
            print(f"  {step['step']}: {step['out']} is missing or stale; labeler '{step['labeler']}' labelled only "
                  f"this batch's {step['labelled']} images (left in no file); `core label {path}` or `core run` "
                  f"labels all {step['images']:,}")
        if summary["parameters_without_grad"]:
            print(f"  note: {len(summary['parameters_without_grad'])} parameters the first stage trains got no "
                  f"gradient, e.g. {summary['parameters_without_grad'][:3]}")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from core.runner import label

    outs = label(args.pipeline, args.overrides, force=args.force)
    if not outs:
        print(f"{args.pipeline}: no `prepare` step; nothing to label")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from core.config.loading import dump, load_pipeline

    if args.resume:
        if args.pipelines:
            raise SystemExit("core run: give either --resume RUN_DIR or pipeline files, not both")
    elif not args.pipelines:
        raise SystemExit("core run: no pipeline given (e.g. core run pipelines/quickstart.yaml)")
    if args.print_config:
        variants = []
        if args.grid or args.seeds or len(args.pipelines) > 1:  # a sweep: checked as `core run` checks it
            from core import sweep

            variants = sweep.plan(args.pipelines, args.overrides, args.grid, args.seeds)
            sweep.check_variants(variants)
        if args.grid or args.seeds:  # every grid point, resolved as it will run
            for n, variant in enumerate(variants, 1):
                seeds = ",".join(str(s) for s in variant.seeds if s is not None)
                print(f"# variant {n}/{len(variants)}: {variant.name}" + (f" (seeds {seeds})" if seeds else "")
                      + "\n" + dump(variant.config.data))  # as `plan` loaded it
            return 0
        for path in args.pipelines:
            print(f"# {path}\n" + dump(load_pipeline(path, args.overrides).data))
        return 0

    from core.runner import run

    image_check = "skip" if args.skip_bad_images else "error"
    if args.resume:
        _print_result(run(None, args.overrides, resume=args.resume, image_check=image_check))
        return 0
    if args.continue_sweep and not args.sweep_dir:
        raise SystemExit("core run: --continue goes on with the sweep in --sweep-dir DIR; give that folder")
    if len(args.pipelines) == 1 and not args.grid and not args.seeds:
        if args.continue_sweep:
            raise SystemExit("core run: --continue is for sweeps (--seeds, --grid or several pipelines); "
                             "a single run continues with --resume RUN_DIR")
        _print_result(run(args.pipelines[0], args.overrides, run_dir=args.run_dir, overwrite=args.overwrite,
                          image_check=image_check))
        return 0
    if args.run_dir:
        raise SystemExit("core run: --run-dir names one run folder; a sweep writes into --sweep-dir")
    from core import sweep

    variants = sweep.plan(args.pipelines, args.overrides, args.grid, args.seeds)
    first = load_pipeline(args.pipelines[0], args.overrides)
    output = (first.data.get("trainer") or {}).get("output_dir", "runs")
    if not args.sweep_dir:  # the sweep folder is made in it; --sweep-dir is checked by run_sweep
        from core.runner import check_output_dir

        check_output_dir(first, sweep=True)
    folder = sweep.run_sweep(variants, Path(args.sweep_dir) if args.sweep_dir else sweep.default_sweep_dir(output),
                             image_check=image_check, continue_sweep=args.continue_sweep)  # failures are logged
    print((folder / "comparison.md").read_text(encoding="utf-8"))
    print(f"sweep folder: {folder}")
    return sweep.sweep_exit_code(variants)


def cmd_eval(args: argparse.Namespace) -> int:
    from core.runner import evaluate_run
    from core.training.report import format_report

    metrics = evaluate_run(args.target, args.overrides, weights=args.weights, source=args.source)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    released = metrics.pop("released", None)
    if released is None:
        print(format_report(f"evaluation of {args.target}", [{"tag": _row_name(args.target), **metrics}]))
    else:  # the row names the file, to stand beside other files' and one's own runs
        title = f"evaluation of {released['weights']} ({released['reader']}) in {args.target}"
        print(format_report(title, [{"tag": Path(released["weights"]).name, **metrics}]))
    return 0


def _row_name(target: str) -> str:
    """The table row of `core eval TARGET`, to stand beside other runs' and released files' rows:
    the run folder's name, `run/file` for a checkpoint inside one, else the file's name."""
    path = Path(target).resolve()
    if path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}/{path.name}"
    return path.name


def _print_result(result) -> None:
    if result.rank != 0:
        return
    if result.metrics is None:
        print(f"{result.name}: stopped early; continue with: core run --resume {result.run_dir}")
        return
    print((result.run_dir / "report.md").read_text(encoding="utf-8"))
    print(f"run folder: {result.run_dir}")


def main(argv: Sequence[str] | None = None) -> int:
    from core import log_setup

    argv = list(sys.argv[1:] if argv is None else argv)
    # the console is set up before the parser (building it loads the plugins, whose failures
    # are logged), so the verbosity flags are read from argv first
    level = log_setup.verbosity(bool({"-q", "--quiet"} & set(argv)), bool({"-v", "--verbose"} & set(argv)))
    with log_setup.console(level):
        from core.plugins import PluginLoadError

        try:
            parser = build_parser()  # loads the plugins: before `_run_command`'s handler
        except PluginLoadError as exc:  # CORE_STRICT_PLUGINS=1 and a broken plugin
            print(f"error: {exc}", file=sys.stderr)
            return 2
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        from core import trust

        with trust.trusting(checkpoint=getattr(args, "trust_checkpoint", False),
                            plugin_files=getattr(args, "allow_plugin_files", False)):
            return _run_command(args)


#: exit code when the reader of stdout went away (`core search ... | head`): the shell's 128 + SIGPIPE
READER_GONE = 141


def _run_command(args: argparse.Namespace) -> int:
    """Run the command; every failure ends in one line on stderr (the traceback with
    --debug) and an exit code: 2 bad input, 3 NaN/Inf, 130/143 SIGINT/SIGTERM, 1 other;
    141, without a line, when stdout's reader left before the output ended (`| head`)."""
    from core.training.interrupt import Interrupted

    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at exit, where a reader that left would not be caught
        return code
    except Interrupted as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        _end_progress_lines()
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError as exc:
        return READER_GONE if _stdout_reader_gone() else _failed(args, exc)
    except Exception as exc:  # noqa: BLE001 - the one place that turns failures into a line
        return _failed(args, exc)


def _failed(args: argparse.Namespace, exc: BaseException) -> int:
    _end_progress_lines()
    if getattr(args, "debug", False):
        import traceback

        traceback.print_exc()
    print(f"error: {_one_line(exc)}", file=sys.stderr)
    from core.exit_codes import exit_code

    return exit_code(exc)


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll: an error on the write
    end); then stdout is pointed at os.devnull, so that the output still buffered is not
    written at exit into the closed pipe ("Exception ignored ... BrokenPipeError"). A
    broken pipe elsewhere (a tracker's socket) is a failure like any other."""
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        gone = any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no file descriptor, or no poll (Windows)
        return False
    if gone:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    return gone


def _end_progress_lines() -> None:
    """Close the progress bars a failure left open and end their line, so that the error
    starts a line of its own: else it was printed after the bar's text, and tqdm cleared
    the bar only at exit. A closed bar clears its line and returns to its start, which a
    terminal then reuses; a log file keeps the text, so there a new line is begun."""
    bars = getattr(getattr(sys.modules.get("tqdm"), "tqdm", None), "_instances", None)
    if not bars:
        return
    for bar in list(bars):
        bar.close()
    if not sys.stderr.isatty():
        sys.stderr.write("\n")


def _one_line(exc: BaseException) -> str:
    from core.config.loading import ConfigError
    from core.registry import RegistryError
    from core.training.blame import ComponentError, last_line, worker_original

    if isinstance(exc, (ConfigError, RegistryError, ComponentError, FloatingPointError, OSError)) \
            or type(exc).__module__.startswith("core"):
        original = worker_original(exc)  # raised in a DataLoader worker: its own message
        text = original[1] if original and original[1] else str(exc).strip()
        return text if "\n" not in text else text.splitlines()[0] + " ..."
    return last_line(exc) + " (run with --debug for the traceback)"  # a worker's: type and message once


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
