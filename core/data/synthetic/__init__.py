"""A procedural multi-category ReID world: the default data of the quickstart, the tests
and the plugins' experiments (DESIGN.md "Data and the embedded default").

No dataset can be downloaded on the project's machines, so the world renders identities
(people, vehicles, animals, ships, buildings, objects) on the fly with PIL and numpy. An
identity is a fixed set of attributes; an image is that identity seen by one camera (view,
viewpoint warp, perspective, background, light, colour cast, blur, noise, occluders), in
one render style (domain), optionally in one of several outfits or in thermal infrared.
Everything derives from `np.random.default_rng([seed, ...])`, so a world is the same on
every machine and worker.

Modules: `categories` (what an identity is and how it is drawn; one module per category),
`camera` (how one image looks at it), `render` (composition, styles, infrared), `world`
(the dataset), `export` (Market-1501 layout and manifest on disk).
"""

from core.data.synthetic.camera import VIEWS, Camera, Shot
from core.data.synthetic.categories import CATEGORIES, CategorySpec
from core.data.synthetic.render import STYLES
from core.data.synthetic.world import PID_STRIDE, SyntheticWorld, format_attributes, parse_attributes, preview_grid

__all__ = ["CATEGORIES", "PID_STRIDE", "STYLES", "VIEWS", "Camera", "CategorySpec", "Shot", "SyntheticWorld",
           "format_attributes", "parse_attributes", "preview_grid"]
