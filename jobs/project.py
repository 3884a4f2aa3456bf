"""Entity projection on parallel corpora (Li et al. 2021): English NER + entity alignment +
the Sec. 4.3 filters into the store, then a target model per language trained on the projected
labels with the re-weighted loss (1 + p_t)^gamma.

    ray start --head --dashboard-host=127.0.0.1
    ray job submit --working-dir . -- python jobs/project.py --config configs/project_demo.yaml

Locally, on an in-process cluster:   python jobs/project.py --config configs/project_demo.yaml
The same as a command (a wheel install has no jobs/):  xner project --config configs/project_demo.yaml
Print the resolved config:           python jobs/project.py --config FILE --dry-run
Override a key:                      --set aligner=similarity --set gamma=0
Then:  xner sql --store outputs/project-demo/store --file sql/projection_status.sql
Every key is documented in ``xner_ray.methods.projection.job.ProjectConfig``. Under ``ray job submit``
the entry point runs in an uploaded copy of the working dir: give outputs as absolute paths
(--set out=... --set store=...) to keep them.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted copy's package

from xner_ray.cli import main  # noqa: E402
from xner_ray.jobs import load_job  # noqa: E402

# The job's config class and function (``xner_ray.jobs.JOBS``), for code that drives it from here.
ProjectConfig, run_project = load_job("project")

if __name__ == "__main__":
    sys.exit(main(["project", *sys.argv[1:]]))  # the same command as `xner project`
