"""The core's built-in components, registered through the same hooks as any plugin.

The TransReID / Bag-of-Tricks baseline that the papers compare against. Targets are lazy
strings so that `core --help` and `core plugins` never import torch.
"""

from core.hookspecs import hookimpl


@hookimpl
def register_datasets(register):
    register("synthetic", "core.data.synthetic:SyntheticWorld")
    register("manifest", "core.data.manifest:ManifestDataset")
    register("folder", "core.data.layouts.folder:FolderDataset")
    register("market1501", "core.data.layouts.market1501:Market1501")
    register("dukemtmc", "core.data.layouts.dukemtmc:DukeMTMC", aliases=("dukemtmc-reid",))
    register("msmt17", "core.data.layouts.msmt17:MSMT17")
    register("cuhk03np", "core.data.layouts.cuhk03np:CUHK03NP", aliases=("cuhk03-np",))
    register("veri776", "core.data.layouts.veri776:VeRi776", aliases=("veri",))


@hookimpl
def register_samplers(register):
    register("pk", "core.samplers.identity:PKSampler")
    register("random", "core.samplers.identity:RandomSampler")


@hookimpl
def register_backbones(register):
    register("timm", "core.models.timm_backbone:TimmBackbone")


@hookimpl
def register_heads(register):
    register("bnneck", "core.models.bnneck:BNNeckHead")


@hookimpl
def register_losses(register):
    register("ce", "core.losses.cross_entropy:CrossEntropyLoss", aliases=("cross_entropy",))
    register("triplet", "core.losses.triplet:TripletLoss")


@hookimpl
def register_evaluators(register):
    register("reid", "core.evaluation.reid:ReIDEvaluator")


@hookimpl
def register_commands(subparsers):
    from core.data.commands import add_data_command  # torch-free at import

    add_data_command(subparsers)
    from core.tools.commands import add_tool_commands  # torch-free at import

    add_tool_commands(subparsers)


@hookimpl
def on_evaluate_end(trainer, metrics):
    """Redraw `<run>/curves.png` (loss, lr, metrics over steps) after every evaluation of a
    run that writes a folder; a drawing failure warns and never stops training."""
    run = getattr(trainer, "run", None)
    if run is None or not run.enabled or not run.metrics_file.exists():
        return
    try:
        from core.tools.curves import write_curves

        write_curves(run.path)
    except Exception as exc:  # noqa: BLE001 - a picture must not end a run
        import warnings

        warnings.warn(f"could not draw {run.path / 'curves.png'}: {exc}", stacklevel=2)
