"""The combined job: projection + English teachers -> AdvPicker selection -> RIKD rounds.

    ray start --head --dashboard-host=127.0.0.1
    ray job submit --working-dir . -- python jobs/combined.py --config configs/combined_demo.yaml

Locally, on an in-process cluster:   python jobs/combined.py --config configs/combined_demo.yaml
The same as a command (a wheel install has no jobs/):
    xner combined --config configs/combined_demo.yaml
Print the resolved config:           python jobs/combined.py --config FILE --dry-run
Override a key:                      --set rounds=2 --set student.epochs=1
Every key is documented in ``xner_ray.methods.combined.CombinedConfig``. Under ``ray job
submit`` the entry point runs in an uploaded copy of the working dir: configs name data and outputs by
absolute paths or paths relative to the repo (resolved in that copy; outputs must then be
absolute to outlive the job).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted copy's package

from xner_ray.cli import main  # noqa: E402
from xner_ray.jobs import load_job  # noqa: E402

# The job's config class and function (``xner_ray.jobs.JOBS``), for code that drives it from here.
CombinedConfig, run_combined = load_job("combined")

if __name__ == "__main__":
    sys.exit(main(["combined", *sys.argv[1:]]))  # the same command as `xner combined`
