"""AdvPicker (Chen et al. 2021): TLADV teachers, discriminator-based selection, KD.

``job`` (the whole method), ``tladv`` (token-level language-adversarial training); the
discriminator itself is a model: ``xner_ray.models.discriminator``.
"""

from xner_ray.methods.advpicker.job import (AdvPickerConfig, ensemble_predict, label_config,
                                            run_advpicker, tladv_config)

__all__ = ["AdvPickerConfig", "ensemble_predict", "label_config", "run_advpicker",
           "tladv_config"]
