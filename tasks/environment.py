"""`environment:` in params.yaml: the tools the policy may call during PPO, built into a TextEnvironment."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from rlhf_lib.config import ConfigError
from rlhf_lib.rewards import RewardSourceError, import_callable
from rlhf_lib.tools import CALCULATOR, BM25Search, Tool, ToolBox

if TYPE_CHECKING:
    from rlhf_lib.ppo.environment import TextEnvironment

TOOL_NAME = r"^\w+$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class CalculatorTool(_Section):
    """The built-in calculator: arithmetic read and computed without `eval`."""

    kind: Literal["calculator"]
    name: str = Field("calculator", pattern=TOOL_NAME)
    """What the policy writes to call it."""


class SearchTool(_Section):
    """BM25 search over a local text file, one passage per line."""

    kind: Literal["search"]
    corpus: Path
    """The passages, one per line (blank lines are skipped)."""
    name: str = Field("search", pattern=TOOL_NAME)
    """What the policy writes to call it."""
    top_k: int = Field(1, gt=0)
    """Passages per answer."""
    description: str = "finds the passage of the notes that best matches a query"
    """The tool's line in a few-shot prompt."""


class FunctionTool(_Section):
    """Any Python callable `str -> str`, named `module.path:callable`."""

    kind: Literal["function"]
    name: str = Field(pattern=TOOL_NAME)
    """What the policy writes to call it."""
    function: str
    """`module.path:callable`, importable from the project folder."""
    description: str
    """The tool's line in a few-shot prompt."""


ToolEntry = Annotated[CalculatorTool | SearchTool | FunctionTool, Field(discriminator="kind")]


class EnvironmentSection(_Section):
    """Tool use during PPO: the policy writes `<call>name: query</call>` and reads `<result>...</result>`."""

    tools: list[ToolEntry] = Field(min_length=1)
    """The tools the policy may call (`kind`: calculator, search or function)."""
    max_turns: int = Field(3, ge=0)
    """Most tool calls per episode; a call past it ends the episode."""
    max_length: int = Field(64, gt=0)
    """Most response tokens per episode, the policy's and the tools' answers together."""
    timeout_s: float = Field(2.0, gt=0)
    """A tool call still running after this long answers with an error."""
    max_answer_chars: int = Field(200, gt=0)
    """A longer tool answer is replaced by an error."""


def build_environment(section: EnvironmentSection | None) -> TextEnvironment | None:
    """The TextEnvironment of params.yaml's `environment:`, or None when it has none."""
    if section is None:
        return None
    from rlhf_lib.ppo.environment import TextEnvironment  # here: it imports transformers, which params checks need not

    tools = [_tool(entry, f"environment.tools[{index}]") for index, entry in enumerate(section.tools)]
    names = [tool.name for tool in tools]
    if len(set(names)) != len(names):
        raise ConfigError(f"environment.tools: names must be distinct, got {names}")
    toolbox = ToolBox(tools, timeout_s=section.timeout_s, max_answer_chars=section.max_answer_chars)
    return TextEnvironment(toolbox, max_turns=section.max_turns, max_length=section.max_length)


def environment_files(section: EnvironmentSection | None) -> list[Path]:
    """The files behind the tools beyond params (search corpora, tool functions' modules): part of the PPO
    checkpoint key, so changing a tool starts PPO afresh instead of resuming a policy trained with the old one."""
    paths = []
    for entry in section.tools if section else []:
        if isinstance(entry, SearchTool):
            paths.append(entry.corpus)
        elif isinstance(entry, FunctionTool):
            spec = importlib.util.find_spec(entry.function.partition(":")[0])
            if spec is not None and spec.origin:
                paths.append(Path(spec.origin))
    return paths


def _tool(entry: CalculatorTool | SearchTool | FunctionTool, key: str) -> Tool:
    if isinstance(entry, CalculatorTool):
        return Tool(entry.name, CALCULATOR.description, CALCULATOR.function)
    if isinstance(entry, SearchTool):
        if not entry.corpus.is_file():
            raise ConfigError(f"{key}.corpus: {entry.corpus} is not a file")
        passages = [line.strip() for line in entry.corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not passages:
            raise ConfigError(f"{key}.corpus: {entry.corpus} holds no passage")
        return Tool(entry.name, entry.description, BM25Search(passages, entry.top_k))
    try:
        return Tool(entry.name, entry.description, import_callable(entry.function, f"{key}.function"))
    except RewardSourceError as err:
        raise ConfigError(str(err)) from None
