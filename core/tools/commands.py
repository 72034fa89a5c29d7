"""The tools' subcommands of the `core` CLI: extract, search, explain, export, curves,
new-plugin. Imported when the parser is built, so this module imports neither torch nor
numpy; each handler imports its tool when it runs.
"""

from __future__ import annotations

import argparse
import sys

_RUN = "RUN_OR_CHECKPOINT"
_IMAGES_HELP = ("a folder of images (searched recursively; pid/camera read from Market-1501 style names "
                "0002_c1s1_... as the dataset readers read them, c1 = camera 0, or a numeric parent folder), "
                "a manifest (.csv/.jsonl; with a split column, --query takes its query rows and --gallery its "
                "gallery rows), one image file, or "
                "run:query / run:gallery / run:train (the run's own data; run:query@<test set>)")


def _add(subparsers, name: str, help: str, description: str, examples: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(name, help=help, description=description, epilog="examples:\n" + examples,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda, cuda:N "
                                                    "(default auto, whatever the run trained on)")


def _skip_bad_images(p: argparse.ArgumentParser, before: str) -> None:
    """--skip-bad-images: the image check these tools run first (core.tools.images.screened)."""
    p.add_argument("--skip-bad-images", action="store_true",
                   help=f"leave out unreadable images found before {before} (with a warning) instead of stopping")


def _same_camera(p: argparse.ArgumentParser, query: str, prefix: str = "") -> None:
    """--exclude-same-camera / --no-exclude-same-camera, the same for search and explain
    (core.tools.ranked_items.search_rule)."""
    p.add_argument("--exclude-same-camera", action=argparse.BooleanOptionalAction, default=None,
                   help=f"{prefix}rank the whole gallery less the items with the query's identity and camera; "
                        "--no-exclude-same-camera: the whole gallery. Default: when "
                        f"{query} and --gallery are both the run's own splits (run:..., or a .npz extracted from "
                        "one), the items its evaluator ranks for each query (as `core eval`: the standard protocol, "
                        "or e.g. Instruct-ReID's task gallery); for other images the whole gallery (their cameras "
                        "may mean nothing). Either flag on the run's own splits replaces the evaluator's rule")


def add_released_weights_args(p: argparse.ArgumentParser, with_set: bool = False) -> None:
    """--weights FILE [--from READER]: another code base's released weights converted into
    the model of the pipeline YAML given as the target (core.released_weights); `with_set`:
    --set too (the tools have none otherwise; `core eval` has its own)."""
    from core.released_weights import AUTO, READERS  # torch-free

    p.add_argument("--weights", metavar="FILE",
                   help="released weights of another code base (.pth/.pt read without pickle, or .safetensors), "
                        "converted into the model of the pipeline YAML given as the target")
    p.add_argument("--from", dest="source", default=AUTO, choices=(AUTO, *READERS),
                   help="the code base of --weights (default auto: the reader that recognises its tensor names)")
    if with_set:
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a key of the pipeline (value parsed as YAML); repeatable")


def _released(args: argparse.Namespace) -> dict:
    return {"weights": args.weights, "source": args.source, "overrides": args.overrides}


def _image_check(args: argparse.Namespace) -> str:
    return "skip" if args.skip_bad_images else "error"


def add_tool_commands(subparsers: "argparse._SubParsersAction") -> None:
    """Add the tools' subcommands to the `core` CLI."""
    p = _add(subparsers, "extract", "embed images with a trained model into a .npz file",
             "Embed images with the model of a run folder (or a checkpoint inside one), as evaluation does "
             "(test transform, the run's flip averaging), in batches on the GPU when there is one. Writes "
             "embeddings (N, D) with each image's path, pid, camid, category, domain and split. An existing "
             "--out file is refused (nothing is embedded) unless --overwrite; the file is replaced only once the "
             "new one is complete.",
             "  core extract runs/quickstart-20261121-101500 --images data/market/bounding_box_test --out gallery.npz\n"
             "  core extract runs/q --images data/manifest.csv --out feats.npz --batch-size 256\n"
             "  core extract runs/q --images run:gallery --out gallery.npz     the run's own test gallery\n"
             "  core extract runs/q --images run:gallery --out gallery.npz --overwrite   replace an earlier one\n")
    p.add_argument("target", metavar=_RUN)
    p.add_argument("--images", required=True, metavar="DIR_OR_MANIFEST", help=_IMAGES_HELP)
    p.add_argument("--out", required=True, metavar="FEATS.npz")
    p.add_argument("--half", action="store_true",
                   help="write the embeddings batch by batch to a float16 memory map FEATS.f16.npy beside the .npz "
                        "(galleries of millions: never all in RAM as float32)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing FEATS.npz (and, with --half, FEATS.f16.npy); without it they are "
                        "refused")
    add_released_weights_args(p, with_set=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="data loader workers (default 0)")
    _skip_bad_images(p, "extracting")
    _device(p)
    p.set_defaults(func=cmd_extract)

    p = _add(subparsers, "search", "rank a gallery for query images; draw the ranked lists",
             "Rank the gallery for each query under the run's model and distance; print the ranked lists and, "
             "with --out, draw a PNG per query (query, then the top-k; green / red borders when identities are "
             "known, distance under each) and an index.html. With --worst N instead of --query, evaluate the "
             "run's test sets under its evaluator's protocol and draw the N queries with the lowest average "
             "precision into the run folder (<run>/worst-queries/, or --out; with --weights, --out is needed).",
             "  core search runs/q --query probe.jpg --gallery gallery.npz --top 10 --out search/\n"
             "  core search runs/q --query data/query --gallery data/bounding_box_test --out search/\n"
             "  core search runs/q --query run:query --gallery run:gallery --out s/   as evaluation ranks\n"
             "  core search runs/q --query data/query --gallery data/bounding_box_test --exclude-same-camera\n"
             "  core search runs/q --worst 10                  worst queries -> runs/q/worst-queries/\n")
    p.add_argument("target", metavar=_RUN)
    p.add_argument("--query", metavar="IMG_OR_DIR", help=_IMAGES_HELP)
    p.add_argument("--gallery", metavar="DIR_OR_FEATS",
                   help="a .npz written by `core extract`, or images as for --query")
    p.add_argument("--top", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--out", metavar="DIR", help="write a PNG per query and index.html here")
    p.add_argument("--worst", type=int, metavar="N", help="draw the N lowest-AP queries of the run's test sets")
    p.add_argument("--metric", choices=["cosine", "euclidean"], help="distance (default: the run's evaluator's)")
    _same_camera(p, "--query")
    add_released_weights_args(p, with_set=True)
    p.add_argument("--batch-size", type=int, default=64)
    _skip_bad_images(p, "searching")
    _device(p)
    p.set_defaults(func=cmd_search)

    p = _add(subparsers, "explain", "draw heat maps of what a model looks at: part masks, Grad-CAM, rollout",
             "Draw heat maps over images. --method parts: each image with the heat map of each predicted part "
             "and the parts' arg-max map; needs a backbone that outputs part masks under the documented "
             "contract: the output key 'part_masks' (B, P, N) with N = the patch grid's rows x cols "
             "(backbone.patch_grid), values in [0, 1] (e.g. amsa). --method gradcam (CNN backbones) and "
             "--method rollout (ViT backbones): each query ranked against --gallery (default: the run's "
             "gallery) and drawn with its top matches; gradcam shows the regions that make the query and a "
             "match similar (Grad-CAM of their cosine similarity at the last conv stage), rollout the "
             "attention flowing into the class token (Abnar & Zuidema 2020). auto (default): parts when the "
             "model outputs part masks, rollout for ViTs, gradcam otherwise.",
             "  core explain runs/amsa-20261121 --images run:query --out explain/ --limit 16\n"
             "  core explain runs/amsa-20261121 --images data/query --out explain/ --key part_masks\n"
             "  core explain runs/r50 --images run:query --out cams/ --method gradcam --top 5\n"
             "  core explain runs/r50 --images q/ --gallery g/ --out cams/ --layer backbone.model.layer3\n"
             "  core explain runs/vit --images run:query --out rollout/ --method rollout --discard-ratio 0.9\n")
    p.add_argument("target", metavar=_RUN)
    p.add_argument("--images", required=True, metavar="DIR_OR_MANIFEST", help=_IMAGES_HELP)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--method", choices=["auto", "parts", "gradcam", "rollout"], default="auto",
                   help="auto (default): parts when the model outputs part masks, rollout for ViTs, else gradcam")
    p.add_argument("--gallery", metavar="DIR_OR_MANIFEST",
                   help="gradcam/rollout: images to rank against, as for --images (default run:gallery)")
    p.add_argument("--top", type=int, default=5, help="gradcam/rollout: matches drawn per query (default 5)")
    _same_camera(p, "--images", "gradcam/rollout: ")
    p.add_argument("--layer", metavar="MODULE",
                   help="gradcam: the module explained, a dotted name in the model (default: the backbone's "
                        "last spatial feature map, e.g. backbone.model.layer4)")
    p.add_argument("--cam", default="gradcam", metavar="NAME",
                   help="gradcam: gradcam (built in, default) or a pytorch-grad-cam method with the same "
                        "similarity target (pip install 'reid-core[explain]'): gradcam++, xgradcam, hirescam, "
                        "layercam, eigencam, eigengradcam, scorecam, ablationcam")
    p.add_argument("--discard-ratio", type=float, default=0.0,
                   help="rollout: zero this fraction of the weakest attention weights per layer (default 0)")
    p.add_argument("--head-fusion", choices=["mean", "max", "min"], default="mean",
                   help="rollout: how the heads' attention maps are fused (default mean, as in the paper)")
    p.add_argument("--key", default="part_masks", help="the model output holding the masks (default part_masks)")
    p.add_argument("--limit", type=int, default=32, help="at most this many images (default 32)")
    p.add_argument("--batch-size", type=int, default=32)
    _skip_bad_images(p, "drawing")
    _device(p)
    p.set_defaults(func=cmd_explain)

    p = _add(subparsers, "export", "export the inference model to TorchScript and ONNX, checked",
             "Export backbone + head up to the embedding as a model that takes a normalised image tensor "
             "(B, 3, H, W) and returns the embeddings (B, D); the batch size stays dynamic. Each exported file "
             "is run on the same images as the PyTorch model and the largest absolute difference of the "
             "embeddings is reported; above --tolerance the command fails (exit 1). export.json records the "
             "input size, normalisation and the check. ONNX needs `pip install reid-core[export]`. DIR may hold "
             "other files (kept); one holding a file the export writes (export.json, model.torchscript.pt, "
             "model.onnx, model.safetensors: an earlier export) is refused before any work unless --overwrite.",
             "  core export runs/q --out exported/\n"
             "  core export runs/q --out exported/ --overwrite    replace an earlier export's files there\n"
             "  core export runs/q --out exported/ --format onnx --opset 18 --tolerance 1e-4\n"
             "  core export runs/q --out shared/ --format safetensors   then: core eval shared/model.safetensors\n")
    p.add_argument("target", metavar=_RUN)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--format", action="append", choices=["torchscript", "onnx", "safetensors"],
                   help="repeatable (default: torchscript and onnx); safetensors: the weights with the "
                        "pipeline, the shareable file that core eval / extract / search accept")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed max abs difference (default 1e-4)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: torch's)")
    p.add_argument("--images", metavar="DIR_OR_MANIFEST",
                   help="check on these images (default: the run's query images; random tensors if none)")
    p.add_argument("--no-flip", action="store_true", help="leave the run's flip averaging out of the export")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export in DIR: the files its export.json lists and those this export "
                        "writes (every other file is kept; nothing changes until the new export is written and "
                        "checked); without it they are refused")
    p.set_defaults(func=cmd_export)

    p = _add(subparsers, "curves", "draw a run's training curves (loss parts, lr, metrics) to a PNG",
             "Draw loss and its parts, the learning rate and the evaluation metrics over optimisation steps from "
             "metrics.jsonl. `core run` writes <run>/curves.png itself after every evaluation.",
             "  core curves runs/quickstart-20261121-101500\n"
             "  core curves runs/q --out q-curves.png --metrics mAP rank-1\n")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", metavar="PNG", help="default <run>/curves.png")
    p.add_argument("--metrics", nargs="+", metavar="NAME", default=["mAP", "rank-1"],
                   help="metric names to plot for every test set (default mAP rank-1)")
    p.set_defaults(func=cmd_curves)

    p = _add(subparsers, "new-plugin", "write the skeleton of an installable plugin",
             "Write an installable plugin: pyproject.toml with the `reid_core` entry point and a `test` extra, "
             "a working minimal component for each name asked for (--loss circle -> loss 'circle', class "
             "CircleLoss), each with its own test, a test that trains a tiny pipeline with all of them, and a "
             "README. `pip install -e \"DIR[test]\" && pytest DIR` passes as generated. "
             "See docs/writing-plugins.md.",
             "  core new-plugin my-method --loss circle --loss center --sampler cam_pk\n"
             "  core new-plugin my-method --loss circle,center --head my_neck --out plugins/\n"
             "  core new-plugin circle --kinds loss        each kind's component named after the plugin\n")
    p.add_argument("name", metavar="NAME", help="plugin name: lower case, digits and '-' (e.g. my-method)")
    for kind in ("dataset", "sampler", "backbone", "head", "loss", "evaluator"):
        p.add_argument(f"--{kind}", action="append", default=[], metavar="NAME",
                       help=f"a {kind} component named NAME (repeatable, or comma-separated)")
    p.add_argument("--kinds", default=None,
                   help="comma-separated kinds whose component takes the plugin's name (default: loss, when no "
                        "component is named)")
    p.add_argument("--out", default=".", metavar="DIR", help="parent folder (default .); writes DIR/reid-NAME/")
    p.add_argument("--force", action="store_true", help="overwrite an existing folder")
    p.set_defaults(func=cmd_new_plugin)


