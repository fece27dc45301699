"""The prompt stream: a pure function of (seed, index), resumable, and cyclic with a pool."""
import pytest

from maskrl.config import ConfigError
from maskrl.iteration import PromptStream
from maskrl.train_config import TrainConfig, check_train_config


def texts(stream: PromptStream, n: int) -> list[str]:
    return [p for _, p in stream.take(n)]


def test_resuming_at_a_position_continues_exactly():
    whole = texts(PromptStream(3), 10)
    assert texts(PromptStream(3, position=4), 6) == whole[4:]
    assert len(set(whole)) > 5  # an endless stream of mostly different prompts


def test_a_pool_cycles_through_the_streams_first_prompts_with_fresh_group_ids():
    first = texts(PromptStream(3), 4)
    pooled = PromptStream(3, pool=4)
    taken = pooled.take(10)
    assert [p for _, p in taken] == first + first + first[:2]
    assert [i for i, _ in taken] == list(range(10))  # group ids stay unique across iterations
    assert texts(PromptStream(3, position=6, pool=4), 2) == first[2:4]  # resumable too


def test_a_negative_pool_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="prompt_pool"):
        check_train_config(TrainConfig(prompt_pool=-1))
