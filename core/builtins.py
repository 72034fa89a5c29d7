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
    register("msmt17_market", "core.data.layouts.msmt17_market:MSMT17Market", aliases=("msmt17-market",))
    register("omnireid", "core.data.layouts.omnireid:OmniReIDList")
    register("ltcc", "core.data.layouts.ltcc:LTCC")
    register("prcc", "core.data.layouts.prcc:PRCC")
    register("vc_clothes", "core.data.layouts.vc_clothes:VCClothes", aliases=("vc-clothes",))
    register("cuhk03np", "core.data.layouts.cuhk03np:CUHK03NP", aliases=("cuhk03-np",))
    register("veri776", "core.data.layouts.veri776:VeRi776", aliases=("veri",))
    register("cuhk03", "core.data.layouts.cuhk03:CUHK03")
    register("vehicleid", "core.data.layouts.vehicleid:VehicleID")
    register("veriwild", "core.data.layouts.veriwild:VeRiWild", aliases=("veri-wild",))
    register("occluded_duke", "core.data.layouts.occluded_duke:OccludedDuke", aliases=("occluded-duke",))
    # the object-generalized sets of MGOR (CVPR 2026): animals, buildings
    register("ipanda50", "core.data.layouts.ipanda50:IPanda50", aliases=("ipanda-50",))
    register("atrw", "core.data.layouts.atrw:ATRW")
    register("university1652", "core.data.layouts.university1652:University1652", aliases=("university-1652",))
    register("petface", "core.data.layouts.petface:PetFace")
    register("elpephants", "core.data.layouts.elpephants:ELPephants")
    register("wildlife71", "core.data.layouts.wildlife71:Wildlife71", aliases=("wildlife-71",))


@hookimpl
def register_samplers(register):
    register("pk", "core.samplers.identity:PKSampler")
    register("random", "core.samplers.identity:RandomSampler")


@hookimpl
def register_backbones(register):
    register("timm", "core.models.timm_backbone:TimmBackbone")
    register("resnet", "core.models.resnet:ReIDResNet")
    register("transreid", "core.models.transreid:TransReIDViT")


@hookimpl
def register_heads(register):
    register("bnneck", "core.models.bnneck:BNNeckHead")
    register("jpm", "core.models.jpm_head:JPMHead")


@hookimpl
def register_losses(register):
    register("ce", "core.losses.cross_entropy:CrossEntropyLoss", aliases=("cross_entropy",))
    register("triplet", "core.losses.triplet:TripletLoss")
    register("wrt", "core.losses.weighted_triplet:WeightedRegularizedTriplet")
    register("center_loss", "core.losses.center:CenterLoss")  # `center` is the example plugin's
    register("circle", "core.losses.margin_softmax:CircleSoftmaxLoss")
    register("arcface", "core.losses.margin_softmax:ArcFaceLoss")
    register("cosface", "core.losses.margin_softmax:CosFaceLoss")
    register("supcon", "core.losses.supcon:SupConLoss")


@hookimpl
def register_evaluators(register):
    register("reid", "core.evaluation.reid:ReIDEvaluator")


@hookimpl
def register_loggers(register):
    register("tensorboard", "core.trackers.tensorboard_logger:TensorBoardLogger")
    register("wandb", "core.trackers.wandb_logger:WandbLogger")
    register("mlflow", "core.trackers.mlflow_logger:MLflowLogger")


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
