"""Stop tokens and stop strings (infer/stop.py): where text is cut and what may be streamed yet."""

from lmstack.infer.sampling import SamplingParams
from lmstack.infer.stop import StopText, find_stop, safe_prefix, stop_token_ids


class CharTokenizer:
    """Token id = a character's code point; the ids decode to their characters."""

    stop_ids = [0]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_stop_token_ids_request_model_and_ignore_eos():
    tok = CharTokenizer()
    assert stop_token_ids([2, 3], tok, SamplingParams()) == {0, 2, 3}
    assert stop_token_ids(5, None, SamplingParams()) == {5}
    assert stop_token_ids(5, tok, SamplingParams(stop_token_ids=[7])) == {7}
    assert stop_token_ids(5, tok, SamplingParams(ignore_eos=True, stop_token_ids=[7])) == set()


def test_find_stop_earliest_and_only_in_new_text():
    assert find_stop("abc END x STOP", ["STOP", "END"], 0) == 4
    assert find_stop("abc", ["z"], 0) is None
    # Text already streamed (and more than a stop string's length back) is not searched again.
    assert find_stop("END and more", ["END"], 8) is None
    assert find_stop("xxEN", ["ENx"], 2) is None and find_stop("xxENx", ["ENx"], 4) == 2


def test_safe_prefix_holds_back_partial_stops_and_characters():
    assert safe_prefix("hello wo", ["world"]) == 6
    assert safe_prefix("hello", ["world"]) == 5
    assert safe_prefix("ab\ufffd", []) == 2
    assert safe_prefix("ab\ufffd", ["b"]) == 2  # a one-character stop string cannot be partial


def test_stop_text_streams_then_cuts_at_the_stop_string():
    st = StopText(CharTokenizer(), ["<e>"])
    ids, shown, hit = [], [], False
    for ch in "hi <x> there<e>tail":
        ids.append(ord(ch))
        delta, hit = st.update(ids, final=False)
        shown.append(delta)
        if hit:
            break
    assert hit and st.text == "hi <x> there"
    assert "".join(shown) == "hi <x> there"
    assert shown[3] == "" and shown[4] == "<x"  # "<" held back until it cannot start "<e>"
    final = StopText(CharTokenizer(), ["zz"])
    assert final.update([ord("a"), ord("z")], final=True) == ("az", False)
