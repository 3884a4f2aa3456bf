"""The combined job (no single paper's): projection-trained and English teachers as sources,
AdvPicker's discriminator selection, RIKD rounds, optionally CalibreNet on every round.

``job`` (the config and the run; the steps are the other method folders' own).
"""

from xner_ray.methods.combined.job import CombinedConfig, project_config, run_combined

__all__ = ["CombinedConfig", "project_config", "run_combined"]
