"""Models: ``MCLIRModel`` (registered in BasicSR's ``MODEL_REGISTRY``), the contrastive model wrapper, and the
official MCLIR repository's model types translated to it (:mod:`mclir_plugin.models.official_models`)."""
from mclir_plugin.models.mclir_model import MCLIRMixin, MCLIRModel, mclir_class
from mclir_plugin.models.official_models import RawValidationSRModel, translate_official

__all__ = ['MCLIRMixin', 'MCLIRModel', 'mclir_class', 'RawValidationSRModel', 'translate_official']
