"""The one answer normaliser: FLAN's exact match, the harness and the annotators read answers the same way."""

from lmstack.text import exact_match, extract_answer, last_number, match_choice, mentions, normalize, numbers


def test_normalize_is_squad_style_and_keeps_numbers():
    assert normalize("  The Yes. ") == "yes"
    assert normalize("It\u2019s  an Apple!") == "it s apple"
    assert normalize("1,000.") == "1000"
    assert normalize("-3.5 kg") == "-3.5 kg"
    # The annotators' old normaliser turned "-3" into "3", so a negative answer matched its absolute value.
    assert normalize("-3") != normalize("3")


def test_exact_match_and_numbers():
    assert exact_match("Paris.", ["paris"]) == 1.0
    assert exact_match("Paris.", ["paris"], normalize=False) == 0.0
    assert exact_match(None, ["x"]) == 0.0
    assert numbers("from 1,250 down to -4") == [1250, -4]
    assert last_number("no digits") is None
    assert extract_answer("so the answer is 12.", [r"answer is (\S+)"]) == "12"


def test_options_and_entities():
    choices = ["yes", "no", "it is not possible to tell"]
    assert match_choice("(B)", choices) == 1
    assert match_choice("The answer is: it is not possible to tell.", choices) == 2
    assert mentions("Kamiron and Kami met", ["Kami", "Kamiron"]) == ["Kamiron", "Kami"]
    assert mentions("Kamiron left", ["Kami", "Kamiron"]) == ["Kamiron"]


def test_annotators_flan_and_harness_share_the_normaliser():
    from lmstack.data.builtin import annotators
    from lmstack.evaluate import harness
    from lmstack.train import flan

    assert annotators.normalize is normalize
    assert flan.normalize is normalize
    assert harness.exact_match is exact_match
