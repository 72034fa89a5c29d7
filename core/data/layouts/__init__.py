"""Readers for the standard ReID layouts and a generic folder tree (DESIGN.md "Data")."""

from core.data.layouts.cuhk03 import CUHK03
from core.data.layouts.cuhk03np import CUHK03NP
from core.data.layouts.dukemtmc import DukeMTMC
from core.data.layouts.folder import FolderDataset
from core.data.layouts.market1501 import Market1501
from core.data.layouts.msmt17 import MSMT17
from core.data.layouts.occluded_duke import OccludedDuke
from core.data.layouts.vehicleid import VehicleID
from core.data.layouts.veri776 import VeRi776
from core.data.layouts.veriwild import VeRiWild

__all__ = ["CUHK03", "CUHK03NP", "DukeMTMC", "FolderDataset", "MSMT17", "Market1501", "OccludedDuke",
           "VehicleID", "VeRi776", "VeRiWild"]
