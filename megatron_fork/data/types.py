"""The one record every prompt source produces: the synthetic task, DAPO-style training sets and
AIME-style eval sets all become ``PromptExample``, so the RL loop, the warm start and the eval
never care where a prompt came from."""

from dataclasses import dataclass

BOX_OPEN = "\\boxed{"
"""Opens the final answer of a solution: ``\\boxed{answer}``."""


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a chat-format prompt, as in ``[{"role": "user", "content": ...}]``."""

    role: str
    """Speaker: "system", "user" or "assistant" (kept as written in the data)."""
    content: str
    """The turn's text."""


@dataclass(frozen=True)
class PromptExample:
    """A prompt with a verifiable answer."""

    id: str
    """Unique within its dataset: the row's own id when it has one, else ``<file stem>:<row>``."""
    prompt: str
    """The text the model answers: the user turns of a chat prompt, joined by a blank line."""
    answer: str
    """Gold final answer, compared to the model's ``\\boxed{}`` content by the reward."""
    source: str
    """Dataset name (DAPO's ``data_source``, or the file stem, or "synthetic")."""
    messages: tuple[ChatMessage, ...] = ()
    """The full chat (system turns included) when the data gave one, for a chat template;
    empty when the prompt was plain text."""
    solution: str | None = None
    """A reference chain of thought ending in ``\\boxed{answer}`` (for a supervised warm start),
    when the source has one."""
