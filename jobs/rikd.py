"""RIKD: reinforced iterative knowledge distillation, for one or many target languages.

    ray start --head --dashboard-host=127.0.0.1
    ray job submit --working-dir . -- python jobs/rikd.py --config configs/rikd_demo.yaml

Locally, on an in-process cluster:   python jobs/rikd.py --config configs/rikd_demo.yaml
Print the resolved config:           python jobs/rikd.py --config FILE --dry-run
Override a key:                      --set rounds=2 --set student.epochs=1
Every key is documented in ``xner_ray.methods.rikd.RikdConfig``. Under ``ray job submit`` the
entry point runs in an uploaded copy of the working dir: configs name data and outputs by
absolute paths or paths relative to the repo (resolved in that copy; outputs must then be
absolute to outlive the job).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted copy's package

from xner_ray.jobs import run_job  # noqa: E402
from xner_ray.methods.rikd import RikdConfig, run_rikd  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_job("rikd", RikdConfig, run_rikd, doc=__doc__))
