"""Reveal rules on their own (fake predictions, no network) and their registry (SamplerOptions, model.sample, CLI)."""

import pytest
import torch

import maskdiff
from maskdiff.cli import build_parser
from maskdiff.errors import MaskdiffError
from maskdiff.sampling import RULES, Prediction, Rule, SamplerOptions, StepContext, iterate
from maskdiff.sampling.rules import Ancestral, LowConfidence, Mean, RandomOrder, Threshold


def sample_parser():
    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command")
    return subcommands.choices["sample"]


def method_choices():
    return tuple(next(a for a in sample_parser()._actions if a.dest == "method").choices)


def predict(rule, logits, p_reveal=0.5, u_value=None, model_probs=None):
    """The rule's prediction for fake logits [N, L, V] (one row per sample, every row run)."""
    probs = torch.softmax(logits.double(), -1)
    u_value = torch.full(logits.shape[:2], 0.5, dtype=torch.float64) if u_value is None else u_value
    return rule.draw(probs, u_value, torch.as_tensor(p_reveal, dtype=torch.float64), False, model_probs)


def context(masked, u_reveal=None, p_reveal=0.5):
    masked = torch.as_tensor(masked, dtype=torch.bool)
    u_reveal = torch.full(masked.shape, 0.5, dtype=torch.float64) if u_reveal is None else torch.as_tensor(u_reveal, dtype=torch.float64)
    return StepContext(masked, u_reveal, torch.as_tensor(p_reveal, dtype=torch.float64))


def fake(confidence, chance=None):
    """A prediction whose drawn values are all 1, with the given confidences [N, L]."""
    confidence = torch.as_tensor(confidence, dtype=torch.float64)
    chance = torch.zeros_like(confidence) if chance is None else torch.as_tensor(chance, dtype=torch.float64)
    return Prediction(torch.ones(confidence.shape, dtype=torch.long), confidence, chance)


# ---------------------------------------------------------------- the rules on fake predictions
def test_ancestral_skips_rows_with_no_draw_below_the_reveal_chance():
    masked = [[True, True, False], [True, True, True], [False, False, False]]
    u = [[0.1, 0.9, 0.0], [0.6, 0.7, 0.5], [0.0, 0.0, 0.0]]
    step = context(masked, u, p_reveal=0.3)
    # row 0 has a draw below 0.3 at a masked position; row 1 has none; row 2 has nothing masked
    assert Ancestral().may_reveal(step).tolist() == [True, False, False]
    assert Ancestral().reveal(step, fake(torch.zeros(3, 3))).tolist() == [[True, False, False], [False] * 3, [False] * 3]
    # mean: the same reveals, but every row with a mask goes to the network
    assert Mean().may_reveal(step).tolist() == [True, True, False]
    assert torch.equal(Mean().reveal(step, fake(torch.zeros(3, 3))), Ancestral().reveal(step, fake(torch.zeros(3, 3))))


def test_ancestral_with_per_value_chances_reveals_below_the_predicted_chance():
    masked = [[True, True, True, True]]
    step = context(masked, [[0.05, 0.15, 0.25, 0.35]], p_reveal=[0.1, 0.3])  # the largest chance bounds the candidates
    assert step.per_value and Ancestral().may_reveal(step).tolist() == [True]
    reveal = Ancestral().reveal(step, fake(torch.zeros(1, 4), chance=[[0.2, 0.2, 0.3, 0.3]]))
    assert reveal.tolist() == [[True, True, True, False]]  # u < chance, and u < max(p_reveal) = 0.3


def test_transition_rules_draw_values_in_proportion_to_their_reveal_chance():
    logits = torch.zeros(1, 3, 2)  # mu = (0.5, 0.5) everywhere
    p_reveal = [0.0, 0.4]  # value 0 is never revealed in this step
    for u in (0.01, 0.5, 0.99):
        values = predict(Ancestral(), logits, p_reveal, u_value=torch.full((1, 3), u, dtype=torch.float64)).values
        assert (values == 1).all()
    drawn = predict(LowConfidence(), logits, p_reveal, u_value=torch.tensor([[0.01, 0.5, 0.99]], dtype=torch.float64))
    assert drawn.values.tolist() == [[0, 1, 1]]  # other rules draw from mu itself
    torch.testing.assert_close(drawn.chance, torch.full((1, 3), 0.2, dtype=torch.float64))
    torch.testing.assert_close(drawn.confidence, torch.full((1, 3), 0.5, dtype=torch.float64))


def test_confidence_is_read_from_the_model_probabilities_when_given():
    logits = torch.log(torch.tensor([[[0.7, 0.3], [0.4, 0.6]]]))
    one_hot = torch.nn.functional.one_hot(logits.argmax(-1), 2).double()  # what temperature 0 draws from
    drawn = LowConfidence().draw(one_hot, torch.full((1, 2), 0.5, dtype=torch.float64), torch.tensor(0.5), False, torch.softmax(logits.double(), -1))
    assert drawn.values.tolist() == [[0, 1]]
    torch.testing.assert_close(drawn.confidence, torch.tensor([[0.7, 0.6]], dtype=torch.float64))


