"""Hook implementations: lazy "module:Class" targets, so `core plugins` imports no torch."""

from core.hookspecs import hookimpl


@hookimpl
def register_labelers(register):
    register("vge", "reid_vge_labeler.labeler:VGELabeler")
