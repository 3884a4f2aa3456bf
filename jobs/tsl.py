"""TSL: single- or multi-source teacher-student distillation, for one or many target languages.

    ray start --head --dashboard-host=127.0.0.1
    ray job submit --working-dir . -- python jobs/tsl.py --config configs/tsl_demo.yaml

Locally, on an in-process cluster:   python jobs/tsl.py --config configs/tsl_demo.yaml
The same as a command (a wheel install has no jobs/):  xner tsl --config configs/tsl_demo.yaml
Print the resolved config:           python jobs/tsl.py --config FILE --dry-run
Every key is documented in ``xner_ray.methods.tsl.TslConfig``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted copy's package

from xner_ray.cli import main  # noqa: E402
from xner_ray.jobs import load_job  # noqa: E402

# The job's config class and function (``xner_ray.jobs.JOBS``), for code that drives it from here.
TslConfig, run_tsl = load_job("tsl")

if __name__ == "__main__":
    sys.exit(main(["tsl", *sys.argv[1:]]))  # the same command as `xner tsl`
