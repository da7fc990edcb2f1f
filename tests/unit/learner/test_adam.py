"""The learner's FusedAdam takes exactly the steps of torch.optim.Adam, and shares its checkpoints."""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

from stream_lstm.learner.adam import FusedAdam
from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.offline.generator import temporal_stream


class ThroughTorchOptim(LSTMLearner):
    """The same learner, with torch.optim's fused Adam (which has no early boost: tests compare
    it with learners built with ``lr_boost_half_life=0``)."""

    def _build(self) -> None:
        super()._build()
        self.optimizer = torch.optim.Adam(self._parameters, lr=self.learning_rate, fused=True)  # type: ignore[assignment]


def _learn(learners: list[LSTMLearner], events: list, batch_size: int = 7) -> None:
    for start in range(0, len(events), batch_size):
        batch = events[start : start + batch_size]
        for learner in learners:
            learner.predict_batch(batch)
            learner.learn_batch(batch)


def _assert_same(mine: LSTMLearner, theirs: LSTMLearner) -> None:
    for a, b in zip(mine.network.parameters(), theirs.network.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    ours, reference = mine.optimizer.state_dict(), theirs.optimizer.state_dict()
    assert _shared_keys(ours["param_groups"]) == _shared_keys(reference["param_groups"])
    assert ours["state"].keys() == reference["state"].keys()
    for index, state in ours["state"].items():
        assert state.keys() == reference["state"][index].keys()
        for name, value in state.items():
            torch.testing.assert_close(value, reference["state"][index][name], rtol=0, atol=0)


def _shared_keys(groups: list[dict]) -> list[dict]:
    """Parameter groups without the keys torch.optim.Adam has only in some versions."""
    return [{k: v for k, v in group.items() if k != "decoupled_weight_decay"} for group in groups]


def test_fused_adam_steps_exactly_like_torch_optim_adam() -> None:
    events = list(temporal_stream(400, n_keys=5, seed=9))
    ours = LSTMLearner(hidden_size=8, tbptt_steps=4, lr_boost_half_life=0, device="cpu")
    reference = ThroughTorchOptim(hidden_size=8, tbptt_steps=4, lr_boost_half_life=0, device="cpu")
    assert isinstance(ours.optimizer, FusedAdam)
    before_any_step = ours.optimizer.state_dict(), reference.optimizer.state_dict()
    assert before_any_step[0]["state"] == before_any_step[1]["state"] == {}
    assert _shared_keys(before_any_step[0]["param_groups"]) == _shared_keys(
        before_any_step[1]["param_groups"]
    )
    _learn([ours, reference], events)
    assert ours.steps == reference.steps > 50
    _assert_same(ours, reference)


@pytest.mark.parametrize("direction", ["torch to ours", "ours to torch"])
def test_optimizer_state_moves_between_fused_adam_and_torch_optim(direction: str) -> None:
    """A checkpoint written with one optimizer continues, step for step, with the other."""
    events = list(temporal_stream(300, n_keys=5, seed=3))
    first, second = events[:150], events[150:]
    writer_cls, reader_cls = (
        (ThroughTorchOptim, LSTMLearner) if direction == "torch to ours" else (LSTMLearner, ThroughTorchOptim)
    )
    writer = writer_cls(hidden_size=8, tbptt_steps=4, lr_boost_half_life=0, device="cpu")
    _learn([writer], first)
    # The learner's own checkpoint path, with the reader's optimizer class.
    reader = reader_cls.__new__(reader_cls)
    reader.__setstate__(pickle.loads(pickle.dumps(writer.__getstate__())))
    assert type(reader.optimizer) is not type(writer.optimizer)
    _learn([writer, reader], second)
    _assert_same(reader, writer) if reader_cls is LSTMLearner else _assert_same(writer, reader)


def _steps_with_changing_gradients(
    adam: FusedAdam | torch.optim.Adam, weight: torch.Tensor, steps: int
) -> Iterator[int]:
    """Set a gradient, yield the step's index (the caller may change the step size), step."""
    for step in range(steps):
        weight.grad = torch.sin(torch.arange(4.0) * (step + 1))
        yield step
        adam.step()


def test_the_early_boost_takes_adam_steps_of_twice_lr_fading_with_its_half_life() -> None:
    """Step ``t`` of a boosted FusedAdam is torch.optim.Adam's step with the step size set to
    ``lr * (1 + 2 ** (-(t - 1) / half_life))``, bit for bit."""
    ours_weight = torch.nn.Parameter(torch.ones(4))
    their_weight = torch.nn.Parameter(torch.ones(4))
    ours = FusedAdam([ours_weight], lr=0.05, boost_half_life=3.0)
    theirs = torch.optim.Adam([their_weight], lr=0.05, fused=True)
    sizes = []
    for step in _steps_with_changing_gradients(theirs, their_weight, 12):
        theirs.param_groups[0]["lr"] = size = 0.05 * (1 + 2 ** (-step / 3.0))
        sizes.append(size)
    for _ in _steps_with_changing_gradients(ours, ours_weight, 12):
        pass
    torch.testing.assert_close(ours_weight, their_weight, rtol=0, atol=0)
    assert sizes[0] == 0.1 and sizes[3] == pytest.approx(0.075) and sizes[-1] < 0.06
    assert ours.state_dict()["param_groups"][0]["lr"] == 0.05  # the checkpoint keeps the base


def test_the_boost_worked_out_on_the_device_equals_the_hosts() -> None:
    """On a GPU the boosted step size is a tensor there (no host read of the step count); run
    that way on the CPU it takes the host's steps, to float32 rounding."""
    host_weight, device_weight = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))
    on_host = FusedAdam([host_weight], lr=0.05, boost_half_life=2.0)
    on_device = FusedAdam([device_weight], lr=0.05, boost_half_life=2.0)
    on_device.step_size_on_host = False
    for adam, weight in ((on_host, host_weight), (on_device, device_weight)):
        for _ in _steps_with_changing_gradients(adam, weight, 8):
            pass
    torch.testing.assert_close(device_weight, host_weight, rtol=1e-6, atol=1e-7)
    assert not torch.equal(host_weight, _weight_after_unboosted_steps())  # the boost did something


