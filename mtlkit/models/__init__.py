"""Model zoo: backbones, shared blocks and one module per paper architecture.

Importing this package registers every arch in :data:`mtlkit.registry.ARCHS`.
"""

from mtlkit.models import (  # noqa: F401  (registration side effects)
    backbones,
    baseline,
    bfci,
    mtcp,
    mtinet,
    padnet,
    tif,
    tpim,
)
from mtlkit.models.factory import create_model, model_summary  # noqa: F401
