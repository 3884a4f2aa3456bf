"""CalibreNet: a boundary-calibration module over a base tagger, applied to target text.

    ray start --head --dashboard-host=127.0.0.1
    ray job submit --working-dir . -- python jobs/calibrenet.py --config configs/calibrenet_demo.yaml

Locally, on an in-process cluster:   python jobs/calibrenet.py --config configs/calibrenet_demo.yaml
Print the resolved config:           python jobs/calibrenet.py --config FILE --dry-run
Override a key:                      --set finetune.max_steps=20 --set gold_eval=false
Every key is documented in ``xner_ray.methods.calibrenet.CalibrenetConfig``. The calibrator is
trained in this entry point's own process (give it a GPU node on a cluster, or pass a trained
``calibrator``); labeling and calibration run on the Ray cluster. Under ``ray job submit``
outputs must be absolute paths to outlive the uploaded copy of the working dir.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted copy's package

from xner_ray.jobs import run_job  # noqa: E402
from xner_ray.methods.calibrenet import CalibrenetConfig, run_calibrenet  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_job("calibrenet", CalibrenetConfig, run_calibrenet, doc=__doc__))