def _weight_after_unboosted_steps() -> torch.Tensor:
    weight = torch.nn.Parameter(torch.ones(4))
    adam = FusedAdam([weight], lr=0.05)
    for _ in _steps_with_changing_gradients(adam, weight, 8):
        pass
    return weight.detach()


def test_fused_adam_refuses_state_it_cannot_continue() -> None:
    weight = torch.nn.Parameter(torch.ones(3))
    adam = FusedAdam([weight], lr=0.1)
    other = torch.optim.Adam([weight, torch.nn.Parameter(torch.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match="other parameters"):
        adam.load_state_dict(other.state_dict())
    decaying = torch.optim.Adam([weight], lr=0.1, weight_decay=0.01)
    with pytest.raises(ValueError, match="weight_decay"):
        adam.load_state_dict(decaying.state_dict())
    sgd = torch.optim.SGD([weight], lr=0.5)
    with pytest.raises(ValueError, match="not Adam's"):
        adam.load_state_dict(sgd.state_dict())
    stepped = torch.optim.Adam([weight], lr=0.5)
    weight.grad = torch.ones(3)
    stepped.step()
    broken = stepped.state_dict()
    del broken["state"][0]["exp_avg_sq"]
    with pytest.raises(ValueError, match="lacks"):
        adam.load_state_dict(broken)
    assert adam.lr == 0.1  # a refused state changes nothing
    weight.grad = None
    with pytest.raises(RuntimeError, match="needs a gradient"):
        adam.step()


def test_the_learner_does_not_import_torch_dynamo() -> None:
    """torch.optim imports torch._dynamo on first use: about a second of every start."""
    script = (
        "import sys\n"
        "import torch\n"
        "print('torch._dynamo' in sys.modules)\n"
        "from stream_lstm.offline.generator import temporal_stream\n"
        "from stream_lstm.learner.lstm_learner import LSTMLearner\n"
        "learner = LSTMLearner(hidden_size=4, device='cpu')\n"
        "batch = list(temporal_stream(20, n_keys=2, seed=1))\n"
        "learner.predict_batch(batch); learner.learn_batch(batch)\n"
        "learner.__setstate__(learner.__getstate__())\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    with_torch, with_learner = done.stdout.split()
    if with_torch == "True":
        pytest.skip(f"this torch ({torch.__version__}) imports torch._dynamo by itself")
    assert with_learner == "False"


def test_a_skipped_step_does_not_advance_the_boost() -> None:
    """A step skipped on the device (``found_inf`` 1) puts the step count back, so the next step
    takes the size it would have taken without the skip."""
    skipping_weight, plain_weight = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))
    skipping = FusedAdam([skipping_weight], lr=0.05, boost_half_life=2.0)
    plain = FusedAdam([plain_weight], lr=0.05, boost_half_life=2.0)
    for adam in (skipping, plain):
        adam.step_size_on_host = False
    for step in range(6):
        gradient = torch.sin(torch.arange(4.0) * (step + 1))
        skipping_weight.grad, plain_weight.grad = gradient.clone(), gradient.clone()
        if step == 2:
            skipping.step(found_inf=torch.ones(()))
        skipping.step(found_inf=torch.zeros(()))
        plain.step(found_inf=torch.zeros(()))
    torch.testing.assert_close(skipping_weight, plain_weight, rtol=0, atol=0)
    assert float(skipping.step_counts[0]) == float(plain.step_counts[0]) == 6


def _step_all(adam: FusedAdam, found_inf: torch.Tensor | None = None) -> None:
    for parameter in adam.params:
        parameter.grad = torch.ones_like(parameter)
    adam.step(found_inf)


def test_every_parameter_counts_each_step_once_whether_or_not_their_counts_are_shared() -> None:
    """Parameters with the same count share one tensor (advanced once per step); a state whose
    parameters took different numbers of steps keeps a count each."""
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    adam = FusedAdam(params, lr=0.1)
    for _ in range(3):
        _step_all(adam)
    _step_all(adam, found_inf=torch.ones(()))  # a skipped step: counted back once, not per parameter
    assert [float(s["step"]) for s in adam.state_dict()["state"].values()] == [3.0, 3.0]
    assert adam.step_counts[0] is adam.step_counts[1]
    uneven = adam.state_dict()
    uneven["state"][1]["step"] = torch.tensor(7.0)
    adam.load_state_dict(uneven)
    _step_all(adam)
    assert [float(s["step"]) for s in adam.state_dict()["state"].values()] == [4.0, 8.0]
    adam.load_state_dict(
        {**uneven, "state": {i: {**s, "step": torch.tensor(5.0)} for i, s in uneven["state"].items()}}
    )
    _step_all(adam)
    assert [float(s["step"]) for s in adam.state_dict()["state"].values()] == [6.0, 6.0]
    assert adam.step_counts[0] is adam.step_counts[1]


def test_torch_optim_adam_given_its_state_counts_each_parameters_steps_apart_from_it() -> None:
    """The counts a state_dict hands over are the parameters' own, not the tensor they share here."""
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))]
    adam = FusedAdam(params, lr=0.1)
    _step_all(adam)
    _step_all(adam)
    reference = torch.optim.Adam(params, lr=0.1, fused=True)
    reference.load_state_dict(adam.state_dict())
    for parameter in params:
        parameter.grad = torch.ones_like(parameter)
    reference.step()
    assert [float(s["step"]) for s in reference.state_dict()["state"].values()] == [3.0, 3.0]
    assert [float(s["step"]) for s in adam.state_dict()["state"].values()] == [2.0, 2.0]
