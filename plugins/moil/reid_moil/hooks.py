"""Hook implementations. The lazy target keeps `core plugins` free of torch."""

from core.hookspecs import hookimpl


@hookimpl
def register_losses(register):
    register("moil", "reid_moil.loss:MOILLoss")
