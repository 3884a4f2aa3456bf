"""RIKD: reinforced iterative knowledge distillation, for one or many target languages.

    ray start --head --dashboard-host=127.0.0.1
    ray job submit --working-dir . -- python jobs/rikd.py --config configs/rikd_demo.yaml

Locally, on an in-process cluster:   python jobs/rikd.py --config configs/rikd_demo.yaml
The same as a command (a wheel install has no jobs/):  xner rikd --config configs/rikd_demo.yaml
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

from xner_ray.cli import main  # noqa: E402
from xner_ray.jobs import load_job  # noqa: E402

# The job's config class and function (``xner_ray.jobs.JOBS``), for code that drives it from here.
RikdConfig, run_rikd = load_job("rikd")

if __name__ == "__main__":
    sys.exit(main(["rikd", *sys.argv[1:]]))  # the same command as `xner rikd`
