"""``modelpress deploy RECIPE.yaml``: the whole chain from one recipe, every stage measured.

``recipe`` reads and validates the YAML recipe; ``workflow`` runs it: source -> optimize ->
quantize -> protect -> a package per stage -> one interleaved benchmark on the eval data ->
the deliverable package and ``report.json`` / ``report.html``.
"""

from modelpress.deploy.recipe import BenchSettings, Recipe, load_recipe, parse_recipe
from modelpress.deploy.workflow import DeployReport, StageResult, deploy

__all__ = ["BenchSettings", "DeployReport", "Recipe", "StageResult", "deploy", "load_recipe", "parse_recipe"]
