"""Distillation of the DP global model into a smaller student, on data the server owns.

The teacher is the run's exported global model: already differentially private, so anything
computed from it alone is post-processing and spends no privacy. The student learns the
teacher's temperature-softened outputs (soft labels, a KL loss) on a *public* set - rows the
coordinator owns and no site trained on (:mod:`fedmodel.distill.public`) - and is evaluated on
other public rows, disjoint from the ones it learned from (:mod:`fedmodel.distill.student`).
"""

from fedmodel.distill.errors import DistillError
from fedmodel.distill.kd import DistillConfig, distill_student
from fedmodel.distill.public import PUBLIC_SETS, PublicRows, load_public
from fedmodel.distill.student import STUDENTS_DIR, DistilledStudent, distill_run

__all__ = [
    "PUBLIC_SETS",
    "STUDENTS_DIR",
    "DistillConfig",
    "DistillError",
    "DistilledStudent",
    "PublicRows",
    "distill_run",
    "distill_student",
    "load_public",
]
