"""Hook implementations. The lazy target keeps `core plugins` free of numpy planning code."""

from core.hookspecs import hookimpl


@hookimpl
def register_samplers(register):
    register("edps", "reid_edps.sampler:EDPSSampler")
