"""The Ray runtime of maskrl: thin actors around maskrl/ objects, and the driver.

    pools       resource pools (placement groups sized from the config), worker groups,
                fail-fast capacity checks
    rollout     RolloutWorker: a policy of a known version, generates groups -> Arrow record batch
    reward      RewardWorker: scores a record batch -> a new record batch with rewards
    learner     LearnerRank / LearnerGroup: DeepSpeed ZeRO 0-3 ranks, GRPO update, weight publishing
    weights     weight packing and the bucketed collective broadcast
    collective  a ray.util.collective backend on a private torch.distributed group
    metrics     ray.util.metrics gauges as a MetricsLogger sink
    runtime     joining Ray (RAY_ADDRESS) or starting a local instance
    driver      the training loop (`maskrl train`)

Nothing in maskrl/ imports Ray; everything here imports maskrl/.
"""