def _check_out_folder(out: str | None) -> None:
    """`--out DIR` is a folder to write into (made if missing): refuse a file there, or a path
    under a file, or a folder that cannot be written, before any work (it was '[Errno 17]
    File exists' / '[Errno 13]', exit 1, after the work)."""
    from pathlib import Path

    from core.config.loading import ConfigError
    from core.training.run_folder import file_in_the_way, folder_problem

    if out is None:
        return
    blocking = file_in_the_way(Path(out))
    if blocking is not None:
        raise ConfigError(f"{blocking} is a file; --out names a folder to write into (made if missing)",
                          file="--out")
    problem = folder_problem(Path(out))
    if problem is not None:
        raise ConfigError(f"{problem}; --out names a folder you can write", file="--out")


def _check_out_file(out: str, example: str) -> None:
    """`--out FILE` is a file to write (its folder made if missing): refuse a folder there, a
    path under a file, or a folder that cannot be written, before any work (it was an
    [Errno 17] / [Errno 21] / [Errno 13], exit 1, once every image was embedded or the
    picture drawn)."""
    from pathlib import Path

    from core.config.loading import ConfigError
    from core.training.run_folder import folder_problem

    path = Path(out)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; --out names the file to write, e.g. {path / example}", file="--out")
    problem = folder_problem(path.parent)
    if problem is not None:
        raise ConfigError(f"cannot write {path}: {problem}", file="--out")


