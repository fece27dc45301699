"""The Ray runtime of maskrl: thin actors around maskrl/ objects, and the driver. Read in this
order to follow one iteration:

    driver        train -> attempt -> loop (`maskrl train`; registered by cli)
    runtime       joining Ray; the pools of one attempt, wiring dispatch and weight sync
    dispatch      rollout and reward tasks: dispatched, collected, resubmitted on faults
    weight_sync   the learner's weights to the rollout workers; the version invariants
    learner_group the driver's handle of the DeepSpeed ranks (LearnerLost on a dead one)
    pools         placement groups sized from the config; worker groups (call_all, replace)
    rollout       RolloutWorker: generates groups -> Arrow record batch; evaluates chunks
    reward        RewardWorker: scores a record batch -> a new record batch with rewards
    learner       LearnerRank: DeepSpeed ZeRO 0-3, the GRPO update, publishing, checkpoints
    weights       weight packing (object store) and the bucketed collective broadcast
    collective    a ray.util.collective backend on a private torch.distributed group
    runstate      the driver state inside checkpoints, events.jsonl
    metrics       ray.util.metrics gauges as a MetricsLogger sink
    cli           the `maskrl train` command

Nothing in maskrl/ imports Ray or this package; everything here imports maskrl/.
"""
