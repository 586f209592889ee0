"""The embedded world: task families and gold grader, customers, labelers and the web-text corpus."""

from rlhf_env.world.grader import Grade, grade
from rlhf_env.world.tasks import FAMILIES

__all__ = ["FAMILIES", "Grade", "grade"]
