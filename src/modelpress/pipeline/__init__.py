"""Pre- and post-processing pipelines of a deployment package (``pipeline.yaml``).

``Pipeline.from_yaml(path)`` reads the steps of each model input and output; ``preprocess``
turns raw inputs (image bytes, features, categories) into feeds, ``postprocess`` turns model
outputs into probabilities, labels or rescaled values. Steps live in ``preprocess.py`` and
``postprocess.py``; ``STEPS`` is the one name -> class map.
"""

from __future__ import annotations

from modelpress.pipeline.pipeline import STEPS, Pipeline, make_step
from modelpress.pipeline.steps import Step

__all__ = ["STEPS", "Pipeline", "Step", "make_step"]
