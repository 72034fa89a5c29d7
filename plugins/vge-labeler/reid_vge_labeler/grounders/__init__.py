"""Grounders: images -> one box per part (see base.py for the interface)."""

from reid_vge_labeler.grounders.base import Grounder, Grounding
from reid_vge_labeler.grounders.registry import GROUNDERS, build_grounder

__all__ = ["GROUNDERS", "Grounder", "Grounding", "build_grounder"]
