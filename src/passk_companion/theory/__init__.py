"""The theory: exact and tabular mathematics of pass@k (no model, no training of networks).

passk (the closed forms and the unbiased estimator), symbolic (SymPy derivations), exact (J_1,
J_k and their gradients for tabular softmax policies), maxk (max@k for real rewards), sampling,
contextual (policies that share parameters), harness (Monte Carlo against exact gradients) and
weights (the expected weight omega(J_1) of an objective), dynamics, policy_metrics, policies,
stationary and tabular_matching (tabular training and its analysis), bandit and gaussian_toy.

It may import passk_companion.objectives and passk_companion.evidence, never passk_companion.model
(tests/test_layout.py).
"""
