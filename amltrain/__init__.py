"""amltrain: build one training image, run it locally with Azure ML's runtime contract, then submit it.

Data flows one way: configuration (``config``) -> frozen specs (``spec``) -> a request that is plain
data (what ``--dry-run`` prints) -> a backend that executes it (Docker today, Azure ML later).
"""

__version__ = "0.1.0"
