"""Evaluation: the NELBO bound with error bars, the exact chain-rule likelihood, the judge LM for
generated text, and (in :mod:`maskdiff.evaluation.lm_eval`) the lm-evaluation-harness model."""

from maskdiff.evaluation.bound import evaluate_nelbo
from maskdiff.evaluation.chain_rule import chain_rule_log_likelihood, evaluate_chain_rule, time_for_alpha
from maskdiff.evaluation.evaluate import encode_corpus, evaluate_checkpoint
from maskdiff.evaluation.results import EvalResult, summarize

__all__ = [
    "EvalResult",
    "chain_rule_log_likelihood",
    "encode_corpus",
    "evaluate_chain_rule",
    "evaluate_checkpoint",
    "evaluate_nelbo",
    "summarize",
    "time_for_alpha",
]
