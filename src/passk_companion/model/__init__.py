"""The model: a tiny GPT trained from scratch on a verifiable task, with RL under any objective.

tasks (the DAG path-finding task), gpt (the transformer and its KV cache), portable (kernels with
the same bits on every CPU), generate (samplers and scoring), config (every knob, per profile),
pretrain (to a base in the right regime), rl (the RL loop, run_trial), evaluation (exact, over
enumerated paths), checkpoint (weights-only files), sweep (grids of runs, local or Ray) and
analysis (run tables at equal progress).
"""
