"""TSL: single- or multi-source teacher-student distillation, for one or many target languages.

    ray start --head --dashboard-host=127.0.0.1
    ray job submit --working-dir . -- python jobs/tsl.py --config configs/tsl_demo.yaml

Locally, on an in-process cluster:   python jobs/tsl.py --config configs/tsl_demo.yaml
Print the resolved config:           python jobs/tsl.py --config FILE --dry-run
Every key is documented in ``xner_ray.methods.tsl.TslConfig``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted copy's package

from xner_ray.jobs import run_job  # noqa: E402
from xner_ray.methods.tsl import TslConfig, run_tsl  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_job("tsl", TslConfig, run_tsl, doc=__doc__))
