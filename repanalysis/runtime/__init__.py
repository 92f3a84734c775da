"""What every command runs on: ``executor`` (tasks on a Dask cluster or in this process), ``progress`` (one
progress line on a terminal), ``interrupts`` (Ctrl-C between steps), ``memory`` (refusing work that cannot
fit) and ``outputs`` (checked, atomic output files and folders). Imports nothing else of the package but
``repanalysis.errors``.
"""
