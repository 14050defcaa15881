"""Models: ``MCLIRModel`` (registered in BasicSR's ``MODEL_REGISTRY``), the contrastive model wrapper."""
from mclir_plugin.models.mclir_model import MCLIRMixin, MCLIRModel, mclir_class

__all__ = ['MCLIRMixin', 'MCLIRModel', 'mclir_class']
