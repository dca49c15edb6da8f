"""Settings beyond the paper that the method comparison has not validated (TRL's `trl.experimental` is the model).

Nothing here is needed by the default method, and any of it may change or go without notice. A recipe that sets
one of `ExperimentalAlignmentConfig`'s own keys is trained with it (the train command says so at start-up):

    from eagle_align.experimental import ExperimentalAlignmentConfig
    args = ExperimentalAlignmentConfig(output_dir="out", lambda_necessity=1.0)
"""

from eagle_align.experimental.config import ExperimentalAlignmentConfig
from eagle_align.experimental.policies import NearTieDeviationTerm, NecessityTerm

__all__ = ["ExperimentalAlignmentConfig", "NearTieDeviationTerm", "NecessityTerm"]
