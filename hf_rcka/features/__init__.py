"""Hidden states as features: token/map layouts, per-architecture description, layer pairing, capture of the used layers."""
