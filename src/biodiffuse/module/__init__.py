"""Per-model maths without AnnData: network construction, objective, how the condition is
built and the ``prepare`` function the shared sampling loop calls."""

from .mcd import MCDNetwork, MCDObjective, build_condition  # noqa: F401  (MCD)
from .residual_base import KernelRidgeBase, RidgeBase  # noqa: F401  (MCD residual bases)
from .modality import ModalityObjective  # noqa: F401  (MultiConditionDiffusion, CoherentDenoising)
from .spadit import SpaDiTDenoiser, SpaDiTNetwork, SpaDiTObjective  # noqa: F401  (SpaDiT)
