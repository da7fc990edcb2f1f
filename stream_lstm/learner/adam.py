"""Adam for the learner: torch's fused Adam kernel, without torch.optim around it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class FusedAdam:
    """Adam (Kingma and Ba) over a fixed list of parameters: one fused kernel call per step.

    Without the early boost (below) it takes exactly the steps of ``torch.optim.Adam(params, lr=lr,
    fused=True)`` (a test compares them bit for bit; with it, those of torch's Adam with the step
    size set before each step), and it reads and writes the same ``state_dict``, so a checkpoint loads in
    either. What it leaves out is what the learner never uses: parameter groups, weight decay,
    AMSGrad, hooks, and torch.optim's import of ``torch._dynamo`` on first use, which takes about
    a second of every process start.

    Every parameter must have a gradient when :meth:`step` is called.

    ``boost_half_life`` (optimizer steps; 0: none) adds an early boost to the step size: step
    ``t`` (counting from 1) takes ``lr * (1 + 2 ** (-(t - 1) / boost_half_life))``, twice ``lr`` at
    first and ``lr`` in the long run. A micro-batch of many events takes one step where per-event
    learning takes one per event, so a large batch starts slowly; the boost makes up for part of it
    in the first few thousand events and fades. Its half-life is in steps, not events: per-event
    learning is through it within a few hundred events. Its clock is Adam's own step count, which
    a checkpoint keeps, so a resumed learner goes on where it was. With no boost the steps are
    exactly ``torch.optim.Adam``'s.

    Examples
    --------
    >>> weight = torch.nn.Parameter(torch.ones(2))
    >>> adam = FusedAdam([weight], lr=0.1)
    >>> weight.grad = torch.tensor([1.0, -1.0])
    >>> adam.step()
    >>> [round(w, 4) for w in weight.detach().tolist()]
    [0.9, 1.1]
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        boost_half_life: float = 0.0,
    ) -> None:
        self.params = list(params)
        self.lr = lr
        self.boost_half_life = boost_half_life
        # Where the boosted step size is worked out: on the host (a number) when the parameters
        # are on the CPU, else on their device (tests switch it to run the device's way on the CPU).
        self.step_size_on_host = all(p.device.type == "cpu" for p in self.params)
        self.betas = betas
        self.eps = eps
        # Per parameter, made by the first step (as torch.optim does): the running averages of
        # the gradient and of its square, and the step count (a float32 tensor on the device).
        # Parameters that take every step together share one count tensor (see _share_counts).
        self.exp_avgs: list[torch.Tensor] = []
        self.exp_avg_sqs: list[torch.Tensor] = []
        self.step_counts: list[torch.Tensor] = []
        self._distinct_counts: list[torch.Tensor] = []  # each count tensor of step_counts once

    @torch.no_grad()
    def step(self, found_inf: torch.Tensor | None = None) -> None:
        """One Adam step of every parameter from its ``grad``.

        ``found_inf``: a float32 scalar on the parameters' device; where it is 1 the step changes
        nothing (the kernel leaves the parameters and averages alone, and the step counts are put
        back, as ``torch.optim.Adam`` does for a gradient scaler), without the host reading it.
        """
        if not self.step_counts:
            self.exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
            self.exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
            self._share_counts(
                [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params],
                [0.0] * len(self.params),
            )
        grads = [p.grad for p in self.params]
        if any(grad is None for grad in grads):
            raise RuntimeError("FusedAdam.step: every parameter needs a gradient")
        beta1, beta2 = self.betas
        torch._foreach_add_(self._distinct_counts, 1)
        torch._fused_adam_(
            self.params,
            grads,
            self.exp_avgs,
            self.exp_avg_sqs,
            [],
            self.step_counts,
            amsgrad=False,
            lr=self._step_size(),
            beta1=beta1,
            beta2=beta2,
            weight_decay=0.0,
            eps=self.eps,
            maximize=False,
            grad_scale=None,
            found_inf=found_inf,
        )
        if found_inf is not None:
            torch._foreach_sub_(self._distinct_counts, [found_inf] * len(self._distinct_counts))

    def _share_counts(self, counts: list[torch.Tensor], values: list[float | None]) -> None:
        """Take ``counts`` (one per parameter, whose ``values`` are known on the host, or ``None``),
        with one tensor for all those on a device with the same known count: the kernel reads a
        count per parameter, but advancing one tensor costs less than advancing six (the same
        numbers either way)."""
        shared: dict[tuple[torch.device, float], torch.Tensor] = {}
        self.step_counts = [
            count if value is None else shared.setdefault((count.device, value), count)
            for count, value in zip(counts, values, strict=True)
        ]
        self._distinct_counts = list({id(count): count for count in self.step_counts}.values())

    def _step_size(self) -> float | torch.Tensor:
        """This step's size: ``lr`` with the early boost, from the step count just advanced.

        On the CPU a number; on another device a tensor there, so that the host does not wait
        for the device to read the count (the fused kernel takes either).
        """
        if not self.boost_half_life:
            return self.lr
        count = self.step_counts[0]
        if self.step_size_on_host:
            return self.lr * (1.0 + 2.0 ** (-(float(count) - 1.0) / self.boost_half_life))
        return torch.exp2((1.0 - count) / self.boost_half_life).add_(1.0).mul_(self.lr)

    def state_dict(self) -> dict[str, Any]:
        """The state in ``torch.optim.Adam``'s format (fused, one parameter group)."""
        # A count each (not the shared tensor): torch.optim.Adam, given this, advances each one.
        state = {
            i: {"step": step.clone(), "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
            for i, (step, exp_avg, exp_avg_sq) in enumerate(
                zip(self.step_counts, self.exp_avgs, self.exp_avg_sqs, strict=True)
            )
        }
        group = {
            "lr": self.lr,
            "betas": self.betas,
            "eps": self.eps,
            "weight_decay": 0,
            "amsgrad": False,
            "maximize": False,
            "foreach": None,
            "capturable": False,
            "differentiable": False,
            "fused": True,
            "decoupled_weight_decay": False,
            "params": list(range(len(self.params))),
        }
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (or a ``torch.optim.Adam`` one over the same parameters)."""
        groups = saved["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError("the saved optimizer state is for other parameters")
        group = groups[0]
        if not {"lr", "betas", "eps"} <= group.keys():
            raise ValueError("the saved optimizer state is not Adam's")
        unsupported = [
            name
            for name, plain in (("weight_decay", 0), ("amsgrad", False), ("maximize", False))
            if group.get(name, plain) != plain
        ]
        if unsupported:
            raise ValueError(f"the saved optimizer state uses what FusedAdam does not: {unsupported}")
        state = saved["state"]
        per_parameter = [state.get(index) for index in group["params"]]
        if state and any(
            s is None or not {"step", "exp_avg", "exp_avg_sq"} <= s.keys() for s in per_parameter
        ):
            raise ValueError("the saved optimizer state lacks some parameters' averages")
        # Checked: from here on nothing raises, so a refused state changes nothing.
        self.lr, self.betas, self.eps = group["lr"], tuple(group["betas"]), group["eps"]
        if not state:
            self.exp_avgs, self.exp_avg_sqs, self.step_counts, self._distinct_counts = [], [], [], []
            return
        pairs = list(zip(per_parameter, self.params, strict=True))
        self.exp_avgs = [s["exp_avg"].to(p.device, p.dtype).clone() for s, p in pairs]
        self.exp_avg_sqs = [s["exp_avg_sq"].to(p.device, p.dtype).clone() for s, p in pairs]
        saved_counts = [torch.as_tensor(s["step"], dtype=torch.float32) for s, _ in pairs]
        self._share_counts(
            [count.to(p.device).clone() for count, (_, p) in zip(saved_counts, pairs, strict=True)],
            [None if count.device.type == "meta" else float(count) for count in saved_counts],
        )
