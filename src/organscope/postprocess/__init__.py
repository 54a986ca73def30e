"""Post-processing shared by every engine: label map in, label map out.

`priors`: anatomical priors, rules relating an organ to anchor organs' boxes, written as data
(`load_rules` / `save_rules` read and write the rules JSON; applying them does no file I/O).
"""
from .priors import (
    Rule,
    RuleOutcome,
    RuleSet,
    apply_priors,
    apply_priors_array,
    evaluate_rules,
    load_rules,
    rules_excess_mm,
    save_rules,
)

__all__ = ["Rule", "RuleOutcome", "RuleSet", "apply_priors", "apply_priors_array", "evaluate_rules",
           "load_rules", "rules_excess_mm", "save_rules"]
