"""RIKD: reinforced iterative knowledge distillation (Liang et al. 2021).

``job`` (the rounds), ``policy`` (the state features and the REINFORCE policy network),
``step`` (Algorithm 2 as a step of the shared Ray Train loop).
"""

from xner_ray.methods.rikd.job import RikdConfig, run_rikd

__all__ = ["RikdConfig", "run_rikd"]
