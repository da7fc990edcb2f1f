"""The learner's direct fused-Adam step takes exactly the step torch.optim.Adam would."""

from __future__ import annotations

import torch

from stream_lstm.generator import temporal_stream
from stream_lstm.learner import LSTMLearner


class ThroughTorchOptim(LSTMLearner):
    """The same learner, stepping through ``optimizer.step()`` every time."""

    def _optimizer_step(self) -> None:
        self.optimizer.step()


def test_direct_adam_step_equals_torch_optim_step() -> None:
    events = list(temporal_stream(400, n_keys=5, seed=9))
    direct = LSTMLearner(hidden_size=8, tbptt_steps=4, device="cpu")
    reference = ThroughTorchOptim(hidden_size=8, tbptt_steps=4, device="cpu")
    for start in range(0, len(events), 7):
        batch = events[start : start + 7]
        for learner in (direct, reference):
            learner.predict_proba_many(batch)
            learner.learn_many(batch)
    assert direct.steps == reference.steps > 50
    assert direct._adam_state is not None  # the direct path was taken after the first step
    for mine, theirs in zip(direct.network.parameters(), reference.network.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    for mine, theirs in zip(direct._parameters, reference._parameters, strict=True):
        state, expected = direct.optimizer.state[mine], reference.optimizer.state[theirs]
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(state[name], expected[name], rtol=0, atol=0)
