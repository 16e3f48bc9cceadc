"""`environment:` in params.yaml: tools built from params, and bad tools refused before any work."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from rlhf_lib.config import ConfigError
from tasks.environment import build_environment, environment_files
from tasks.params import load_params

ROOT = Path(__file__).resolve().parents[2]


def _load(tmp_path: Path, environment) -> object:
    data = yaml.safe_load((ROOT / "params.yaml").read_text()) | {"environment": environment}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    return load_params(tmp_path / "params.yaml")


def test_tools_from_params_answer_calls(tmp_path):
    corpus = tmp_path / "notes.txt"
    corpus.write_text("paris is the capital of france\n\nbananas are yellow\n")
    params = _load(
        tmp_path,
        {
            "tools": [
                {"kind": "calculator"},
                {"kind": "search", "corpus": str(corpus)},
                {"kind": "function", "name": "shout", "function": "builtins:str.upper", "description": "upper case"},
            ],
            "max_turns": 2,
            "max_length": 48,
        },
    )
    env = build_environment(params.environment)
    assert (env.max_turns, env.max_length) == (2, 48)
    assert env.tools.call("calculator", "6*7") == ("42", True)
    assert env.tools.call("search", "yellow fruit bananas") == ("bananas are yellow", True)
    assert env.tools.call("shout", "hi") == ("HI", True)
    assert corpus in environment_files(params.environment)
    assert build_environment(_load(tmp_path, None).environment) is None


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"tools": []}, "environment.tools"),
        ({"tools": [{"kind": "calculator"}], "max_length": 0}, "environment.max_length"),
        ({"tools": [{"kind": "abacus"}]}, "environment.tools.0"),
        ({"tools": [{"kind": "search", "corpus": "no/such/file.txt"}]}, "environment.tools[0].corpus"),
        (
            {"tools": [{"kind": "function", "name": "f", "function": "no_such_pkg:f", "description": "x"}]},
            "environment.tools[0].function 'no_such_pkg:f': cannot import",
        ),
        ({"tools": [{"kind": "calculator"}, {"kind": "calculator"}]}, "names must be distinct"),
        ({"tools": [{"kind": "calculator", "name": "two words"}]}, "environment.tools.0.calculator.name"),
    ],
)
def test_a_bad_tool_is_refused_at_params_load_naming_the_key(tmp_path, environment, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _load(tmp_path, environment)
