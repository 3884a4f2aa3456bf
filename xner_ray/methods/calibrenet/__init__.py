"""CalibreNet (Liang et al., WSDM'21; ``seeds/003``): a calibration module that re-reads each
span of any base tagger and recovers its boundaries, pre-trained with Phrase Boundary Recovery.

``model`` the module and its losses (Eq. 4-13), ``encode`` instances and decoding, ``garble``
the No-Op/Add/Delete/Shift initial answers (Sec. 3.2.2), ``pbr`` pre-training data and stages
(Sec. 3.2), ``data`` fine-tuning data (Sec. 4), ``train`` the training loop, ``checkpoint``
model folders, ``stage`` the Ray-free labeling stage, ``pipeline`` the calibration pass on the
Ray pipeline (a ``calibrations`` table committed with a labeled round), ``job`` the job
(``CalibrenetConfig``, ``run_calibrenet``; ``jobs/calibrenet.py``).
"""

from xner_ray.methods.calibrenet.checkpoint import build_calibrenet, load_calibrenet, save_calibrenet
from xner_ray.methods.calibrenet.data import DevSet, base_predictions, finetune_instances
from xner_ray.methods.calibrenet.encode import CalibInstance, decode, encode_instances
from xner_ray.methods.calibrenet.garble import (
    OpDist, default_op_dist, estimate_op_dist, garble,
)
from xner_ray.methods.calibrenet.job import CalibrenetConfig, run_calibrenet
from xner_ray.methods.calibrenet.pbr import (
    PassageRules, build_passages, pbr_instances, pretraining_stages,
)
from xner_ray.methods.calibrenet.stage import CalibrationStage, calibrate_sentences
from xner_ray.methods.calibrenet.train import (
    CalibreNetConfig, pbr_config, pretrain_pbr, train_calibrenet,
)

__all__ = [
    "CalibInstance", "CalibrationStage", "CalibreNetConfig", "CalibrenetConfig", "DevSet",
    "OpDist", "PassageRules",
    "base_predictions", "build_calibrenet", "build_passages", "calibrate_sentences", "decode",
    "default_op_dist", "encode_instances", "estimate_op_dist", "finetune_instances", "garble",
    "load_calibrenet", "pbr_config", "pbr_instances", "pretrain_pbr", "pretraining_stages",
    "run_calibrenet", "save_calibrenet", "train_calibrenet",
]
