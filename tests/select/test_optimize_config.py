"""OptimizeConfig: constraint and objective strings parsed, bad ones rejected with the bad part named."""

import pytest

from lmopt.errors import LmoptError
from lmopt.select.optimize_config import Constraint, OptimizeConfig, parse_constraint, parse_constraints


def test_constraints_parse_into_metric_operator_bound():
    assert parse_constraint(" decode_tok_s >= 40 ") == Constraint("decode_tok_s", ">=", 40.0)
    assert parse_constraint("peak_mb<=800") == Constraint("peak_mb", "<=", 800.0)
    assert parse_constraint("wikitext2:perplexity<=25.5") == Constraint("wikitext2:perplexity", "<=", 25.5)
    assert parse_constraint("boolq:acc>=0.6") == Constraint("boolq:acc", ">=", 0.6)
    assert parse_constraint("mc:/data/my tasks.jsonl:acc_norm>=1e-1").bound == 0.1
    both = parse_constraints(["decode_tok_s>=40, peak_mb<=800", "size_mb<=150,ppl_ratio<=1.2"])
    assert [str(c) for c in both] == ["decode_tok_s>=40", "peak_mb<=800", "size_mb<=150", "ppl_ratio<=1.2"]


def test_violation_is_relative_and_signed():
    speed, memory = parse_constraint("decode_tok_s>=40"), parse_constraint("peak_mb<=800")
    assert speed.violation(50) == pytest.approx(-0.25) and speed.violation(30) == pytest.approx(0.25)
    assert memory.violation(800) == 0 and memory.violation(1000) == pytest.approx(0.25)


@pytest.mark.parametrize(("text", "message"), [
    ("decode_tok_s", "constraint 'decode_tok_s': expected METRIC>=NUMBER or METRIC<=NUMBER"),
    ("decode_tok_s>40", "constraint 'decode_tok_s>40': operator '>' (use >= or <=)"),
    ("decode_tok_s=>40", "operator '=>' (use >= or <=)"),
    ("peak_mb<=lots", "constraint 'peak_mb<=lots': bound 'lots' is not a number"),
    ("peak_mb<=inf", "bound 'inf' is not a finite number"),
    ("speed>=40", "constraint 'speed>=40': unknown metric 'speed' (choose decode_tok_s,"),
    ("wikitext2:acc>=0.5", "constraint 'wikitext2:acc>=0.5': task 'wikitext2' has no metric 'acc' "
                           "(it has: perplexity)"),
    ("boolq:perplexity<=3", "task 'boolq' has no metric 'perplexity' (it has: acc, acc_norm)"),
    ("peak_mb<=-5", "constraint 'peak_mb<=-5': peak_mb is always above 0, so it can never be <= -5"),
    ("boolq:acc>=1.5", "boolq:acc is at most 1, so it can never be >= 1.5"),
])
def test_bad_constraints_name_the_bad_part(text, message):
    with pytest.raises(ValueError, match=None) as info:
        parse_constraint(text)
    assert message in str(info.value)


def test_contradicting_constraints_are_infeasible():
    with pytest.raises(ValueError, match="constraints 'size_mb>=200' and 'size_mb<=100' cannot both hold"):
        parse_constraints(["size_mb<=100, size_mb>=200"])


def test_config_errors_are_one_line_naming_the_field():
    with pytest.raises(LmoptError) as info:
        OptimizeConfig.parse({"models": ["m"], "constraints": ["decode_tok_s>=40, peak_mb<=x"]}, where="cli")
    assert str(info.value) == "cli: constraints: constraint 'peak_mb<=x': bound 'x' is not a number"
    with pytest.raises(LmoptError, match="cli: objective: objective 'wikitext2:accuracy': task 'wikitext2' has no"):
        OptimizeConfig.parse({"objective": "wikitext2:accuracy"}, where="cli")
    with pytest.raises(LmoptError, match="cli: objective: objective 'ppl_ratio': a ratio needs"):
        OptimizeConfig.parse({"objective": "ppl_ratio"}, where="cli")
    with pytest.raises(LmoptError, match="ppl_ratio: the objective 'boolq:acc' is not a perplexity"):
        OptimizeConfig.parse({"objective": "boolq:acc", "constraints": ["ppl_ratio<=1.2"]}, where="cli")
    with pytest.raises(LmoptError, match="cli: space.bits: bits \\[4, 9\\]: each must be 2..8"):
        OptimizeConfig.parse({"space": {"bits": [4, 9]}}, where="cli")
    with pytest.raises(LmoptError, match="cli: budget_min: Input should be greater than 0"):
        OptimizeConfig.parse({"budget_min": 0}, where="cli")


def test_directions_and_measured_tasks_follow_the_metrics():
    config = OptimizeConfig(objective="boolq:acc", constraints=["pydoc:perplexity<=30, quality_ratio>=0.95",
                                                                "decode_tok_s>=40"], tasks=["arc_easy", "boolq"])
    assert config.directions() == ["maximize", "maximize"]
    assert config.measured_tasks() == ["boolq", "pydoc", "arc_easy"]
    assert OptimizeConfig().directions() == ["minimize", "maximize"]  # wikitext2:perplexity
    # normalized constraint strings round-trip through YAML
    assert OptimizeConfig.parse(config.to_dict()).constraints == ["pydoc:perplexity<=30", "quality_ratio>=0.95",
                                                                  "decode_tok_s>=40"]


def test_partial_cheap_fidelity_keeps_the_other_cheap_defaults():
    base = OptimizeConfig.parse({"models": ["m"], "objective": "wikitext2:perplexity"}, where="test")
    partial = OptimizeConfig.parse({"models": ["m"], "objective": "wikitext2:perplexity", "cheap": {"limit": 2}},
                                   where="test")
    assert partial.cheap.limit == 2
    assert partial.cheap.model_dump(exclude={"limit"}) == base.cheap.model_dump(exclude={"limit"})
    assert partial.cheap.seq_len != partial.full.seq_len  # not reset to the full fidelity's 2048
