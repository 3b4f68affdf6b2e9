"""The model: a tiny GPT trained from scratch on a verifiable task, with RL under any objective.

tasks (the DAG path-finding task), gpt (the transformer with a leading run axis, its KV cache and
its tree-shaped forward), portable (kernels with the same bits on every CPU, per run), runs (rows
grouped by run), generate (samplers and scoring), config (every knob, per profile), pretrain (to a
base in the right regime), optim (AdamW and SGD per run), streams (named random streams), rl (the
RL loop: an ensemble of runs, train_rl and run_trial), evaluation (exact, over enumerated paths),
checkpoint (weights-only files), provenance (the code a run ran with), grid (grid files) and sweep
(grids of runs in ensembles, local or Ray). Run tables at equal progress are in
passk_companion.evidence.analysis.
"""
