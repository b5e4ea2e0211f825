"""Hidden states as features: token/map layouts, per-architecture description, capture of the used layers."""
