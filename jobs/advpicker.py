"""AdvPicker: adversarial (TLADV) teachers, discriminator-selected pseudo-labels, one student per
target language.

    ray start --head --dashboard-host=127.0.0.1
    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/advpicker.py --config configs/advpicker_demo.yaml \
        --set out=$PWD/outputs/advpicker-demo --set store=$PWD/outputs/advpicker-demo/store

Locally, on an in-process cluster:   python jobs/advpicker.py --config configs/advpicker_demo.yaml
The same as a command (a wheel install has no jobs/):  xner advpicker --config configs/advpicker_demo.yaml
Print the resolved config:           python jobs/advpicker.py --config FILE --dry-run
Override a key:                      --set rho=0.7 --set train_tladv.epochs=2
Every key is documented in ``xner_ray.methods.advpicker.AdvPickerConfig`` (the teacher keys in
``xner_ray.methods.advpicker.tladv.TladvConfig``). Under ``ray job submit`` the entry point runs in an
uploaded copy of the working dir: give outputs as absolute paths to keep them.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted copy's package

from xner_ray.cli import main  # noqa: E402
from xner_ray.jobs import load_job  # noqa: E402

# The job's config class and function (``xner_ray.jobs.JOBS``), for code that drives it from here.
AdvPickerConfig, run_advpicker = load_job("advpicker")

if __name__ == "__main__":
    sys.exit(main(["advpicker", *sys.argv[1:]]))  # the same command as `xner advpicker`
