"""The Arrow schema of trajectories: exact round trip, zero-copy reads, version checks."""
import pyarrow as pa
import pytest
import torch

from maskrl.iteration import PromptStream, rollout_groups
from maskrl.sampling import SamplingConfig
from maskrl.trajectory import SchemaError, TrajectoryBatch


@pytest.fixture
def batch(tiny_policy):
    b = rollout_groups(tiny_policy, PromptStream(5).take(3), 2, SamplingConfig(steps=4), torch.Generator().manual_seed(0), 7)
    b.reward = torch.rand(len(b))
    return b


def test_arrow_round_trip_is_exact(batch):
    back = TrajectoryBatch.from_arrow(batch.to_arrow())
    assert back.prompts == batch.prompts and back.variant == batch.variant
    for name in ("prompt_ids", "prompt_index", "group_id", "tokens", "reveal_step", "cutoff",
                 "behaviour_terms", "step_tokens", "reward", "advantage", "policy_version"):
        assert torch.equal(getattr(back, name), getattr(batch, name)), name
    assert (back.policy_version == 7).all()
    assert "step_tokens" not in batch.to_arrow().schema.names  # candidate variants record no step samples


def test_ar_round_trip_carries_the_step_samples(tiny_policy):
    b = rollout_groups(tiny_policy, PromptStream(5).take(2), 2, SamplingConfig(steps=4, variant="ar"),
                       torch.Generator().manual_seed(0), 0)
    back = TrajectoryBatch.from_arrow(b.to_arrow())
    assert back.step_tokens.shape == (4, 4 * 256) and torch.equal(back.step_tokens, b.step_tokens)
    traj, step = torch.tensor([1, 3]), torch.tensor([0, 2])
    assert torch.equal(back.tokens_at(traj, step), b.step_tokens.view(4, 4, 256)[traj, step])


def test_reading_is_zero_copy_and_fixed_width(batch):
    rb = batch.to_arrow()
    assert pa.types.is_fixed_size_list(rb.schema.field("tokens").type)
    assert rb.schema.field("tokens").type.value_type == pa.int16()
    back = TrajectoryBatch.from_arrow(rb)
    buffer_address = rb.column("cutoff").values.buffers()[1].address
    assert back.cutoff.data_ptr() == buffer_address


def test_ipc_round_trip_and_table_input(batch):
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.to_arrow().schema) as writer:
        writer.write_batch(batch.to_arrow())
    table = pa.ipc.open_stream(sink.getvalue()).read_all()
    assert torch.equal(TrajectoryBatch.from_arrow(table).tokens, batch.tokens)


def test_wrong_schema_version_is_a_clear_error(batch):
    rb = batch.to_arrow()
    meta = dict(rb.schema.metadata)
    meta[b"maskrl.trajectory.version"] = b"0"
    with pytest.raises(SchemaError, match="version '0' is not supported"):
        TrajectoryBatch.from_arrow(rb.replace_schema_metadata(meta))
    with pytest.raises(SchemaError, match="no column 'tokens'"):
        TrajectoryBatch.from_arrow(rb.drop_columns(["tokens"]))


def test_select_and_concat(batch):
    parts = [batch.select([0, 1]), batch.select([2, 3, 4, 5])]
    joined = TrajectoryBatch.concat(parts)
    assert torch.equal(joined.tokens, batch.tokens) and joined.prompts == batch.prompts


def test_a_sliced_record_batch_reads_its_own_rows(batch):
    part = TrajectoryBatch.from_arrow(batch.to_arrow().slice(2, 3))
    assert torch.equal(part.tokens, batch.tokens[2:5]) and torch.equal(part.cutoff, batch.cutoff[2:5])
    assert part.prompts == batch.prompts[2:5]
