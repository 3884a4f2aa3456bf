"""xner_ray: distributed pseudo-labeling and distillation for cross-lingual NER on Ray."""

__version__ = "0.1.0"
