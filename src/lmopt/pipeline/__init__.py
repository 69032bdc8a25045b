"""Pipeline: the step registry and YAML recipes (lists of steps, cached and resumable)."""

from lmopt.pipeline.recipe import Recipe, load_recipe_file, one_step_recipe, run_recipe
from lmopt.pipeline.steps import STEPS, StepContext, StepResult, available_steps, get_step, register_step

__all__ = ["STEPS", "Recipe", "StepContext", "StepResult", "available_steps", "get_step",
           "load_recipe_file", "one_step_recipe", "register_step", "run_recipe"]
