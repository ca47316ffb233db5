"""skipvit_jax: faster ViT training by routing tokens (SkipViT, ToE) in JAX/Flax."""

from skipvit_jax.models.routing import RoutingConfig
from skipvit_jax.models.vit import ViT

__all__ = ["RoutingConfig", "ViT"]
