"""The use cases of the controller: what a command (or the controller loop) does to a scale
set, in which order, under one lock. See docs/architecture.md for who owns what.

Called by: (the package of the use-case modules)
"""
