import pytest


@pytest.fixture(scope="session")
def token_data(tmp_path_factory):
    """Prepared token shards of the built-in tiny corpus (suite -> BPE tokenizer -> shards)."""
    from lmstack.data.defaults import builtin_token_data

    return builtin_token_data(tmp_path_factory.mktemp("data"), size="tiny", vocab_size=512)
