"""Fine-tune a source-language NER teacher with Ray Train.

    ray job submit --working-dir . -- python jobs/train_teacher.py \
        --train ../shared/data/conll2003-en/train.txt --dev ../shared/data/conll2003-en/dev.txt \
        --model builtin:me5-small --out outputs/teacher-en --epochs 3

CPU-sized run:  python jobs/train_teacher.py --config configs/teacher_demo.yaml
Any flag of ``xner train-teacher`` works here; ``--dry-run`` prints the resolved config.
"""

import sys

from xner_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-teacher", *sys.argv[1:]]))
