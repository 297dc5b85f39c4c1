"""The benchmark harness: everything that does not depend on which method runs.

Command line: ``python -m benchmark VERB [hydra overrides]`` (see ``benchmark.cli``).
"""

__version__ = "0.1.0"
