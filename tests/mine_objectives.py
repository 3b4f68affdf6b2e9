"""A user's objective, as a user's own module holds it: RLOO's weights under the name `mine`.

tests/test_user_objective.py installs this file as a throwaway package (and copies it where a
sweep imports it with --import); tests/integrations/test_verl.py runs it through verl. No test
imports it into its own process, so the registry of the other tests never holds `mine`."""

from passk_companion import objectives


@objectives.register("mine")
class Mine(objectives.Objective):
    """pass1_reinforce's weights (RLOO), registered under another name."""

    unbiased_for = "pass@1"
    min_group = 2

    def _weights(self, rewards, k):
        return objectives.get("pass1_reinforce").weights(rewards, k)