def test_low_confidence_reveals_the_k_most_confident_masked_positions():
    logits = torch.log(torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.95, 0.05], [0.55, 0.45], [0.8, 0.2]]))[None]
    masked = [[True, True, False, True, True]]
    prediction = predict(LowConfidence(tokens_per_step=2), logits)
    assert LowConfidence(tokens_per_step=2).reveal(context(masked), prediction).tolist() == [[True, False, False, False, True]]
    # without tokens_per_step, k is the number the schedule expects: 0.5 * 4 masked positions
    assert LowConfidence().reveal(context(masked, p_reveal=0.5), prediction).sum() == 2
    assert LowConfidence().reveal(context(masked, p_reveal=0.75), prediction).tolist() == [[True, True, False, False, True]]
    # a step whose expected count rounds to 0 does not call the network
    assert LowConfidence().may_reveal(context(masked, p_reveal=0.1)).tolist() == [False]
    assert LowConfidence(tokens_per_step=1).may_reveal(context(masked, p_reveal=0.1)).tolist() == [True]


def test_random_order_reveals_the_positions_with_the_highest_draws():
    masked = [[True, True, True, False], [True, False, True, True]]
    u = [[0.2, 0.9, 0.5, 0.99], [0.3, 0.99, 0.8, 0.1]]
    reveal = RandomOrder(tokens_per_step=2).reveal(context(masked, u), fake(torch.rand(2, 4)))
    assert reveal.tolist() == [[False, True, True, False], [True, False, True, False]]


def test_threshold_reveals_the_confident_positions_and_at_least_the_most_confident():
    confidence = [[0.95, 0.5, 0.85, 0.99], [0.3, 0.6, 0.4, 0.2], [0.9, 0.9, 0.9, 0.9]]
    masked = [[True, True, True, False], [True, True, True, True], [False, False, False, False]]
    step = context(masked)
    assert Threshold(threshold=0.8).may_reveal(step).tolist() == [True, True, False]
    reveal = Threshold(threshold=0.8).reveal(step, fake(confidence))
    assert reveal.tolist() == [
        [True, False, True, False],  # above the threshold (the unmasked 0.99 stays as it is)
        [False, True, False, False],  # none above: the most confident alone
        [False, False, False, False],  # nothing masked
    ]


def test_rules_check_their_own_options():
    assert RandomOrder.check(SamplerOptions(method="random", tokens_per_step=3)) == []
    with pytest.raises(MaskdiffError, match="tokens_per_step must be >= 0, got -1"):
        SamplerOptions(method="low_confidence", tokens_per_step=-1)
    with pytest.raises(MaskdiffError, match=r"threshold must be in \(0, 1\], got 1.5"):
        SamplerOptions(method="threshold", threshold=1.5)
    with pytest.raises(MaskdiffError, match="tokens_per_step applies to the low_confidence and random rules"):
        SamplerOptions(method="threshold", tokens_per_step=2)
    rule = SamplerOptions(method="threshold", threshold=0.7).rule()
    assert isinstance(rule, Threshold) and rule.threshold == 0.7
    assert SamplerOptions(method="low_confidence", tokens_per_step=4).rule().tokens_per_step == 4


# ---------------------------------------------------------------- the registry
def test_every_registered_rule_is_a_cli_choice_with_its_summary():
    assert method_choices() == RULES.names() == maskdiff.sampling.METHODS
    assert set(RULES.names()) >= {"ancestral", "mean", "low_confidence", "random", "threshold"}
    description = sample_parser().description
    for name, rule in RULES.items():
        assert rule.summary() and "\n" not in rule.summary()
        assert f"{name} ({rule.summary()})" in description


def test_an_unknown_method_is_an_error_listing_the_choices(toy):
    expected = f"unknown sampling method 'best'; choose one of {', '.join(RULES.names())}"
    with pytest.raises(MaskdiffError, match=expected):
        SamplerOptions(method="best")
    with pytest.raises(MaskdiffError, match=expected):
        maskdiff.MaskedDiffusion(toy.denoiser, "cosine", toy.V).sample(2, toy.L, steps=4, method="best")


class Leftmost(Rule):
    """The leftmost masked position, one per step."""

    def reveal(self, step, prediction):
        return step.masked & (step.masked.cumsum(-1) == 1)


@pytest.fixture
def leftmost():
    RULES.add("leftmost", Leftmost)
    try:
        yield Leftmost
    finally:
        RULES.remove("leftmost")
    assert "leftmost" not in RULES


def test_a_rule_registered_elsewhere_is_usable_by_name(toy, leftmost):
    model = maskdiff.MaskedDiffusion(toy.denoiser, "cosine", toy.V)
    states = list(iterate(model, 5, toy.L, toy.L, method="leftmost", generator=torch.Generator().manual_seed(0)))
    for i, step in enumerate(states[1:]):
        assert step.revealed.tolist() == [[j == i for j in range(toy.L)]] * 5
    assert not (states[-1].z == toy.V).any() and states[-1].nfe == toy.L
    # fewer steps than positions: the last step reveals the rest, whatever the rule
    samples = model.sample(5, toy.L, steps=2, method="leftmost", generator=torch.Generator().manual_seed(0))
    assert not (samples == toy.V).any()
    assert "leftmost" in maskdiff.sampling.METHODS and "leftmost" in method_choices()
    with pytest.raises(MaskdiffError, match="tokens_per_step applies to the low_confidence and random rules"):
        model.sample(2, toy.L, steps=4, method="leftmost", tokens_per_step=1)
    with pytest.raises(ValueError, match="registered twice"):
        RULES.add("leftmost", Leftmost)
