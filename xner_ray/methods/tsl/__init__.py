"""TSL: single/multi-source teacher-student learning (Wu et al. 2020).

``job`` (labeling with one or several teachers, students), ``langsim`` (the language-similarity
teacher weights, Eq. 8-11).
"""

from xner_ray.methods.tsl.job import TslConfig, run_tsl

__all__ = ["TslConfig", "run_tsl"]
