"""Segmentation metrics as pure numpy functions (no torch), one module per idea.

Conventions: ``prob`` is an (H, W) float map of the foreground (cell) probability;
``label`` an (H, W) integer or bool map, nonzero = foreground (cell), 0 = membrane /
background; instance label images are (H, W) integer, 0 = background, each positive id one
object. Stacks are scored slice by slice and averaged, as the ISBI 2012 challenge did.

- :mod:`.pixel`: pixel error, IoU, Dice, binary cross entropy, pixel F-score; per-class
  IoU and Dice of multi-class maps from their confusion matrix.
- :mod:`.isbi`: the ISBI 2012 scores after the organisers' Fiji evaluation
  (Arganda-Carreras et al., Front. Neuroanat. 9:142, 2015, doi:10.3389/fnana.2015.00142):
  contingency table, V_rand and V_info with their split and merge parts, thinned
  segments, and :func:`isbi_scores`, the report over thresholds behind
  ``biounet evaluate``.
- :mod:`.instances`: IoU matrix, one-to-one matching, the 2018 Data Science Bowl score
  (Caicedo et al., Nat. Methods 16:1247, 2019, doi:10.1038/s41592-019-0612-7), AP@0.5, F1,
  Cell Tracking Challenge SEG, merges and splits.
- :mod:`.warping`: the topology-aware warping error (Jain et al. 2010).

Every name below is importable from ``biounet.metrics`` as before the split.
"""

from ..labels import FOUR_CONNECTED as FOUR
from .instances import (
    DSB_THRESHOLDS,
    Matching,
    instance_ious,
    instance_scores,
    instance_scores_many,
    match_instances,
    seg_score,
)
from .isbi import (
    DEFAULT_THRESHOLDS,
    METRICS,
    Scores,
    Table,
    contingency,
    ground_truth_segments,
    information_scores,
    isbi_scores,
    rand_scores,
    thinned_segments,
)
from .pixel import (
    binary_cross_entropy,
    class_scores,
    class_scores_many,
    confusion_matrix,
    dice,
    dice_per_class,
    iou,
    iou_per_class,
    pixel_error,
    pixel_fscore,
)
from .warping import warp, warping_error

__all__ = [
    "DEFAULT_THRESHOLDS",
    "DSB_THRESHOLDS",
    "FOUR",
    "METRICS",
    "Matching",
    "Scores",
    "Table",
    "binary_cross_entropy",
    "class_scores",
    "class_scores_many",
    "confusion_matrix",
    "contingency",
    "dice",
    "dice_per_class",
    "ground_truth_segments",
    "information_scores",
    "instance_ious",
    "instance_scores",
    "instance_scores_many",
    "iou",
    "iou_per_class",
    "isbi_scores",
    "match_instances",
    "pixel_error",
    "pixel_fscore",
    "rand_scores",
    "seg_score",
    "thinned_segments",
    "warp",
    "warping_error",
]
