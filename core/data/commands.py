"""`core data ...`: data tools on the command line. `core data synth` writes the synthetic
world to disk (Market-1501 layout + manifest) or draws a preview grid.

Imported when the `core` parser is built, so it stays torch- and numpy-free: the world is
imported inside the handler.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLES = """\
examples:
  core data synth --out data/synthetic                       the default world on disk
  core data synth --out data/mgor --categories person vehicle animal ship building object \\
      --held-out-categories building object --identities 100 --test-identities 50
  core data synth --out data/cc --categories person --clothes-changes 2 --infrared-cameras 3
  core data synth --preview preview.png --categories person ship --domains synthetic cartoon sketch
"""


def add_data_command(subparsers: "argparse._SubParsersAction") -> None:
    """Add `core data` (its `synth` and `stats` subcommands) to the `core` CLI."""
    data = subparsers.add_parser("data", help="data tools: a dataset's statistics (stats), the synthetic world "
                                 "on disk (synth)",
                                 description="Data tools.")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: (data.print_help(), 0)[1])
    p = sub.add_parser(
        "synth", help="write the synthetic world to disk or draw a preview",
        description="Render the synthetic world (the `synthetic` dataset) to DIR in the Market-1501 layout "
                    "(bounding_box_train/, query/, bounding_box_test/; pids mapped to 1..N per split set, see "
                    "mapping.csv) and as manifest.csv (readable by the `manifest` dataset, with category, domain, "
                    "split and annotations as columns), and/or draw a preview grid (identities x cameras per "
                    "category). Options left out take the dataset's defaults.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", metavar="DIR", help="write the world here")
    p.add_argument("--preview", metavar="PNG", help="draw a preview grid to this PNG file")
    p.add_argument("--preview-identities", type=int, default=3, metavar="N", help="rows per category (default 3)")
    p.add_argument("--seed", type=int)
    p.add_argument("--categories", nargs="+", metavar="NAME",
                   help="person vehicle animal ship building object (default: person vehicle)")
    p.add_argument("--identities", type=int, help="train identities per category")
    p.add_argument("--test-identities", type=int, help="query/gallery identities per category")
    p.add_argument("--cameras", type=int)
    p.add_argument("--images-per-identity", type=int)
    p.add_argument("--render-size", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--held-out-categories", nargs="+", metavar="NAME", help="categories in query/gallery only")
    p.add_argument("--domains", nargs="+", metavar="STYLE", help="synthetic cartoon sketch night")
    p.add_argument("--held-out-domains", nargs="+", metavar="STYLE", help="domains in query/gallery only")
    p.add_argument("--clothes-changes", type=int, metavar="N", help="extra outfits per person")
    p.add_argument("--infrared-cameras", type=int, nargs="+", metavar="CAM", help="0-based camera indices")
    p.add_argument("--perspective", type=float, help="keystone strength in [0, 1] (0.3 looks natural)")
    p.add_argument("--occlusion", type=float, help="probability of an extra occluder per image")
    p.add_argument("--no-captions", action="store_true", help="leave the caption and attributes columns out")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    p.add_argument("--overwrite", action="store_true",
                   help="--out: replace an earlier export in DIR (only the files its manifest.csv lists; every "
                        "other file is kept); --preview: replace an existing PNG. Without it, a non-empty DIR "
                        "or an existing PNG is refused")
    p.set_defaults(func=cmd_synth)
    st = sub.add_parser(
        "stats", help="images, identities and cameras per split and category of a dataset",
        description="The statistics table torchreid and fast-reid print at start: images, identities and cameras "
                    "per split (and per category), read from the record table only (no image is opened), with "
                    "the load time. TARGET is a pipeline YAML (its train and test datasets), a manifest "
                    "(.csv, .parquet, .jsonl) or a dataset folder (read by --dataset, e.g. market1501; guessed "
                    "when left out).")
    st.add_argument("target", metavar="PIPELINE|MANIFEST|FOLDER")
    st.add_argument("--dataset", metavar="NAME", help="the reader of a folder or file (a registered dataset name)")
    st.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a reader parameter (YAML value), e.g. --param distractors=true")
    st.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a pipeline override")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=cmd_stats)


_WORLD_KEYS = ("seed", "categories", "identities", "test_identities", "cameras", "images_per_identity",
               "render_size", "held_out_categories", "domains", "held_out_domains", "clothes_changes",
               "infrared_cameras", "perspective", "occlusion")


def _check_preview_path(path: Path) -> None:
    """--preview names a picture file: a folder, a name without a picture suffix, or a
    missing folder were PIL's words after the world was rendered ('unknown file extension: ',
    or an [Errno 2]), a folder even advised --overwrite."""
    from PIL import Image

    if path.is_dir():
        raise ValueError(f"--preview: {path} is a folder; give a picture file name, e.g. {path / 'preview.png'}")
    if path.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"--preview: {path} has no picture file suffix; give a name ending in .png (or .jpg)")
    if not path.parent.is_dir():
        raise ValueError(f"--preview: the folder {path.parent} does not exist; make it first or give another path")


def _in_flags(message: str) -> str:
    """A SyntheticWorld error in the command's words: each parameter it names
    ('clothes_changes') as the flag that sets it (--clothes-changes)."""
    message = message.removeprefix("SyntheticWorld: ")
    for key in _WORLD_KEYS:
        message = message.replace(f"'{key}'", "--" + key.replace("_", "-"))
    return message


def _check_command_flags(args: argparse.Namespace) -> None:
    """The flags the world does not see (it checks its own, `_in_flags`)."""
    if not 0 <= args.quality <= 100:
        raise ValueError(f"--quality is the JPEG quality, 0 to 100 (default 95); got {args.quality}")
    if args.preview_identities < 1:
        raise ValueError(f"--preview-identities must be >= 1 (rows per category); got {args.preview_identities}")


def cmd_synth(args: argparse.Namespace) -> int:
    if not args.out and not args.preview:
        print("core data synth: give --out DIR and/or --preview PNG", file=sys.stderr)
        return 2
    from core.data.synthetic import SyntheticWorld, preview_grid
    from core.data.synthetic.export import export_world

    kwargs = {k: getattr(args, k) for k in _WORLD_KEYS if getattr(args, k) is not None}
    try:
        _check_command_flags(args)
        if args.preview:
            _check_preview_path(Path(args.preview))
        if args.preview and Path(args.preview).exists() and not args.overwrite:
            raise ValueError(f"{args.preview} exists; pass --overwrite to replace it")
        try:
            world = SyntheticWorld(captions=not args.no_captions, **kwargs)
        except ValueError as exc:  # its words name its parameters, not our flags
            raise ValueError(_in_flags(str(exc))) from None
        if args.out:  # first: a refused folder costs no preview either
            counts = export_world(world, args.out, quality=args.quality, overwrite=args.overwrite)
            print(f"{args.out}: " + ", ".join(f"{n} {split}" for split, n in counts.items())
                  + " images; manifest.csv, mapping.csv")
        if args.preview:
            preview_grid(world, n_identities=args.preview_identities, labels=True).save(args.preview)
            print(f"preview: {args.preview}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    import yaml

    from core.data.paths import UNREADABLE_FILE, unreadable
    from core.data.stats import stats_command

    params = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"core data stats: --param takes KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        params[key] = yaml.safe_load(value)
    try:
        return stats_command(args.target, args.dataset, params, args.overrides, as_json=args.json)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except UNREADABLE_FILE as exc:
        print(f"error: {unreadable(exc)}", file=sys.stderr)
        return 2
