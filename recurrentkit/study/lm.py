r"""A character language model over any :class:`~recurrentkit.Stack`, makemore style.

``CharLM`` is embedding → stack → optional LayerNorm → linear head, with one uniform
call, ``model(idx, targets) -> (logits, loss)``, and a one-token ``step`` that carries
the stack's state for sampling.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from recurrentkit._validation import check_bool, check_int, describe, shape_str
from recurrentkit.errors import ConfigError, DeviceError, InputTypeError, ShapeError
from recurrentkit.stack import Stack
from recurrentkit.study.data import IGNORE_INDEX

__all__ = ["CharLM", "count_parameters"]


class CharLM(nn.Module):
    r"""Embedding → :class:`~recurrentkit.Stack` → (LayerNorm) → Linear head with bias.

    $$
    \begin{aligned}
    e_t &= E[\text{idx}_t] \\
    (o_{1:T}, s_T) &= \text{stack}(e_{1:T}) \\
    \text{logits}_t &= W\, \text{LN}(o_t) + b \quad (\text{LN only with } \texttt{layer\_norm})
    \end{aligned}
    $$

    The loss is the token-mean cross-entropy over targets that are not ``-100``.

    Args:
        stack: any stack; its ``batch_first`` flag is honoured (inputs here are always
            ``(B, T)``).
        vocab_size: ``V``, number of token ids (embedding rows and head outputs).
        embed_dim: ``E``; must equal the stack's ``input_size`` where it declares one.
        layer_norm: apply ``LayerNorm(O)`` to the top layer's outputs before the head.
        hidden_size: ``O``, the stack's output width, needed only when its top cell
            does not declare ``output_size``.
        reset_token: a token id at which every sequence starts afresh: where
            ``idx[b, t]`` is this token, the stack's state is reset before step ``t``
            (``resets = idx == reset_token``, see :meth:`recurrentkit.Stack.forward`).
            With a name's start token, a row holding several names end to end computes
            what each name alone computes. ``None`` (default): no resets.

    Raises:
        ConfigError: sizes that do not chain (``embed_dim`` vs the stack's input width).

    Shape:
        - idx: ``(B, T)`` int64 ids in ``[0, V)``; targets: ``(B, T)`` ids or ``-100``.
        - logits: ``(B, T, V)``; loss: a scalar.

    Example:
        >>> import torch, recurrentkit as rk
        >>> from recurrentkit.study.lm import CharLM
        >>> stack = rk.Stack([rk.GRUCell(8, 16)], batch_first=True)
        >>> model = CharLM(stack, vocab_size=28, embed_dim=8)
        >>> idx = torch.randint(0, 28, (4, 10))
        >>> logits, loss = model(idx, idx)
        >>> logits.shape, loss.shape
        (torch.Size([4, 10, 28]), torch.Size([]))
        >>> logits_t, state = model.step(idx[:, 0])     # one token, for sampling
        >>> logits_t.shape
        torch.Size([4, 28])
    """

    def __init__(
        self,
        stack: Stack,
        vocab_size: int,
        embed_dim: int,
        *,
        layer_norm: bool = False,
        hidden_size: int | None = None,
        reset_token: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(stack, Stack):
            raise InputTypeError("stack", "a recurrentkit.Stack", describe(stack))
        self.vocab_size = check_int("vocab_size", vocab_size)
        self.embed_dim = check_int("embed_dim", embed_dim)
        if stack.input_size is not None and stack.input_size != embed_dim:
            raise ConfigError(
                "embed_dim", f"{stack.input_size} (the stack's input_size)", embed_dim
            )
        width = hidden_size if hidden_size is not None else stack.output_size
        if width is None:
            raise ConfigError(
                "hidden_size", "an int (the stack's top cell declares no output_size)", None
            )
        self.hidden_size = check_int("hidden_size", width)
        check_bool("layer_norm", layer_norm)
        if reset_token is not None:
            check_int("reset_token", reset_token, minimum=0)
            if reset_token >= vocab_size:
                raise ConfigError("reset_token", f"a token id in [0, {vocab_size})", reset_token)
        self.reset_token = reset_token
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.stack = stack
        self.norm: nn.Module = nn.LayerNorm(self.hidden_size) if layer_norm else nn.Identity()
        self.head = nn.Linear(self.hidden_size, vocab_size)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Teacher-forced pass over whole sequences.

        Args:
            idx: ``(B, T)`` token ids.
            targets: ``(B, T)`` target ids, ``-100`` where ignored; ``None`` skips the loss.

        Returns:
            ``(logits (B, T, V), loss)``; ``loss`` is ``None`` without targets.

        Raises:
            InputTypeError: ids that are not an integer tensor.
            ShapeError: wrong ranks, mismatched shapes, or ids outside ``[0, V)``.
        """
        idx = self._check_ids("idx", idx, ranks=(2,))
        emb = self.embedding(idx)  # (B, T, E)
        x = emb if self.stack.batch_first else emb.transpose(0, 1)  # stack layout
        resets = None
        if self.reset_token is not None:
            resets = idx == self.reset_token  # (B, T)
            resets = resets if self.stack.batch_first else resets.t()  # stack layout
        out, _ = self.stack(x, resets=resets)
        out = out if self.stack.batch_first else out.transpose(0, 1)  # (B, T, O)
        logits = self.head(self.norm(out))  # (B, T, V)
        if targets is None:
            return logits, None
        targets = self._check_targets(targets, idx)
        loss = F.cross_entropy(
            logits.reshape(-1, self.vocab_size), targets.reshape(-1), ignore_index=IGNORE_INDEX
        )
        return logits, loss

    def initial_state(self, batch_size: int) -> tuple[Any, ...]:
        """The stack's initial state for ``batch_size`` sequences."""
        return self.stack.initial_state(batch_size)

    def step(self, idx_t: Tensor, state: Any = None) -> tuple[Tensor, tuple[Any, ...]]:
        """One token for every sequence: the sampler's call.

        Args:
            idx_t: ``(B,)`` token ids.
            state: the stack's state from the previous step; ``None`` means zeros.

        Returns:
            ``(logits (B, V), state)``.
        """
        idx_t = self._check_ids("idx_t", idx_t, ranks=(1,))
        y_t, state = self.stack.step(self.embedding(idx_t), state)  # (B, O)
        return self.head(self.norm(y_t)), state  # (B, V)

    def _check_ids(self, name: str, idx: object, ranks: tuple[int, ...]) -> Tensor:
        """The ids, checked, as int64 (the embedding takes no uint8/int16)."""
        layout = "(B, T)" if ranks == (2,) else "(B,)"
        if not _integer_tensor(idx):
            raise InputTypeError(name, f"an integer tensor of shape {layout}", describe(idx))
        assert isinstance(idx, Tensor)
        if idx.dim() not in ranks or idx.numel() == 0:
            raise ShapeError(name, f"a non-empty shape {layout}", shape_str(idx.shape))
        if idx.is_meta:
            raise DeviceError(name, "a tensor with values (on the model's device)", "meta")
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.vocab_size:
            raise ShapeError(name, f"token ids in [0, {self.vocab_size})", f"ids in [{lo}, {hi}]")
        return idx.long()

    def _check_targets(self, targets: object, idx: Tensor) -> Tensor:
        if not _integer_tensor(targets):
            raise InputTypeError("targets", "an integer tensor like idx", describe(targets))
        assert isinstance(targets, Tensor)
        if targets.shape != idx.shape:
            raise ShapeError(
                "targets", f"shape {shape_str(idx.shape)} (idx's)", shape_str(targets.shape)
            )
        valid = targets[targets != IGNORE_INDEX]
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= self.vocab_size):
            raise ShapeError(
                "targets",
                f"ids in [0, {self.vocab_size}) or -100",
                f"ids in [{int(valid.min())}, {int(valid.max())}]",
            )
        return targets.long()


def _integer_tensor(t: object) -> bool:
    """An integer tensor: not floating, complex or bool."""
    return (
        isinstance(t, Tensor)
        and not t.is_floating_point()
        and not t.is_complex()
        and t.dtype != torch.bool
    )


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameter elements.

    Example:
        >>> count_parameters(nn.Linear(3, 2))
        8
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
