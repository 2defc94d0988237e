"""Dry runs: the real use cases acted out on a simulated copy of a set (``vmss plan``).

Called by: (the package of dryrun.plan and dryrun.simworld)
"""
