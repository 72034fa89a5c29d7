"""The known categories. Identity cues differ in kind between them (MGOR's category
shift): body proportions and clothes, paint and shape, coat texture, hull and
superstructure, facade grid, printed pattern."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import ImageDraw

from core.data.synthetic.animal import animal_attributes, animal_caption, animal_identity, animal_layout, \
    animal_parts, draw_animal
from core.data.synthetic.building import building_attributes, building_caption, building_identity, \
    building_layout, building_parts, draw_building
from core.data.synthetic.drawing import Box
from core.data.synthetic.objects import draw_object, object_attributes, object_caption, object_identity, \
    object_layout, object_parts
from core.data.synthetic.person import draw_person, person_attributes, person_caption, person_identity, \
    person_layout, person_parts
from core.data.synthetic.ship import draw_ship, ship_attributes, ship_caption, ship_identity, ship_layout, ship_parts
from core.data.synthetic.vehicle import draw_vehicle, vehicle_attributes, vehicle_caption, vehicle_identity, \
    vehicle_layout, vehicle_parts


@dataclass(frozen=True)
class CategorySpec:
    """One category: how to draw an identity's attributes, lay it out, draw it, name its
    three part boxes (top to bottom), and put what it drew into words. A new category
    is one more entry in `CATEGORIES`."""

    sample: Callable[[np.random.Generator], dict[str, Any]]
    layout: Callable[[dict[str, Any], str, np.ndarray, int, int], dict[str, Any]]
    parts: Callable[[dict[str, Any]], tuple[Box, Box, Box]]
    draw: Callable[[ImageDraw.ImageDraw, dict[str, Any], dict[str, Any]], None]
    part_names: tuple[str, str, str]
    #: attributes -> {name: word}: what a caption may say (colour names of painted colours)
    describe: Callable[[dict[str, Any]], dict[str, str]]
    #: the words of `describe` -> one sentence
    caption: Callable[[dict[str, str]], str]


#: Known categories; the index in this mapping is the category index used in seeds and
#: pids, so adding a category at the end never changes existing worlds.
CATEGORIES: dict[str, CategorySpec] = {
    "person": CategorySpec(person_identity, person_layout, person_parts, draw_person, ("head", "upper", "legs"),
                           person_attributes, person_caption),
    "vehicle": CategorySpec(vehicle_identity, vehicle_layout, vehicle_parts, draw_vehicle, ("roof", "body", "wheels"),
                            vehicle_attributes, vehicle_caption),
    "animal": CategorySpec(animal_identity, animal_layout, animal_parts, draw_animal, ("head", "body", "legs"),
                           animal_attributes, animal_caption),
    "ship": CategorySpec(ship_identity, ship_layout, ship_parts, draw_ship, ("superstructure", "hull", "waterline"),
                         ship_attributes, ship_caption),
    "building": CategorySpec(building_identity, building_layout, building_parts, draw_building,
                             ("roof", "facade", "ground_floor"), building_attributes, building_caption),
    "object": CategorySpec(object_identity, object_layout, object_parts, draw_object, ("top", "body", "base"),
                           object_attributes, object_caption),
}
CATEGORY_INDEX = {name: i for i, name in enumerate(CATEGORIES)}
CATEGORY_NAMES = list(CATEGORIES)