def cmd_extract(args: argparse.Namespace) -> int:
    from core.tools.extract import extract_to_file

    _check_out_file(args.out, "feats.npz")
    path, features = extract_to_file(args.target, args.images, args.out, device=args.device,
                                     batch_size=args.batch_size, num_workers=args.workers, half=args.half,
                                     image_check=_image_check(args), overwrite=args.overwrite, **_released(args))
    n, d = features.embeddings.shape
    known = int((features.images.table.pids >= 0).sum())
    print(f"{path}: {n} embeddings of dimension {d} ({known} with a known identity) from {args.images}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from core.tools import search

    _check_out_folder(args.out)
    if args.worst is not None:
        if args.query or args.gallery:
            print("core search: --worst N evaluates the run's own test sets; leave --query and --gallery out",
                  file=sys.stderr)
            return 2
        if args.weights and not args.out:  # no run folder to draw into; never beside the weights file
            print("core search: --worst N with --weights has no run folder to draw into; give --out DIR",
                  file=sys.stderr)
            return 2
        search.worst_queries(args.target, args.worst, args.top, args.out, device=args.device,
                             batch_size=args.batch_size, **_released(args))
        return 0
    if not args.query or not args.gallery:
        print("core search: give --query and --gallery (or --worst N)", file=sys.stderr)
        return 2
    search.search(args.target, args.query, args.gallery, top=args.top, out=args.out, device=args.device,
                  metric=args.metric, exclude_same_camera=args.exclude_same_camera, batch_size=args.batch_size,
                  image_check=_image_check(args), **_released(args))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from core.tools.overlays import MissingMasks, explain

    _check_out_folder(args.out)
    try:
        index = explain(args.target, args.images, args.out, key=args.key, limit=args.limit,
                        device=args.device, batch_size=args.batch_size, method=args.method, gallery=args.gallery,
                        top=args.top, layer=args.layer, discard_ratio=args.discard_ratio,
                        head_fusion=args.head_fusion, exclude_same_camera=args.exclude_same_camera,
                        cam=args.cam, image_check=_image_check(args))
    except (MissingMasks, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"overlays: {index}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from core.tools.export import export

    _check_out_folder(args.out)
    report = export(args.target, args.out, formats=args.format or ["torchscript", "onnx"],
                    tolerance=args.tolerance, opset=args.opset, images=args.images, flip=not args.no_flip,
                    overwrite=args.overwrite)
    for fmt, info in report["formats"].items():
        status = "OK" if info["ok"] else ("NOT CHECKED" if info["max_abs_diff"] is None else "FAILED")
        diff = "-" if info["max_abs_diff"] is None else f"{info['max_abs_diff']:.2e}"
        print(f"{fmt:<12}{info['file']}  max abs diff {diff} (tolerance {args.tolerance:g})  {status}"
              + (f"  {info['note']}" if info.get("note") else ""))
    print(f"input: (B, 3, {report['input']['height']}, {report['input']['width']}) normalised with mean "
          f"{report['input']['mean']} std {report['input']['std']}; output: (B, {report['embedding_dim']})")
    return 0 if all(i["ok"] or i["max_abs_diff"] is None for i in report["formats"].values()) else 1


def cmd_curves(args: argparse.Namespace) -> int:
    from core.tools.curves import write_curves

    if args.out is not None:
        _check_out_file(args.out, "curves.png")
    path = write_curves(args.run_dir, args.out, metrics=args.metrics)
    print(f"curves: {path}")
    return 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from core.tools.scaffold import ScaffoldError, new_plugin

    _check_out_folder(args.out)
    from core.tools.scaffold import KINDS, names

    try:
        plugin = names(args.name)["name"]
        requested: dict[str, list[str]] = {}
        for kind in KINDS:
            requested[kind] = [n.strip() for v in getattr(args, kind) for n in v.split(",") if n.strip()]
        kinds = [k.strip() for k in (args.kinds or "").split(",") if k.strip()]
        if not kinds and not any(requested.values()):
            kinds = ["loss"]
        for kind in kinds:
            if kind not in KINDS:
                raise ScaffoldError(f"unknown kind(s) {kind}; kinds: {', '.join(KINDS)}")
            requested[kind].append(plugin)
        folder = new_plugin(args.name, requested, args.out, force=args.force)
    except ScaffoldError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {folder}\nnext: pip install -e \"{folder}[test]\" && pytest {folder}")
    return 0
