"""Fine-tune a source-language NER teacher with Ray Train.

    ray job submit --working-dir . -- python jobs/train_teacher.py \
        --train $PWD/../shared/data/conll2003-en/train.txt \
        --dev $PWD/../shared/data/conll2003-en/dev.txt \
        --model builtin:me5-small --out $PWD/outputs/teacher-en --epochs 3

Under ``ray job submit`` the entry point runs in an uploaded copy of the working dir: give data
and output paths as absolute paths (relative ones resolve inside that temporary copy).
CPU-sized run:  python jobs/train_teacher.py --config configs/teacher_demo.yaml
Any flag of ``xner train-teacher`` works here; ``--dry-run`` prints the resolved config.
"""

import sys
from pathlib import Path

# Under `ray job submit --working-dir .` the entry point runs from the uploaded copy: import the
# package from there (Ray puts the working dir on the workers' path too), not from elsewhere.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xner_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train-teacher", *sys.argv[1:]]))
