"""Everyday tools on a trained run: feature extraction, search with ranked-list pictures,
part-mask overlays, export, training curves, and the plugin scaffold.

Each module holds one tool; `core.tools.commands` adds them to the `core` CLI without
importing torch (the handlers import their module when they run).
"""
