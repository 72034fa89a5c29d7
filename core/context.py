"""The build context: facts the data decides, handed to components at build time.

A component asks for it by naming a constructor parameter `ctx`. Nobody types the
number of identities into YAML: it comes from the training table. Fields filled later
in the build (feature_dim, patch_grid, after the backbone) are None until then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.data.table import RecordTable


@dataclass
class BuildContext:
    #: The training record table (None when building for evaluation only).
    train: "RecordTable | None" = None
    num_identities: int = 0
    #: Identities per category name, in `category_names` order.
    identities_per_category: dict[str, int] = field(default_factory=dict)
    category_names: list[str] = field(default_factory=list)
    domain_names: list[str] = field(default_factory=list)
    num_cameras: int = 0
    #: Input image size (height, width) after the transform.
    image_size: tuple[int, int] = (256, 128)
    #: Set once the backbone is built: its "global" feature dimension, its patch grid.
    feature_dim: int | None = None
    patch_grid: tuple[int, int] | None = None
    device: str = "cpu"
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    run_dir: Path | None = None
    #: Batches per epoch every sampler plans (global batches under DDP): the core's
    #: epoch-length rule (core.samplers.epoch), set by the pipeline before the sampler is
    #: built; None outside a pipeline (a sampler then plans its own number).
    epoch_batches: int | None = None
    #: Free-form facts a plugin may add for the components built after it.
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: "RecordTable", backbone: Any = None, feature_dim: int | None = None,
                   patch_grid: tuple[int, int] | None = None, **kwargs: Any) -> "BuildContext":
        """The context a pipeline with training table `table` gives its components: what
        the table decides, and what the backbone decides — from `backbone` (its
        `feature_dim` and `patch_grid`, as the pipeline sets them after building it) or
        given directly (`feature_dim=32`), so a unit test can build a head or a loss
        that reads `ctx.feature_dim`. Other fields as keywords (`image_size`, `seed`, ...)."""
        if backbone is not None:
            feature_dim = int(backbone.feature_dim) if feature_dim is None else feature_dim
            patch_grid = getattr(backbone, "patch_grid", None) if patch_grid is None else patch_grid
        return cls(
            train=table,
            num_identities=table.num_identities,
            identities_per_category=table.identities_per_category(),
            category_names=list(table.category_names),
            domain_names=list(table.domain_names),
            num_cameras=int(len(set(table.camids.tolist()))),
            feature_dim=feature_dim,
            patch_grid=patch_grid,
            **kwargs,
        )
