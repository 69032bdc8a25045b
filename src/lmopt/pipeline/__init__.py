"""The recipe runner: YAML recipes (lists of steps), run top to bottom, cached and resumable.

The step protocol itself (Step, StepContext, StepResult, the step table) is `lmopt.step`, below every
stage; this package sits on top of the stages and imports them only through that table.
"""

from lmopt.pipeline.recipe import Recipe, RecipeEvaluate, load_recipe_file, one_step_recipe
from lmopt.pipeline.runner import run_recipe, step_key

__all__ = ["Recipe", "RecipeEvaluate", "load_recipe_file", "one_step_recipe", "run_recipe", "step_key"]
