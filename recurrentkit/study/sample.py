r"""Sampling names from a :class:`~recurrentkit.study.lm.CharLM`, and the step-wise validation loss.

Both feed the model one token at a time through :meth:`CharLM.step`, so the state is
carried exactly as generation carries it. For a causal routing policy the step-wise
loss equals the teacher-forced one; a gap exposes a policy whose teacher-forced
outputs see the future (``handoff``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from recurrentkit._validation import check_bool, check_choice, check_int, describe
from recurrentkit.errors import ConfigError, InputTypeError, ShapeError
from recurrentkit.study.data import END, IGNORE_INDEX, PAD, itos
from recurrentkit.study.lm import CharLM

__all__ = ["MODES", "SAMPLERS", "Sample", "generate", "stepwise_loss", "teacher_forced_loss"]

SAMPLERS = ("step", "prefix")
"""How :func:`generate` computes each next-token distribution: ``"step"`` carries the
state one token at a time (:meth:`CharLM.step`); ``"prefix"`` re-runs the whole prefix
from the zero state at every step (``model(prefix)``, makemore style)."""
MODES = ("eval", "train")
"""The module mode :func:`generate` samples in (``"train"``: dropout on)."""


@dataclass(frozen=True)
class Sample:
    """One generated name.

    Attributes:
        text: the letters generated before the end token (``<PAD>``/``<S>`` dropped).
        ended: the end token ``.`` was sampled within the step limit.
        tokens: every sampled id, the end token included.
        pad_count: how many times ``<PAD>`` was sampled.
    """

    text: str
    ended: bool
    tokens: tuple[int, ...]
    pad_count: int

    @property
    def raw(self) -> str:
        """Every id sampled before the end token, ``<PAD>`` written ``_`` (``<S>`` dropped).

        Unlike :attr:`text` it keeps the ``<PAD>`` draws, so a sample that drew ``<PAD>``
        never equals a name, and it is empty only when ``.`` was drawn first.

        Example:
            >>> Sample("anna", True, (2, 15, 0, 15, 2, 1), 1).raw
            'an_na'
        """
        return "".join(
            "_" if t == PAD else itos[t] for t in self.tokens if t == PAD or 2 <= t <= 27
        )


@torch.no_grad()
def generate(
    model: CharLM,
    num_samples: int,
    *,
    start_token: int = PAD,
    max_steps: int = 20,
    temperature: float = 1.0,
    seed: int = 0,
    forbid: Sequence[int] = (),
    batch_size: int = 1000,
    greedy: bool = False,
    sampler: str = "step",
    mode: str = "eval",
) -> list[Sample]:
    r"""Sample names autoregressively: softmax at ``temperature``, categorical draw, stop at ``.``.

    Every sample starts from the zero state with ``start_token`` as its first input;
    each sampled id is fed back as the next input. A sample that has not produced
    ``.`` after ``max_steps`` ids is a *runaway*. The model runs in eval mode (its
    mode is restored afterwards) unless ``mode="train"``. Each draw is a multinomial
    (categorical) draw made by inverse CDF from one uniform number per (sample, step),
    drawn up front from a CPU generator seeded with ``seed``: samples are reproducible,
    independent of ``batch_size`` and the same on every device.

    $$
    p_t = \text{softmax}(\text{logits}_t / \tau), \qquad
    \text{id}_{t+1} \sim \text{Categorical}(p_t)
    $$

    With ``sampler="step"`` (the default) the state is carried one token at a time
    (:meth:`CharLM.step`: what the original's sampler does, a T = 1 call with the
    carried states); with ``sampler="prefix"`` every step re-runs the whole prefix
    ``(start, id_1, ..., id_t)`` from the zero state (``model(prefix)``, makemore style)
    and reads the last position. The two agree for a causal policy; under ``handoff``
    they are different samplers (the prefix pass hands each layer the final state of
    the layer below *over the prefix*).

    Args:
        model: the language model.
        num_samples: how many names.
        start_token: first input: ``PAD`` (0) for the original study's protocol, ``START``
            (28) for the fixed one.
        max_steps: most ids sampled per name (the end token included).
        temperature: softmax temperature ``τ > 0``.
        seed: seed of the sampling generator.
        forbid: ids that may never be sampled (their probability is set to zero), e.g.
            ``(PAD, START)`` under the fixed protocol. Empty by default: the original
            protocol can sample ``<PAD>``, and :attr:`Sample.pad_count` counts it.
        batch_size: names generated in parallel.
        greedy: take the most likely id at every step (``argmax``) instead of drawing;
            ``temperature`` then has no effect.
        sampler: ``"step"`` or ``"prefix"`` (:data:`SAMPLERS`).
        mode: ``"eval"`` or ``"train"`` (:data:`MODES`): in ``"train"`` mode dropout is
            on while sampling; its masks come from a generator seeded with ``seed`` (the
            global RNG is left as it was), so the samples are still reproducible.

    Returns:
        ``num_samples`` :class:`Sample` objects.

    Raises:
        ConfigError: non-positive counts or temperature, ids outside the vocabulary.
        InputTypeError: ``model`` not a ``CharLM``, ``seed`` not an int, ``forbid`` not a
            collection of ids.

    Example:
        >>> import torch, recurrentkit as rk
        >>> from recurrentkit.study.lm import CharLM
        >>> _ = torch.manual_seed(0)
        >>> model = CharLM(rk.Stack([rk.GRUCell(8, 16)], batch_first=True), 28, 8)
        >>> samples = generate(model, 3, max_steps=5, seed=0)
        >>> len(samples), all(len(s.tokens) <= 5 for s in samples)
        (3, True)
    """
    _check_model(model)
    check_int("num_samples", num_samples)
    check_int("max_steps", max_steps)
    check_int("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputTypeError("seed", "an int", describe(seed))
    if isinstance(forbid, (str, bytes)) or not isinstance(forbid, Collection):
        raise InputTypeError("forbid", "a collection of token ids (e.g. a tuple)", describe(forbid))
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise InputTypeError("temperature", "a float > 0", describe(temperature))
    if not temperature > 0:
        raise ConfigError("temperature", "a float > 0", temperature)
    V = model.vocab_size
    for name, t in [("start_token", start_token), *(("forbid", f) for f in forbid)]:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < V:
            raise ConfigError(name, f"a token id in [0, {V})", describe(t))
    if len(set(forbid)) >= V:
        raise ConfigError("forbid", "at least one id left to sample", sorted(set(forbid)))
    check_bool("greedy", greedy)
    check_choice("sampler", sampler, SAMPLERS)
    check_choice("mode", mode, MODES)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(int(seed))
    uniforms = torch.rand(num_samples, max_steps, generator=gen, dtype=torch.float64)  # (N, S)
    draw = _Draw(start_token, temperature, tuple(forbid), greedy, sampler == "prefix")
    was_training = model.training
    model.train(mode == "train")
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(int(seed))  # dropout masks in train mode
            out: list[Sample] = []
            for lo in range(0, num_samples, batch_size):
                u = uniforms[lo : lo + batch_size]  # (B, S)
                out.extend(_generate_batch(model, u, draw, device))
    finally:
        model.train(was_training)
    return out


@dataclass(frozen=True)
class _Draw:
    """How each id is drawn (the checked arguments of :func:`generate`)."""

    start_token: int
    temperature: float
    forbid: tuple[int, ...]
    greedy: bool
    prefix: bool


def _generate_batch(
    model: CharLM, uniforms: Tensor, draw: _Draw, device: torch.device
) -> list[Sample]:
    B, steps = uniforms.shape
    idx = torch.full((B,), draw.start_token, dtype=torch.long, device=device)  # (B,)
    prefix = idx[:, None]  # (B, 1): the whole input so far, for the prefix sampler
    state = None
    drawn = torch.empty(B, steps, dtype=torch.long)  # (B, S) on CPU
    for t in range(steps):
        if draw.prefix:
            logits = model(prefix)[0][:, -1]  # (B, V): the whole prefix re-run from zeros
        else:
            logits, state = model.step(idx, state)  # (B, V)
        logits = logits.detach().double().cpu() / draw.temperature
        if draw.forbid:
            logits[:, list(draw.forbid)] = float("-inf")
        if draw.greedy:
            nxt = logits.argmax(dim=-1)  # (B,)
        else:
            cdf = F.softmax(logits, dim=-1).cumsum(dim=-1)  # (B, V)
            # Inverse-CDF draw: the first id whose cumulative probability exceeds u * total
            # (ids of probability zero can never be drawn).
            u = uniforms[:, t : t + 1] * cdf[:, -1:]  # (B, 1)
            nxt = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp(max=cdf.shape[1] - 1)
        drawn[:, t] = nxt
        idx = nxt.to(device)
        if draw.prefix:
            prefix = torch.cat([prefix, idx[:, None]], dim=1)  # (B, t + 2)
    samples = []
    for row in drawn.tolist():
        end = row.index(END) + 1 if END in row else len(row)
        tokens = tuple(row[:end])
        text = "".join(itos[t] for t in tokens if 2 <= t <= 27)
        samples.append(Sample(text, END in tokens, tokens, tokens.count(PAD)))
    return samples


def _check_model(model: object) -> None:
    if not isinstance(model, CharLM):
        raise InputTypeError("model", "a recurrentkit.study.lm.CharLM", describe(model))


def _check_xy(x: object, y: object) -> None:
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor) or t.is_floating_point() or t.dim() != 2:
            raise InputTypeError(name, "an integer tensor of shape (N, T)", describe(t))
    assert isinstance(x, Tensor) and isinstance(y, Tensor)
    if x.shape != y.shape:
        raise ShapeError("y", f"the shape of x {tuple(x.shape)}", tuple(y.shape))


@torch.no_grad()
def teacher_forced_loss(model: CharLM, x: Tensor, y: Tensor, *, batch_size: int = 1024) -> float:
    """Token-mean cross-entropy of whole sequences fed at once (eval mode).

    Args:
        model: the language model.
        x: ``(N, T)`` inputs.
        y: ``(N, T)`` targets, ``-100`` where ignored.
        batch_size: sequences per forward pass.

    Returns:
        The mean over every non-ignored target of the whole set (not a mean of batch means).
    """
    _check_xy(x, y)
    return _loss(model, x, y, batch_size, stepwise=False)


@torch.no_grad()
def stepwise_loss(
    model: CharLM,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int = 1024,
    start_token: int | None = None,
) -> float:
    r"""Token-mean cross-entropy with the inputs fed one token at a time (eval mode).

    :meth:`CharLM.step` carries the state as :func:`generate` does. With
    ``start_token=None`` each sequence starts from the zero state at ``x[:, 0]``: for a
    causal policy this equals :func:`teacher_forced_loss` up to float rounding, and a
    larger value means the teacher-forced loss was helped by seeing future inputs (the
    leak). With ``start_token`` set, that token is stepped first and its output
    discarded, so the state is carried *exactly* as sampling carries it: under the seed
    protocol (``x`` = the name, sampling starts from ``<PAD>``) pass ``PAD``, and the
    first letter is read from the state after the ``<PAD>`` step, as in a sample.

    $$
    s_0 = \text{step}(\text{start}, 0)\ \text{(if given, else } 0), \quad
    (\ell_t, s_t) = \text{step}(x_t, s_{t-1}), \quad
    L = \frac{\sum_t \text{CE}(\ell_t, y_t)}{\#\{y_t \ne -100\}}
    $$

    Args:
        model: the language model.
        x: ``(N, T)`` inputs.
        y: ``(N, T)`` targets, ``-100`` where ignored.
        batch_size: sequences stepped in parallel.
        start_token: a token stepped before ``x[:, 0]`` whose output is not scored
            (``None``: start from the zero state).

    Returns:
        The mean over every non-ignored target of the whole set.

    Example:
        >>> import torch, recurrentkit as rk
        >>> from recurrentkit.study.lm import CharLM
        >>> from recurrentkit.study import data
        >>> model = CharLM(rk.Stack([rk.GRUCell(8, 8)], batch_first=True), 28, 8)
        >>> x, y = data.encode(["anna", "bob"])
        >>> abs(stepwise_loss(model, x, y) - teacher_forced_loss(model, x, y)) < 1e-5
        True
    """
    _check_xy(x, y)
    if start_token is not None:
        _check_model(model)
        V = model.vocab_size
        if isinstance(start_token, bool) or not isinstance(start_token, int):
            raise InputTypeError(
                "start_token", f"a token id in [0, {V}) or None", describe(start_token)
            )
        if not 0 <= start_token < V:
            raise ConfigError("start_token", f"a token id in [0, {V}) or None", start_token)
    return _loss(model, x, y, batch_size, stepwise=True, start_token=start_token)


def _loss(
    model: CharLM,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    *,
    stepwise: bool,
    start_token: int | None = None,
) -> float:
    _check_model(model)
    check_int("batch_size", batch_size)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for lo in range(0, x.shape[0], batch_size):
            xb = x[lo : lo + batch_size].to(device)  # (B, T)
            yb = y[lo : lo + batch_size].to(device)  # (B, T)
            if stepwise:
                state = None
                if start_token is not None:  # stepped, not scored: the sampler's first call
                    _, state = model.step(torch.full_like(xb[:, 0], start_token), None)
                cols = []
                for t in range(xb.shape[1]):
                    logits_t, state = model.step(xb[:, t], state)  # (B, V)
                    cols.append(logits_t)
                logits = torch.stack(cols, dim=1)  # (B, T, V)
            else:
                logits, _ = model(xb)  # (B, T, V)
            total += float(
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]).double(),
                    yb.reshape(-1),
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                )
            )
            count += int((yb != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ConfigError("y", "at least one target that is not -100", "none")
    return total / count
