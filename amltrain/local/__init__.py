"""The local backend: a job run in local Docker with the runtime contract of an Azure ML cluster run.

``request`` (pure) says what to run and is what ``--dry-run`` prints; ``executor`` runs it; ``control`` finds,
follows and cancels runs from any shell by their labels; ``launcher`` runs inside each container (standard
library only) and starts the processes as Azure ML would.
"""
